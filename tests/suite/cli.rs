//! The command line as a user meets it: the built binary, its exit status and what it prints.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mlgym-results")
}

/// Runs gymforge with its stdout a pipe whose reader has already gone; returns the exit status
/// and stderr.
fn run_into_closed_pipe(args: &[&str]) -> (std::process::ExitStatus, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = Command::new(env!("CARGO_BIN_EXE_gymforge"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (output.status, String::from_utf8_lossy(&output.stderr).into_owned())
}

#[test]
fn aup_into_a_closed_pipe_ends_quietly() {
    let fx = fixtures();
    let best = fx.join("best_scores_aggregate_results.csv");
    let last = fx.join("last_scores_aggregate_results.csv");
    let directions = fx.join("directions.csv");
    let tables = ["aup", "--best", best.to_str().unwrap(), "--last", last.to_str().unwrap(), "--directions", directions.to_str().unwrap()];
    for json in [false, true] {
        let mut args = tables.to_vec();
        if json {
            args.push("--json");
        }
        let (status, stderr) = run_into_closed_pipe(&args);
        assert!(!stderr.contains("panic"), "json {json}: {stderr}");
        assert!(status.success(), "json {json}: {status}: {stderr}");
        assert!(stderr.is_empty(), "json {json}: nothing is said about the reader going away: {stderr}");
    }
}

#[test]
fn a_count_that_is_not_a_whole_number_is_named_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    for (args, expected) in [
        (&["run", "--tasks", "-1"][..], "error: --tasks must be a whole number, 0 or more (0: no target), not -1"),
        (&["run", "--rollouts", "-1"][..], "error: --rollouts must be a whole number, 1 or more, not -1"),
        (&["run", "--rollouts", "0"][..], "error: --rollouts must be a whole number, 1 or more, not 0"),
        (&["run", "--tasks", "two"][..], "error: --tasks must be a whole number, 0 or more (0: no target), not two"),
        (&["daemon", "--tasks", "-3"][..], "error: --tasks must be a whole number, 0 or more (0: no target), not -3"),
        (&["daemon", "--rollouts", "-2"][..], "error: --rollouts must be a whole number, 1 or more, not -2"),
    ] {
        let out = dir.path().join("out");
        let output = Command::new(env!("CARGO_BIN_EXE_gymforge"))
            .args(args)
            .arg("--out")
            .arg(&out)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.trim_end(), expected, "{args:?}");
        assert!(output.stdout.is_empty(), "{args:?}");
        assert!(!out.exists(), "{args:?}: nothing runs");
    }
}
