//! Codegen stage of the simulated teacher: writes the task bundle (task text, metric spec and
//! the three scripts) for a challenge and its verified dataset.
//!
//! The bundle follows the contract of `config/prompts/codegen_system.md`. A configurable share
//! of first drafts carries exactly one realistic bug (see [`Bug`]) for the self-debug loop to
//! find and fix; which drafts, and which bug, is a pure function of the seed and the challenge
//! title.

use std::collections::BTreeMap;

use gymforge_actors::model::{Direction, Feature, TaskBundle};
use serde::Deserialize;

use super::python;
use super::text::{Draw, block_after, bullet_items, camel_case, capitalise, json_block_after, normalise, without_braces};
use crate::SimConfig;

/// Seconds allowed for one training run of a simulated task.
pub(crate) const TRAINING_TIMEOUT: u64 = 600;
/// Percent of the rows in the validation split.
pub(crate) const VALIDATION_PERCENT: u64 = 10;
/// Percent of the rows in the test split.
pub(crate) const TEST_PERCENT: u64 = 20;
/// Datasets with fewer rows get [`SMALL_TEST_PERCENT`] of them as the test split.
pub(crate) const SMALL_DATASET_ROWS: u64 = 500;
pub(crate) const SMALL_TEST_PERCENT: u64 = 40;

/// The deliberate bugs of first drafts, each one a mistake real models make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bug {
    /// prepare.py selects a misspelled feature column: `KeyError` when it runs.
    MisspelledColumn,
    /// baseline.py uses `np` without `import numpy as np`: `NameError`.
    MissingNumpyImport,
    /// evaluate.py prints a progress line before the JSON: the output format check fails.
    ExtraEvaluateOutput,
    /// prepare.py writes data/test.csv with the target column: the leak check fails.
    TargetInTestFile,
    /// evaluate.py reads data/answer.csv instead of data/answers.csv: `FileNotFoundError`.
    WrongAnswersPath,
}

impl Bug {
    pub const ALL: [Bug; 5] =
        [Bug::MisspelledColumn, Bug::MissingNumpyImport, Bug::ExtraEvaluateOutput, Bug::TargetInTestFile, Bug::WrongAnswersPath];

    pub fn as_str(self) -> &'static str {
        match self {
            Bug::MisspelledColumn => "misspelled_column",
            Bug::MissingNumpyImport => "missing_numpy_import",
            Bug::ExtraEvaluateOutput => "extra_evaluate_output",
            Bug::TargetInTestFile => "target_in_test_file",
            Bug::WrongAnswersPath => "wrong_answers_path",
        }
    }
}

/// The bug the first draft for the challenge `title` carries under `cfg`, if any: with
/// probability `cfg.buggy_draft_rate`, one of [`Bug::ALL`] uniformly.
pub fn draft_bug(cfg: &SimConfig, title: &str) -> Option<Bug> {
    let mut draw = Draw::new(cfg.seed, &["draft-bug", &normalise(title)]);
    let buggy = draw.chance(cfg.buggy_draft_rate);
    let kind = *draw.pick(&Bug::ALL);
    buggy.then_some(kind)
}

/// The twist of a challenge, from its taxonomy sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Twist {
    None,
    FewLabels,
    ClassImbalance,
    NoisyLabels,
    ComputeBudget,
    /// The test rows are the top fifth of one feature's range: a covariate shift.
    DistributionShift,
}

impl Twist {
    fn parse(text: &str) -> Twist {
        let t = normalise(text);
        if t.contains("few label") || t.contains("label scarc") {
            Twist::FewLabels
        } else if t.contains("imbalance") || t.contains("rare class") {
            Twist::ClassImbalance
        } else if t.contains("noisy label") || t.contains("label noise") {
            Twist::NoisyLabels
        } else if t.contains("distribution shift") || t.contains("covariate shift") || t.contains("domain shift") {
            Twist::DistributionShift
        } else if t.contains("compute budget") || t.contains("budget") {
            Twist::ComputeBudget
        } else {
            Twist::None
        }
    }

    /// The camelCase end of the task name. With a numeric target the imbalance is one of
    /// target values (the top quartile is rare) and the noise is in the targets, not classes.
    fn name_suffix(self, numeric_target: bool) -> &'static str {
        match (self, numeric_target) {
            (Twist::None, _) => "",
            (Twist::FewLabels, _) => "FewLabels",
            (Twist::ClassImbalance, false) => "Imbalanced",
            (Twist::ClassImbalance, true) => "RareHighTargets",
            (Twist::NoisyLabels, false) => "NoisyLabels",
            (Twist::NoisyLabels, true) => "NoisyTargets",
            (Twist::ComputeBudget, _) => "ComputeBudget",
            (Twist::DistributionShift, _) => "Shifted",
        }
    }

    /// The end of the task title, in the words of the task's target (see [`Twist::name_suffix`]).
    fn title_suffix(self, numeric_target: bool) -> &'static str {
        match (self, numeric_target) {
            (Twist::None, _) => "",
            (Twist::FewLabels, _) => " with few labels",
            (Twist::ClassImbalance, false) => " under class imbalance",
            (Twist::ClassImbalance, true) => " with rare high targets",
            (Twist::NoisyLabels, false) => " with noisy labels",
            (Twist::NoisyLabels, true) => " with noisy targets",
            (Twist::ComputeBudget, _) => " on a compute budget",
            (Twist::DistributionShift, _) => " under distribution shift",
        }
    }
}

