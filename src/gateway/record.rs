//! Record and replay. `--record FILE` appends one JSON line per HTTP exchange with an endpoint
//! (request body, status, response body, or the transport error); the API key is never in a
//! request body and is redacted from responses before they are written. `--replay FILE`
//! answers each request from the file instead of the network, so a run can be reproduced.
//!
//! Replay matches by position, not by content: the n-th successful answer recorded for a
//! (endpoint, stage, unit) is the answer to that unit's n-th request at that stage. A replayed
//! request whose body differs from the recorded one is answered anyway and counted as a
//! mismatch (the run diverged, e.g. because a sandbox printed timings).

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;

use super::lock;
use gymforge_actors::Stage;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One exchange with an endpoint.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub struct Exchange {
    /// Unix milliseconds when the request was sent.
    pub at_ms: u64,
    pub endpoint: String,
    pub stage: Stage,
    pub unit: String,
    /// 1 for the first try of a request, 2 for its first retry, ...
    pub attempt: u32,
    pub request: Value,
    /// HTTP status, absent when the transport failed.
    pub status: Option<u16>,
    /// Response body (JSON when it parses, else the text).
    pub response: Option<Value>,
    pub error: Option<String>,
    pub latency_ms: u64,
}

/// Appends exchanges to a JSONL file, one line each, flushed as written.
pub struct Recorder {
    path: PathBuf,
    file: Mutex<File>,
}

impl Recorder {
    pub fn create(path: &Path) -> anyhow::Result<Recorder> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("cannot open the record file {}", path.display()))?;
        Ok(Recorder { path: path.to_path_buf(), file: Mutex::new(file) })
    }

    pub fn append(&self, exchange: &Exchange) {
        let mut line = serde_json::to_string(exchange).expect("an exchange serialises");
        line.push('\n');
        let mut file = lock(&self.file);
        // One write per line: concurrent appends never interleave within a line.
        if let Err(e) = file.write_all(line.as_bytes()) {
            tracing::error!(path = %self.path.display(), error = %e, "cannot append to the record file");
        }
    }
}

/// Recorded `(request, response body)` pairs of one (endpoint, stage, unit), in order.
type Answers = HashMap<(String, Stage, String), VecDeque<(Value, String)>>;

/// Answers requests from a recorded file.
pub struct Replayer {
    answers: Mutex<Answers>,
    pub mismatches: AtomicU64,
    pub answered: AtomicU64,
}

/// What replay found for a request.
pub enum Replayed {
    /// The recorded response body.
    Body(String),
    /// Nothing was recorded for this request.
    Missing,
}

impl Replayer {
    pub fn load(path: &Path) -> anyhow::Result<Replayer> {
        let file = File::open(path).with_context(|| format!("cannot open the replay file {}", path.display()))?;
        let mut answers = Answers::new();
        for (n, line) in BufReader::new(file).lines().enumerate() {
            let line = line.with_context(|| format!("cannot read {}", path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            let x: Exchange =
                serde_json::from_str(&line).with_context(|| format!("{} line {}: not a recorded exchange", path.display(), n + 1))?;
            if let (Some(200..=299), Some(body)) = (x.status, x.response) {
                let text = match body {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                answers.entry((x.endpoint, x.stage, x.unit)).or_default().push_back((x.request, text));
            }
        }
        Ok(Replayer { answers: Mutex::new(answers), mismatches: AtomicU64::new(0), answered: AtomicU64::new(0) })
    }

    /// The next recorded answer for this unit's requests at this stage and endpoint.
    pub fn answer(&self, endpoint: &str, stage: Stage, unit: &str, request: &Value) -> Replayed {
        let mut answers = lock(&self.answers);
        let Some((recorded, body)) = answers.get_mut(&(endpoint.to_string(), stage, unit.to_string())).and_then(VecDeque::pop_front) else {
            return Replayed::Missing;
        };
        if &recorded != request {
            self.mismatches.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(endpoint, %stage, unit, difference = %first_difference(&recorded, request),
                "replayed request differs from the recorded one; answering with the recording");
        }
        self.answered.fetch_add(1, Ordering::Relaxed);
        Replayed::Body(body)
    }
}

/// Where two request bodies first differ, in a few words and a short excerpt of each.
fn first_difference(recorded: &Value, replayed: &Value) -> String {
    let text = |v: &Value| serde_json::to_string(v).unwrap_or_default();
    let (a, b) = (text(recorded), text(replayed));
    let at = a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count();
    let excerpt = |s: &str| s.chars().skip(at.saturating_sub(40)).take(120).collect::<String>();
    format!("at character {at}: recorded `{}`, replayed `{}`", excerpt(&a), excerpt(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn exchange(unit: &str, status: u16, content: &str) -> Exchange {
        Exchange {
            at_ms: 0,
            endpoint: "main".into(),
            stage: Stage::Topic,
            unit: unit.into(),
            attempt: 1,
            request: json!({"messages": [unit]}),
            status: Some(status),
            response: Some(json!({"content": content})),
            error: None,
            latency_ms: 1,
        }
    }

    #[test]
    fn replays_successes_in_order_per_unit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.jsonl");
        let rec = Recorder::create(&path).unwrap();
        rec.append(&exchange("t1", 429, "limited"));
        rec.append(&exchange("t1", 200, "first"));
        rec.append(&exchange("t2", 200, "other"));
        rec.append(&exchange("t1", 200, "second"));
        let replay = Replayer::load(&path).unwrap();
        let req = json!({"messages": ["t1"]});
        let body = |r: Replayed| match r {
            Replayed::Body(b) => b,
            Replayed::Missing => "missing".into(),
        };
        assert!(body(replay.answer("main", Stage::Topic, "t1", &req)).contains("first"));
        assert!(body(replay.answer("main", Stage::Topic, "t1", &json!({"changed": true}))).contains("second"));
        assert_eq!(body(replay.answer("main", Stage::Topic, "t1", &req)), "missing");
        assert_eq!(body(replay.answer("main", Stage::Dataset, "t2", &req)), "missing");
        assert_eq!(replay.mismatches.load(Ordering::Relaxed), 1);
    }
}
