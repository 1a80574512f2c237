# The agent's commands in its persistent shell: each runs commands.py (beside this file) with
# the sandbox's Python. Sourced once when a rollout's shell starts.
_gymforge_commands() { python3 "${GYMFORGE_COMMANDS:?}/commands.py" "$@"; }
open() { _gymforge_commands open "$@"; }
goto() { _gymforge_commands goto "$@"; }
scroll_down() { _gymforge_commands scroll_down "$@"; }
scroll_up() { _gymforge_commands scroll_up "$@"; }
create() { _gymforge_commands create "$@"; }
edit() { _gymforge_commands edit "$@"; }
insert() { _gymforge_commands insert "$@"; }
search_dir() { _gymforge_commands search_dir "$@"; }
search_file() { _gymforge_commands search_file "$@"; }
find_file() { _gymforge_commands find_file "$@"; }
_gymforge_state() { _gymforge_commands state; }
