//! Progress display for long work: bars on a terminal, plain log lines otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use gymforge_actors::Progress;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Shows setup status and pipeline progress until finished.
pub struct Display {
    tty: bool,
    bars: MultiProgress,
    status: ProgressBar,
    tasks: ProgressBar,
    rollouts: ProgressBar,
}

impl Display {
    pub fn new() -> Display {
        let tty = std::io::stderr().is_terminal();
        let bars = MultiProgress::with_draw_target(if tty { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() });
        let status = bars.add(ProgressBar::new_spinner());
        status.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
        if tty {
            status.enable_steady_tick(Duration::from_millis(120));
        }
        let bar_style = ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} {elapsed_precise}")
            .expect("valid template")
            .progress_chars("=> ");
        let tasks = ProgressBar::new(0).with_style(bar_style.clone()).with_prefix("tasks");
        let rollouts = ProgressBar::new(0).with_style(bar_style).with_prefix("rollouts");
        Display { tty, bars, status, tasks, rollouts }
    }

    /// A one-line status of setup work (provisioning, mirror build, ...).
    pub fn status(&self, message: &str) {
        let line: String = message.chars().take(120).collect();
        if self.tty {
            self.status.set_message(line);
        } else {
            eprintln!("gymforge: {line}");
        }
    }

    /// Follows pipeline progress until the sender is dropped or reports the run finished.
    pub async fn follow(&self, mut rx: tokio::sync::watch::Receiver<Progress>) {
        let mut last_line = String::new();
        let mut last_print = Instant::now() - Duration::from_secs(60);
        loop {
            let snapshot = rx.borrow_and_update().clone();
            let line = render(&snapshot);
            // Until the pipeline reports a unit (setup is still running) there is nothing to show.
            let shown = has_started(&snapshot);
            if shown && self.tty {
                if self.tasks.length() == Some(0) {
                    self.bars.insert_before(&self.status, self.tasks.clone());
                    self.bars.insert_before(&self.status, self.rollouts.clone());
                }
                // Without a target the bar's length follows what was accepted.
                self.tasks.set_length(u64::from(snapshot.target_tasks.max(snapshot.accepted_tasks)).max(1));
                self.tasks.set_position(u64::from(snapshot.accepted_tasks));
                self.rollouts.set_length(u64::from(snapshot.rollouts_total).max(1));
                self.rollouts.set_position(u64::from(snapshot.rollouts_done));
                self.status.set_message(stage_line(&snapshot));
            } else if shown && !self.tty && line != last_line && last_print.elapsed() >= Duration::from_secs(2) {
                eprintln!("gymforge: {line}");
                last_print = Instant::now();
                last_line = line;
            }
            if snapshot.finished || rx.changed().await.is_err() {
                break;
            }
        }
    }

    pub fn finish(&self) {
        self.tasks.finish_and_clear();
        self.rollouts.finish_and_clear();
        self.status.finish_and_clear();
    }
}

impl Default for Display {
    fn default() -> Self {
        Display::new()
    }
}

/// Whether a snapshot reports pipeline work: some unit was created (queued, in flight, passed,
/// dropped, accepted, or a rollout). The initial snapshot, before the pipeline runs, does not.
pub fn has_started(p: &Progress) -> bool {
    p.accepted_tasks > 0
        || p.rollouts_total > 0
        || p.worker_restarts > 0
        || p.stages.iter().any(|(_, c)| c.queued + c.in_flight + c.passed + c.dropped > 0)
}

/// One line: accepted tasks, rollouts, and per stage in-flight/queued/dropped counts.
pub fn render(p: &Progress) -> String {
    let target = if p.target_tasks == 0 { "∞".to_string() } else { p.target_tasks.to_string() };
    format!("tasks {}/{target} | rollouts {}/{} | {}", p.accepted_tasks, p.rollouts_done, p.rollouts_total, stage_line(p))
}

/// Per stage: units in flight (▶), queued (…) and dropped (✗).
fn stage_line(p: &Progress) -> String {
    let mut parts = Vec::new();
    for (stage, c) in &p.stages {
        if c.in_flight + c.queued + c.dropped > 0 {
            let mut s = format!("{stage} {}▶", c.in_flight);
            if c.queued > 0 {
                s.push_str(&format!(" {}…", c.queued));
            }
            if c.dropped > 0 {
                s.push_str(&format!(" {}✗", c.dropped));
            }
            parts.push(s);
        }
    }
    if p.worker_restarts > 0 {
        parts.push(format!("restarts {}", p.worker_restarts));
    }
    parts.join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use gymforge_actors::{Stage, pipeline::StageCounts};

    #[test]
    fn progress_is_shown_once_a_unit_exists() {
        assert!(!has_started(&Progress::default()), "the initial snapshot");
        let idle: Vec<_> = Stage::ALL.iter().map(|&s| (s, StageCounts::default())).collect();
        let waiting = Progress { stages: idle.clone(), target_tasks: 3, ..Default::default() };
        assert!(!has_started(&waiting), "the pipeline's first snapshot, before any unit: {}", render(&waiting));
        let mut queued = waiting.clone();
        queued.stages[0].1.queued = 1;
        assert!(has_started(&queued));
        // A resumed run whose units were all finished before.
        let resumed =
            Progress { stages: idle, target_tasks: 3, accepted_tasks: 3, rollouts_total: 6, rollouts_done: 6, ..Default::default() };
        assert!(has_started(&resumed));
    }
}