/// The kind of task, from the taxonomy's task type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Classification,
    Regression,
    /// Order the test rows by relevance: a score per row, scored by NDCG.
    Ranking,
}

impl Kind {
    pub(crate) fn parse(task_type: &str) -> Kind {
        let t = task_type.to_lowercase();
        if t.contains("rank") || t.contains("retriev") {
            Kind::Ranking
        } else if t.contains("regress") {
            Kind::Regression
        } else {
            Kind::Classification
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Kind::Classification => "classification",
            Kind::Regression => "regression",
            Kind::Ranking => "ranking",
        }
    }
}

/// A numeric column of a class-labelled dataset that makes a sensible regression target.
struct NumericTarget {
    column: &'static str,
    subject: &'static str,
    goal: &'static str,
}

/// What the simulator knows about a dataset of the embedded mirror.
struct KnownDataset {
    id: &'static str,
    /// Start of the camelCase task name.
    stem: &'static str,
    /// Human name of what is predicted ("iris species").
    subject: &'static str,
    /// One sentence on the data, for the dataset documentation.
    about: &'static str,
    /// What one prediction is about, for the task statement.
    goal: &'static str,
    /// For regression on a class-labelled dataset: which column to predict instead.
    numeric_target: Option<NumericTarget>,
    /// For ranking on a class-labelled dataset without a numeric target: the class that counts
    /// as relevant (malignant, the digit 8). Datasets with a numeric target rank by it.
    relevant_class: usize,
}

const KNOWN: [KnownDataset; 5] = [
    KnownDataset {
        id: "sklearn/iris",
        stem: "irisSpecies",
        subject: "iris species",
        about: "Fisher's iris data: flowers of three iris species, each described by the length and width of its sepals and petals in \
                centimetres.",
        goal: "predict the species of an iris flower from four measurements of its sepals and petals",
        numeric_target: Some(NumericTarget {
            column: "petal_width_cm",
            subject: "iris petal width",
            goal: "predict the petal width of an iris flower from its sepal measurements and petal length",
        }),
        relevant_class: 1,
    },
    KnownDataset {
        id: "sklearn/wine",
        stem: "wineCultivar",
        subject: "wine cultivar",
        about: "Results of a chemical analysis of wines grown in the same region of Italy by three different cultivators: thirteen \
                constituents per wine, such as alcohol, malic acid, flavanoids and colour intensity.",
        goal: "predict which of three cultivators produced a wine from its chemical analysis",
        numeric_target: Some(NumericTarget {
            column: "alcohol",
            subject: "wine alcohol content",
            goal: "predict the alcohol content of a wine from the rest of its chemical analysis",
        }),
        relevant_class: 1,
    },
    KnownDataset {
        id: "sklearn/breast_cancer",
        stem: "breastTumourDiagnosis",
        subject: "breast tumour diagnosis",
        about: "Breast Cancer Wisconsin (Diagnostic): thirty features computed from a digitised image of a fine needle aspirate of a \
                breast mass (mean, standard error and worst value of ten properties of the cell nuclei).",
        goal: "predict whether a breast mass is malignant or benign from features of its cell nuclei",
        numeric_target: None,
        relevant_class: 0,
    },
    KnownDataset {
        id: "sklearn/digits",
        stem: "handwrittenDigit",
        subject: "handwritten digit",
        about: "Optical recognition of handwritten digits: 8x8 images with pixel intensities from 0 to 16, flattened into 64 columns named \
                pixel_<row>_<column>.",
        goal: "recognise which digit, 0 to 9, a small handwritten image shows",
        numeric_target: None,
        relevant_class: 8,
    },
    KnownDataset {
        id: "sklearn/diabetes",
        stem: "diabetesProgression",
        subject: "diabetes progression",
        about: "Ten baseline variables of diabetes patients (age, sex, body mass index, average blood pressure and six blood serum \
                measurements); the target is a quantitative measure of disease progression one year after baseline.",
        goal: "predict a quantitative measure of diabetes progression one year after baseline from ten baseline variables",
        numeric_target: None,
        relevant_class: 0,
    },
];

/// Everything the scripts and texts of one task are written from.
pub(crate) struct Spec {
    /// Human title of the task ("Iris species classification with few labels").
    pub title: String,
    pub name: String,
    pub dataset_id: String,
    pub config: String,
    pub split: String,
    pub kind: Kind,
    /// The target is a real number (regression, and ranking by a numeric column).
    pub numeric_target: bool,
    /// Ranking by class: the class index whose rows are relevant.
    pub relevant_class: Option<usize>,
    pub class_names: Vec<String>,
    /// Feature columns with their dtypes, in dataset order.
    pub features: Vec<(String, String)>,
    pub target: String,
    pub target_dtype: String,
    /// Paths relative to the task directory (`raw/...`).
    pub raw_files: Vec<String>,
    pub twist: Twist,
    /// Seed of prepare.py's shuffle.
    pub split_seed: u64,
    /// Percent of the rows in the test split ([`TEST_PERCENT`] or [`SMALL_TEST_PERCENT`]); the
    /// validation split holds [`VALIDATION_PERCENT`], the training split the rest.
    pub test_percent: u64,
    pub rows: Option<u64>,
    pub about: String,
    pub goal: String,
}

#[derive(Deserialize)]
struct Challenge {
    title: String,
    #[serde(default)]
    sample: Option<Sample>,
}

#[derive(Deserialize, Default)]
struct Sample {
    #[serde(default)]
    task_type: String,
    #[serde(default)]
    twist: String,
}

