//! Dataset stage of the simulated teacher: proposes Hub dataset ids for a challenge.
//!
//! The simulator "knows" the datasets of the embedded Hub mirror and rotates them by a hash of
//! the seed and the challenge title, so different challenges get different datasets. Like a real
//! model it sometimes starts with a plausible id that does not exist, which the verifier
//! rejects; it never proposes a rejected id again.

use super::text::{Draw, block_after, bullet_items, labelled_line, normalise};

/// Mirror datasets suited to classification.
pub(crate) const CLASSIFICATION: [&str; 4] = ["sklearn/iris", "sklearn/wine", "sklearn/breast_cancer", "sklearn/digits"];
/// Mirror datasets suited to regression.
pub(crate) const REGRESSION: [&str; 1] = ["sklearn/diabetes"];
/// Share of challenges whose first proposal is an id that does not exist.
pub(crate) const HALLUCINATION_RATE: f64 = 0.3;
/// Proposals per answer.
const MAX_PROPOSALS: usize = 3;

/// Plausible ids that are not on the Hub, per task type.
const PLAUSIBLE_CLASSIFICATION: [&str; 5] = [
    "uci/wine-quality-red",
    "uci/breast-cancer-wisconsin-diagnostic",
    "botany-datasets/iris-extended",
    "uci/optical-recognition-of-handwritten-digits",
    "clinical-tabular/heart-disease-cleveland",
];
const PLAUSIBLE_REGRESSION: [&str; 4] = [
    "uci/wine-quality-red",
    "uci/concrete-compressive-strength",
    "clinical-tabular/diabetes-progression",
    "uci/abalone-age",
];

#[derive(Debug)]
struct Request {
    title: String,
    regression: bool,
    rejected: Vec<String>,
}

fn parse(user: &str) -> Result<Request, String> {
    let title = labelled_line(user, "Challenge:").ok_or("dataset prompt has no `Challenge:` line")?;
    let task_type = labelled_line(user, "Task type:").ok_or("dataset prompt has no `Task type:` line")?;
    let rejected = block_after(user, "Proposals already rejected")
        .map(bullet_items)
        .unwrap_or_default()
        .iter()
        .filter_map(|item| dataset_id(item))
        .collect();
    Ok(Request { title, regression: task_type.to_lowercase().contains("regress"), rejected })
}

/// The `owner/name` id at the start of a list item such as `uci/x: not_found`.
fn dataset_id(item: &str) -> Option<String> {
    let token = item.split(|c: char| c.is_whitespace() || c == ':' || c == ',' || c == '(').next()?;
    let token = token.trim_matches(|c: char| c == '`' || c == '"' || c == '\'');
    (token.contains('/') && !token.starts_with('/') && !token.ends_with('/')).then(|| token.to_string())
}

pub(crate) fn answer(cfg: &crate::config::SimConfig, user: &str) -> Result<String, String> {
    let r = parse(user)?;
    let title = normalise(&r.title);
    let known: &[&str] = if r.regression { &REGRESSION } else { &CLASSIFICATION };
    let mut draw = Draw::new(cfg.seed, &["dataset", &title]);
    let start = draw.index(known.len());
    let is_rejected = |id: &str| r.rejected.iter().any(|x| x == id);

    let mut proposals: Vec<String> = Vec::new();
    if draw.chance(HALLUCINATION_RATE) {
        let plausible: &[&str] = if r.regression { &PLAUSIBLE_REGRESSION } else { &PLAUSIBLE_CLASSIFICATION };
        let guess = *draw.pick(plausible);
        if !is_rejected(guess) {
            proposals.push(guess.to_string());
        }
    }
    for i in 0..known.len() {
        let id = known[(start + i) % known.len()];
        if !is_rejected(id) && proposals.len() < MAX_PROPOSALS {
            proposals.push(id.to_string());
        }
    }
    if proposals.is_empty() {
        // Everything it knows was rejected: a last, fresh guess (the verifier decides).
        let slug: String = title.split(' ').take(4).collect::<Vec<_>>().join("-");
        let mut guess = format!("tabular-benchmarks/{slug}");
        let mut n = 2;
        while is_rejected(&guess) {
            guess = format!("tabular-benchmarks/{slug}-v{n}");
            n += 1;
        }
        proposals.push(guess);
    }
    Ok(serde_json::json!({ "datasets": proposals }).to_string())
}

#[cfg(test)]
mod tests {
    use super::super::testing::{cfg, render};
    use super::*;

    fn user(title: &str, task: &str, rejected: &str) -> String {
        render("dataset_user", &[("title", title), ("task_type", task), ("idea", "An idea."), ("rejected", rejected)])
    }

    fn proposals(seed: u64, u: &str) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&answer(&cfg(seed), u).unwrap()).unwrap();
        v["datasets"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
    }

    #[test]
    fn parses_rejections_in_the_pipeline_format() {
        let r = parse(&user("T", "classification", "- uci/wine-quality-red: not_found\n- a/b: too_large")).unwrap();
        assert_eq!(r.rejected, vec!["uci/wine-quality-red", "a/b"]);
        assert!(parse(&user("T", "regression", "(none)")).unwrap().regression);
    }

    #[test]
    fn proposes_known_datasets_of_the_right_type() {
        for seed in 0..20 {
            let p = proposals(seed, &user("Cultivar Identification", "classification", "(none)"));
            assert!((1..=5).contains(&p.len()));
            assert!(p.iter().any(|id| CLASSIFICATION.contains(&id.as_str())), "{p:?}");
            let p = proposals(seed, &user("Disease Progression", "regression", "(none)"));
            assert!(p.contains(&"sklearn/diabetes".to_string()), "{p:?}");
            assert!(!p.iter().any(|id| CLASSIFICATION.contains(&id.as_str())));
        }
    }

    #[test]
    fn rotates_datasets_and_sometimes_hallucinates() {
        let mut firsts = std::collections::BTreeSet::new();
        let mut hallucinated = 0;
        for i in 0..60 {
            let p = proposals(7, &user(&format!("Challenge number {i}"), "classification", "(none)"));
            if CLASSIFICATION.contains(&p[0].as_str()) {
                firsts.insert(p[0].clone());
            } else {
                hallucinated += 1;
            }
        }
        assert_eq!(firsts.len(), 4, "{firsts:?}");
        assert!((8..=30).contains(&hallucinated), "{hallucinated} of 60");
    }

    #[test]
    fn never_reproposes_a_rejected_id() {
        for seed in 0..30 {
            let first = proposals(seed, &user("Tumour Diagnosis", "classification", "(none)"));
            let rejected: String = first.iter().map(|id| format!("- {id}: not_found\n")).collect();
            let second = proposals(seed, &user("Tumour Diagnosis", "classification", &rejected));
            assert!(second.iter().all(|id| !first.contains(id)), "{first:?} then {second:?}");
            assert!(!second.is_empty());
        }
        let all = "- sklearn/diabetes: too_large\n- tabular-benchmarks/disease-progression: not_found";
        let p = proposals(1, &user("Disease Progression", "regression", all));
        assert!(!p.iter().any(|id| all.contains(id.as_str())), "{p:?}");
    }
}
