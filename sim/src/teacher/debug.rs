//! Debug stage of the simulated teacher: repairs a failed task bundle from the evidence in the
//! request (the failed step, the problem and the output), the way a model reads a traceback.
//!
//! There is no hidden state: the repair is derived from the request alone. It recognises the
//! failures of the bugs the codegen stage injects, and similar ones in any bundle:
//! `NameError` for a missing standard import, `KeyError` for a misspelled column,
//! `FileNotFoundError` for a misspelled path, the target column leaking into data/test.csv,
//! and stray prints in evaluate.py's output. Anything else is answered with the bundle
//! unchanged, so the self-debug loop fails honestly.

use serde_json::Value;

use super::text::{block_after, bullet_items, closest, json_block_after, quoted};

/// Files the task contract names, as candidates for a misspelled path.
const CONTRACT_FILES: [&str; 6] =
    ["data/train.csv", "data/validation.csv", "data/test.csv", "data/answers.csv", "sample_submission.csv", "submission.csv"];

/// Imports for names a script may use without importing them.
const KNOWN_IMPORTS: [(&str, &str); 12] = [
    ("np", "import numpy as np"),
    ("pd", "import pandas as pd"),
    ("json", "import json"),
    ("sys", "import sys"),
    ("os", "import os"),
    ("math", "import math"),
    ("argparse", "import argparse"),
    ("warnings", "import warnings"),
    ("Path", "from pathlib import Path"),
    ("StandardScaler", "from sklearn.preprocessing import StandardScaler"),
    ("make_pipeline", "from sklearn.pipeline import make_pipeline"),
    ("LogisticRegression", "from sklearn.linear_model import LogisticRegression"),
];

/// The parts of a debug request.
struct Request<'a> {
    step: String,
    /// The problem and the output of the failed step, together.
    evidence: String,
    bundle: Value,
    /// The codegen prompt of the same conversation, for the dataset's columns and raw files.
    codegen_prompt: Option<&'a str>,
}

fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let Some(i) = text.find(start) else { return "" };
    let rest = &text[i + start.len()..];
    match rest.find(end) {
        Some(j) => &rest[..j],
        None => rest,
    }
}

fn parse<'a>(request: &str, codegen_prompt: Option<&'a str>) -> Result<Request<'a>, String> {
    let step = between(request, "FAILED STEP:", "\n").trim().to_string();
    let problem = between(request, "PROBLEM:", "OUTPUT OF THE FAILED STEP");
    let output = between(request, "OUTPUT OF THE FAILED STEP", "CURRENT BUNDLE:");
    // The bundle is the first JSON object after the label, fenced or not.
    let after = between(request, "CURRENT BUNDLE:", "\u{0}");
    let start = after.find('{').ok_or("the debug request has no CURRENT BUNDLE json")?;
    let bundle: Value = serde_json::Deserializer::from_str(&after[start..])
        .into_iter::<Value>()
        .next()
        .and_then(Result::ok)
        .filter(|v| v.get("files").is_some_and(Value::is_object))
        .ok_or("the CURRENT BUNDLE block is not a task bundle")?;
    Ok(Request { step, evidence: format!("{problem}\n{output}"), bundle, codegen_prompt })
}

