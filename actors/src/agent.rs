//! The MLGym agent protocol: the command set shown to the model, how an answer is parsed into a
//! thought and one command, and the texts the agent sees around observations.

use std::time::Duration;

/// Documentation of the special commands, inserted into the system prompt.
pub const COMMAND_DOCS: &str = "validate:
  docstring: validates your current submission file and returns the metrics on the test set
  signature: validate

submit:
  docstring: submits your current code and terminates the session
  signature: submit

Any other command is run by bash in the workspace (/home/agent/workspace).";

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

/// Splits a model answer into its thought (everything outside the code block) and its action
/// (the content of the single fenced code block).
pub fn parse_action(response: &str) -> Result<(String, String), String> {
    let lines: Vec<&str> = response.lines().collect();
    let fences: Vec<usize> = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| l.trim_start().starts_with("```"))
        .map(|(i, _)| i)
        .collect();
    match fences.len() {
        0 => return Err("the answer has no fenced code block".into()),
        2 => {}
        1 => return Err("the code block is not closed".into()),
        _ => return Err("the answer has more than one code block".into()),
    }
    let (open, close) = (fences[0], fences[1]);
    let action = lines[open + 1..close].join("\n");
    if action.trim().is_empty() {
        return Err("the code block is empty".into());
    }
    let mut thought_lines: Vec<&str> = lines[..open].to_vec();
    thought_lines.extend_from_slice(&lines[close + 1..]);
    let thought = thought_lines.join("\n").trim().to_string();
    Ok((thought, format!("{}\n", action.trim_end())))
}

/// The footer MLGym appends to every user message.
pub fn footer(step: u32, max_steps: u32, cwd: &str) -> String {
    format!(
        "(Current Step: {step}, Remaining Steps: {})\n(Open file: n/a)\n(Current directory: {cwd})\nbash-$",
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
        assert!(parse_action("```\nls\n```\n```\npwd\n```").unwrap_err().contains("more than one"));
        assert!(parse_action("```\nls\n").unwrap_err().contains("not closed"));
        assert!(parse_action("```\n\n```").unwrap_err().contains("empty"));
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
        assert!(footer(3, 10, "/w").starts_with("(Current Step: 3, Remaining Steps: 7)"));
    }
}