#[derive(Deserialize)]
struct DatasetFacts {
    id: String,
    #[serde(default)]
    config: String,
    #[serde(default)]
    splits: Vec<String>,
    features: Vec<Feature>,
    #[serde(default)]
    num_rows: BTreeMap<String, u64>,
    #[serde(default)]
    description: String,
}

fn is_numeric(dtype: &str) -> bool {
    let d = dtype.to_lowercase();
    d.starts_with("int") || d.starts_with("uint") || d.starts_with("float") || d == "bool" || d == "double"
}

/// Reads the codegen prompt into a task spec.
pub(crate) fn parse(seed: u64, user: &str) -> Result<(String, Spec), String> {
    let challenge: Challenge = json_block_after(user, "CHALLENGE")
        .ok_or("codegen prompt has no CHALLENGE json block")
        .and_then(|v| serde_json::from_value(v).map_err(|_| "the CHALLENGE block is not a challenge idea"))?;
    let facts: DatasetFacts = json_block_after(user, "VERIFIED DATASET")
        .ok_or("codegen prompt has no VERIFIED DATASET json block")
        .and_then(|v| serde_json::from_value(v).map_err(|_| "the VERIFIED DATASET block is not a dataset description"))?;
    let sample = challenge.sample.unwrap_or_default();
    let twist = Twist::parse(if sample.twist.is_empty() { &challenge.title } else { &sample.twist });

    let known = KNOWN.iter().find(|k| k.id == facts.id);
    let label = facts
        .features
        .iter()
        .find(|f| f.name == "target")
        .or_else(|| facts.features.iter().find(|f| f.class_names.is_some()))
        .or_else(|| facts.features.last())
        .ok_or("the dataset has no columns")?;
    let mut kind = Kind::parse(&sample.task_type);
    // Regression on a class-labelled dataset predicts one of its numeric columns instead: the
    // one known to make sense, else the last floating-point column. Ranking orders by the known
    // numeric column too when there is one: a graded relevance leaves a ranking room to improve,
    // while ten rows of one well-separated class are put first by any model.
    let known_numeric = known.and_then(|k| k.numeric_target.as_ref()).and_then(|t| facts.features.iter().find(|f| f.name == t.column));
    let target_feature = match (kind, &label.class_names) {
        (Kind::Regression, Some(_)) => known_numeric
            .or_else(|| {
                facts.features.iter().rev().find(|f| f.name != label.name && f.name != "id" && f.dtype.to_lowercase().starts_with("float"))
            })
            .unwrap_or(label),
        (Kind::Ranking, Some(_)) => known_numeric.unwrap_or(label),
        _ => label,
    };
    let class_names = target_feature.class_names.clone().unwrap_or_default();
    let numeric_target = class_names.is_empty() && (kind != Kind::Classification || !target_feature.dtype.to_lowercase().contains("int"));
    if kind == Kind::Classification && numeric_target {
        kind = Kind::Regression;
    } else if kind == Kind::Regression && !numeric_target {
        kind = Kind::Classification;
    }
    let relevant_class = match (kind, class_names.len()) {
        (Kind::Ranking, n) if n > 0 => {
            let index = known.map_or(0, |k| k.relevant_class).min(n - 1);
            Some((index, class_names[index].clone()))
        }
        _ => None,
    };
    let features: Vec<(String, String)> = facts
        .features
        .iter()
        .filter(|f| f.name != target_feature.name && f.name != label.name && f.name != "id" && is_numeric(&f.dtype))
        .map(|f| (f.name.clone(), f.dtype.clone()))
        .collect();
    if features.is_empty() {
        return Err("the dataset has no numeric feature columns".into());
    }

    let mut raw_files: Vec<String> = block_after(user, "RAW FILES")
        .map(bullet_items)
        .unwrap_or_default()
        .into_iter()
        .map(|item| item.trim_matches('`').to_string())
        .filter(|item| item.ends_with(".parquet"))
        .map(|item| if item.starts_with("raw/") { item } else { format!("raw/{}", item.trim_start_matches('/')) })
        .collect();
    if raw_files.is_empty() {
        raw_files.push("raw/train/0000.parquet".into());
    }

    let predicts_other_column = target_feature.name != label.name;
    let numeric_known = known.and_then(|k| k.numeric_target.as_ref()).filter(|t| predicts_other_column && t.column == target_feature.name);
    let (stem, mut subject) = match (known, numeric_known) {
        (Some(_), Some(t)) => (camel_case(t.subject), t.subject.to_string()),
        (Some(k), None) if !predicts_other_column => (k.stem.to_string(), k.subject.to_string()),
        _ => {
            let short = facts.id.rsplit('/').next().unwrap_or(&facts.id).replace(['-', '_'], " ");
            let short = if predicts_other_column { format!("{short} {}", target_feature.name.replace('_', " ")) } else { short };
            (camel_case(&short), short)
        }
    };
    if let Some((_, class)) = &relevant_class {
        subject = format!("{} {subject}", class.replace('_', " "));
    }
    let kind_name = kind.as_str();
    let name = format!("{stem}{}{}", capitalise(kind_name), twist.name_suffix(numeric_target));
    let title = format!(
        "{}{}{}",
        capitalise(&subject),
        if subject.ends_with(kind_name) { String::new() } else { format!(" {kind_name}") },
        twist.title_suffix(numeric_target)
    );
    let title = title.replace(['"', '\\'], "'");
    let about = match known {
        Some(k) => k.about.to_string(),
        None if !facts.description.trim().is_empty() => facts.description.trim().to_string(),
        None => format!("The dataset {}.", facts.id),
    };
    let goal = match (kind, &relevant_class, known, numeric_known) {
        (Kind::Ranking, Some((index, class)), _, _) => {
            format!("order the test rows so that those whose `{}` is {index} ({class}) come first", target_feature.name)
        }
        (Kind::Ranking, None, _, _) => format!("order the test rows from the highest `{}` to the lowest", target_feature.name),
        (_, _, _, Some(t)) => t.goal.to_string(),
        (_, _, Some(k), None) if !predicts_other_column => k.goal.to_string(),
        _ => format!("predict the `{}` column of {} from the other columns", target_feature.name, facts.id),
    };
    let split = facts.splits.first().cloned().unwrap_or_else(|| "train".into());
    let rows: Option<u64> = if facts.num_rows.is_empty() { None } else { Some(facts.num_rows.values().sum()) };
    // A small dataset gets a larger test split, so that one test row is not worth several points
    // of the score; the shifted split keeps its top fifth.
    let test_percent =
        if twist != Twist::DistributionShift && rows.is_some_and(|r| r < SMALL_DATASET_ROWS) { SMALL_TEST_PERCENT } else { TEST_PERCENT };
    let mut draw = Draw::new(seed, &["split-seed", &normalise(&challenge.title)]);
    let spec = Spec {
        title,
        name,
        dataset_id: facts.id.clone(),
        config: if facts.config.is_empty() { "default".into() } else { facts.config.clone() },
        split,
        kind,
        numeric_target,
        relevant_class: relevant_class.map(|(index, _)| index),
        class_names,
        features,
        target: target_feature.name.clone(),
        target_dtype: target_feature.dtype.clone(),
        raw_files,
        twist,
        split_seed: 1000 + draw.next_u64() % 9000,
        test_percent,
        rows,
        about: without_braces(&about),
        goal: without_braces(&goal),
    };
    Ok((challenge.title, spec))
}

