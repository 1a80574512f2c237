//! Progress display for long work: bars on a terminal, plain log lines otherwise.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use gymforge_actors::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Shows setup status and pipeline progress until dropped.
pub struct Display {
    tty: bool,
    status: ProgressBar,
}

impl Display {
    pub fn new() -> Display {
        let tty = std::io::stderr().is_terminal();
        let status = if tty {
            let bar = ProgressBar::new_spinner();
            bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        } else {
            ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden())
        };
        Display { tty, status }
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
            if self.tty {
                self.status.set_message(line.clone());
            } else if line != last_line && last_print.elapsed() >= Duration::from_secs(2) {
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
        self.status.finish_and_clear();
    }
}

impl Default for Display {
    fn default() -> Self {
        Display::new()
    }
}

/// One line: accepted tasks, rollouts, and per stage in-flight/queued counts.
pub fn render(p: &Progress) -> String {
    let mut parts = vec![
        format!("tasks {}/{}", p.accepted_tasks, p.target_tasks),
        format!("rollouts {}/{}", p.rollouts_done, p.rollouts_total),
    ];
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
