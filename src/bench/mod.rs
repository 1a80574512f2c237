//! `gymforge bench`: benchmarks that measure against bounds taken in the same run and print
//! the ratios.

pub mod llm;
pub mod pipeline;
pub mod shared_llm;
pub mod store;

use serde_json::{Value, json};

/// What a bench prints: a JSON document, a table for people, and whether every target was met.
pub struct BenchReport {
    pub json: Value,
    pub table: String,
    pub targets_met: bool,
}

/// One target of a bench: a measured value against its bound, and their ratio.
pub struct Target {
    pub name: &'static str,
    pub value: f64,
    /// How the value must compare with the bound: ">=", "<=" or "=".
    pub relation: &'static str,
    pub bound: f64,
    pub met: bool,
}

impl Target {
    pub fn at_least(name: &'static str, value: f64, bound: f64) -> Target {
        Target { name, value, relation: ">=", bound, met: value >= bound }
    }
    pub fn at_most(name: &'static str, value: f64, bound: f64) -> Target {
        Target { name, value, relation: "<=", bound, met: value <= bound }
    }
    pub fn zero(name: &'static str, value: f64, met: bool) -> Target {
        Target { name, value, relation: "=", bound: 0.0, met }
    }
    /// Value over bound (none for a bound of zero).
    pub fn ratio(&self) -> Option<f64> {
        (self.bound != 0.0).then(|| self.value / self.bound)
    }
}

pub fn targets_json(targets: &[Target]) -> Value {
    targets
        .iter()
        .map(|t| json!({ "name": t.name, "value": t.value, "relation": t.relation, "bound": t.bound, "ratio": t.ratio(), "met": t.met }))
        .collect()
}

pub fn targets_table(targets: &[Target]) -> String {
    let mut table = format!("{:<32} {:>12} {:>12} {:>8}  met\n", "target", "measured", "bound", "ratio");
    for t in targets {
        let ratio = t.ratio().map(|r| format!("{r:.3}")).unwrap_or_else(|| "-".into());
        let bound = format!("{} {}", t.relation, t.bound);
        table.push_str(&format!("{:<32} {:>12.3} {bound:>12} {ratio:>8}  {}\n", t.name, t.value, if t.met { "yes" } else { "NO" }));
    }
    table
}
