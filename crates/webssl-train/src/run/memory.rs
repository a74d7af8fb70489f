//! Memory per process: the `--dry-run` estimate ([`MemoryEstimate`], the same parts for every
//! objective) and the resident memory measured while training (Linux `/proc/self/status`; `None`
//! elsewhere), which the end-of-run line puts next to the estimate.

use crate::run::sections::RunConfig;

/// The per-process memory of a run training `params` f32 parameters with AdamW, by part, in bytes.
/// Calibrated on measured peaks (`crates/webssl-cli/tests/pretrain.rs`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// What [`MemoryEstimate::replicated`] holds, e.g. "weights+grads+teacher".
    pub replicated_what: &'static str,
    /// Copies of the parameters every rank holds (weights, gradients, an EMA teacher).
    pub replicated: u64,
    /// The AdamW moments (two f32 copies), divided over the ranks with ZeRO-1.
    pub moments: u64,
    /// Ranks the moments are sharded over (1: not sharded).
    pub moment_shards: usize,
    /// Host buffers of the collectives (several processes only): three copies of the largest
    /// parameter (they go one parameter at a time).
    pub collective: u64,
    /// Temporaries of clipping, AdamW (and the EMA update): about one more copy of the parameters,
    /// plus what the objective adds.
    pub transient: u64,
    /// Activations kept for backward (the objective's estimate) of one forward: the micro-batch's,
    /// freed by its backward before the next forward of the step.
    pub activations: u64,
    /// The loader's decoded input views: its pool of per-sample buffers (`prefetch_samples` = 4
    /// batches, plus the batch being collated) and the collated batch with its recycled spare — about
    /// 7 micro-batches of input (`webssl_data::loader`, "Memory"). The readers' shuffle buffers of
    /// encoded samples are not counted: their size depends on the data.
    pub loader: u64,
    /// Gradient accumulation's running sum of the step's gradients beside a forward's fresh ones:
    /// one more f32 copy of the parameters when a step takes several forwards, else 0.
    pub accumulation: u64,
}

impl MemoryEstimate {
    /// The estimate for `params` parameters of which every rank keeps `copies` f32 copies
    /// (`replicated_what` names them), AdamW moments sharded as `run` says over `world_size`
    /// ranks, `largest` the element count of the largest parameter, `extra_transient` bytes of
    /// update temporaries beyond one copy of the parameters, and `activations` bytes.
    #[allow(clippy::too_many_arguments)]
    pub fn adamw(
        params: u64,
        replicated_what: &'static str,
        copies: u64,
        largest: u64,
        extra_transient: u64,
        activations: u64,
        run: &RunConfig,
        world_size: usize,
    ) -> Self {
        let moment_shards = if run.shard_optimizer_state {
            world_size.max(1)
        } else {
            1
        };
        MemoryEstimate {
            replicated_what,
            replicated: params * 4 * copies,
            moments: params * 4 * 2 / moment_shards as u64,
            moment_shards,
            collective: if world_size > 1 { largest * 4 * 3 } else { 0 },
            transient: params * 4 + extra_transient,
            activations,
            loader: 0,
            accumulation: 0,
        }
    }

    /// The estimate with the loader's buffers for forwards of `micro` images of `input_floats`
    /// f32 each (all views of one sample) ([`MemoryEstimate::loader`]).
    pub fn with_loader(mut self, micro: usize, input_floats: u64) -> Self {
        self.loader = 7 * micro as u64 * input_floats * 4;
        self
    }

    /// The estimate with the running gradient sum of `forwards` forwards per step over `params`
    /// parameters ([`MemoryEstimate::accumulation`]).
    pub fn accumulating(mut self, forwards: usize, params: u64) -> Self {
        self.accumulation = if forwards > 1 { params * 4 } else { 0 };
        self
    }

    /// The whole per-process estimate (saturating, see [`saturate`]).
    pub fn total(&self) -> u64 {
        [
            self.moments,
            self.collective,
            self.transient,
            self.activations,
            self.loader,
            self.accumulation,
        ]
        .into_iter()
        .fold(self.replicated, u64::saturating_add)
    }
}

