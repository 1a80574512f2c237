//! Dataset stage of the simulated teacher: proposes Hub dataset ids for a challenge.
//!
//! The simulator "knows" the datasets of the embedded Hub mirror and which task types each
//! supports (regression and ranking on diabetes' target and on a numeric column of iris and
//! wine; ranking by class would leave no headroom: any model puts ten rows of a well-separated
//! class first). It proposes first the ones
//! whose subject the challenge mentions (flowers, wine chemistry, tumours, digits, disease
//! progression), then the others; within each group the order is rotated by a hash of the seed
//! and the title, so different challenges get different datasets. Like a real model it
//! sometimes starts with a plausible id that does not exist, which the verifier rejects; it
//! never proposes a rejected id again.

use super::codegen::Kind;
use super::text::{Draw, block_after, bullet_items, labelled_line, normalise};

/// Mirror datasets suited to classification.
pub(crate) const CLASSIFICATION: [&str; 4] = ["sklearn/iris", "sklearn/wine", "sklearn/breast_cancer", "sklearn/digits"];
/// Mirror datasets suited to regression: diabetes' target, wine's alcohol, iris' petal width.
pub(crate) const REGRESSION: [&str; 3] = ["sklearn/diabetes", "sklearn/wine", "sklearn/iris"];
/// Mirror datasets suited to ranking, by a graded numeric relevance: diabetes' target, wine's
/// alcohol, iris' petal width.
pub(crate) const RANKING: [&str; 3] = ["sklearn/diabetes", "sklearn/wine", "sklearn/iris"];
/// Share of challenges whose first proposal is an id that does not exist.
pub(crate) const HALLUCINATION_RATE: f64 = 0.3;
/// Proposals per answer.
const MAX_PROPOSALS: usize = 3;

/// What each mirror dataset is about (word stems), and plausible ids of similar data that are
/// not on the Hub, as a model half-remembers them.
const KNOWN: [(&str, &[&str], &[&str]); 5] = [
    (
        "sklearn/iris",
        &["iris", "flower", "floral", "petal", "sepal", "species", "botan", "plant", "specimen", "herbarium", "leaf", "seed"],
        &["botany-datasets/iris-extended", "uci/iris-plants"],
    ),
    (
        "sklearn/wine",
        &["wine", "cultivar", "grape", "vineyard", "winery", "chemical", "chemistry", "constituent", "assay", "spectroscop"],
        &["uci/wine-quality-red", "uci/wine-recognition"],
    ),
    (
        "sklearn/breast_cancer",
        &["tumour", "tumor", "cancer", "malignan", "benign", "biopsy", "cytolog", "lesion", "diagnos", "patholog", "screening"],
        &["uci/breast-cancer-wisconsin-diagnostic", "clinical-tabular/wdbc"],
    ),
    (
        "sklearn/digits",
        &["digit ", "digits", "pixel", "image", "glyph", "character", "handwrit", "ocr", "scan", "symbol", "vision"],
        &["uci/optical-recognition-of-handwritten-digits", "vision-tabular/digits-8x8"],
    ),
    (
        "sklearn/diabetes",
        &[
            "diabetes",
            "progression",
            "patient",
            "clinical",
            "disease",
            "biomarker",
            "health",
            "risk",
            "blood",
            "medic",
            "hospital",
            "treatment",
            "stay",
        ],
        &["clinical-tabular/diabetes-progression", "uci/diabetes-130-us-hospitals"],
    ),
];

#[derive(Debug)]
struct Request {
    title: String,
    idea: String,
    kind: Kind,
    rejected: Vec<String>,
}

fn parse(user: &str) -> Result<Request, String> {
    let title = labelled_line(user, "Challenge:").ok_or("dataset prompt has no `Challenge:` line")?;
    let task_type = labelled_line(user, "Task type:").ok_or("dataset prompt has no `Task type:` line")?;
    let idea = labelled_line(user, "Idea:").unwrap_or_default();
    let rejected = block_after(user, "Proposals already rejected")
        .map(bullet_items)
        .unwrap_or_default()
        .iter()
        .filter_map(|item| dataset_id(item))
        .collect();
    Ok(Request { title, idea, kind: Kind::parse(&task_type), rejected })
}

/// The `owner/name` id at the start of a list item such as `uci/x: not_found`.
fn dataset_id(item: &str) -> Option<String> {
    let token = item.split(|c: char| c.is_whitespace() || c == ':' || c == ',' || c == '(').next()?;
    let token = token.trim_matches(|c: char| c == '`' || c == '"' || c == '\'');
    (token.contains('/') && !token.starts_with('/') && !token.ends_with('/')).then(|| token.to_string())
}

/// How many of the word stems of what `dataset` is about start a word of the challenge text
/// ("vision" is not in "supervision", "digit " is not in "digitised").
fn fit(dataset: &str, text: &str) -> usize {
    let starts_a_word =
        |stem: &str| text.match_indices(stem).any(|(at, _)| !text[..at].chars().next_back().is_some_and(char::is_alphanumeric));
    KNOWN.iter().find(|(id, _, _)| *id == dataset).map_or(0, |(_, stems, _)| stems.iter().filter(|stem| starts_a_word(stem)).count())
}

