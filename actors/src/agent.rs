//! The MLGym agent protocol: the command set shown to the model, how an answer is parsed into a
//! thought and one command, and the texts the agent sees around observations.
//!
//! The file commands (`open` ... `find_file`) run in the rollout's shell as functions of
//! `config/agent/commands.sh`; `validate` and `submit` are handled by the rollout itself; any
//! other command goes to bash.

use std::time::Duration;

/// One command of the agent's interface, as documented to the model.
pub struct CommandDoc {
    pub name: &'static str,
    pub signature: &'static str,
    pub docstring: &'static str,
    /// `(name, type, required, description)`.
    pub arguments: &'static [(&'static str, &'static str, bool, &'static str)],
}

/// The agent's commands. The system prompt's `{{command_docs}}` is generated from this table.
pub const COMMANDS: &[CommandDoc] = &[
    CommandDoc {
        name: "open",
        signature: "open \"<path>\" [<line_number>]",
        docstring: "shows the file at the given path in the editor window, starting near line_number if given",
        arguments: &[
            ("path", "string", true, "the file to open"),
            ("line_number", "integer", false, "the line to show (default: the top of the file)"),
        ],
    },
    CommandDoc {
        name: "goto",
        signature: "goto <line_number>",
        docstring: "moves the editor window of the open file to show the given line",
        arguments: &[("line_number", "integer", true, "the line to show")],
    },
    CommandDoc {
        name: "scroll_down",
        signature: "scroll_down",
        docstring: "moves the editor window down by one window of lines",
        arguments: &[],
    },
    CommandDoc {
        name: "scroll_up",
        signature: "scroll_up",
        docstring: "moves the editor window up by one window of lines",
        arguments: &[],
    },
    CommandDoc {
        name: "create",
        signature: "create <filename>",
        docstring: "creates an empty file with the given name and opens it",
        arguments: &[("filename", "string", true, "the file to create")],
    },
    CommandDoc {
        name: "edit",
        signature: "edit <start_line>:<end_line>\n<replacement_text>\nend_of_edit",
        docstring: "replaces lines start_line to end_line (inclusive) of the open file with the replacement text, which ends at a line \
                    holding only end_of_edit. Mind the indentation. An edit that leaves a Python file unable to compile is not applied, \
                    and the error is shown",
        arguments: &[
            ("start_line", "integer", true, "the first line to replace"),
            ("end_line", "integer", true, "the last line to replace (start_line - 1 inserts before start_line)"),
            ("replacement_text", "string", true, "the new lines"),
        ],
    },
    CommandDoc {
        name: "insert",
        signature: "insert <line_number>\n<text_to_add>\nend_of_insert",
        docstring: "inserts the text after the given line of the open file (0: at the top); the text ends at a line holding only \
                    end_of_insert. Same compile check as edit",
        arguments: &[("line_number", "integer", true, "the line after which to insert"), ("text_to_add", "string", true, "the new lines")],
    },
    CommandDoc {
        name: "search_dir",
        signature: "search_dir <search_term> [<dir>]",
        docstring: "lists the files under dir (default: the current directory) that contain search_term, with match counts",
        arguments: &[("search_term", "string", true, "the text to look for"), ("dir", "string", false, "where to look")],
    },
    CommandDoc {
        name: "search_file",
        signature: "search_file <search_term> [<file>]",
        docstring: "lists the lines of file (default: the open file) that contain search_term",
        arguments: &[("search_term", "string", true, "the text to look for"), ("file", "string", false, "the file to search")],
    },
    CommandDoc {
        name: "find_file",
        signature: "find_file <file_name> [<dir>]",
        docstring: "lists the files under dir (default: the current directory) whose name matches file_name (shell wildcards allowed)",
        arguments: &[("file_name", "string", true, "the name or pattern"), ("dir", "string", false, "where to look")],
    },
    CommandDoc {
        name: "validate",
        signature: "validate",
        docstring: "scores your current submission file on the test set and shows it next to the baseline's score",
        arguments: &[],
    },
    CommandDoc { name: "submit", signature: "submit", docstring: "submits your current work and ends the session", arguments: &[] },
];

