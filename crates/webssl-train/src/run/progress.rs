//! One-line training progress: step/total, loss terms, lr, samples/s, loader throughput and wait,
//! ETA from this (re)start's own throughput.
//!
//! On a terminal it is an `indicatif` bar redrawn in place; when stderr is not a terminal (SLURM
//! logs, `nohup`, CI) it logs the same line through `tracing` every N steps instead, so log
//! files get a readable line per interval rather than thousands of carriage returns.
//!
//! ETA: measured from the first update of *this process* (not from step 0, not from a restored
//! counter), so a resumed run does not claim a throughput it never had (burn#814), and the first
//! step's one-off costs (allocation, kernel selection) are excluded: the ETA appears from the
//! second update on.
//!
//! Reference: docs/design.md "Logs and progress"; docs/reference/ecosystem-and-style.md §2.10.7.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    /// An in-place bar on stderr.
    Bar,
    /// A `tracing::info!` line every `every_steps` steps (and at the first and last step).
    Log { every_steps: u64 },
    /// Nothing (tests, library use).
    Hidden,
}

impl ProgressMode {
    /// A bar when stderr is a terminal, else a log line about every 1% of `total_steps`
    /// (at least every step, at most every 1000 steps).
    pub fn auto(total_steps: u64) -> Self {
        if std::io::stderr().is_terminal() {
            ProgressMode::Bar
        } else {
            ProgressMode::Log {
                every_steps: (total_steps / 100).clamp(1, 1000),
            }
        }
    }
}

/// What one update reports. `step` is the number of completed steps.
#[derive(Debug, Clone, Copy)]
pub struct ProgressUpdate<'a> {
    pub step: u64,
    /// Loss terms in display order, e.g. `[("loss", 8.1), ("dino", 5.0), ("ibot", 3.1)]`.
    pub terms: &'a [(&'a str, f64)],
    pub lr: f64,
    /// Training throughput, samples (images) per second.
    pub samples_per_s: f64,
    /// What the data loader alone can deliver, images per second, if measured.
    pub loader_img_per_s: Option<f64>,
    /// Fraction of step time spent waiting for the loader (0..1), if measured.
    pub loader_wait: Option<f64>,
}

#[derive(Debug)]
struct State {
    /// (step, time) of the first update: the ETA baseline.
    first: Option<(u64, Instant)>,
    last_logged: Option<u64>,
}

/// The progress display of one training run.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    mode: ProgressMode,
    total: u64,
    state: Mutex<State>,
}

impl Progress {
    /// Progress from `start_step` (0, or the resumed checkpoint's step) to `total` steps, shown
    /// as [`ProgressMode::auto`] decides.
    pub fn new(start_step: u64, total: u64) -> Self {
        Self::with_mode(start_step, total, ProgressMode::auto(total))
    }

    pub fn with_mode(start_step: u64, total: u64, mode: ProgressMode) -> Self {
        let bar = (mode == ProgressMode::Bar).then(|| {
            let bar =
                ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(4));
            bar.set_style(
                ProgressStyle::with_template("{bar:24.cyan/blue} {msg}")
                    .expect("static template is valid")
                    .progress_chars("=> "),
            );
            bar.set_position(start_step.min(total));
            bar
        });
        Progress {
            bar,
            mode,
            total,
            state: Mutex::new(State {
                first: None,
                last_logged: None,
            }),
        }
    }

    pub fn mode(&self) -> ProgressMode {
        self.mode
    }

    /// Shows one update (redraws the bar, or logs when due).
    pub fn update(&self, u: &ProgressUpdate<'_>) {
        let now = Instant::now();
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (first_step, first_time) = *st.first.get_or_insert((u.step, now));
        let eta = eta(
            first_step,
            now.duration_since(first_time),
            u.step,
            self.total,
        );
        match self.mode {
            ProgressMode::Hidden => {}
            ProgressMode::Bar => {
                if let Some(bar) = &self.bar {
                    bar.set_position(u.step.min(self.total));
                    bar.set_message(format_line(u, self.total, eta));
                }
            }
            ProgressMode::Log { every_steps } => {
                let due = match st.last_logged {
                    None => true,
                    Some(last) => u.step >= last + every_steps.max(1) || u.step >= self.total,
                };
                if due {
                    st.last_logged = Some(u.step);
                    tracing::info!("{}", format_line(u, self.total, eta));
                }
            }
        }
    }

    /// Prints a line above the bar (or logs it) without tearing the bar.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => tracing::info!("{line}"),
        }
    }

    /// Leaves the final state of the bar on screen.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }
}

/// Remaining time at the rate observed since `first_step` (`elapsed` ago); `None` until at least
/// one step has been timed.
pub fn eta(first_step: u64, elapsed: Duration, step: u64, total: u64) -> Option<Duration> {
    let done = step.checked_sub(first_step).filter(|&d| d > 0)?;
    if elapsed.is_zero() {
        return None;
    }
    let per_step = elapsed.as_secs_f64() / done as f64;
    Some(Duration::from_secs_f64(
        per_step * total.saturating_sub(step) as f64,
    ))
}

