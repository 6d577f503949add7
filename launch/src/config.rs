//! LaunchConfig: how `accel launch` starts the ranks, from the `[launch]` section of a run config
//! and from its flags (a flag wins over the file).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[launch]`: every field optional, so that flags and file merge key by key.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LaunchConfig {
    /// Ranks to start (`mpirun -np`).
    pub nproc: Option<usize>,
    /// An OpenMPI hostfile (`host slots=N` lines) to spread ranks over machines.
    pub hostfile: Option<PathBuf>,
    /// Compute threads per rank (default 1).
    pub threads_per_rank: Option<usize>,
    /// The mpirun to use (default: `mpirun` on PATH).
    pub mpirun: Option<PathBuf>,
    /// Extra arguments for mpirun, e.g. `["--mca", "btl", "tcp,self"]`.
    pub mpirun_args: Vec<String>,
    /// Allow more ranks than cores (`--oversubscribe`; ranks are then not bound to cores).
    pub oversubscribe: Option<bool>,
    /// Times a failed `train` job is started again from its newest checkpoint (default 0).
    pub max_restarts: Option<usize>,
    /// With a hostfile: a restart leaves out the host of the rank that failed while at least this
    /// many ranks remain, keeping the global batch through accumulation (default: all ranks).
    pub min_nproc: Option<usize>,
    /// Seconds a preempted job (SIGTERM or SIGUSR1 to the launcher) may take to checkpoint before
    /// it is ended (default: until a second signal).
    pub preempt_grace: Option<f64>,
}

impl LaunchConfig {
    /// `self` (the flags) over `file`: each key the flags set wins; mpirun arguments add up, the
    /// file's first.
    pub fn over(self, file: LaunchConfig) -> LaunchConfig {
        let mut mpirun_args = file.mpirun_args;
        mpirun_args.extend(self.mpirun_args);
        LaunchConfig {
            nproc: self.nproc.or(file.nproc),
            hostfile: self.hostfile.or(file.hostfile),
            threads_per_rank: self.threads_per_rank.or(file.threads_per_rank),
            mpirun: self.mpirun.or(file.mpirun),
            mpirun_args,
            oversubscribe: self.oversubscribe.or(file.oversubscribe),
            max_restarts: self.max_restarts.or(file.max_restarts),
            min_nproc: self.min_nproc.or(file.min_nproc),
            preempt_grace: self.preempt_grace.or(file.preempt_grace),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_key_by_key() {
        let file = LaunchConfig {
            nproc: Some(4),
            threads_per_rank: Some(2),
            mpirun_args: vec!["--mca".into(), "btl".into(), "self,tcp".into()],
            ..Default::default()
        };
        let flags =
            LaunchConfig { nproc: Some(2), mpirun_args: vec!["--report-bindings".into()], ..Default::default() };
        let merged = flags.over(file);
        assert_eq!(merged.nproc, Some(2));
        assert_eq!(merged.threads_per_rank, Some(2));
        assert_eq!(merged.mpirun_args, ["--mca", "btl", "self,tcp", "--report-bindings"]);
    }
}