/// The command documentation inserted into the system prompt, in MLGym's layout.
pub fn command_docs() -> String {
    let mut out = String::new();
    for c in COMMANDS {
        out.push_str(&format!("{}:\n  docstring: {}\n  signature: {}\n", c.name, c.docstring, c.signature));
        if !c.arguments.is_empty() {
            out.push_str("  arguments:\n");
            for (name, kind, required, text) in c.arguments {
                let req = if *required { "required" } else { "optional" };
                out.push_str(&format!("    - {name} ({kind}) [{req}]: {text}\n"));
            }
        }
        out.push('\n');
    }
    out.push_str("Any other command is run by bash in your persistent shell, which starts in the workspace (/home/agent/workspace).");
    out
}

/// What to run for an action in the shell: multi-line `edit` and `insert` commands become
/// here-documents. `Err` is the observation for a malformed one.
pub fn shell_command(action: &str) -> Result<String, String> {
    let first = action.lines().next().unwrap_or("").trim();
    for (command, terminator) in [("edit", "end_of_edit"), ("insert", "end_of_insert")] {
        if first.split_whitespace().next() != Some(command) {
            continue;
        }
        let lines: Vec<&str> = action.trim_end().lines().collect();
        if lines.len() < 2 || lines.last().map(|l| l.trim()) != Some(terminator) {
            return Err(format!(
                "Malformed {command} command. The command must be followed by the new lines and end with a line holding only {terminator}."
            ));
        }
        let body = lines[1..lines.len() - 1].join("\n");
        return Ok(format!("{first} << '{terminator}'\n{body}\n{terminator}\n"));
    }
    Ok(action.to_string())
}

/// Format errors tolerated per step before the run ends with `exit_format`.
pub const MAX_FORMAT_ERRORS: u32 = 3;
/// Observations longer than this are cut to head and tail.
pub const MAX_OBSERVATION_CHARS: usize = 10_000;

/// Commands that run training get the task's training timeout instead of the short one.
pub const TRAINING_COMMANDS: [&str; 5] = ["python", "python3", "torchrun", "accelerate", "deepspeed"];

/// The message sent back when an answer does not hold exactly one command.
pub fn format_error(problem: &str) -> String {
    format!(
        "Your output was not formatted correctly: {problem}. You must always include one discussion and one \
         command as part of your response: a line DISCUSSION with your reasoning, then exactly one fenced \
         code block holding exactly one command. Try again."
    )
}

/// Splits a model answer into its thought (everything outside the command) and its action.
/// The action is the last fenced code block, whatever its info string (SWE-agent's rule, so an
/// example block before the command does no harm); without a fence, a `<bash>` or `<command>`
/// tag holds it. The command may come before the prose.
pub fn parse_action(response: &str) -> Result<(String, String), String> {
    if response.trim().is_empty() {
        return Err("the answer is empty".into());
    }
    let lines: Vec<&str> = response.lines().collect();
    let fences: Vec<usize> = lines.iter().enumerate().filter(|(_, l)| l.trim_start().starts_with("```")).map(|(i, _)| i).collect();
    if fences.is_empty() {
        return tagged_action(response).unwrap_or_else(|| Err("the answer has no fenced code block".into()));
    }
    if fences.len() % 2 == 1 {
        return Err("a code block is not closed".into());
    }
    let (open, close) = (fences[fences.len() - 2], fences[fences.len() - 1]);
    let action = lines[open + 1..close].join("\n");
    if action.trim().is_empty() {
        return Err("the code block is empty".into());
    }
    let mut thought_lines: Vec<&str> = lines[..open].to_vec();
    thought_lines.extend_from_slice(&lines[close + 1..]);
    let thought = thought_lines.join("\n").trim().to_string();
    Ok((thought, format!("{}\n", action.trim_end())))
}

/// The command in a `<bash>...</bash>` or `<command>...</command>` tag, with the text around it
/// as the thought. `None` when there is no such tag.
fn tagged_action(response: &str) -> Option<Result<(String, String), String>> {
    for tag in ["bash", "command"] {
        let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
        let Some(start) = response.rfind(&open) else { continue };
        let Some(len) = response[start..].find(&close) else {
            return Some(Err(format!("the {open} tag is not closed")));
        };
        let action = response[start + open.len()..start + len].trim_matches(['\n', '\r']);
        if action.trim().is_empty() {
            return Some(Err(format!("the {open} tag is empty")));
        }
        let thought = format!("{}\n{}", &response[..start], &response[start + len + close.len()..]).trim().to_string();
        return Some(Ok((thought, format!("{}\n", action.trim_end()))));
    }
    None
}

/// The footer MLGym appends to every user message.
pub fn footer(step: u32, max_steps: u32, open_file: &str, cwd: &str) -> String {
    format!(
        "(Current Step: {step}, Remaining Steps: {})\n(Open file: {open_file})\n(Current directory: {cwd})\nbash-$",
        max_steps.saturating_sub(step)
    )
}

