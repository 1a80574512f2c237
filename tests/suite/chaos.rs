//! Nothing lost, nothing duplicated: a daemon killed with SIGKILL at random moments, several
//! times during one batch, ends (after its last restart) with exactly the accepted tasks,
//! trajectories and SFT data of an undisturbed run with the same seed.

use crate::common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{accepted_tasks, actions, files_under};

const BATCH: [&str; 4] = ["--tasks", "2", "--rollouts", "2"];
const KILLS: usize = 4;

fn gymforge() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gymforge"));
    cmd.env("RUST_LOG", "warn").env_remove("RUST_BACKTRACE").stdin(Stdio::null());
    cmd
}

fn run_to_end(out: &Path) {
    let output = gymforge().arg("run").args(BATCH).arg("--out").arg(out).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// Stage results stored so far (the daemon writes them; reading needs no lock).
fn stored_results(out: &Path) -> usize {
    let db = out.join(".gymforge/state.db");
    if !db.is_file() {
        return 0;
    }
    let conn = rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    conn.query_row("SELECT COUNT(*) FROM stage_results", [], |r| r.get::<_, i64>(0)).unwrap_or(0) as usize
}

#[test]
fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (calm, killed) = (dir.path().join("calm"), dir.path().join("killed"));
    run_to_end(&calm);

    // A random moment: after the daemon has stored at least one more stage result than at the
    // last kill (so every kill interrupts real work), plus a random extra delay. The seed is
    // printed so a failure can be replayed.
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
    println!("kill schedule seed: {seed}");
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for kill in 1..=KILLS {
        let before = stored_results(&killed);
        let mut daemon = gymforge()
            .arg("daemon")
            .args(BATCH)
            .args(["--listen", "127.0.0.1:0", "--out"])
            .arg(&killed)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map(common::Reaped)
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(600);
        while stored_results(&killed) <= before {
            assert!(Instant::now() < deadline, "the daemon made no progress after restart {kill}");
            assert!(daemon.try_wait().unwrap().is_none(), "the daemon exited before kill {kill}");
            std::thread::sleep(Duration::from_millis(100));
        }
        let extra = Duration::from_millis(next() % 4000);
        std::thread::sleep(extra);
        daemon.kill().unwrap(); // SIGKILL
        daemon.wait().unwrap();
        println!("kill {kill}: after {} stored stage results (+{} ms)", stored_results(&killed), extra.as_millis());
    }
    run_to_end(&killed);

    assert_eq!(accepted_tasks(&killed), accepted_tasks(&calm), "the same accepted tasks");
    let (got, want) = (actions(&killed), actions(&calm));
    assert_eq!(got.len(), 4, "two tasks with two trajectories each: {:?}", got.keys());
    assert_eq!(got, want, "the same trajectories, step by step, with the same scores");
    let sft = |out: &Path| std::fs::read_to_string(out.join("sft/train.jsonl")).unwrap();
    assert_eq!(sft(&killed), sft(&calm), "the same SFT data");
    let lines: Vec<String> = sft(&killed).lines().map(str::to_string).collect();
    assert_eq!(lines.iter().collect::<BTreeSet<_>>().len(), lines.len(), "no SFT line twice");
    let state = killed.join(".gymforge");
    let leftovers: Vec<_> = files_under(&killed)
        .into_iter()
        .filter(|p| !p.starts_with(&state) && p.file_name().is_some_and(|n| n.to_string_lossy().contains(".tmp")))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");

    // Every unit was claimed once per stage in the undisturbed run, and at most once per stage
    // by each process of the killed one (a restart takes over only what the killed process held).
    let claims = |out: &Path| gymforge::store::SqliteStore::open(&out.join(".gymforge/state.db")).unwrap().claim_history().unwrap();
    let calm_claims = claims(&calm);
    let calm_set: BTreeSet<(String, String)> = calm_claims.iter().map(|(u, s, _)| (u.clone(), s.clone())).collect();
    assert_eq!(calm_set.len(), calm_claims.len(), "a unit claimed twice at a stage: {calm_claims:?}");
    let killed_claims = claims(&killed);
    let per_process: BTreeSet<&(String, String, String)> = killed_claims.iter().collect();
    assert_eq!(per_process.len(), killed_claims.len(), "a process claimed a unit twice at a stage: {killed_claims:?}");
    let killed_set: BTreeSet<(String, String)> = killed_claims.iter().map(|(u, s, _)| (u.clone(), s.clone())).collect();
    assert_eq!(killed_set, calm_set, "the same units were worked on at the same stages");
}