pub(crate) fn answer(cfg: &crate::SimConfig, user: &str) -> Result<String, String> {
    let r = parse(user)?;
    let title = normalise(&r.title);
    let text = format!("{} {}", r.title, r.idea).to_lowercase();
    let known: &[&str] = match r.kind {
        Kind::Classification => &CLASSIFICATION,
        Kind::Regression => &REGRESSION,
        Kind::Ranking => &RANKING,
    };
    let mut draw = Draw::new(cfg.seed, &["dataset", &title]);
    let start = draw.index(known.len());
    let is_rejected = |id: &str| r.rejected.iter().any(|x| x == id);

    // Rotated, then the datasets that fit the challenge best first (the sort is stable, so
    // equally fitting ones keep the rotation).
    let mut ranked: Vec<&str> = (0..known.len()).map(|i| known[(start + i) % known.len()]).collect();
    ranked.sort_by_key(|id| std::cmp::Reverse(fit(id, &text)));

    let mut proposals: Vec<String> = Vec::new();
    if draw.chance(HALLUCINATION_RATE) {
        // A half-remembered id of data like the best candidate's.
        let guesses = KNOWN.iter().find(|(id, _, _)| *id == ranked[0]).map(|(_, _, g)| *g).unwrap_or(&[]);
        if !guesses.is_empty() {
            let guess = *draw.pick(guesses);
            if !is_rejected(guess) {
                proposals.push(guess.to_string());
            }
        }
    }
    for id in ranked {
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
        user_with_idea(title, task, "An idea.", rejected)
    }

    fn user_with_idea(title: &str, task: &str, idea: &str, rejected: &str) -> String {
        render("dataset_user", &[("title", title), ("task_type", task), ("idea", idea), ("rejected", rejected)])
    }

    #[test]
    fn prefers_datasets_the_challenge_is_about() {
        let cases = [
            ("Species Identification from Petal and Sepal Measurements", "sklearn/iris"),
            ("Tumour Malignancy from Cytology Features", "sklearn/breast_cancer"),
            ("Recognising Handwritten Digits on a Microcontroller", "sklearn/digits"),
            ("Cultivar Origin from Chemical Assay Results", "sklearn/wine"),
            ("Identifying Plant Subspecies from Leaf Shape Descriptors for a herbarium digitisation project", "sklearn/iris"),
            // Stems count at the start of a word only.
            ("Disease Subtype Ranking from cytology features from digitised slides", "sklearn/breast_cancer"),
            ("Reaction Yield from a chemical analysis, with scarce supervision", "sklearn/wine"),
        ];
        for seed in 0..10 {
            for (title, expected) in cases {
                let p = proposals(seed, &user_with_idea(title, "classification", "Predict it.", "(none)"));
                let first_real = p.iter().find(|id| id.starts_with("sklearn/")).unwrap();
                assert_eq!(first_real, expected, "{title}: {p:?}");
            }
        }
    }

    fn proposals(seed: u64, u: &str) -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&answer(&cfg(seed), u).unwrap()).unwrap();
        v["datasets"].as_array().unwrap().iter().map(|x| x.as_str().unwrap().to_string()).collect()
    }

    #[test]
    fn parses_rejections_in_the_pipeline_format() {
        let r = parse(&user("T", "classification", "- uci/wine-quality-red: not_found\n- a/b: too_large")).unwrap();
        assert_eq!(r.rejected, vec!["uci/wine-quality-red", "a/b"]);
        assert_eq!(parse(&user("T", "regression", "(none)")).unwrap().kind, Kind::Regression);
        assert_eq!(parse(&user("T", "ranking", "(none)")).unwrap().kind, Kind::Ranking);
    }

    #[test]
    fn proposes_known_datasets_of_the_right_type() {
        for seed in 0..20 {
            let p = proposals(seed, &user("Cultivar Identification", "classification", "(none)"));
            assert!((1..=5).contains(&p.len()));
            assert!(p.iter().any(|id| CLASSIFICATION.contains(&id.as_str())), "{p:?}");
            let p = proposals(seed, &user_with_idea("Disease Progression", "regression", "Predict the progression of diabetes.", "(none)"));
            assert_eq!(p.iter().find(|id| id.starts_with("sklearn/")).unwrap(), "sklearn/diabetes", "{p:?}");
            assert!(p.iter().filter(|id| id.starts_with("sklearn/")).all(|id| REGRESSION.contains(&id.as_str())), "{p:?}");
            let p = proposals(seed, &user_with_idea("Progression Triage", "ranking", "Rank patients by disease progression.", "(none)"));
            assert_eq!(p.iter().find(|id| id.starts_with("sklearn/")).unwrap(), "sklearn/diabetes", "{p:?}");
            // Ranking by class on tumours would leave no headroom: not proposed.
            let p = proposals(seed, &user_with_idea("Tumour Triage", "ranking", "Rank biopsies by malignancy.", "(none)"));
            assert!(p.iter().filter(|id| id.starts_with("sklearn/")).all(|id| RANKING.contains(&id.as_str())), "{p:?}");
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
