//! accel-launch: what a worker process learns from its launcher, and `accel launch` itself, with
//! no tensor or GPU dependency.
//!
//! The launcher and the workers share nothing but environment variables. [`RankEnv`] reads them
//! (accel's own `RANK`/`WORLD_SIZE`/`LOCAL_RANK` names, or the ones `mpirun` and `srun` set).
//! [`plan()`] turns a [`LaunchConfig`] into one `mpirun` command line (pure, unit-tested), and
//! [`supervise`] runs it: rank-prefixed output, signals forwarded, and a report naming the rank
//! that failed, read from the line the rank wrote ([`RankFailure`]).

pub mod config;
pub mod cores;
pub mod env;
pub mod plan;
pub mod restart;
pub mod shrink;
pub mod status;
pub mod supervise;

pub use config::LaunchConfig;
pub use env::{RankEnv, RankEnvError};
pub use plan::{plan, LaunchError, Plan, PlanInput};
pub use restart::{FailedTry, Verdict, NOT_RETRYABLE_EXIT_CODE, PREEMPTED_EXIT_CODE, RESTART_COUNT_VAR};
pub use status::RankFailure;
pub use supervise::{supervise, Outcome};

/// Set by `accel launch` for its ranks: each rank then prints [`STEP_MARKER`] and its optimizer
/// step on stderr after every step, which the launcher reads (and hides) to say where a rank failed.
pub const STEP_MARKER_VAR: &str = "ACCEL_STEP_MARKERS";
/// The prefix of a step marker line.
pub const STEP_MARKER: &str = "@accel-step ";
/// The prefix of a rank's heartbeat under [`STEP_MARKER_VAR`]: `STEP ARG NAME SECONDS`, the span
/// its training thread is in (`_` for spaces in NAME, `-` for no ARG or no span), printed when it
/// changes and at least once a second.
pub const SPAN_MARKER: &str = "@accel-span ";
