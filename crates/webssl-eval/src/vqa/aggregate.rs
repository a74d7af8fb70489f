//! Group averages and the overall "Average VQA" (docs/reference/evaluation.md A.3,
//! docs/reference/webssl-paper.md §6.1).
//!
//! Every benchmark goes to a 0–100 scale ([`super::Benchmark::to_percent`]: MME-P / 20, OCRBench
//! already a % of its 1000 questions), each group is the arithmetic mean of its 4 benchmarks, and the
//! overall average is the mean of the 4 group means (= the mean of all 16, since groups are equal in
//! size). A group mean is only reported when all 4 of its benchmarks are present, and the overall only
//! when all 16 are: a "mean" over a subset would not be comparable with the paper's columns. The
//! table also shows the partial mean of an incomplete group, marked as such.
//!
//! [`consistent_with_rounding`] is the check behind the paper test: a published average is
//! reproduced if the mean of the published (rounded) inputs lies within the inputs' rounding error
//! plus the output's rounding of it.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::benchmarks::Benchmark;
use crate::error::{EvalError, Result};

/// The paper's four benchmark groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    General,
    Knowledge,
    OcrChart,
    VisionCentric,
}

impl Group {
    pub const ALL: [Group; 4] = [
        Group::General,
        Group::Knowledge,
        Group::OcrChart,
        Group::VisionCentric,
    ];

    /// The paper's column name.
    pub fn display_name(self) -> &'static str {
        match self {
            Group::General => "General",
            Group::Knowledge => "Knowledge",
            Group::OcrChart => "OCR & Chart",
            Group::VisionCentric => "Vision-Centric",
        }
    }

    /// The group's benchmarks in table order.
    pub fn benchmarks(self) -> impl Iterator<Item = Benchmark> {
        Benchmark::ALL
            .into_iter()
            .filter(move |b| b.group() == self)
    }
}

/// One group's line in the table.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GroupScore {
    pub group: Group,
    /// Mean of the 4 benchmarks on the 0–100 scale; `None` unless all 4 are present.
    pub mean: Option<f64>,
    /// Mean over the benchmarks that are present (for display of an incomplete group).
    pub partial_mean: Option<f64>,
    pub present: usize,
}

/// Group table for a set of benchmark scores.
#[derive(Debug, Clone, Serialize)]
pub struct GroupTable {
    /// Native-scale scores (MME-P 0–2000) as given.
    pub scores: BTreeMap<Benchmark, f64>,
    pub groups: Vec<GroupScore>,
    /// Mean of the 4 group means; `None` unless all 16 benchmarks are present.
    pub overall: Option<f64>,
}

impl GroupTable {
    /// Build from native-scale scores (e.g. `BenchmarkReport::score`). A benchmark given twice or a
    /// non-finite score is an error.
    pub fn new(scores: impl IntoIterator<Item = (Benchmark, f64)>) -> Result<Self> {
        let mut map = BTreeMap::new();
        for (b, s) in scores {
            if !s.is_finite() {
                return Err(EvalError::Aggregate(format!(
                    "{b}: score {s} is not finite"
                )));
            }
            if map.insert(b, s).is_some() {
                return Err(EvalError::Aggregate(format!("{b} given more than once")));
            }
        }
        let groups: Vec<GroupScore> = Group::ALL
            .into_iter()
            .map(|g| {
                let vals: Vec<f64> = g
                    .benchmarks()
                    .filter_map(|b| map.get(&b).map(|&s| b.to_percent(s)))
                    .collect();
                let partial_mean =
                    (!vals.is_empty()).then(|| vals.iter().sum::<f64>() / vals.len() as f64);
                GroupScore {
                    group: g,
                    mean: if vals.len() == 4 { partial_mean } else { None },
                    partial_mean,
                    present: vals.len(),
                }
            })
            .collect();
        let means: Option<Vec<f64>> = groups.iter().map(|g| g.mean).collect();
        let overall = means.map(|m| overall_from_groups([m[0], m[1], m[2], m[3]]));
        Ok(Self {
            scores: map,
            groups,
            overall,
        })
    }