impl Spec {
    /// Percent of the rows in the training split.
    pub(crate) fn train_percent(&self) -> u64 {
        100 - VALIDATION_PERCENT - self.test_percent
    }

    /// `70/10/20`: the shares of the training, validation and test splits.
    pub(crate) fn split_shares(&self) -> String {
        format!("{}/{VALIDATION_PERCENT}/{}", self.train_percent(), self.test_percent)
    }

    /// Rows of the train, validation and test files, as prepare.py computes them.
    fn split_sizes(&self, rows: u64) -> (u64, u64, u64) {
        let train = rows * self.train_percent() / 100;
        let validation = rows * VALIDATION_PERCENT / 100;
        (train, validation, rows - train - validation)
    }
}

/// The class names as a legend (`0 = setosa, 1 = versicolor`), or `None` when the names are
/// the indices themselves.
fn class_legend(names: &[String]) -> Option<String> {
    if names.iter().enumerate().all(|(i, n)| *n == i.to_string()) {
        return None;
    }
    Some(names.iter().enumerate().map(|(i, n)| format!("{i} = {n}")).collect::<Vec<_>>().join(", "))
}

fn target_meaning(spec: &Spec) -> String {
    if spec.numeric_target {
        return "a real number".into();
    }
    if let Some(index) = spec.relevant_class {
        let legend = class_legend(&spec.class_names).map(|l| format!(": {l}")).unwrap_or_default();
        return format!("a class index{legend}; rows of class {index} are the relevant ones");
    }
    match class_legend(&spec.class_names) {
        Some(legend) => format!("a class index ({legend})"),
        None if !spec.class_names.is_empty() => format!("the class label itself (0 to {})", spec.class_names.len() - 1),
        None => "an integer class label".into(),
    }
}

fn twist_paragraph(spec: &Spec) -> Option<&'static str> {
    match (spec.twist, spec.numeric_target) {
        (Twist::None, _) => None,
        (Twist::FewLabels, _) => Some(
            "Labels are scarce: only about a quarter of the rows in data/train.csv are labelled, and the target of the other rows is \
             empty. The unlabelled rows may still be used, for example for feature scaling or self-training. The validation and test sets \
             are fully labelled.",
        ),
        (Twist::ClassImbalance, false) => Some(
            "The training set is imbalanced: every class except the most frequent one has been down-sampled. The validation and test sets \
             keep the natural class distribution, so rare classes count fully at test time.",
        ),
        (Twist::ClassImbalance, true) => Some(
            "High target values are rare in the training set: most rows of the top quartile of the target were removed. The validation and \
             test sets keep the natural distribution.",
        ),
        (Twist::NoisyLabels, false) => Some(
            "About one training label in ten is wrong (replaced by another class at random). The validation and test labels are clean, so \
             use the validation set to choose models that are robust to the noise.",
        ),
        (Twist::NoisyLabels, true) => Some(
            "About one training target in ten carries heavy random noise. The validation and test targets are clean, so use the validation \
             set to choose models that are robust to the noise.",
        ),
        (Twist::ComputeBudget, _) => Some(
            "Compute budget: the task targets a small CPU-only machine. Keep every training run under one minute on a single core; a model \
             that needs more defeats the purpose of the challenge.",
        ),
        (Twist::DistributionShift, _) => Some(
            "Distribution shift: the test rows are the fifth of the data with the highest values of one feature (the feature with the most \
             distinct values), while the training and validation rows come from the lower four fifths of its range. The validation score \
             therefore overestimates the test score; models that extrapolate sensibly beyond the training range do best.",
        ),
    }
}

