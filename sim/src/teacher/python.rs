//! The Python scripts of a simulated task bundle: prepare.py, baseline.py and evaluate.py.
//!
//! The templates hold `@@NAME@@` markers (Python code is full of braces, so no `format!`). Each
//! script is written for one task spec: its dataset's columns, its task type and its twist,
//! with only the code that task needs.
//!
//! Each template is a file in `python/`, included as it is. A twist function's marker directly
//! follows the code before it, so the two blank lines that set the function apart are added
//! here and its file starts at the `def`. The fragments (all but prepare, the baselines and
//! evaluate) end without a newline: the template around their marker supplies it.

use super::codegen::{Kind, Spec, Twist};

/// Fills every `@@NAME@@` marker; panics on a marker left without a value (a template bug).
fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (name, value) in values {
        out = out.replace(&format!("@@{name}@@"), value);
    }
    assert!(!out.contains("@@"), "unfilled marker in a script template:\n{out}");
    out
}

/// A Python string literal (double quotes).
pub(crate) fn py_str(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A Python list of strings, on one line when short, otherwise wrapped at 99 columns.
pub(crate) fn py_list(items: &[String]) -> String {
    let literals: Vec<String> = items.iter().map(|s| py_str(s)).collect();
    let one_line = format!("[{}]", literals.join(", "));
    if one_line.len() <= 80 {
        return one_line;
    }
    let mut out = String::from("[\n");
    let mut line = String::from("   ");
    for literal in literals {
        if line.len() + literal.len() + 2 > 99 {
            out.push_str(line.trim_end());
            out.push('\n');
            line = String::from("   ");
        }
        line.push(' ');
        line.push_str(&literal);
        line.push(',');
    }
    out.push_str(line.trim_end());
    out.push_str("\n]");
    out
}

const PREPARE: &str = include_str!("python/prepare.py");

const NAIVE_CLASSIFICATION: &str = include_str!("python/naive_classification.py");

const NAIVE_RANKING: &str = include_str!("python/naive_ranking.py");

const NAIVE_REGRESSION: &str = include_str!("python/naive_regression.py");

const HIDE_LABELS_CLASSIFICATION: &str = concat!("\n\n", include_str!("python/hide_labels_classification.py"));

const HIDE_LABELS_REGRESSION: &str = concat!("\n\n", include_str!("python/hide_labels_regression.py"));

const IMBALANCE_CLASSIFICATION: &str = concat!("\n\n", include_str!("python/imbalance_classification.py"));

const IMBALANCE_REGRESSION: &str = concat!("\n\n", include_str!("python/imbalance_regression.py"));

const NOISE_CLASSIFICATION: &str = concat!("\n\n", include_str!("python/noise_classification.py"));

const NOISE_REGRESSION: &str = concat!("\n\n", include_str!("python/noise_regression.py"));

const SHIFTED_SPLIT: &str = concat!("\n\n", include_str!("python/shifted_split.py"));

/// The twist's constants, function, call in `main` and one sentence for the module docstring.
fn twist_parts(spec: &Spec) -> (&'static str, &'static str, &'static str, &'static str) {
    let r = spec.numeric_target;
    match spec.twist {
        Twist::FewLabels => (
            "LABELLED_SHARE = 0.25  # share of training rows that keep their label\n",
            if r { HIDE_LABELS_REGRESSION } else { HIDE_LABELS_CLASSIFICATION },
            "    train = hide_labels(train, rng)\n",
            " Only about a quarter of the training rows keep their label; the target of the other\ntraining rows is left empty. Validation \
             and test stay fully labelled.",
        ),
        Twist::ClassImbalance if r => (
            "HIGH_SHARE = 0.25  # share of top-quartile training rows that are kept\n",
            IMBALANCE_REGRESSION,
            "    train = skew_targets(train, rng)\n",
            " The training set under-represents the top quartile of the target; validation and test\nkeep the natural distribution.",
        ),
        Twist::ClassImbalance => (
            "MIN_SHARE = 0.1  # smallest share of a minority class that is kept\nMIN_ROWS_PER_CLASS = 3\n",
            IMBALANCE_CLASSIFICATION,
            "    train = imbalance_classes(train, rng)\n",
            " The training set is made imbalanced by down-sampling every class but the most frequent\none; validation and test keep the \
             natural class distribution.",
        ),
        Twist::NoisyLabels => (
            "NOISE_SHARE = 0.1  # share of training rows whose target is corrupted\n",
            if r { NOISE_REGRESSION } else { NOISE_CLASSIFICATION },
            if r { "    train = perturb_targets(train, rng)\n" } else { "    train = flip_labels(train, rng)\n" },
            if r {
                " A tenth of the training targets get heavy random noise; validation and test stay clean."
            } else {
                " A tenth of the training labels are flipped to a wrong class; validation and test stay\nclean."
            },
        ),
        Twist::DistributionShift => (
            "",
            SHIFTED_SPLIT,
            "",
            " The test rows are the fifth of the data with the highest values of the feature with the\nmost distinct values (a covariate \
             shift); training and validation come from the rest.",
        ),
        Twist::ComputeBudget | Twist::None => ("", "", "", ""),
    }
}

pub(crate) fn prepare(spec: &Spec) -> String {
    let (constants, function, call, doc) = twist_parts(spec);
    fill(
        PREPARE,
        &[
            ("TITLE", &spec.title),
            ("DATASET", &spec.dataset_id),
            ("SHARES", &spec.split_shares()),
            ("TRAIN_PERCENT", &spec.train_percent().to_string()),
            ("VALIDATION_PERCENT", &super::codegen::VALIDATION_PERCENT.to_string()),
            ("TWIST_DOC", doc),
            ("SEED", &spec.split_seed.to_string()),
            ("RAW_FILES", &py_list(&spec.raw_files)),
            ("FEATURES", &py_list(&spec.features.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>())),
            ("TARGET", &py_str(&spec.target)),
            ("TWIST_CONSTANTS", constants),
            ("TWIST_FUNCTION", function),
            (
                "NAIVE",
                match spec.kind {
                    Kind::Ranking => NAIVE_RANKING,
                    _ if spec.numeric_target => NAIVE_REGRESSION,
                    _ => NAIVE_CLASSIFICATION,
                },
            ),
            ("SPLIT", if spec.twist == Twist::DistributionShift { "shifted_split" } else { "split" }),
            ("TWIST_CALL", call),
        ],
    )
}

/// The start of every baseline's `main`: the three data files, the feature columns and, with
/// few labels, only the labelled training rows.
const LOAD_DATA: &str = include_str!("python/load_data.py");

const BASELINE_CLASSIFICATION: &str = include_str!("python/baseline_classification.py");

const BASELINE_REGRESSION: &str = include_str!("python/baseline_regression.py");

const BASELINE_RANKING: &str = include_str!("python/baseline_ranking.py");

/// How a ranking task's relevance is computed from the true target (Python, `truth` in scope).
fn ranking_relevance(spec: &Spec) -> (&'static str, String) {
    match spec.relevant_class {
        Some(class) => (
            "(truth == RELEVANT_CLASS).astype(np.float64)",
            format!(
                "RELEVANT_CLASS = {class}
"
            ),
        ),
        None => ("truth - truth.min()", String::new()),
    }
}

fn ranking_baseline(spec: &Spec, train_rows: &str, labelled: &str) -> String {
    let (relevance, constant) = ranking_relevance(spec);
    let by_class = spec.relevant_class.is_some();
    fill(
        BASELINE_RANKING,
        &[
            ("LOAD_DATA", LOAD_DATA),
            ("TITLE", &spec.title),
            ("MODEL_DOC", if by_class { "logistic regression probabilities" } else { "ridge regression predictions" }),
            ("SCORE_DOC", if by_class { "the predicted probability of the relevant class" } else { "the predicted target" }),
            ("TRAIN_ROWS", train_rows),
            ("TARGET_NAME", &spec.target),
            ("MODEL_CLASS", if by_class { "LogisticRegression" } else { "Ridge" }),
            ("TARGET", &py_str(&spec.target)),
            ("RELEVANCE_CONSTANT", &constant),
            ("RELEVANCE", relevance),
            (
                "SCORES",
                if by_class {
                    "model.predict_proba(inputs)[:, list(model.classes_).index(RELEVANT_CLASS)]"
                } else {
                    "model.predict(inputs)"
                },
            ),
            ("LABELLED", labelled),
            ("MODEL", if by_class { "LogisticRegression(max_iter=1000)" } else { "Ridge(alpha=1.0)" }),
            ("FIT_DTYPE", if by_class { "np.int64" } else { "np.float64" }),
        ],
    )
}

/// Features the classification baseline keeps out of `n`: the best quarter, at least two (all
/// of them when there are fewer). A linear model on every feature already classifies the
/// mirror's small datasets almost perfectly; the starting point leaves the agent room.
pub(crate) fn baseline_features(n: usize) -> usize {
    (n / 4).max(2).min(n)
}

pub(crate) fn baseline(spec: &Spec) -> String {
    let (train_rows, labelled) = if spec.twist == Twist::FewLabels {
        ("the labelled rows of ", "    train = train[train[TARGET].notna()]  # unlabelled rows have an empty target\n")
    } else {
        ("", "")
    };
    if spec.kind == Kind::Ranking {
        return ranking_baseline(spec, train_rows, labelled);
    }
    let (k, n) = (baseline_features(spec.features.len()).to_string(), spec.features.len().to_string());
    fill(
        if spec.numeric_target { BASELINE_REGRESSION } else { BASELINE_CLASSIFICATION },
        &[
            ("LOAD_DATA", LOAD_DATA),
            ("TITLE", &spec.title),
            ("TRAIN_ROWS", train_rows),
            ("TARGET_NAME", &spec.target),
            ("TARGET", &py_str(&spec.target)),
            ("LABELLED", labelled),
            ("K_FEATURES", &k),
            ("N_FEATURES", &n),
        ],
    )
}

const EVALUATE: &str = include_str!("python/evaluate.py");

const SCORING_CLASSIFICATION: &str = include_str!("python/scoring_classification.py");

const SCORING_REGRESSION: &str = include_str!("python/scoring_regression.py");

const SCORING_RANKING: &str = include_str!("python/scoring_ranking.py");

const METRICS_CLASSIFICATION: &str = include_str!("python/metrics_classification.py");

const METRICS_REGRESSION: &str = include_str!("python/metrics_regression.py");

const METRICS_RANKING: &str = include_str!("python/metrics_ranking.py");

/// The metric functions evaluate.py defines (numpy only, so that scoring starts fast), for a
/// check against scikit-learn's: `accuracy`, `f1_macro`, `rmse`, `mae` and `ndcg`.
pub const EVALUATE_METRICS: [&str; 3] = [METRICS_CLASSIFICATION, METRICS_REGRESSION, METRICS_RANKING];

pub(crate) fn evaluate(spec: &Spec) -> String {
    let (relevance, constant) = ranking_relevance(spec);
    let ranking = SCORING_RANKING.replace("@@RELEVANCE@@", relevance);
    let (metrics, doc, scoring, constants) = match spec.kind {
        Kind::Ranking => (METRICS_RANKING, "ndcg_at_10 and ndcg, both higher is better", ranking.as_str(), constant.as_str()),
        _ if spec.numeric_target => (METRICS_REGRESSION, "rmse and mae, both lower is better", SCORING_REGRESSION, ""),
        _ => (METRICS_CLASSIFICATION, "accuracy and f1_macro, both higher is better", SCORING_CLASSIFICATION, ""),
    };
    fill(
        EVALUATE,
        &[
            ("TITLE", &spec.title),
            ("TARGET_NAME", &spec.target),
            ("METRIC_DOC", doc),
            ("TARGET", &py_str(&spec.target)),
            ("METRICS", metrics.trim_end()),
            ("SCORING", scoring.trim_end()),
            ("CONSTANTS", constants),
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_literals() {
        assert_eq!(py_str("a\"b"), "\"a\\\"b\"");
        assert_eq!(py_list(&["a".into(), "b".into()]), "[\"a\", \"b\"]");
        let many: Vec<String> = (0..64).map(|i| format!("pixel_{}_{}", i / 8, i % 8)).collect();
        let list = py_list(&many);
        assert!(list.starts_with("[\n    \"pixel_0_0\","));
        assert!(list.lines().all(|l| l.len() <= 99));
        assert!(list.ends_with("\n]"));
    }
}
