//! The Python scripts of a simulated task bundle: prepare.py, baseline.py and evaluate.py.
//!
//! The templates hold `@@NAME@@` markers (Python code is full of braces, so no `format!`). Each
//! script is written for one task spec: its dataset's columns, its task type and its twist,
//! with only the code that task needs.

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

const PREPARE: &str = r#""""Prepare the data of the @@TITLE@@ task from the raw parquet export of @@DATASET@@.

Reads the raw parquet files, shuffles the rows with a fixed seed and splits them @@SHARES@@ into
training, validation and test sets.@@TWIST_DOC@@ Writes:

    data/train.csv, data/validation.csv   `id`, the features and the target
    data/test.csv                         `id` and the features (no target)
    data/answers.csv                      `id` and the target of every test row
    sample_submission.csv                 a naive prediction for every test row
"""

from pathlib import Path

import numpy as np
import pandas as pd

SEED = @@SEED@@
RAW_FILES = @@RAW_FILES@@
FEATURES = @@FEATURES@@
TARGET = @@TARGET@@
TRAIN_PERCENT = @@TRAIN_PERCENT@@
VALIDATION_PERCENT = @@VALIDATION_PERCENT@@
DATA_DIR = Path("data")
@@TWIST_CONSTANTS@@

def load_raw():
    """Every raw row with the feature and target columns; rows without a target are dropped."""
    frame = pd.concat([pd.read_parquet(path) for path in RAW_FILES], ignore_index=True)
    return frame[FEATURES + [TARGET]].dropna(subset=[TARGET])


def split(frame, rng):
    """Shuffles the rows, numbers them with an `id` column and cuts train/validation/test."""
    frame = frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)
    frame.insert(0, "id", np.arange(len(frame), dtype=np.int64))
    n_train = len(frame) * TRAIN_PERCENT // 100
    n_validation = len(frame) * VALIDATION_PERCENT // 100
    train = frame.iloc[:n_train].copy()
    validation = frame.iloc[n_train : n_train + n_validation].copy()
    test = frame.iloc[n_train + n_validation :].copy()
    return train, validation, test
@@TWIST_FUNCTION@@

@@NAIVE@@


def main():
    rng = np.random.default_rng(SEED)
    train, validation, test = @@SPLIT@@(load_raw(), rng)
@@TWIST_CALL@@
    DATA_DIR.mkdir(exist_ok=True)
    train.to_csv(DATA_DIR / "train.csv", index=False)
    validation.to_csv(DATA_DIR / "validation.csv", index=False)
    test.drop(columns=[TARGET]).to_csv(DATA_DIR / "test.csv", index=False)
    test[["id", TARGET]].to_csv(DATA_DIR / "answers.csv", index=False)

    sample = pd.DataFrame({"id": test["id"], TARGET: naive_prediction(train)})
    sample.to_csv("sample_submission.csv", index=False)
    print(f"wrote {len(train)} training, {len(validation)} validation and {len(test)} test rows")


if __name__ == "__main__":
    main()
"#;

const NAIVE_CLASSIFICATION: &str = r#"def naive_prediction(train):
    """The most frequent training label: what a model that ignores the features would say."""
    return int(train[TARGET].dropna().mode().min())"#;

const NAIVE_RANKING: &str = r#"def naive_prediction(train):
    """The same score for every row: the ranking of a model that ignores the features."""
    return 0.0"#;

const NAIVE_REGRESSION: &str = r#"def naive_prediction(train):
    """The mean training target: what a model that ignores the features would say."""
    return float(train[TARGET].dropna().mean())"#;

const HIDE_LABELS_CLASSIFICATION: &str = r#"

def hide_labels(train, rng):
    """Keeps the label of about a quarter of the training rows, at least two per class."""
    labels = train[TARGET].to_numpy()
    keep = np.zeros(len(train), dtype=bool)
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        n_keep = min(len(rows), max(2, round(LABELLED_SHARE * len(rows))))
        keep[rng.choice(rows, size=n_keep, replace=False)] = True
    train[TARGET] = train[TARGET].astype("Int64").where(keep)
    return train"#;

const HIDE_LABELS_REGRESSION: &str = r#"

def hide_labels(train, rng):
    """Keeps the target of about a quarter of the training rows; the others are left empty."""
    keep = np.zeros(len(train), dtype=bool)
    keep[rng.choice(len(train), size=round(LABELLED_SHARE * len(train)), replace=False)] = True
    train[TARGET] = train[TARGET].where(keep)
    return train"#;

const IMBALANCE_CLASSIFICATION: &str = r#"

def imbalance_classes(train, rng):
    """Keeps every row of the most frequent class and a halving share of each rarer class."""
    labels = train[TARGET].to_numpy()
    counts = train[TARGET].value_counts().sort_index().sort_values(ascending=False, kind="stable")
    kept = []
    for rank, (label, count) in enumerate(counts.items()):
        rows = np.flatnonzero(labels == label)
        share = 1.0 if rank == 0 else max(MIN_SHARE, 0.5**rank)
        n_keep = min(count, max(MIN_ROWS_PER_CLASS, round(share * count)))
        kept.append(rng.choice(rows, size=n_keep, replace=False))
    return train.iloc[np.sort(np.concatenate(kept))]"#;

const IMBALANCE_REGRESSION: &str = r#"

def skew_targets(train, rng):
    """Keeps only a share of the rows whose target lies in the top quartile."""
    high = (train[TARGET] > train[TARGET].quantile(0.75)).to_numpy()
    keep = ~high | (rng.random(len(train)) < HIGH_SHARE)
    return train.iloc[np.flatnonzero(keep)]"#;

const NOISE_CLASSIFICATION: &str = r#"

def flip_labels(train, rng):
    """Gives a tenth of the training rows a wrong label, drawn from the other classes."""
    labels = train[TARGET].to_numpy().copy()
    classes = np.unique(labels)
    rows = rng.choice(len(labels), size=round(NOISE_SHARE * len(labels)), replace=False)
    for row in rows:
        labels[row] = rng.choice(classes[classes != labels[row]])
    train[TARGET] = labels
    return train"#;

const NOISE_REGRESSION: &str = r#"

def perturb_targets(train, rng):
    """Adds Gaussian noise of one target standard deviation to a tenth of the training targets."""
    targets = train[TARGET].to_numpy(dtype=np.float64).copy()
    rows = rng.choice(len(targets), size=round(NOISE_SHARE * len(targets)), replace=False)
    targets[rows] += rng.normal(0.0, targets.std(), size=len(rows))
    train[TARGET] = targets
    return train"#;

const SHIFTED_SPLIT: &str = r#"

def shift_feature(frame):
    """The feature with the most distinct values (the first one on a tie)."""
    counts = [frame[name].nunique() for name in FEATURES]
    return FEATURES[int(np.argmax(counts))]


def shifted_split(frame, rng):
    """Like `split`, but the test rows are those with the highest values of the shift feature;
    train and validation share the lower part of its range."""
    frame = frame.iloc[rng.permutation(len(frame))].reset_index(drop=True)
    frame.insert(0, "id", np.arange(len(frame), dtype=np.int64))
    n_train = len(frame) * TRAIN_PERCENT // 100
    n_validation = len(frame) * VALIDATION_PERCENT // 100
    shift = shift_feature(frame)
    order = np.argsort(frame[shift].to_numpy(dtype=np.float64), kind="stable")
    rest, test = np.sort(order[: n_train + n_validation]), np.sort(order[n_train + n_validation :])
    print(f"shift feature: {shift}")
    return frame.iloc[rest[:n_train]].copy(), frame.iloc[rest[n_train:]].copy(), frame.iloc[test].copy()"#;

/// The twist's constants, function, call in `main` and one sentence for the module docstring.
fn twist_parts(spec: &Spec) -> (&'static str, &'static str, &'static str, &'static str) {
    let r = spec.numeric_target;
    match spec.twist {
        Twist::FewLabels => (
            "LABELLED_SHARE = 0.25  # share of training rows that keep their label\n",
            if r { HIDE_LABELS_REGRESSION } else { HIDE_LABELS_CLASSIFICATION },
            "    train = hide_labels(train, rng)\n",
            " Only about a quarter of the training rows keep their label; the target of the other\ntraining rows is left empty. Validation and test stay fully labelled.",
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
            " The training set is made imbalanced by down-sampling every class but the most frequent\none; validation and test keep the natural class distribution.",
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
            " The test rows are the fifth of the data with the highest values of the feature with the\nmost distinct values (a covariate shift); training and validation come from the rest.",
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
            ("NAIVE", match spec.kind {
                Kind::Ranking => NAIVE_RANKING,
                _ if spec.numeric_target => NAIVE_REGRESSION,
                _ => NAIVE_CLASSIFICATION,
            }),
            ("SPLIT", if spec.twist == Twist::DistributionShift { "shifted_split" } else { "split" }),
            ("TWIST_CALL", call),
        ],
    )
}

/// The start of every baseline's `main`: the three data files, the feature columns and, with
/// few labels, only the labelled training rows.
const LOAD_DATA: &str = r#"    train = pd.read_csv("data/train.csv")
    validation = pd.read_csv("data/validation.csv")
    test = pd.read_csv("data/test.csv")
    features = [column for column in test.columns if column != "id"]
@@LABELLED@@"#;

const BASELINE_CLASSIFICATION: &str = r#""""Baseline for the @@TITLE@@ task: logistic regression on the @@K_FEATURES@@ features that
best separate the classes on their own.