impl Request<'_> {
    fn file(&self, name: &str) -> Option<&str> {
        self.bundle["files"].get(name).and_then(Value::as_str)
    }

    fn file_names(&self) -> Vec<String> {
        self.bundle["files"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
    }

    fn set_file(&mut self, name: &str, text: String) {
        self.bundle["files"][name] = Value::String(text);
    }

    /// The script the evidence blames: the last bundle file in a traceback, else the one the
    /// failed step runs.
    fn blamed_file(&self) -> Option<String> {
        let names = self.file_names();
        let in_traceback = self
            .evidence
            .lines()
            .filter_map(|line| line.trim().strip_prefix("File \""))
            .filter_map(|rest| rest.split('"').next())
            .filter_map(|path| path.rsplit('/').next())
            .rfind(|file| names.iter().any(|n| n == file))
            .map(str::to_string);
        in_traceback.or_else(|| {
            let step = self.step.to_lowercase();
            let file = if step.contains("prepare") {
                "prepare.py"
            } else if step.contains("baseline") {
                "baseline.py"
            } else {
                "evaluate.py"
            };
            names.iter().any(|n| n == file).then(|| file.to_string())
        })
    }

    /// Column names the dataset really has: the verified dataset's features, the columns the
    /// bundle documents in backticks, the target and `id`.
    fn real_columns(&self) -> Vec<String> {
        let mut columns: Vec<String> = Vec::new();
        if let Some(meta) = self.codegen_prompt.and_then(|p| json_block_after(p, "VERIFIED DATASET")) {
            for f in meta["features"].as_array().into_iter().flatten() {
                if let Some(name) = f["name"].as_str() {
                    columns.push(name.to_string());
                }
            }
        }
        for key in ["dataset_description", "description"] {
            if let Some(text) = self.bundle[key].as_str() {
                columns.extend(quoted(text, '`').into_iter().filter(|w| is_identifier(w)).map(str::to_string));
            }
        }
        if let Some(target) = self.bundle["target_column"].as_str() {
            columns.push(target.to_string());
        }
        columns.push("id".to_string());
        columns.sort();
        columns.dedup();
        columns
    }

    /// Paths the task may legitimately read.
    fn known_paths(&self) -> Vec<String> {
        let mut paths: Vec<String> = CONTRACT_FILES.iter().map(|s| s.to_string()).collect();
        if let Some(raw) = self.codegen_prompt.and_then(|p| block_after(p, "RAW FILES")) {
            paths.extend(bullet_items(raw).into_iter().map(|i| i.trim_matches('`').to_string()));
        }
        paths
    }
}

fn is_identifier(word: &str) -> bool {
    !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') && !word.starts_with(|c: char| c.is_ascii_digit())
}

/// Replaces every quoted occurrence (`"old"` or `'old'`) of a literal; `None` if there is none.
fn replace_literal(source: &str, old: &str, new: &str) -> Option<String> {
    let mut out = source.to_string();
    for q in ['"', '\''] {
        out = out.replace(&format!("{q}{old}{q}"), &format!("{q}{new}{q}"));
    }
    (out != source).then_some(out)
}

/// Standard-library modules, for placing an import in its group.
const STDLIB: [&str; 14] = [
    "argparse",
    "collections",
    "functools",
    "itertools",
    "json",
    "math",
    "os",
    "pathlib",
    "random",
    "re",
    "sys",
    "time",
    "typing",
    "warnings",
];

/// The top-level module an import line imports from.
fn imported_module(line: &str) -> &str {
    line.split_whitespace().nth(1).unwrap_or("").split('.').next().unwrap_or("")
}

/// Adds an import line where isort would put it: in its group (standard library or third
/// party), `import` lines sorted and before `from` lines.
pub(crate) fn add_import(source: &str, import: &str) -> Option<String> {
    if source.lines().any(|l| l.trim() == import) {
        return None;
    }
    let lines: Vec<&str> = source.lines().collect();
    let is_import = |l: &str| l.starts_with("import ") || l.starts_with("from ");
    let stdlib = |l: &str| STDLIB.contains(&imported_module(l));
    let new_is_plain = import.starts_with("import ");
    let group: Vec<usize> = (0..lines.len()).filter(|&i| is_import(lines[i]) && stdlib(lines[i]) == stdlib(import)).collect();
    let at = if let Some(&last) = group.last() {
        let before = group.iter().copied().find(|&i| {
            let plain = lines[i].starts_with("import ");
            if new_is_plain { !plain || lines[i] > import } else { !plain && lines[i] > import }
        });
        before.unwrap_or(last + 1)
    } else if let Some(first) = lines.iter().position(|l| is_import(l)) {
        if stdlib(import) { first } else { lines.iter().rposition(|l| is_import(l)).map_or(first, |i| i + 1) }
    } else {
        // No imports at all: after the module docstring, if there is one.
        match lines.first() {
            Some(l) if l.starts_with("\"\"\"") && l.len() > 3 && l.trim_end().ends_with("\"\"\"") => 1,
            Some(l) if l.starts_with("\"\"\"") => lines.iter().skip(1).position(|l| l.contains("\"\"\"")).map_or(0, |i| i + 2),
            _ => 0,
        }
    };
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    out.insert(at, import.to_string());
    let mut text = out.join("\n");
    if source.ends_with('\n') {
        text.push('\n');
    }
    Some(text)
}

