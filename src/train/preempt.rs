//! Preemption: a signal asks a run to stop at the end of its optimizer step in progress, with a
//! checkpoint of that step, and to exit with [`accel_launch::PREEMPTED_EXIT_CODE`].
//!
//! SIGUSR1 always asks (SLURM's `--signal=USR1@120`; mpirun passes it on to every rank). SIGTERM
//! asks too (Kubernetes before its kill) except in a rank that `accel launch` started: there mpirun
//! ends the other ranks with SIGTERM when one fails, which must stay quick, and the launcher turns
//! its own SIGTERM into SIGUSR1 for the ranks. A second signal ends the process at once. The ranks
//! agree at each step's end, so that every rank stops after the same step even when only one was
//! signalled.

use std::sync::atomic::{AtomicBool, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    if REQUESTED.swap(true, Ordering::SeqCst) {
        // SAFETY: signal and raise are async-signal-safe; the default action ends the process.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }
}

/// Makes SIGUSR1 (and SIGTERM unless `under_launcher`) ask for a stop at the next step's end.
pub fn install(under_launcher: bool) {
    let signals: &[libc::c_int] = if under_launcher { &[libc::SIGUSR1] } else { &[libc::SIGUSR1, libc::SIGTERM] };
    for &sig in signals {
        // SAFETY: installs a handler that only touches an atomic and, the second time, re-raises.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Whether a signal asked this process to stop.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
