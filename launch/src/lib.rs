//! accel-launch: what a worker process learns from its launcher, with no tensor or GPU dependency.
//!
//! The launcher and the workers share nothing but environment variables. [`RankEnv`] reads them
//! (accel's own `RANK`/`WORLD_SIZE`/`LOCAL_RANK` names, or the ones `mpirun` sets) and writes them.

pub mod env;

pub use env::{RankEnv, RankEnvError};