A deliberately simple starting point: the features are standardised and ranked by their ANOVA
F-score on the training rows, and only the best @@K_FEATURES@@ of the @@N_FEATURES@@ are used. Trains on
@@TRAIN_ROWS@@data/train.csv, reports the accuracy on data/validation.csv, predicts every row of
data/test.csv and writes submission.csv with the columns `id` and `@@TARGET_NAME@@`.
"""

import numpy as np
import pandas as pd
from sklearn.feature_selection import SelectKBest, VarianceThreshold, f_classif
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

TARGET = @@TARGET@@
K_FEATURES = @@K_FEATURES@@  # features the baseline keeps


def main():
@@LOAD_DATA@@
    model = make_pipeline(VarianceThreshold(), StandardScaler(), SelectKBest(f_classif, k=K_FEATURES), LogisticRegression(max_iter=1000))
    model.fit(train[features].to_numpy(dtype=np.float64), train[TARGET].to_numpy(dtype=np.int64))

    predicted = model.predict(validation[features].to_numpy(dtype=np.float64))
    accuracy = accuracy_score(validation[TARGET].to_numpy(dtype=np.int64), predicted)
    print(f"validation accuracy: {accuracy:.4f}")

    predictions = model.predict(test[features].to_numpy(dtype=np.float64))
    submission = pd.DataFrame({"id": test["id"], TARGET: predictions.astype(np.int64)})
    submission.to_csv("submission.csv", index=False)
    print(f"wrote submission.csv with {len(submission)} rows")


if __name__ == "__main__":
    main()
"#;

const BASELINE_REGRESSION: &str = r#""""Baseline for the @@TITLE@@ task: ridge regression on standardised features.