/// A `u128` byte estimate as `u64`, saturating: the attention term of the largest configs that
/// validate exceeds `u64`, and a plan must print rather than overflow.
pub fn saturate(bytes: u128) -> u64 {
    u64::try_from(bytes).unwrap_or(u64::MAX)
}

/// The memory line of a `--dry-run` plan, in GiB.
impl std::fmt::Display for MemoryEstimate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        write!(
            f,
            "memory per process (f32, estimate): {} {:.2} GiB, AdamW moments {:.2} GiB",
            self.replicated_what,
            gib(self.replicated),
            gib(self.moments)
        )?;
        if self.moment_shards > 1 {
            write!(f, " (ZeRO-1: 1/{} of them)", self.moment_shards)?;
        }
        if self.collective > 0 {
            write!(f, ", collective buffers {:.2} GiB", gib(self.collective))?;
        }
        if self.accumulation > 0 {
            write!(
                f,
                ", accumulated gradients {:.2} GiB",
                gib(self.accumulation)
            )?;
        }
        write!(
            f,
            ", update temporaries {:.2} GiB, activations {:.2} GiB, loader {:.2} GiB, total {:.2} GiB",
            gib(self.transient),
            gib(self.activations),
            gib(self.loader),
            gib(self.total())
        )
    }
}

/// `VmRSS` (now) and `VmHWM` (peak so far) in bytes.
fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resident memory now, in bytes.
pub fn rss_bytes() -> Option<u64> {
    status_kib("VmRSS:").map(|k| k * 1024)
}

/// The peak resident memory of this process so far, in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    status_kib("VmHWM:").map(|k| k * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_parts_and_line() {
        let gib = 1u64 << 30;
        let mut run = RunConfig::default();
        // 2^28 parameters = 1 GiB per f32 copy; the largest parameter 2^26 elements (1/4 GiB).
        let one =
            MemoryEstimate::adamw(1 << 28, "weights+grads", 2, 1 << 26, gib, 3 * gib, &run, 4);
        assert_eq!(
            (
                one.replicated,
                one.moments,
                one.moment_shards,
                one.collective,
                one.transient
            ),
            (2 * gib, 2 * gib, 1, 3 * gib / 4, 2 * gib)
        );
        assert_eq!(one.total(), 9 * gib + 3 * gib / 4);
        assert_eq!(
            one.to_string(),
            "memory per process (f32, estimate): weights+grads 2.00 GiB, AdamW moments 2.00 GiB, \
             collective buffers 0.75 GiB, update temporaries 2.00 GiB, activations 3.00 GiB, loader 0.00 GiB, total 9.75 GiB"
        );
        run.shard_optimizer_state = true;
        let sharded = MemoryEstimate::adamw(1 << 28, "weights", 1, 1 << 26, 0, 0, &run, 4);
        assert_eq!((sharded.moments, sharded.moment_shards), (gib / 2, 4));
        assert!(
            sharded
                .to_string()
                .contains("AdamW moments 0.50 GiB (ZeRO-1: 1/4 of them), collective")
        );
        let accumulating = sharded.clone().accumulating(4, 1 << 28);
        assert_eq!(accumulating.total(), sharded.total() + gib);
        assert!(
            accumulating
                .to_string()
                .contains("accumulated gradients 1.00 GiB, update")
        );
        assert_eq!(sharded.clone().accumulating(1, 1 << 28), sharded);
        // 7 micro-batches of 2^20 images of 32 floats: 7 × 2^27 bytes.
        assert_eq!(single_loader(&run).loader, 7 * (1 << 27));
        let single = MemoryEstimate::adamw(1 << 28, "weights", 1, 1 << 26, 0, 0, &run, 1);
        assert_eq!((single.moment_shards, single.collective), (1, 0));
        assert!(!single.to_string().contains("collective") && !single.to_string().contains("ZeRO"));
    }

    fn single_loader(run: &RunConfig) -> MemoryEstimate {
        MemoryEstimate::adamw(1, "weights", 1, 1, 0, 0, run, 1).with_loader(1 << 20, 32)
    }

    #[test]
    fn peak_is_at_least_now_on_linux() {
        if let (Some(now), Some(peak)) = (super::rss_bytes(), super::peak_rss_bytes()) {
            assert!(now > 0 && peak >= now);
        }
    }
}
