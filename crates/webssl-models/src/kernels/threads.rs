//! Pinning the global rayon pool (the one burn-flex's GEMM and every fused kernel run on) to the
//! machine's cores: worker `i` is bound to the `i`-th CPU of the process's affinity mask
//! (`sched_getaffinity`, so a `taskset` / cgroup restriction is respected), round-robin when there are
//! more workers than CPUs. Why: without pinning the kernel may migrate a worker between cores in the
//! middle of a GEMM, which costs its L1/L2 working set (packed panels of a few hundred KiB); with
//! one worker per core the placement is what the GEMM blocking assumes. Linux only (elsewhere a no-op).
//!
//! The `webssl` binary pins its pool for `pretrain` and `experiment` on the CPU, per local rank
//! ([`pin_rayon_threads_for_rank`]); the benchmarks call [`pin_rayon_threads`].
//!
//! Opt-out: `WEBSSL_PIN_THREADS=0` (or `off`/`false`/`no`). Whether it helps is measured in
//! bench/RESULTS.md (`cpu_bench` / `dino_step` print `"pinned"`).

/// Builds the global rayon pool with `RAYON_NUM_THREADS` workers (default: the CPUs of the
/// affinity mask), each pinned to one CPU, unless `WEBSSL_PIN_THREADS` switches it off. Call it
/// before anything uses rayon. Returns the CPUs the workers were pinned to (empty when not pinned:
/// switched off, not Linux, the mask could not be read, or the global pool already existed).
pub fn pin_rayon_threads() -> Vec<usize> {
    pin_rayon_threads_for_rank(0, 1)
}

/// [`pin_rayon_threads`] for local rank `local_rank` of a job of `world_size` processes: with
/// several processes on a machine each pins to its own share of the cores (see [`rank_plan`]), so
/// their pools do not stack on the same CPUs; where the share is unknown nothing is pinned.
pub fn pin_rayon_threads_for_rank(local_rank: usize, world_size: usize) -> Vec<usize> {
    if matches!(
        std::env::var("WEBSSL_PIN_THREADS").as_deref(),
        Ok("0" | "off" | "false" | "no")
    ) {
        return Vec::new();
    }
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0);
    let Some(plan) = rank_plan(&allowed_cpus(), threads, local_rank, world_size) else {
        return Vec::new();
    };
    let for_workers = plan.clone();
    let built = rayon::ThreadPoolBuilder::new()
        .num_threads(plan.len())
        .start_handler(move |i| pin_current_thread(for_workers[i]))
        .build_global();
    if built.is_ok() { plan } else { Vec::new() }
}

/// The CPU of each rayon worker of local rank `local_rank` among `world_size` processes, given the
/// process's affinity mask `cpus` and the requested worker count (`RAYON_NUM_THREADS`); `None` =
/// do not pin.
///
/// One process: `threads` workers (default one per CPU) round-robin over the mask. Several: the
/// launcher gave each rank `threads` workers (`webssl launch` sets cores / N); rank `r` takes CPUs
/// `r·threads .. (r+1)·threads` of the mask, or the whole mask when the launcher already narrowed it
/// to exactly this rank's share (Slurm `--cpus-per-task`, `mpirun --bind-to`). Without a worker
/// count, or when the shares do not fit the mask (oversubscribed), nothing is pinned: two ranks'
/// workers on one CPU would be worse than letting the kernel place them.
pub fn rank_plan(
    cpus: &[usize],
    threads: Option<usize>,
    local_rank: usize,
    world_size: usize,
) -> Option<Vec<usize>> {
    if cpus.is_empty() {
        return None;
    }
    if world_size <= 1 {
        let t = threads.unwrap_or(cpus.len());
        return Some((0..t).map(|i| cpus[i % cpus.len()]).collect());
    }
    let t = threads?;
    let start = local_rank * t;
    if start + t <= cpus.len() {
        Some(cpus[start..start + t].to_vec())
    } else if cpus.len() == t {
        Some(cpus.to_vec())
    } else {
        None
    }
}

#[cfg(target_os = "linux")]
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `cpu_set_t` is plain data; sched_getaffinity fills it for this process (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

#[cfg(not(target_os = "linux"))]
fn allowed_cpus() -> Vec<usize> {
    Vec::new()
}

#[cfg(target_os = "linux")]
fn pin_current_thread(cpu: usize) {
    // SAFETY: as above; pid 0 = the calling thread. A failure leaves the thread unpinned.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        let _ = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

#[cfg(not(target_os = "linux"))]
fn pin_current_thread(_cpu: usize) {}

#[cfg(test)]
mod tests {
    use super::rank_plan;

    #[test]
    fn ranks_take_disjoint_shares_or_nothing() {
        let cpus: Vec<usize> = (0..8).collect();
        // One process: all CPUs, or round-robin past them.
        assert_eq!(rank_plan(&cpus, None, 0, 1).unwrap(), cpus);
        assert_eq!(rank_plan(&[2, 5], Some(3), 0, 1).unwrap(), vec![2, 5, 2]);
        // `webssl launch --nproc 4` on 8 cores: 2 workers each, disjoint.
        assert_eq!(rank_plan(&cpus, Some(2), 0, 4).unwrap(), vec![0, 1]);
        assert_eq!(rank_plan(&cpus, Some(2), 3, 4).unwrap(), vec![6, 7]);
        // The launcher already bound rank 3 to its two CPUs.
        assert_eq!(rank_plan(&[6, 7], Some(2), 3, 4).unwrap(), vec![6, 7]);
        // Unknown share, or oversubscribed: not pinned.
        assert_eq!(rank_plan(&cpus, None, 1, 2), None);
        assert_eq!(rank_plan(&cpus, Some(3), 2, 3), None);
        assert_eq!(rank_plan(&[], Some(1), 0, 1), None);
    }
}