    pub fn group(&self, g: Group) -> &GroupScore {
        // `groups` is built from Group::ALL in order.
        &self.groups[Group::ALL.iter().position(|&x| x == g).unwrap_or(0)]
    }

    /// Plain-text table: one line per benchmark, then the groups and the average.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<16} {:<15} {:>9} {:>7}",
            "benchmark", "group", "score", "%"
        );
        for g in Group::ALL {
            for b in g.benchmarks() {
                match self.scores.get(&b) {
                    Some(&s) => {
                        let _ = writeln!(
                            out,
                            "{:<16} {:<15} {:>9.2} {:>7.2}",
                            b.display_name(),
                            g.display_name(),
                            s,
                            b.to_percent(s)
                        );
                    }
                    None => {
                        let _ = writeln!(
                            out,
                            "{:<16} {:<15} {:>9} {:>7}",
                            b.display_name(),
                            g.display_name(),
                            "-",
                            "-"
                        );
                    }
                }
            }
        }
        let _ = writeln!(out, "{}", "-".repeat(50));
        for gs in &self.groups {
            let v = match (gs.mean, gs.partial_mean) {
                (Some(m), _) => format!("{m:.2}"),
                (None, Some(p)) => format!("{p:.2} (partial: {}/4)", gs.present),
                (None, None) => "-".to_string(),
            };
            let _ = writeln!(out, "{:<32} {v}", gs.group.display_name());
        }
        let avg = self.overall.map_or_else(
            || format!("- ({} of 16 benchmarks)", self.scores.len()),
            |o| format!("{o:.2}"),
        );
        let _ = writeln!(out, "{:<32} {avg}", "Average");
        out
    }
}

/// The overall average from the four group means (General, Knowledge, OCR & Chart, Vision-Centric).
pub fn overall_from_groups(groups: [f64; 4]) -> f64 {
    groups.iter().sum::<f64>() / 4.0
}

/// Whether `published` (printed with `published_decimals` decimals) is the rounding of the mean of
/// true values that were printed as `inputs` with `input_decimals` decimals: the mean of the rounded
/// inputs is off by at most half an input unit, the published value by at most half an output unit.
/// A tiny epsilon absorbs binary representation error of the decimal inputs.
pub fn consistent_with_rounding(
    inputs: &[f64],
    input_decimals: u32,
    published: f64,
    published_decimals: u32,
) -> bool {
    if inputs.is_empty() {
        return false;
    }
    let m = inputs.iter().sum::<f64>() / inputs.len() as f64;
    let half = |d: u32| 0.5 * 10f64.powi(-(d as i32));
    (m - published).abs() <= half(input_decimals) + half(published_decimals) + 1e-9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_table_means() {
        let scores: Vec<(Benchmark, f64)> = Benchmark::ALL
            .iter()
            .enumerate()
            .map(|(i, &b)| {
                (
                    b,
                    if b == Benchmark::Mme {
                        1600.0
                    } else {
                        i as f64
                    },
                )
            })
            .collect();
        let t = GroupTable::new(scores).unwrap();
        // General: 80 (MME-P/20), 1, 2, 3.
        assert_eq!(t.group(Group::General).mean, Some(21.5));
        assert_eq!(
            t.group(Group::OcrChart).mean,
            Some((8.0 + 9.0 + 10.0 + 11.0) / 4.0)
        );
        let expected = (21.5 + 5.5 + 9.5 + 13.5) / 4.0;
        assert_eq!(t.overall, Some(expected));
        assert!(t.render().contains("Average"));
    }

    #[test]
    fn incomplete_groups_have_no_mean() {
        let t = GroupTable::new([(Benchmark::Gqa, 60.0), (Benchmark::ChartQa, 30.0)]).unwrap();
        assert_eq!(t.group(Group::General).mean, None);
        assert_eq!(t.group(Group::General).partial_mean, Some(60.0));
        assert_eq!(t.overall, None);
        assert!(t.render().contains("partial: 1/4"));
        assert!(GroupTable::new([(Benchmark::Gqa, 1.0), (Benchmark::Gqa, 2.0)]).is_err());
        assert!(GroupTable::new([(Benchmark::Gqa, f64::NAN)]).is_err());
    }
}