Trains on @@TRAIN_ROWS@@data/train.csv, reports the RMSE on data/validation.csv, predicts every
row of data/test.csv and writes submission.csv with the columns `id` and `@@TARGET_NAME@@`.
"""

import numpy as np
import pandas as pd
from sklearn.linear_model import Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

TARGET = @@TARGET@@


def main():
@@LOAD_DATA@@
    model = make_pipeline(StandardScaler(), Ridge(alpha=1.0))
    model.fit(train[features].to_numpy(dtype=np.float64), train[TARGET].to_numpy(dtype=np.float64))

    predicted = model.predict(validation[features].to_numpy(dtype=np.float64))
    errors = predicted - validation[TARGET].to_numpy(dtype=np.float64)
    print(f"validation rmse: {np.sqrt(np.mean(errors**2)):.4f}")

    predictions = model.predict(test[features].to_numpy(dtype=np.float64))
    submission = pd.DataFrame({"id": test["id"], TARGET: predictions})
    submission.to_csv("submission.csv", index=False)
    print(f"wrote submission.csv with {len(submission)} rows")


if __name__ == "__main__":
    main()
"#;

const BASELINE_RANKING: &str = r#""""Baseline for the @@TITLE@@ task: @@MODEL_DOC@@ on standardised features.

Trains on @@TRAIN_ROWS@@data/train.csv, scores every row (@@SCORE_DOC@@), reports the NDCG
of the top ten rows of data/validation.csv, and writes submission.csv with the columns `id` and
`@@TARGET_NAME@@` (the score; higher means ranked earlier).
"""

import numpy as np
import pandas as pd
from sklearn.linear_model import @@MODEL_CLASS@@
from sklearn.metrics import ndcg_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

TARGET = @@TARGET@@
@@RELEVANCE_CONSTANT@@

def relevance(frame):
    """How relevant each row is: what the ranking should put first."""
    truth = frame[TARGET].to_numpy(dtype=np.float64)
    return @@RELEVANCE@@


def scores(model, frame, features):
    """The ranking score of each row."""
    inputs = frame[features].to_numpy(dtype=np.float64)
    return @@SCORES@@


def main():
@@LOAD_DATA@@
    model = make_pipeline(StandardScaler(), @@MODEL@@)
    model.fit(train[features].to_numpy(dtype=np.float64), train[TARGET].to_numpy(dtype=@@FIT_DTYPE@@))

    ndcg = ndcg_score([relevance(validation)], [scores(model, validation, features)], k=10)
    print(f"validation ndcg@10: {ndcg:.4f}")

    submission = pd.DataFrame({"id": test["id"], TARGET: scores(model, test, features)})
    submission.to_csv("submission.csv", index=False)
    print(f"wrote submission.csv with {len(submission)} rows")


if __name__ == "__main__":
    main()
"#;

/// How a ranking task's relevance is computed from the true target (Python, `truth` in scope).
fn ranking_relevance(spec: &Spec) -> (&'static str, String) {
    match spec.relevant_class {
        Some(class) => ("(truth == RELEVANT_CLASS).astype(np.float64)", format!("RELEVANT_CLASS = {class}
")),
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
                if by_class { "model.predict_proba(inputs)[:, list(model.classes_).index(RELEVANT_CLASS)]" } else { "model.predict(inputs)" },
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

const EVALUATE: &str = r#""""Score a submission for the @@TITLE@@ task.