fn description(spec: &Spec) -> String {
    let (metric, direction, secondary) = match spec.kind {
        Kind::Ranking => (
            "the normalised discounted cumulative gain of the top ten rows (`ndcg_at_10`)",
            "higher is better",
            "the NDCG of the whole ranking (`ndcg`)",
        ),
        _ if spec.numeric_target => ("root mean squared error (`rmse`)", "lower is better", "the mean absolute error (`mae`)"),
        _ => ("accuracy (`accuracy`)", "higher is better", "the macro-averaged F1 score (`f1_macro`)"),
    };
    let mut parts = vec![
        format!("{}.", spec.title),
        format!(
            "The goal is to {}. The data is a small tabular dataset from the Hugging Face Hub ({}), already split into training, \
             validation and test files.",
            spec.goal, spec.dataset_id
        ),
    ];
    parts.extend(twist_paragraph(spec).map(str::to_string));
    parts.push("{dataset_docs}".to_string());
    if spec.kind == Kind::Ranking {
        let relevance = match spec.relevant_class {
            Some(index) => format!("a test row is relevant when its hidden `{}` is {index}", spec.target),
            None => format!("the relevance of a test row is its hidden `{}` minus the smallest value among the test rows", spec.target),
        };
        parts.push(format!(
            "This is a ranking task. In the training and validation files `{}` is {}. The column to predict is `{}`: a score for every \
             test row, higher meaning ranked earlier; {relevance}. Submissions are ranked by {metric}, where {direction}; {secondary} is \
             reported as well.",
            spec.target,
            target_meaning(spec),
            spec.target
        ));
    } else {
        parts.push(format!(
            "The column to predict is `{}`: {}. Submissions are ranked by {metric} on the hidden test labels, where {direction}; \
             {secondary} is reported as well.",
            spec.target,
            target_meaning(spec)
        ));
    }
    let predicted = match spec.kind {
        Kind::Ranking => "the row's score, a finite number",
        _ if spec.numeric_target => "the predicted value",
        _ => "the predicted class index",
    };
    parts.push(format!(
        "SUBMISSION FORMAT:\nWrite the predictions for every row of data/test.csv to a file named submission.csv in the workspace root, \
         with exactly two columns: `id` (copied from data/test.csv) and `{}` ({predicted}). The file has a header line and one row per \
         test row; evaluate.py rejects files with missing, duplicate or unexpected ids.",
        spec.target
    ));
    let text = parts.into_iter().map(|p| if p == "{dataset_docs}" { p } else { without_braces(&p) }).collect::<Vec<_>>().join("\n\n");
    debug_assert_eq!(text.matches('{').count(), 1);
    text
}

fn dataset_description(spec: &Spec) -> String {
    let mut out = String::new();
    let origin = match spec.rows {
        Some(rows) => format!(
            "Source: Hugging Face dataset {} (config {}, split {}, {rows} rows), shuffled with a fixed seed and split {} into the files \
             below.",
            spec.dataset_id,
            spec.config,
            spec.split,
            spec.split_shares()
        ),
        None => format!(
            "Source: Hugging Face dataset {} (config {}, split {}), shuffled with a fixed seed and split {} into the files below.",
            spec.dataset_id,
            spec.config,
            spec.split,
            spec.split_shares()
        ),
    };
    out.push_str(&format!("{}\n{origin}\n\nFILES (in data/):\n", spec.about));
    let n = spec.features.len();
    let (train, validation, test) = match spec.rows.map(|rows| spec.split_sizes(rows)) {
        Some((a, b, c)) => (format!("{a} "), format!("{b} "), format!("{c} ")),
        None => Default::default(),
    };
    let train_note = match (spec.twist, spec.numeric_target) {
        (Twist::FewLabels, _) => format!(" Only about a quarter of the rows are labelled; `{}` is empty for the others.", spec.target),
        (Twist::ClassImbalance, false) => " Every class but the most frequent one is down-sampled, so the file has fewer rows.".to_string(),
        (Twist::ClassImbalance, true) => {
            " Most rows with a target in the top quartile are removed, so the file has fewer rows.".to_string()
        }
        (Twist::NoisyLabels, false) => " About a tenth of the labels are wrong.".to_string(),
        (Twist::NoisyLabels, true) => " About a tenth of the targets carry heavy noise.".to_string(),
        (Twist::DistributionShift, _) => " The rows come from the lower four fifths of the shift feature's range.".to_string(),
        _ => String::new(),
    };
    let train_rows = if matches!(spec.twist, Twist::ClassImbalance) { format!("up to {train}") } else { train };
    out.push_str(&format!(
        "- train.csv: {train_rows}training rows with `id`, the {n} feature columns and `{}`.{train_note}\n",
        spec.target
    ));
    out.push_str(&format!("- validation.csv: {validation}labelled rows with the same columns, for model selection.\n"));
    let test_note =
        if spec.twist == Twist::DistributionShift { " They are the rows with the highest values of the shift feature." } else { "" };
    out.push_str(&format!(
        "- test.csv: {test}rows with `id` and the feature columns but no `{}`: the rows to predict.{test_note}\n",
        spec.target
    ));
    out.push_str("\nCOLUMNS:\n- `id` (int64): row identifier, unique across the three files.\n");
    if n <= 16 {
        for (name, dtype) in &spec.features {
            out.push_str(&format!("- `{name}` ({dtype}): feature.\n"));
        }
    } else {
        let dtypes: std::collections::BTreeSet<&str> = spec.features.iter().map(|(_, d)| d.as_str()).collect();
        let names: Vec<String> = spec.features.iter().map(|(name, _)| format!("`{name}`")).collect();
        out.push_str(&format!("- {n} feature columns ({}): {}.\n", dtypes.into_iter().collect::<Vec<_>>().join(", "), names.join(", ")));
    }
    out.push_str(&format!("- `{}` ({}): the target, {}.\n", spec.target, spec.target_dtype, target_meaning(spec)));
    without_braces(&out)
}

