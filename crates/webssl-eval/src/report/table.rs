//! The Markdown table of the collected runs.

use std::fmt::Write as _;

use super::RunRow;

/// `1.2B`, `300M`, `5.6K`, `12`: compact counts for tables and legends.
pub fn human_count(n: u64) -> String {
    let x = n as f64;
    let (v, suffix) = if x >= 1e9 {
        (x / 1e9, "B")
    } else if x >= 1e6 {
        (x / 1e6, "M")
    } else if x >= 1e3 {
        (x / 1e3, "K")
    } else {
        return n.to_string();
    };
    if v >= 100.0 {
        format!("{v:.0}{suffix}")
    } else {
        format!("{v:.1}{suffix}")
    }
}

fn md_cell(s: &str) -> String {
    s.replace('|', "\\|")
}

/// A metric value with 2 decimals, or 3 significant digits below 1 (RMSE 0.00835, not 0.01).
pub fn fmt_value(v: f64) -> String {
    if v != 0.0 && v.abs() < 1.0 {
        let decimals = (2.0 - v.abs().log10().floor()).clamp(2.0, 8.0) as usize;
        format!("{v:.decimals$}")
    } else {
        format!("{v:.2}")
    }
}

/// The Markdown table: one row per run, columns = run info then `metrics`.
pub fn markdown_table(runs: &[RunRow], metrics: &[String]) -> String {
    let mut s = String::from("| run | method | arch | params | samples seen | data |");
    for m in metrics {
        let _ = write!(s, " {} |", md_cell(m));
    }
    s.push_str("\n|---|---|---|---:|---:|---|");
    for _ in metrics {
        s.push_str("---:|");
    }
    s.push('\n');
    let opt = |o: Option<u64>| o.map_or("–".to_string(), human_count);
    for r in runs {
        let _ = write!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            md_cell(&r.name),
            md_cell(&r.method),
            md_cell(r.arch.as_deref().unwrap_or("–")),
            opt(r.params),
            opt(r.samples_seen),
            md_cell(r.data.as_deref().unwrap_or("–")),
        );
        for m in metrics {
            match r.metrics.get(m) {
                Some(v) => {
                    let _ = write!(s, " {} |", fmt_value(*v));
                }
                None => s.push_str(" – |"),
            }
        }
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_counts() {
        assert_eq!(human_count(12), "12");
        assert_eq!(human_count(5_500), "5.5K");
        assert_eq!(human_count(304_000_000), "304M");
        assert_eq!(human_count(2_000_000_000), "2.0B");
    }

    #[test]
    fn table_values() {
        assert_eq!(fmt_value(41.5), "41.50");
        assert_eq!(fmt_value(0.0), "0.00");
        assert_eq!(fmt_value(0.3070), "0.307");
        assert_eq!(fmt_value(0.008351), "0.00835");
        assert_eq!(fmt_value(-2.5), "-2.50");
    }
}