Usage: python evaluate.py --submission_file submission.csv

The submission must hold one row for every row of data/test.csv, with the columns `id` and
`@@TARGET_NAME@@`. Prints one JSON object with the metrics (@@METRIC_DOC@@) and nothing else. An
invalid submission is explained on stderr and the script exits with status 1.
"""

import argparse
import json
import sys
import warnings

warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import @@METRIC_IMPORTS@@  # noqa: E402

ANSWERS = "data/answers.csv"
TARGET = @@TARGET@@
@@CONSTANTS@@

def fail(message):
    print(f"invalid submission: {message}", file=sys.stderr)
    sys.exit(1)


def read_submission(path):
    try:
        return pd.read_csv(path)
    except FileNotFoundError:
        fail(f"{path} does not exist")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        fail(f"{path} is not a readable CSV file ({error})")


def aligned_predictions(submission, answers):
    """The submitted values in the order of the answers, after checking columns and ids."""
    missing = [column for column in ("id", TARGET) if column not in submission.columns]
    if missing:
        fail(f"missing column(s) {missing}; expected the columns ['id', '{TARGET}']")
    if submission["id"].duplicated().any():
        fail("the id column has duplicate values")
    expected, submitted = set(answers["id"]), set(submission["id"])
    if len(submission) != len(answers) or submitted != expected:
        fail(
            f"the ids must be exactly the {len(answers)} ids of data/test.csv "
            f"({len(expected - submitted)} missing, {len(submitted - expected)} unexpected)"
        )
    values = pd.to_numeric(submission.set_index("id")[TARGET], errors="coerce")
    values = values.reindex(answers["id"]).to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(values)):
        fail(f"{int(np.sum(~np.isfinite(values)))} prediction(s) are empty or not finite numbers")
    return values


def main():
    parser = argparse.ArgumentParser(description="Score a submission file against data/answers.csv.")
    parser.add_argument("--submission_file", required=True, help="CSV file with the columns id and the target")
    args = parser.parse_args()

    answers = pd.read_csv(ANSWERS)
    predicted = aligned_predictions(read_submission(args.submission_file), answers)
@@SCORING@@
    print(json.dumps(scores))


if __name__ == "__main__":
    main()
"#;

const SCORING_CLASSIFICATION: &str = r#"    if not np.all(predicted == np.round(predicted)):
        fail("predictions must be integer class indices")
    truth = answers[TARGET].to_numpy(dtype=np.int64)
    predicted = predicted.astype(np.int64)
    scores = {
        "accuracy": float(accuracy_score(truth, predicted)),
        "f1_macro": float(f1_score(truth, predicted, average="macro", zero_division=0)),
    }"#;

const SCORING_REGRESSION: &str = r#"    truth = answers[TARGET].to_numpy(dtype=np.float64)
    scores = {
        "rmse": float(np.sqrt(mean_squared_error(truth, predicted))),
        "mae": float(mean_absolute_error(truth, predicted)),
    }"#;

const SCORING_RANKING: &str = r#"    truth = answers[TARGET].to_numpy(dtype=np.float64)
    relevance = @@RELEVANCE@@
    scores = {
        "ndcg_at_10": float(ndcg_score([relevance], [predicted], k=10)),
        "ndcg": float(ndcg_score([relevance], [predicted])),
    }"#;

pub(crate) fn evaluate(spec: &Spec) -> String {
    let (relevance, constant) = ranking_relevance(spec);
    let ranking = SCORING_RANKING.replace("@@RELEVANCE@@", relevance);
    let (imports, doc, scoring, constants) = match spec.kind {
        Kind::Ranking => ("ndcg_score", "ndcg_at_10 and ndcg, both higher is better", ranking.as_str(), constant.as_str()),
        _ if spec.numeric_target => ("mean_absolute_error, mean_squared_error", "rmse and mae, both lower is better", SCORING_REGRESSION, ""),
        _ => ("accuracy_score, f1_score", "accuracy and f1_macro, both higher is better", SCORING_CLASSIFICATION, ""),
    };
    fill(
        EVALUATE,
        &[
            ("TITLE", &spec.title),
            ("TARGET_NAME", &spec.target),
            ("METRIC_DOC", doc),
            ("METRIC_IMPORTS", imports),
            ("TARGET", &py_str(&spec.target)),
            ("SCORING", scoring),
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