/// `NameError: name 'np' is not defined` -> the missing import.
fn fix_name_error(r: &mut Request<'_>) -> Option<String> {
    let line = r.evidence.lines().find(|l| l.contains("NameError: name '"))?;
    let name = quoted(line.split("NameError:").nth(1)?, '\'').into_iter().next()?.to_string();
    let import = KNOWN_IMPORTS.iter().find(|(n, _)| *n == name).map(|(_, i)| *i)?;
    let file = r.blamed_file()?;
    let fixed = add_import(r.file(&file)?, import)?;
    r.set_file(&file, fixed);
    Some(format!("added `{import}` to {file}"))
}

/// `KeyError: "['sepal_lenght_cm'] not in index"` -> the closest real column name.
fn fix_key_error(r: &mut Request<'_>) -> Option<String> {
    let line = r.evidence.lines().rev().find(|l| l.contains("KeyError"))?;
    let detail = line.split("KeyError").nth(1).unwrap_or(line);
    let mut names: Vec<String> = quoted(detail, '\'').into_iter().map(str::to_string).collect();
    if names.is_empty() {
        names = quoted(detail, '"').into_iter().map(str::to_string).collect();
    }
    let real = r.real_columns();
    let mut fixes = Vec::new();
    for wrong in names.iter().map(String::as_str).filter(|n| is_identifier(n) && !real.iter().any(|c| c == n)) {
        let limit = (wrong.len() / 3).max(2);
        let Some(right) = closest(wrong, real.iter().map(String::as_str), limit).map(str::to_string) else { continue };
        for file in r.file_names() {
            if let Some(fixed) = r.file(&file).and_then(|s| replace_literal(s, wrong, &right)) {
                r.set_file(&file, fixed);
                fixes.push(format!("column `{wrong}` -> `{right}` in {file}"));
            }
        }
    }
    (!fixes.is_empty()).then(|| fixes.join(", "))
}

/// `No such file or directory: 'data/answer.csv'` -> the closest path the task really has.
fn fix_missing_file(r: &mut Request<'_>) -> Option<String> {
    let line = r.evidence.lines().rev().find(|l| l.contains("No such file or directory"))?;
    let missing = quoted(line.split("No such file or directory").nth(1)?, '\'').into_iter().next()?.to_string();
    let missing = missing.trim_start_matches("./").to_string();
    let known = r.known_paths();
    let right = closest(&missing, known.iter().map(String::as_str), 3)?.to_string();
    let basename = |p: &str| p.rsplit('/').next().unwrap_or(p).to_string();
    for file in r.file_names() {
        let Some(source) = r.file(&file) else { continue };
        let fixed = replace_literal(source, &missing, &right).or_else(|| replace_literal(source, &basename(&missing), &basename(&right)));
        if let Some(fixed) = fixed {
            r.set_file(&file, fixed);
            return Some(format!("path `{missing}` -> `{right}` in {file}"));
        }
    }
    None
}

