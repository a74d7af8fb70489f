//! This process's resident memory, for the end-of-run line that puts the measured peak next to the
//! `--dry-run` estimate (Linux `/proc/self/status`; `None` elsewhere).

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
    #[test]
    fn peak_is_at_least_now_on_linux() {
        if let (Some(now), Some(peak)) = (super::rss_bytes(), super::peak_rss_bytes()) {
            assert!(now > 0 && peak >= now);
        }
    }
}
