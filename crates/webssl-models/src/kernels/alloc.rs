//! The allocator setting every CPU entry point makes first (the `webssl` binary, `cpu_bench`,
//! `dino_step`): mimalloc keeps freed pages committed for 10 s.
//!
//! Why: mimalloc returns freed pages to the OS after `purge_delay` (1 s in v3, 10 ms before). A
//! training step frees and reallocates tens of MiB per op, so with the default every op faults in
//! fresh zeroed pages (`clear_page_erms` was 25–29 % of a ViT-S training step in `perf`); with 10 s
//! a ViT-S step is 1.4× faster (bench/RESULTS.md; `bash bench/cpu.sh` measures it). Why not never
//! (`-1`, the setting before): memory freed for good was then never returned — a Web-DINO 300m
//! batch-32 training step passed 24 GiB, 21 GiB with 10 s (17 GiB with 1 s, at ViT-S 1.4× slower).

// Linked for its C library, which defines the symbol below (the callers also make it the global
// allocator; on its own the option store is harmless).
use mimalloc as _;

/// Sets mimalloc's `purge_delay` to 10 s unless the environment decides: an explicit
/// `MIMALLOC_PURGE_DELAY` wins (mimalloc reads it itself), and `WEBSSL_MI_PURGE=default` leaves
/// mimalloc's default (to measure the difference). Returns the setting in effect: `"env"`,
/// `"default"` or `"10s"`. Call it first in `main`, before any other thread exists.
pub fn keep_freed_pages() -> &'static str {
    unsafe extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    /// `mi_option_purge_delay` in mimalloc v3's `include/mimalloc.h` (libmimalloc-sys =0.1.49,
    /// pinned through `mimalloc =0.1.52`; re-check on upgrade).
    const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
        return "env";
    }
    if std::env::var("WEBSSL_MI_PURGE").as_deref() == Ok("default") {
        return "default";
    }
    // SAFETY: a plain option store into mimalloc, made (as documented above) before any other
    // thread exists.
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 10_000) };
    "10s"
}