/// The clean bundle for a spec.
pub(crate) fn bundle(spec: &Spec) -> TaskBundle {
    let (metrics, priority, direction) = match spec.kind {
        Kind::Ranking => (vec!["ndcg_at_10".to_string(), "ndcg".to_string()], "ndcg_at_10", Direction::Maximize),
        _ if spec.numeric_target => (vec!["rmse".to_string(), "mae".to_string()], "rmse", Direction::Minimize),
        _ => (vec!["accuracy".to_string(), "f1_macro".to_string()], "accuracy", Direction::Maximize),
    };
    let files = BTreeMap::from([
        ("prepare.py".to_string(), python::prepare(spec)),
        ("baseline.py".to_string(), python::baseline(spec)),
        ("evaluate.py".to_string(), python::evaluate(spec)),
    ]);
    TaskBundle {
        name: spec.name.clone(),
        title: spec.title.clone(),
        description: description(spec),
        dataset_description: dataset_description(spec),
        priority_metric: priority.to_string(),
        direction,
        metrics,
        target_column: spec.target.clone(),
        training_timeout: TRAINING_TIMEOUT,
        files,
    }
}

/// A typo of one feature name: two adjacent letters swapped at the end of its longest run of
/// letters (`sepal_length_cm` -> `sepal_lenght_cm`), or a doubled letter for short names.
pub(crate) fn misspelling(features: &[(String, String)]) -> Option<(String, String)> {
    let longest_run = |name: &str| -> (usize, usize) {
        let chars: Vec<char> = name.chars().collect();
        let (mut best, mut start) = ((0, 0), 0);
        for i in 0..=chars.len() {
            if i == chars.len() || !chars[i].is_ascii_alphabetic() {
                if i - start > best.1 {
                    best = (start, i - start);
                }
                start = i + 1;
            }
        }
        best
    };
    // The feature with the longest run of letters; the first one in dataset order on a tie.
    let (_, name, (start, len)) = features
        .iter()
        .enumerate()
        .map(|(i, (name, _))| (i, name, longest_run(name)))
        .max_by(|a, b| a.2.1.cmp(&b.2.1).then(b.0.cmp(&a.0)))?;
    let mut chars: Vec<char> = name.chars().collect();
    let swapped = (2..=len).rev().map(|k| start + k - 2).find(|&i| chars[i] != chars[i + 1]);
    match swapped {
        Some(i) if len >= 3 => chars.swap(i, i + 1),
        _ => {
            let last = chars[chars.len() - 1];
            chars.push(last);
        }
    }
    let typo: String = chars.into_iter().collect();
    let exists = features.iter().any(|(n, _)| *n == typo);
    (!exists).then(|| (name.clone(), typo))
}

/// Puts `bug` into a clean bundle's scripts. Returns false when the bug does not apply.
pub(crate) fn inject(bug: Bug, spec: &Spec, files: &mut BTreeMap<String, String>) -> bool {
    fn edit(files: &mut BTreeMap<String, String>, file: &str, from: &str, to: &str) -> bool {
        let Some(text) = files.get_mut(file) else { return false };
        if !text.contains(from) {
            return false;
        }
        *text = text.replacen(from, to, 1);
        true
    }
    match bug {
        Bug::MisspelledColumn => match misspelling(&spec.features) {
            Some((name, typo)) => edit(files, "prepare.py", &python::py_str(&name), &python::py_str(&typo)),
            None => false,
        },
        Bug::MissingNumpyImport => edit(files, "baseline.py", "import numpy as np\n", ""),
        Bug::ExtraEvaluateOutput => edit(
            files,
            "evaluate.py",
            "    answers = read_answers()\n",
            "    answers = read_answers()\n    print(f\"Evaluating {len(answers[1])} rows\")\n",
        ),
        Bug::TargetInTestFile => edit(files, "prepare.py", "test.drop(columns=[TARGET]).to_csv(", "test.to_csv("),
        Bug::WrongAnswersPath => edit(files, "evaluate.py", "ANSWERS = \"data/answers.csv\"", "ANSWERS = \"data/answer.csv\""),
    }
}

