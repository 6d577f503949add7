//! Process-wide settings a training process wants before it allocates tensors.

/// Tunes glibc's allocator for training: a step frees and reallocates the same multi-megabyte
/// buffers hundreds of times, and with the defaults each of those is an mmap/munmap pair (page
/// faults on every touch) or a heap trim. Serving them from a heap that is never trimmed cut a
/// MiniLM training step by about a fifth here. The same effect is available without code through
/// `MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` / `MALLOC_TOP_PAD_`. No-op off glibc.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called before any other thread starts.
    unsafe {
        // 32 MiB is glibc's largest mmap threshold on 64-bit.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

/// Makes candle's elementwise worker threads sleep as soon as an op is done instead of spinning
/// for 25,000 rounds first (`CANDLE_BARRIER_POOL_SPIN_LIMIT`; a value already set is kept). The
/// matrix products and fused kernels run on rayon's threads, so with as many threads as cores a
/// spinning candle worker takes a core from them; the training bench at batch 8 on 2 cores ran
/// about 5% faster without the spin. Call it before any tensor work starts threads.
pub fn tune_thread_pools() {
    const SPIN: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";
    if std::env::var_os(SPIN).is_none() {
        std::env::set_var(SPIN, "0");
    }
}

/// Peak resident memory of this process in MiB (`VmHWM`), where the platform reports it.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