/// `step 1200/10000 (12.0%) | loss 8.123 dino 5.100 | lr 1.20e-4 | 512 img/s | loader 1830 img/s, wait 3.0% | ETA 1h02m`
pub fn format_line(u: &ProgressUpdate<'_>, total: u64, eta: Option<Duration>) -> String {
    let pct = if total > 0 {
        100.0 * u.step as f64 / total as f64
    } else {
        100.0
    };
    let mut s = format!("step {}/{} ({pct:.1}%)", u.step, total);
    if !u.terms.is_empty() {
        s.push_str(" |");
        for (name, v) in u.terms {
            s.push_str(&format!(" {name} {}", fmt_value(*v)));
        }
    }
    s.push_str(&format!(
        " | lr {:.2e} | {:.0} img/s",
        u.lr, u.samples_per_s
    ));
    match (u.loader_img_per_s, u.loader_wait) {
        (Some(r), Some(w)) => {
            s.push_str(&format!(" | loader {r:.0} img/s, wait {:.1}%", 100.0 * w))
        }
        (Some(r), None) => s.push_str(&format!(" | loader {r:.0} img/s")),
        (None, Some(w)) => s.push_str(&format!(" | loader wait {:.1}%", 100.0 * w)),
        (None, None) => {}
    }
    s.push_str(" | ETA ");
    s.push_str(&eta.map_or_else(|| "--".to_string(), fmt_duration));
    s
}

/// 4 significant digits in a fixed width-ish form; tiny or huge values in scientific notation.
fn fmt_value(v: f64) -> String {
    let a = v.abs();
    if v == 0.0 || (1e-3..1e5).contains(&a) {
        format!("{v:.4}")
    } else {
        format!("{v:.3e}")
    }
}

/// `42s`, `3m05s`, `1h02m`, `2d03h`.
fn fmt_duration(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86400, (s % 86400) / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_uses_this_runs_rate_from_the_first_update() {
        // Resumed at 9000 of 10000; 10 steps took 5 s since the first update: 990 left at 0.5 s.
        assert_eq!(
            eta(9000, Duration::from_secs(5), 9010, 10000),
            Some(Duration::from_secs(495))
        );
        assert_eq!(
            eta(9000, Duration::from_secs(5), 9000, 10000),
            None,
            "nothing timed yet"
        );
        assert_eq!(eta(9000, Duration::ZERO, 9001, 10000), None);
        assert_eq!(
            eta(0, Duration::from_secs(10), 100, 100),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn line_shows_every_field() {
        let terms = [("loss", 8.12345), ("dino", 5.1), ("koleo", -0.000012)];
        let u = ProgressUpdate {
            step: 1200,
            terms: &terms,
            lr: 1.2e-4,
            samples_per_s: 512.4,
            loader_img_per_s: Some(1830.0),
            loader_wait: Some(0.031),
        };
        assert_eq!(
            format_line(&u, 10000, Some(Duration::from_secs(3725))),
            "step 1200/10000 (12.0%) | loss 8.1235 dino 5.1000 koleo -1.200e-5 | lr 1.20e-4 | 512 img/s | loader 1830 img/s, wait 3.1% | ETA 1h02m"
        );
        let u = ProgressUpdate {
            terms: &[],
            loader_img_per_s: None,
            loader_wait: None,
            ..u
        };
        assert_eq!(
            format_line(&u, 10000, None),
            "step 1200/10000 (12.0%) | lr 1.20e-4 | 512 img/s | ETA --"
        );
        assert_eq!(fmt_duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(fmt_duration(Duration::from_secs(42)), "42s");
        assert_eq!(
            fmt_duration(Duration::from_secs(2 * 86400 + 3 * 3600 + 5)),
            "2d03h"
        );
    }

    #[test]
    fn log_mode_throttles_and_updates_are_safe_hidden() {
        let p = Progress::with_mode(0, 100, ProgressMode::Log { every_steps: 10 });
        let u = |step| ProgressUpdate {
            step,
            terms: &[],
            lr: 0.1,
            samples_per_s: 1.0,
            loader_img_per_s: None,
            loader_wait: None,
        };
        let mut logged = Vec::new();
        for s in 1..=100 {
            let before = p.state.lock().unwrap().last_logged;
            p.update(&u(s));
            if p.state.lock().unwrap().last_logged != before {
                logged.push(s);
            }
        }
        assert_eq!(logged, vec![1, 11, 21, 31, 41, 51, 61, 71, 81, 91, 100]);
        let h = Progress::with_mode(5, 10, ProgressMode::Hidden);
        h.update(&u(6));
        h.println("x");
        h.finish();
        assert_eq!(h.mode(), ProgressMode::Hidden);
        assert!(matches!(
            ProgressMode::auto(50),
            ProgressMode::Bar | ProgressMode::Log { every_steps: 1 }
        ));
    }
}