pub(crate) fn answer(cfg: &SimConfig, user: &str) -> Result<String, String> {
    let (challenge_title, spec) = parse(cfg.seed, user)?;
    let mut bundle = bundle(&spec);
    if let Some(bug) = draft_bug(cfg, &challenge_title) {
        let applied = inject(bug, &spec, &mut bundle.files);
        debug_assert!(applied, "bug {bug:?} does not apply to the templates");
    }
    Ok(serde_json::to_string_pretty(&bundle).expect("serialisable"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::testing::render;
    use super::*;

    /// A codegen prompt for a mirror-like dataset, rendered from the real template.
    pub(crate) fn prompt(dataset: &str, task_type: &str, twist: &str, title: &str) -> String {
        let (features, target): (Vec<(&str, &str)>, serde_json::Value) = match dataset {
            "sklearn/iris" => (
                vec![
                    ("sepal_length_cm", "float64"),
                    ("sepal_width_cm", "float64"),
                    ("petal_length_cm", "float64"),
                    ("petal_width_cm", "float64"),
                ],
                serde_json::json!({"name": "target", "dtype": "int64", "class_names": ["setosa", "versicolor", "virginica"]}),
            ),
            "sklearn/diabetes" => (
                vec![("age", "float64"), ("sex", "float64"), ("bmi", "float64"), ("bp", "float64"), ("s1", "float64"), ("s2", "float64")],
                serde_json::json!({"name": "target", "dtype": "float64"}),
            ),
            _ => (
                (0..64).map(|i| (Box::leak(format!("pixel_{}_{}", i / 8, i % 8).into_boxed_str()) as &str, "float64")).collect(),
                serde_json::json!({"name": "target", "dtype": "int64", "class_names": (0..10).map(|i| i.to_string()).collect::<Vec<_>>()}),
            ),
        };
        let mut feats: Vec<serde_json::Value> = features.iter().map(|(n, d)| serde_json::json!({"name": n, "dtype": d})).collect();
        feats.push(target);
        let idea = serde_json::json!({
            "sample": {"domain": "botany", "task_type": task_type, "modality": "tabular", "twist": twist},
            "title": title, "idea": "An idea."
        });
        let meta = serde_json::json!({
            "id": dataset, "revision": "abc", "config": "default", "splits": ["train"], "features": feats,
            "num_rows": {"train": 150}, "num_bytes_parquet": 5000, "description": "A dataset."
        });
        render(
            "codegen_user",
            &[
                ("idea_json", &serde_json::to_string_pretty(&idea).unwrap()),
                ("dataset_json", &serde_json::to_string_pretty(&meta).unwrap()),
                ("raw_files", "- raw/train/0000.parquet"),
            ],
        )
    }

    fn clean(seed: u64) -> SimConfig {
        SimConfig { seed, ..SimConfig::default() }
    }

    fn bundle_of(cfg: &SimConfig, user: &str) -> TaskBundle {
        serde_json::from_str(&answer(cfg, user).unwrap()).unwrap()
    }

    #[test]
    fn writes_a_bundle_that_follows_the_contract() {
        for (dataset, task, twist) in [
            ("sklearn/iris", "classification", "few labels"),
            ("sklearn/diabetes", "regression", "noisy labels"),
            ("sklearn/digits", "classification", "compute budget"),
        ] {
            let b = bundle_of(&clean(1), &prompt(dataset, task, twist, "Some Challenge"));
            assert!(gymforge_actors::validate::static_problems(&b).is_empty(), "{:?}", gymforge_actors::validate::static_problems(&b));
            assert_eq!(b.description.matches("{dataset_docs}").count(), 1);
            assert_eq!(b.description.matches(['{', '}']).count(), 2, "{}", b.description);
            assert!(b.description.contains("SUBMISSION FORMAT:"));
            assert!(b.description.rsplit("\n\n").next().unwrap().starts_with("SUBMISSION FORMAT:"));
            assert!(b.description.contains("`target`"));
            assert_eq!(b.target_column, "target");
            assert_eq!(b.training_timeout, 600);
            if task == "regression" {
                assert_eq!((b.priority_metric.as_str(), b.direction), ("rmse", Direction::Minimize));
                assert_eq!(b.metrics, vec!["rmse", "mae"]);
                assert!(b.description.contains("lower is better"));
            } else {
                assert_eq!((b.priority_metric.as_str(), b.direction), ("accuracy", Direction::Maximize));
                assert_eq!(b.metrics, vec!["accuracy", "f1_macro"]);
                assert!(b.description.contains("higher is better"));
            }
            let baseline = &b.files["baseline.py"];
            assert_eq!(baseline.lines().filter(|l| l.trim_start().starts_with("model = ")).count(), 1);
            let evaluate = &b.files["evaluate.py"];
            assert!(evaluate.contains("--submission_file") && evaluate.contains("warnings.filterwarnings(\"ignore\")"));
            assert!(evaluate.contains("data/answers.csv"));
            assert!(!baseline.contains("answers.csv"));
            assert!(b.files["prepare.py"].contains("raw/train/0000.parquet"));
        }
    }

    #[test]
    fn twists_change_only_the_training_data() {
        let few = bundle_of(&clean(1), &prompt("sklearn/iris", "classification", "few labels", "T"));
        assert!(few.files["prepare.py"].contains("train = hide_labels(train, rng)"));
        assert!(few.files["baseline.py"].contains("notna()"));
        let imb = bundle_of(&clean(1), &prompt("sklearn/iris", "classification", "class imbalance", "T"));
        assert!(imb.files["prepare.py"].contains("train = imbalance_classes(train, rng)"));
        let noisy = bundle_of(&clean(1), &prompt("sklearn/iris", "classification", "noisy labels", "T"));
        assert!(noisy.files["prepare.py"].contains("train = flip_labels(train, rng)"));
        let budget = bundle_of(&clean(1), &prompt("sklearn/iris", "classification", "compute budget", "T"));
        assert!(budget.description.contains("Compute budget"));
        let plain = bundle_of(&clean(1), &prompt("sklearn/iris", "classification", "none", "T"));
        assert!(!plain.files["prepare.py"].contains("def hide_labels"));
        for b in [few, imb, noisy, budget, plain] {
            assert!(b.files["prepare.py"].contains("test.drop(columns=[TARGET]).to_csv(DATA_DIR / \"test.csv\""));
        }
    }

    #[test]
    fn titles_and_twists_are_written_for_the_data() {
        // A twist is worded for the target: a regression has no classes.
        let reg = bundle_of(&clean(1), &prompt("sklearn/diabetes", "regression", "class imbalance", "Leaf Morphotype Identification"));
        assert_eq!(reg.title, "Diabetes progression regression with rare high targets");
        assert_eq!(reg.name, "diabetesProgressionRegressionRareHighTargets");
        assert!(reg.description.starts_with("Diabetes progression regression with rare high targets.\n"));
        let noisy = bundle_of(&clean(1), &prompt("sklearn/diabetes", "regression", "noisy labels", "T"));
        assert!(noisy.title.ends_with("with noisy targets"), "{}", noisy.title);
        let texts = format!("{} {} {}", reg.title, reg.description, reg.dataset_description).to_lowercase();
        assert!(!texts.contains("class"), "{texts}");
        // The title names the dataset, whatever the challenge was called.
        let iris = bundle_of(&clean(1), &prompt("sklearn/iris", "classification", "class imbalance", "Leaf Morphotype Identification"));
        assert_eq!(iris.title, "Iris species classification under class imbalance");
        // Ranking on iris orders by its numeric column, petal width.
        let ranking = bundle_of(&clean(1), &prompt("sklearn/iris", "ranking", "none", "T"));
        assert_eq!((ranking.title.as_str(), ranking.target_column.as_str()), ("Iris petal width ranking", "petal_width_cm"));
        assert!(ranking.description.contains("minus the smallest value"));
    }

    #[test]
    fn small_datasets_get_a_larger_test_split_and_a_simple_baseline() {
        // 150 rows: half for training, 40% for testing; the shifted split keeps its top fifth.
        let small = bundle_of(&clean(1), &prompt("sklearn/iris", "classification", "none", "T"));
        assert!(small.dataset_description.contains("split 50/10/40"), "{}", small.dataset_description);
        assert!(small.files["prepare.py"].contains("TRAIN_PERCENT = 50\nVALIDATION_PERCENT = 10\n"));
        assert!(small.dataset_description.contains("- train.csv: 75 training rows"), "{}", small.dataset_description);
        let shifted = bundle_of(&clean(1), &prompt("sklearn/iris", "classification", "distribution shift", "T"));
        assert!(shifted.dataset_description.contains("split 70/10/20"));
        assert!(shifted.files["prepare.py"].contains("TRAIN_PERCENT = 70\n"));
        // The classification baseline keeps the best quarter of the features, at least two.
        assert!(small.files["baseline.py"].contains("K_FEATURES = 2 "));
        let digits = bundle_of(&clean(1), &prompt("sklearn/digits", "classification", "none", "T"));
        assert!(digits.files["baseline.py"].contains("K_FEATURES = 16 "));
        assert_eq!([1, 2, 3, 4, 13, 30, 64].map(python::baseline_features), [1, 2, 2, 2, 3, 7, 16]);
    }

    #[test]
    fn every_bug_applies_to_every_dataset() {
        for dataset in ["sklearn/iris", "sklearn/diabetes", "sklearn/digits"] {
            let task = if dataset == "sklearn/diabetes" { "regression" } else { "classification" };
            let (_, spec) = parse(1, &prompt(dataset, task, "none", "T")).unwrap();
            for bug in Bug::ALL {
                let mut files = bundle(&spec).files;
                assert!(inject(bug, &spec, &mut files), "{bug:?} on {dataset}");
                assert_ne!(files, bundle(&spec).files);
            }
        }
    }

    #[test]
    fn misspellings_look_like_typos() {
        let f = |names: &[&str]| names.iter().map(|n| (n.to_string(), "float64".to_string())).collect::<Vec<_>>();
        assert_eq!(misspelling(&f(&["sepal_length_cm", "petal_width_cm"])).unwrap().1, "sepal_lenght_cm");
        assert_eq!(misspelling(&f(&["pixel_0_0", "pixel_0_1"])).unwrap().1, "pixle_0_0");
        assert_eq!(misspelling(&f(&["age", "bp"])).unwrap().1, "aeg");
        assert_eq!(misspelling(&f(&["x1", "x2"])).unwrap().1, "x11");
    }

    #[test]
    fn bug_rate_is_honoured() {
        let cfg = SimConfig { seed: 3, buggy_draft_rate: 0.5, ..SimConfig::default() };
        let buggy = (0..400).filter(|i| draft_bug(&cfg, &format!("challenge {i}")).is_some()).count();
        assert!((150..=250).contains(&buggy), "{buggy}");
        let none = SimConfig { buggy_draft_rate: 0.0, ..cfg.clone() };
        assert!((0..100).all(|i| draft_bug(&none, &format!("c{i}")).is_none()));
        let all = SimConfig { buggy_draft_rate: 1.0, ..cfg };
        let kinds: std::collections::BTreeSet<&str> = (0..100).filter_map(|i| draft_bug(&all, &format!("c{i}"))).map(Bug::as_str).collect();
        assert_eq!(kinds.len(), 5);
    }

    #[test]
    fn deterministic() {
        let cfg = SimConfig { seed: 9, buggy_draft_rate: 0.5, ..SimConfig::default() };
        let u = prompt("sklearn/iris", "classification", "none", "Iris");
        assert_eq!(answer(&cfg, &u).unwrap(), answer(&cfg, &u).unwrap());
    }
}
