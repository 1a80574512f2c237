//! `replay.jsonl`: MLGym's replay format, one trajectory's assistant turns per line.

use gymforge_actors::model::RolloutRecord;
use serde::Serialize;

/// MLGym's replay file: per trajectory, `{"<task_id>": [<assistant messages in order>]}`, which
/// MLGym's replay model answers with one by one to re-run the trajectory in a real environment,
/// followed by `"task_id"` and the rollout's `"unit"` so that the lines of one task's rollouts
/// can be told apart. MLGym reads a line's first value, so the turns stay first.
pub fn replay_lines(rollouts: &[RolloutRecord]) -> Vec<ReplayLine<'_>> {
    rollouts
        .iter()
        .map(|r| ReplayLine {
            task_id: &r.task_id,
            unit: &r.unit,
            turns: r.trajectory.history.iter().filter(|h| h.role == "assistant").map(|h| h.content.as_str()).collect(),
        })
        .collect()
}

/// One line of `replay.jsonl`; serialised with its keys in that order (see `replay_lines`).
pub struct ReplayLine<'a> {
    pub task_id: &'a str,
    pub unit: &'a str,
    pub turns: Vec<&'a str>,
}

impl Serialize for ReplayLine<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(3))?;
        map.serialize_entry(self.task_id, &self.turns)?;
        map.serialize_entry("task_id", self.task_id)?;
        map.serialize_entry("unit", self.unit)?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::fs;

    use gymforge_actors::ports::Outputs;
    use serde_json::Value;

    use crate::export::OutputDir;
    use crate::export::fixtures::final_inputs;

    #[test]
    fn replay_lines_lead_with_the_turns_and_name_their_rollout() {
        let dir = tempfile::tempdir().unwrap();
        let out = OutputDir::new(dir.path().join("out"));
        let inputs = final_inputs();
        out.finalize(&inputs).unwrap();
        let text = fs::read_to_string(out.replay_path()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), inputs.rollouts.len());
        let mut units = HashSet::new();
        for (line, r) in lines.iter().zip(&inputs.rollouts) {
            // MLGym's replay model takes a line's first value: the task's assistant turns.
            assert!(line.starts_with(&format!("{{\"{}\":[\"DISCUSSION", r.task_id)), "{line}");
            let v: Value = serde_json::from_str(line).unwrap();
            assert_eq!(v[&r.task_id].as_array().unwrap().len(), 2, "{line}");
            assert_eq!((v["task_id"].as_str(), v["unit"].as_str()), (Some(r.task_id.as_str()), Some(r.unit.as_str())), "{line}");
            assert!(units.insert(r.unit.clone()), "one line per rollout unit: {line}");
        }
        assert!(units.len() > inputs.tasks.len(), "some task has several rollouts, told apart by unit");
        // As MLGym reads it, where Python is installed.
        if let Ok(python) = std::process::Command::new("python3")
            .arg("-c")
            .arg(concat!(
                "import json, sys\n",
                "for x in open(sys.argv[1]).read().splitlines(keepends=True):\n",
                "    t = list(json.loads(x).values())[0]\n",
                "    assert all(isinstance(s, str) for s in t) and t, t\n",
                "print('ok')"
            ))
            .arg(out.replay_path())
            .output()
        {
            assert_eq!(String::from_utf8_lossy(&python.stdout).trim(), "ok", "{}", String::from_utf8_lossy(&python.stderr));
        }
    }
}