/// The timeout of a shell command: long for training commands, short otherwise.
pub fn command_timeout(action: &str, short: Duration, training: Duration) -> Duration {
    let runs_training = action
        .split(|c: char| c.is_whitespace() || c == ';' || c == '&' || c == '|' || c == '(')
        .any(|word| TRAINING_COMMANDS.contains(&word));
    if runs_training { training } else { short }
}

/// The special command an action names, if any.
pub fn special_command(action: &str) -> Option<&'static str> {
    match action.trim() {
        "validate" => Some("validate"),
        "submit" => Some("submit"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_one_command_and_the_thought() {
        let (thought, action) = parse_action("DISCUSSION\nLook first.\n\n```bash\nls -la\n```\n").unwrap();
        assert_eq!(thought, "DISCUSSION\nLook first.");
        assert_eq!(action, "ls -la\n");
    }

    #[test]
    fn rejects_missing_or_extra_blocks() {
        assert!(parse_action("just talk").unwrap_err().contains("no fenced"));
        assert!(parse_action("```\nls\n").unwrap_err().contains("not closed"));
        assert!(parse_action("```\n\n```").unwrap_err().contains("empty"));
        assert!(parse_action("<bash>\n</bash>").unwrap_err().contains("empty"));
        assert!(parse_action("<bash>ls").unwrap_err().contains("not closed"));
    }

    #[test]
    fn the_last_code_block_is_the_command() {
        let (thought, action) = parse_action("For example:\n```\necho example\n```\nSo I run:\n```bash\npwd\n```").unwrap();
        assert_eq!(action, "pwd\n");
        assert!(thought.contains("echo example") && thought.contains("So I run:"), "{thought}");
    }

    #[test]
    fn a_bash_tag_or_a_command_first_answer_is_read() {
        assert_eq!(
            parse_action("DISCUSSION\nList.\n<bash>\nls -la\n</bash>").unwrap(),
            ("DISCUSSION\nList.".to_string(), "ls -la\n".to_string())
        );
        assert_eq!(parse_action("<command>cat a.py</command>").unwrap().1, "cat a.py\n");
        let (thought, action) = parse_action("```\nls\n```\nDISCUSSION\nI list the files first.").unwrap();
        assert_eq!((thought.as_str(), action.as_str()), ("DISCUSSION\nI list the files first.", "ls\n"));
        assert_eq!(parse_action("DISCUSSION\r\nCRLF.\r\n```\r\nls\r\n```\r\n").unwrap().1, "ls\n");
    }

    #[test]
    fn training_commands_get_the_long_timeout() {
        let (s, t) = (Duration::from_secs(25), Duration::from_secs(600));
        assert_eq!(command_timeout("python train.py", s, t), t);
        assert_eq!(command_timeout("cd src && python3 x.py", s, t), t);
        assert_eq!(command_timeout("cat python_notes.txt", s, t), s);
        assert_eq!(command_timeout("ls", s, t), s);
    }

    #[test]
    fn footer_counts_down() {
        let f = footer(3, 10, "/w/train.py", "/w");
        assert!(f.starts_with("(Current Step: 3, Remaining Steps: 7)\n(Open file: /w/train.py)"), "{f}");
    }

    #[test]
    fn edits_become_here_documents_and_malformed_ones_are_refused() {
        assert_eq!(
            shell_command("edit 2:3\nx = 1\n    y = 2\nend_of_edit\n").unwrap(),
            "edit 2:3 << 'end_of_edit'\nx = 1\n    y = 2\nend_of_edit\n"
        );
        assert_eq!(shell_command("insert 0\n# top\nend_of_insert").unwrap(), "insert 0 << 'end_of_insert'\n# top\nend_of_insert\n");
        assert!(shell_command("edit 2:3\nx = 1\n").unwrap_err().contains("Malformed edit"));
        assert_eq!(shell_command("ls -la\n").unwrap(), "ls -la\n");
        assert_eq!(shell_command("editor_notes.sh\n").unwrap(), "editor_notes.sh\n", "only the edit command itself");
    }

    #[test]
    fn command_docs_cover_the_whole_table() {
        let docs = command_docs();
        for c in COMMANDS {
            assert!(docs.contains(&format!("{}:\n  docstring: ", c.name)), "{}", c.name);
        }
        assert!(docs.contains("    - line_number (integer) [optional]"));
    }
}
