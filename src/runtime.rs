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

/// Where this process's compute-thread count came from, once [`threads_from_slurm`] has run.
static THREADS_FROM: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// In a task that `srun` started, sets the compute threads (rayon's, OpenMP's, oneMKL's) to the
/// task's CPUs (`SLURM_CPUS_PER_TASK`, else Slurm's one CPU per task) unless `RAYON_NUM_THREADS`
/// already says (as `accel launch` sets it). Call it first thing in `main`, before any thread pool
/// starts.
pub fn threads_from_slurm() {
    let from = match accel_launch::env::slurm_threads(|k| std::env::var(k).ok()) {
        Some((n, why)) => {
            for var in ["RAYON_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"] {
                std::env::set_var(var, n.to_string());
            }
            format!("{n} from {why}")
        }
        None => match std::env::var("RAYON_NUM_THREADS") {
            Ok(n) => format!("{n} from RAYON_NUM_THREADS"),
            Err(_) => "one per core (nothing set them)".to_string(),
        },
    };
    let _ = THREADS_FROM.set(from);
}

/// "4 from SLURM_CPUS_PER_TASK", "1 from RAYON_NUM_THREADS", ...: for the run log and `accel env`.
pub fn threads_origin() -> String {
    THREADS_FROM.get().cloned().unwrap_or_else(|| match std::env::var("RAYON_NUM_THREADS") {
        Ok(n) => format!("{n} from RAYON_NUM_THREADS"),
        Err(_) => "one per core (nothing set them)".to_string(),
    })
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
    const PROBE: &str = "ACCEL_ALLOCATOR_PROBE";
    const TEST: &str = "runtime::tests::freed_memory_is_reused_without_faulting_its_pages_in_again";

    /// Minor page faults of the calling thread so far.
    fn thread_faults() -> i64 {
        // SAFETY: getrusage writes into the struct it is given.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: a valid pointer to a rusage struct.
        assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) }, 0);
        usage.ru_minflt
    }

    /// Page faults while 64 MiB in 16 KiB blocks are allocated, written and freed, as a training
    /// step does with its activations.
    fn cycle() -> i64 {
        let before = thread_faults();
        // SAFETY: each block is allocated, written within its size, and freed once.
        unsafe {
            let blocks: Vec<*mut u8> = (0..4096).map(|_| libmimalloc_sys::mi_malloc(16 << 10).cast()).collect();
            for &b in &blocks {
                assert!(!b.is_null());
                std::ptr::write_bytes(b, 1, 16 << 10);
            }
            for b in blocks {
                libmimalloc_sys::mi_free(b.cast());
            }
        }
        thread_faults() - before
    }

    /// What the tuning is for: memory a step frees is not returned to the OS, so the next step
    /// reuses it without faulting its pages in again. Each allocator setting runs in a process of
    /// its own (mimalloc reads it when it maps memory): tuned, the second cycle faults almost
    /// nothing; purging at once, as mimalloc does by default after a short delay, it faults every
    /// page again.
    #[test]
    fn freed_memory_is_reused_without_faulting_its_pages_in_again() {
        match std::env::var(PROBE).as_deref() {
            Ok("tuned") => super::tune_allocator(),
            // SAFETY: mi_option_set only stores an option value.
            Ok("purging") => unsafe { libmimalloc_sys::mi_option_set(super::MI_OPTION_PURGE_DELAY, 0) },
            _ => {
                let faults = |probe: &str| -> i64 {
                    let exe = std::env::current_exe().unwrap();
                    let out = std::process::Command::new(exe)
                        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
                        .env(PROBE, probe)
                        .output()
                        .unwrap();
                    let text = String::from_utf8_lossy(&out.stdout);
                    assert!(out.status.success(), "{probe}: {text}{}", String::from_utf8_lossy(&out.stderr));
                    let line = text.lines().find_map(|l| l.split_once("second cycle faults: ").map(|(_, n)| n));
                    line.unwrap_or_else(|| panic!("{probe}: no count in {text}")).trim().parse().unwrap()
                };
                let pages = (64 << 20) / 4096;
                let (tuned, purging) = (faults("tuned"), faults("purging"));
                assert!(tuned < pages / 10, "tuned: {tuned} faults in the second cycle");
                assert!(purging > pages / 2, "purging at once: {purging} faults, the probe cannot tell");
                return;
            }
        }
        cycle();
        println!("second cycle faults: {}", cycle());
    }
}
