//! Process-wide settings a training process wants before it allocates tensors.

/// The global allocator of the `accel` binary and the benchmarks: mimalloc, much faster than glibc's
/// for tokenization's many small allocations on every thread. Install it with
/// `#[global_allocator] static GLOBAL: accel::runtime::Allocator = accel::runtime::Allocator;`
/// and call [`tune_allocator`] first thing in `main`.
pub use mimalloc::MiMalloc as Allocator;

/// mimalloc's `mi_option_purge_delay`, which the Rust bindings do not name: the enum value just
/// before `mi_option_use_numa_nodes` in mimalloc.h (checked at compile time, read back in a test).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
const _: () = assert!(MI_OPTION_PURGE_DELAY + 1 == libmimalloc_sys::mi_option_use_numa_nodes);

/// Tunes the allocator for training: a step frees and reallocates the same multi-megabyte buffers
/// hundreds of times. Returning them to the OS makes every reuse fault its pages in again, so
/// mimalloc is told never to purge freed memory (without this a training step was about 20%
/// slower than with glibc), and glibc's allocator, for programs that keep it, serves them from a
/// heap that is never trimmed (`MALLOC_MMAP_THRESHOLD_` / `MALLOC_TRIM_THRESHOLD_` /
/// `MALLOC_TOP_PAD_` do the same without code).
pub fn tune_allocator() {
    // SAFETY: mi_option_set only stores an option value; purging reads it when it runs.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
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
    Some(status_bytes("VmHWM")? as f64 / (1024.0 * 1024.0))
}

/// A memory figure of this process from `/proc/self/status` (`VmRSS`, `VmHWM`, ...), in bytes,
/// where the platform reports it.
pub fn status_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.strip_prefix(field).is_some_and(|rest| rest.starts_with(':')))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn tuning_turns_mimalloc_purging_off() {
        super::tune_allocator();
        // SAFETY: reading an option value.
        assert_eq!(unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) }, -1);
    }
}
