//! Pinning the global rayon pool (the one burn-flex's GEMM and every fused kernel run on) to the
//! machine's cores: worker `i` is bound to the `i`-th CPU of the process's affinity mask
//! (`sched_getaffinity`, so a `taskset` / cgroup restriction is respected), round-robin when there are
//! more workers than CPUs. Why: without pinning the kernel may migrate a worker between cores in the
//! middle of a GEMM, which costs its L1/L2 working set (packed panels of a few hundred KiB); with
//! one worker per core the placement is what the GEMM blocking assumes. Linux only (elsewhere a no-op).
//!
//! Opt-out: `WEBSSL_PIN_THREADS=0` (or `off`/`false`/`no`). Whether it helps is measured in
//! bench/RESULTS.md (`cpu_bench` / `dino_step` print `"pinned"`).

/// Builds the global rayon pool with `RAYON_NUM_THREADS` workers (default: the CPUs of the
/// affinity mask), each pinned to one CPU, unless `WEBSSL_PIN_THREADS` switches it off. Call it
/// before anything uses rayon. Returns the CPUs the workers were pinned to (empty when not pinned:
/// switched off, not Linux, the mask could not be read, or the global pool already existed).
pub fn pin_rayon_threads() -> Vec<usize> {
    if matches!(
        std::env::var("WEBSSL_PIN_THREADS").as_deref(),
        Ok("0" | "off" | "false" | "no")
    ) {
        return Vec::new();
    }
    let cpus = allowed_cpus();
    if cpus.is_empty() {
        return Vec::new();
    }
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(cpus.len());
    let plan: Vec<usize> = (0..threads).map(|i| cpus[i % cpus.len()]).collect();
    let for_workers = plan.clone();
    let built = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .start_handler(move |i| pin_current_thread(for_workers[i]))
        .build_global();
    if built.is_ok() { plan } else { Vec::new() }
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
