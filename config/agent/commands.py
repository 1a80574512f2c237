"""The agent's file commands, run inside the rollout's sandbox by the shell functions in
commands.sh: open, goto, scroll_up, scroll_down, create, edit, insert, search_dir, search_file,
find_file, and state (what the footer shows).

They behave like MLGym's commands of the same names. The open file and the window position
live in a small JSON file in the sandbox's /tmp, so they persist between commands of one
rollout. An edit or insert that leaves a Python file unable to compile, when it compiled
before, is reverted and the error shown.
"""

import fnmatch
import json
import os
import sys

WINDOW = 1000
STATE = "/tmp/.gymforge_editor.json"
MAX_LISTED_FILES = 100


def load_state():
    try:
        with open(STATE) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {"open_file": None, "line": 1}


def save_state(state):
    with open(STATE, "w") as f:
        json.dump(state, f)


def fail(message):
    print(message)
    sys.exit(1)


def read_lines(path):
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read()
    # A final newline ends the last line; it does not start another.
    return (text[:-1] if text.endswith("\n") else text).split("\n")


def write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def window(path, lines, center):
    """Prints the window of `lines` around line `center` (1-based) and returns its first line."""
    total = len(lines)
    start = max(1, min(center - WINDOW // 2, total - WINDOW + 1))
    end = min(total, start + WINDOW - 1)
    print(f"[File: {path} ({total} lines total)]")
    if start > 1:
        print(f"({start - 1} more lines above)")
    for n in range(start, end + 1):
        print(f"{n}:{lines[n - 1]}")
    if end < total:
        print(f"({total - end} more lines below)")
    return start


def require_open(state):
    path = state.get("open_file")
    if not path or not os.path.isfile(path):
        fail("No file open. Use the open command first.")
    return path


def parse_line(text, what="line number"):
    try:
        return int(text)
    except ValueError:
        fail(f"Usage error: the {what} must be an integer, got {text!r}")


def cmd_open(state, args):
    if not args or len(args) > 2:
        fail('Usage: open "<file>" [<line_number>]')
    path = os.path.abspath(args[0])
    if os.path.isdir(path):
        fail(f"Error: {path} is a directory. You can only open files. Use cd or ls to navigate directories.")
    if not os.path.isfile(path):
        fail(f"File {args[0]} not found")
    lines = read_lines(path)
    line = parse_line(args[1]) if len(args) == 2 else 1
    if not 1 <= line <= len(lines):
        fail(f"Error: <line_number> must be between 1 and {len(lines)}")
    state.update(open_file=path, line=line)
    window(path, lines, line if len(args) == 2 else WINDOW // 2)


def cmd_goto(state, args):
    if len(args) != 1:
        fail("Usage: goto <line_number>")
    path = require_open(state)
    lines = read_lines(path)
    line = parse_line(args[0])
    if not 1 <= line <= len(lines):
        fail(f"Error: <line_number> must be between 1 and {len(lines)}")
    state["line"] = line
    window(path, lines, line)


def cmd_scroll(state, direction):
    path = require_open(state)
    lines = read_lines(path)
    line = max(1, min(len(lines), state.get("line", 1) + direction * WINDOW))
    state["line"] = line
    window(path, lines, line)


def cmd_create(state, args):
    if len(args) != 1:
        fail("Usage: create <filename>")
    path = os.path.abspath(args[0])
    if os.path.exists(path):
        fail(f"Error: File '{args[0]}' already exists.")
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    write_lines(path, [""])
    state.update(open_file=path, line=1)
    window(path, [""], 1)


def compile_error(path, lines):
    """The syntax error of a Python file with these lines, or None."""
    if not path.endswith(".py"):
        return None
    try:
        compile("\n".join(lines), path, "exec")
        return None
    except SyntaxError as e:
        return f"E999 SyntaxError: {e.msg} (line {e.lineno})"
    except ValueError as e:
        return f"E902 {e}"


def apply_change(state, path, old, new, first_changed):
    """Writes `new` unless it breaks a Python file that compiled; shows the result."""
    error = compile_error(path, new)
    if error and not compile_error(path, old):
        print("Your proposed edit has introduced new syntax error(s). Please read this error message carefully and then retry editing the file.")
        print("ERRORS:")
        print(f"- {error}")
        print("This is how your edit would have looked if applied")
        print("-------------------------------------------------")
        window(path, new, first_changed)
        print("-------------------------------------------------")
        print("This is the original code before your edit")
        print("-------------------------------------------------")
        window(path, old, first_changed)
        print("-------------------------------------------------")
        print("Your changes have NOT been applied. Please fix your edit command and try again.")
        sys.exit(1)
    write_lines(path, new)
    state["line"] = first_changed
    window(path, new, first_changed)
    print("File updated. Please review the changes and make sure they are correct (correct indentation, no duplicate lines, etc). Edit the file again if necessary.")


def replacement_text():
    text = sys.stdin.read()
    if text.endswith("\n"):
        text = text[:-1]
    return text.split("\n") if text else []


def cmd_edit(state, args):
    if len(args) != 1 or ":" not in args[0]:
        fail("Usage: edit <start_line>:<end_line>, then the new lines, then end_of_edit")
    start_text, end_text = args[0].split(":", 1)
    start, end = parse_line(start_text, "start line"), parse_line(end_text, "end line")
    path = require_open(state)
    old = read_lines(path)
    if not (1 <= start <= len(old) + 1 and start - 1 <= end <= len(old)):
        fail(f"Error: the range {start}:{end} is outside the file's {len(old)} lines (end may be start-1 to insert)")
    new = old[: start - 1] + replacement_text() + old[end:]
    apply_change(state, path, old, new, start)


def cmd_insert(state, args):
    if len(args) != 1:
        fail("Usage: insert <line_number>, then the new lines, then end_of_insert")
    after = parse_line(args[0])
    path = require_open(state)
    old = read_lines(path)
    if not 0 <= after <= len(old):
        fail(f"Error: <line_number> must be between 0 and {len(old)}")
    new = old[:after] + replacement_text() + old[after:]
    apply_change(state, path, old, new, after + 1)


def text_files(root):
    for base, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith("."):
                yield os.path.join(base, name)


def count_in(path, term):
    try:
        with open(path, encoding="utf-8", errors="strict") as f:
            return sum(line.count(term) for line in f)
    except (OSError, UnicodeDecodeError):
        return 0


def print_matches(term, where, count, lines):
    """Search results in MLGym's layout: a header with the count, one line per hit, a footer."""
    if not lines:
        print(f'No matches found for "{term}" in {where}')
        return
    print(f'Found {count} matches for "{term}" in {where}:')
    for line in lines:
        print(line)
    print(f'End of matches for "{term}" in {where}')


def cmd_search_dir(state, args):
    if not 1 <= len(args) <= 2:
        fail("Usage: search_dir <search_term> [<dir>]")
    term, root = args[0], os.path.abspath(args[1] if len(args) == 2 else ".")
    if not os.path.isdir(root):
        fail(f"Directory {root} not found")
    hits = [(p, n) for p in text_files(root) for n in [count_in(p, term)] if n > 0]
    if len(hits) > MAX_LISTED_FILES:
        fail(f'More than {MAX_LISTED_FILES} files matched for "{term}" in {root}. Please narrow your search.')
    print_matches(term, root, sum(n for _, n in hits), [f"{p} ({n} matches)" for p, n in hits])


def cmd_search_file(state, args):
    if not 1 <= len(args) <= 2:
        fail("Usage: search_file <search_term> [<file>]")
    term = args[0]
    path = os.path.abspath(args[1]) if len(args) == 2 else require_open(state)
    if not os.path.isfile(path):
        fail(f"Error: File name {args[1]} not found. Please provide a valid file name.")
    hits = [f"Line {i}:{line}" for i, line in enumerate(read_lines(path), 1) if term in line]
    print_matches(term, path, len(hits), hits)


def cmd_find_file(state, args):
    if not 1 <= len(args) <= 2:
        fail("Usage: find_file <file_name> [<dir>]")
    pattern, root = args[0], os.path.abspath(args[1] if len(args) == 2 else ".")
    if not os.path.isdir(root):
        fail(f"Directory {root} not found")
    found = [p for p in text_files(root) if fnmatch.fnmatch(os.path.basename(p), pattern)]
    print_matches(pattern, root, len(found), found)


def cmd_state(state, args):
    print(json.dumps({"open_file": state.get("open_file") or "n/a", "working_dir": os.getcwd()}))


COMMANDS = {
    "open": cmd_open,
    "goto": cmd_goto,
    "scroll_down": lambda s, a: cmd_scroll(s, 1),
    "scroll_up": lambda s, a: cmd_scroll(s, -1),
    "create": cmd_create,
    "edit": cmd_edit,
    "insert": cmd_insert,
    "search_dir": cmd_search_dir,
    "search_file": cmd_search_file,
    "find_file": cmd_find_file,
    "state": cmd_state,
}


def main():
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        fail(f"unknown command; known: {', '.join(sorted(COMMANDS))}")
    state = load_state()
    try:
        COMMANDS[sys.argv[1]](state, sys.argv[2:])
    finally:
        save_state(state)


if __name__ == "__main__":
    main()
