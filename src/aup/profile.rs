//! Performance ratios, performance profiles and AUP of a score table, on a tau grid that the
//! Best Attempt and Last settings can share.

use gymforge_actors::model::Direction;

use super::scores::{ScoreTable, better};

/// Number of tau grid points (`linspace(0, max_tau, GRID_POINTS)`).
pub const GRID_POINTS: usize = 500;

/// Factor applied to the worst feasible ratio for infeasible methods (`1 + eps`, eps = 0.05).
pub const INFEASIBLE_FACTOR: f64 = 1.05;

/// Performance ratios of one table.
#[derive(Clone, Debug, PartialEq)]
struct Ratios {
    /// `ratio[task][method]`; `INFINITY` on a task where no method is feasible.
    ratio: Vec<Vec<f64>>,
    feasible: Vec<Vec<bool>>,
    /// Per task `ceil(worst * 1.05)`; `None` when no method is feasible.
    bound: Vec<Option<f64>>,
}

fn ratios(table: &ScoreTable) -> Ratios {
    let n_methods = table.methods.len();
    let mut out = Ratios { ratio: Vec::new(), feasible: Vec::new(), bound: Vec::new() };
    for (t, row) in table.scores.iter().enumerate() {
        let direction = table.directions[t];
        let baseline = table.baseline(t);
        let mut feasible: Vec<bool> = row
            .iter()
            .map(|s| match *s {
                Some(v) if v.is_finite() && v >= 0.0 => match (direction, baseline) {
                    (_, None) => true,
                    (Direction::Maximize, Some(b)) => v >= b,
                    (Direction::Minimize, Some(b)) => v <= b,
                },
                _ => false,
            })
            .collect();
        let best = row.iter().zip(&feasible).filter(|(_, f)| **f).filter_map(|(s, _)| *s).reduce(|a, b| better(direction, a, b));
        let mut ratio = vec![f64::INFINITY; n_methods];
        let mut bound = None;
        if let Some(best) = best {
            for m in 0..n_methods {
                if !feasible[m] {
                    continue;
                }
                let s = row[m].expect("feasible scores are present");
                let r = if s == best {
                    1.0
                } else {
                    match direction {
                        Direction::Maximize => best / s,
                        Direction::Minimize => s / best,
                    }
                };
                // A zero score against a positive best (or the reverse when minimizing) has no
                // finite ratio: such a method counts as infeasible.
                if r.is_finite() {
                    ratio[m] = r;
                } else {
                    feasible[m] = false;
                }
            }
            let worst = (0..n_methods).filter(|&m| feasible[m]).map(|m| ratio[m]).fold(1.0, f64::max);
            let penalty = worst * INFEASIBLE_FACTOR;
            for m in 0..n_methods {
                if !feasible[m] {
                    ratio[m] = penalty;
                }
            }
            bound = Some(penalty.ceil());
        }
        out.ratio.push(ratio);
        out.feasible.push(feasible);
        out.bound.push(bound);
    }
    out
}

/// `max_tau` for a set of tables compared on one scale: `log10` of the largest per-task bound
/// `ceil(worst * 1.05)` over all of them, rounded up to one decimal (0 when no task has a
/// feasible method).
pub fn max_tau(tables: &[&ScoreTable]) -> f64 {
    let largest = tables.iter().flat_map(|t| ratios(t).bound).flatten().fold(f64::NAN, f64::max);
    if largest.is_nan() { 0.0 } else { (largest.log10() * 10.0).ceil() / 10.0 }
}

/// `linspace(0, stop, n)` computed as numpy does: `i * (stop / (n - 1))`, last point = `stop`.
pub fn linspace(stop: f64, n: usize) -> Vec<f64> {
    match n {
        0 => Vec::new(),
        1 => vec![0.0],
        _ => {
            let step = stop / (n - 1) as f64;
            let mut grid: Vec<f64> = (0..n).map(|i| i as f64 * step + 0.0).collect();
            grid[n - 1] = stop;
            grid
        }
    }
}

/// Performance ratios, profiles and AUP of the methods of one table.
#[derive(Clone, Debug, PartialEq)]
pub struct AupResult {
    /// The scores the result was computed from.
    pub table: ScoreTable,
    /// `ratios[task][method]` (infeasible methods carry the 1.05 x worst penalty; `INFINITY`
    /// on a task with no feasible method).
    pub ratios: Vec<Vec<f64>>,
    /// `feasible[task][method]`.
    pub feasible: Vec<Vec<bool>>,
    /// Per task `ceil(worst * 1.05)`.
    pub tau_bounds: Vec<Option<f64>>,
    /// Upper end of the tau grid (log10 space).
    pub max_tau: f64,
    /// The tau grid, `linspace(0, max_tau, GRID_POINTS)`.
    pub taus: Vec<f64>,
    /// `profiles[method][i] = rho_method(taus[i])`.
    pub profiles: Vec<Vec<f64>>,
    /// AUP per method (same order as `table.methods`).
    pub aup: Vec<f64>,
}

impl AupResult {
    /// The AUP of a method.
    pub fn aup_of(&self, method: &str) -> Option<f64> {
        self.table.method_index(method).map(|m| self.aup[m])
    }

    /// Method indices by AUP, best first (ties by name).
    pub fn ranking(&self) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.aup.len()).collect();
        order.sort_by(|&a, &b| self.aup[b].total_cmp(&self.aup[a]).then_with(|| self.table.methods[a].cmp(&self.table.methods[b])));
        order
    }
}

/// Computes ratios, profiles and AUP of one table on the tau grid ending at `max_tau`.
pub fn compute_with_max_tau(table: &ScoreTable, max_tau: f64) -> AupResult {
    let Ratios { ratio, feasible, bound } = ratios(table);
    let taus = linspace(max_tau, GRID_POINTS);
    let n_tasks = table.tasks.len();
    let mut profiles = Vec::with_capacity(table.methods.len());
    let mut aup = Vec::with_capacity(table.methods.len());
    for m in 0..table.methods.len() {
        let logs: Vec<f64> = ratio.iter().map(|row| row[m].log10()).collect();
        let profile: Vec<f64> = taus
            .iter()
            .map(|&tau| if n_tasks == 0 { 0.0 } else { logs.iter().filter(|&&l| l <= tau).count() as f64 / n_tasks as f64 })
            .collect();
        let area = taus.windows(2).zip(&profile).map(|(w, rho)| (w[1] - w[0]) * rho).sum();
        profiles.push(profile);
        aup.push(area);
    }
    AupResult { table: table.clone(), ratios: ratio, feasible, tau_bounds: bound, max_tau, taus, profiles, aup }
}

/// Computes one table on its own scale (`max_tau` from this table alone).
pub fn compute(table: &ScoreTable) -> AupResult {
    compute_with_max_tau(table, max_tau(&[table]))
}

/// Computes the Best Attempt and Last tables on one shared scale: `max_tau` is taken over both
/// (as the published MLGym-Bench AUP tables are, with max_tau = 1.5).
pub fn compute_pair(best: &ScoreTable, last: &ScoreTable) -> (AupResult, AupResult) {
    let tau = max_tau(&[best, last]);
    (compute_with_max_tau(best, tau), compute_with_max_tau(last, tau))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_matches_numpy_construction() {
        let g = linspace(1.5, 500);
        assert_eq!(g.len(), 500);
        assert_eq!(g[0], 0.0);
        assert_eq!(g[499], 1.5);
        assert_eq!(g[1], 1.5 / 499.0);
        assert_eq!(g[250], 250.0 * (1.5 / 499.0));
    }
}