/// The target column in data/test.csv -> drop it before writing the file.
fn fix_leak(r: &mut Request<'_>) -> Option<String> {
    let text = r.evidence.to_lowercase();
    if !(text.contains("contains the target column") || text.contains("leak")) {
        return None;
    }
    let target = r.bundle["target_column"].as_str()?.to_string();
    let source = r.file("prepare.py")?;
    let columns = if source.lines().any(|l| l.starts_with("TARGET =")) { "TARGET".to_string() } else { super::python::py_str(&target) };
    let mut changed = false;
    let lines: Vec<String> = source
        .lines()
        .map(|line| {
            if line.contains("test.csv") && line.contains(".to_csv(") && !line.contains(".drop(") {
                changed = true;
                line.replacen(".to_csv(", &format!(".drop(columns=[{columns}]).to_csv("), 1)
            } else {
                line.to_string()
            }
        })
        .collect();
    if !changed {
        return None;
    }
    let mut fixed = lines.join("\n");
    if source.ends_with('\n') {
        fixed.push('\n');
    }
    r.set_file("prepare.py", fixed);
    Some("prepare.py drops the target from data/test.csv".into())
}

/// Extra text around evaluate.py's JSON -> remove its stray prints to stdout.
fn fix_stray_output(r: &mut Request<'_>) -> Option<String> {
    let text = r.evidence.to_lowercase();
    if !(text.contains("json") && (text.contains("print") || text.contains("format") || text.contains("stdout"))) {
        return None;
    }
    let source = r.file("evaluate.py")?;
    let stray = |line: &str| {
        let t = line.trim_start();
        t.starts_with("print(") && !t.contains("json.dumps") && !t.contains("file=sys.stderr")
    };
    if !source.lines().any(stray) {
        return None;
    }
    let mut fixed = source.lines().filter(|l| !stray(l)).collect::<Vec<_>>().join("\n");
    if source.ends_with('\n') {
        fixed.push('\n');
    }
    r.set_file("evaluate.py", fixed);
    Some("removed the extra output of evaluate.py".into())
}

pub(crate) fn answer(request: &str, codegen_prompt: Option<&str>) -> Result<String, String> {
    let mut r = parse(request, codegen_prompt)?;
    let fixes: [fn(&mut Request<'_>) -> Option<String>; 5] = [fix_name_error, fix_key_error, fix_missing_file, fix_leak, fix_stray_output];
    let fixed = fixes.iter().find_map(|fix| fix(&mut r));
    tracing::debug!(step = %r.step, fix = fixed.as_deref().unwrap_or("none"), "simulated debug answer");
    Ok(serde_json::to_string_pretty(&r.bundle).expect("serialisable"))
}

#[cfg(test)]
mod tests {
    use super::super::codegen::{self, Bug};
    use super::super::testing::render;
    use super::*;

    fn request(step: &str, problem: &str, output: &str, bundle: &gymforge_actors::model::TaskBundle) -> String {
        render(
            "debug_user",
            &[("step", step), ("problem", problem), ("output", output), ("bundle_json", &serde_json::to_string_pretty(bundle).unwrap())],
        )
    }

    fn fixed(answer: &str) -> gymforge_actors::model::TaskBundle {
        serde_json::from_str(answer).unwrap()
    }

    fn clean_and_buggy(bug: Bug) -> (gymforge_actors::model::TaskBundle, gymforge_actors::model::TaskBundle, String) {
        let prompt = codegen::tests::prompt("sklearn/iris", "classification", "none", "T");
        let (_, spec) = codegen::parse(1, &prompt).unwrap();
        let clean = codegen::bundle(&spec);
        let mut buggy = clean.clone();
        assert!(codegen::inject(bug, &spec, &mut buggy.files));
        (clean, buggy, prompt)
    }

    #[test]
    fn fixes_a_missing_numpy_import() {
        let (clean, buggy, _) = clean_and_buggy(Bug::MissingNumpyImport);
        let out = "Traceback (most recent call last):\n  File \"/home/agent/workspace/baseline.py\", line 30, in <module>\n    main()\n  \
                   File \"/home/agent/workspace/baseline.py\", line 20, in main\n    model.fit(train[features].to_numpy(dtype=np.float64), \
                   train[TARGET].to_numpy(dtype=np.int64))\nNameError: name 'np' is not defined";
        let a = answer(&request("baseline", "baseline failed (exit code 1)", out, &buggy), None).unwrap();
        assert_eq!(fixed(&a), clean);
    }

    #[test]
    fn fixes_a_misspelled_column_from_the_key_error() {
        let (clean, buggy, prompt) = clean_and_buggy(Bug::MisspelledColumn);
        let out = "Traceback (most recent call last):\n  File \"/home/agent/workspace/prepare.py\", line 40, in \
                   load_raw\nKeyError: \"['sepal_lenght_cm'] not in index\"";
        let req = request("prepare", "prepare failed (exit code 1)", out, &buggy);
        assert_eq!(fixed(&answer(&req, Some(&prompt)).unwrap()), clean);
        // Without the codegen prompt, the columns documented in the bundle are enough.
        assert_eq!(fixed(&answer(&req, None).unwrap()), clean);
    }

    #[test]
    fn fixes_extra_output_leak_and_path() {
        let (clean, buggy, _) = clean_and_buggy(Bug::ExtraEvaluateOutput);
        let problem = "evaluate.py must print exactly one JSON object and nothing else (expected value at line 1 column 1); it printed: \
                       Evaluating 30 rows\n{\"accuracy\": 0.9}";
        assert_eq!(fixed(&answer(&request("evaluate", problem, "Evaluating 30 rows\n{\"accuracy\": 0.9}", &buggy), None).unwrap()), clean);

        let (clean, buggy, _) = clean_and_buggy(Bug::TargetInTestFile);
        let problem = "data/test.csv contains the target column `target`: the agent could read the answers";
        assert_eq!(fixed(&answer(&request("prepare", problem, "test.csv columns: id,a,target", &buggy), None).unwrap()), clean);

        let (clean, buggy, _) = clean_and_buggy(Bug::WrongAnswersPath);
        let out = "FileNotFoundError: [Errno 2] No such file or directory: 'data/answer.csv'";
        assert_eq!(fixed(&answer(&request("evaluate", "evaluate failed (exit code 1)", out, &buggy), None).unwrap()), clean);
    }

    #[test]
    fn unrecognised_failures_leave_the_bundle_unchanged() {
        let (clean, _, _) = clean_and_buggy(Bug::MissingNumpyImport);
        for (problem, output) in [
            ("baseline timed out", "EXECUTION TIMED OUT"),
            ("the baseline scored 0.9 then 0.8: fix every random seed", ""),
            ("evaluate failed (exit code 1)", "NameError: name 'frobnicate' is not defined"),
            ("prepare failed", "KeyError: 'completely_unrelated_name_xyz'"),
            ("evaluate failed", "FileNotFoundError: [Errno 2] No such file or directory: 'submission.csv'"),
        ] {
            let a = answer(&request("baseline", problem, output, &clean), None).unwrap();
            assert_eq!(fixed(&a), clean, "{problem}");
        }
    }

    #[test]
    fn imports_go_in_sorted_position() {
        let src = "\"\"\"Doc.\"\"\"\n\nimport json\nimport sys\n\nimport pandas as pd\nfrom sklearn.x import y\n\nX = 1\n";
        let out = add_import(src, "import numpy as np").unwrap();
        assert!(out.contains("import sys\n\nimport numpy as np\nimport pandas as pd\nfrom sklearn"), "{out}");
        assert!(add_import(&out, "import numpy as np").is_none());
        let out = add_import(src, "import argparse").unwrap();
        assert!(out.contains("\n\nimport argparse\nimport json\n"), "{out}");
        let out = add_import(src, "from pathlib import Path").unwrap();
        assert!(out.contains("import sys\nfrom pathlib import Path\n\nimport pandas"), "{out}");
        let bare = "\"\"\"Doc\nmore.\n\"\"\"\n\nX = np.zeros(3)\n";
        assert!(add_import(bare, "import numpy as np").unwrap().starts_with("\"\"\"Doc\nmore.\n\"\"\"\nimport numpy as np\n"));
    }
}
