//! RankEnv: rank, world size and local rank of this process, from the launcher's environment.
//!
//! A process started without a launcher is rank 0 of a world of 1. Accepted names, first found wins:
//! `RANK` / `WORLD_SIZE` / `LOCAL_RANK` (torchrun and accel's launcher), then OpenMPI's
//! `OMPI_COMM_WORLD_RANK` / `OMPI_COMM_WORLD_SIZE` / `OMPI_COMM_WORLD_LOCAL_RANK`, then PMI's
//! `PMI_RANK` / `PMI_SIZE`, then Slurm's `SLURM_PROCID` / `SLURM_NTASKS` / `SLURM_LOCALID` (`srun`).

use std::fmt;

const RANK_NAMES: [&str; 4] = ["RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "SLURM_PROCID"];
const WORLD_NAMES: [&str; 4] = ["WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS"];
const LOCAL_NAMES: [&str; 3] = ["LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID"];

/// Where this process stands in its process group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RankEnv {
    pub rank: usize,
    pub world_size: usize,
    pub local_rank: usize,
}

/// A launcher variable that is present but unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RankEnvError {
    pub variable: String,
    pub value: String,
    pub reason: String,
}

impl fmt::Display for RankEnvError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "environment variable {}={:?}: {}", self.variable, self.value, self.reason)
    }
}

impl std::error::Error for RankEnvError {}

impl Default for RankEnv {
    fn default() -> Self {
        Self::single()
    }
}

impl RankEnv {
    /// The process group of a process started without a launcher.
    pub fn single() -> Self {
        Self { rank: 0, world_size: 1, local_rank: 0 }
    }

    /// Reads the process environment.
    pub fn from_env() -> Result<Self, RankEnvError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads through `lookup`, so that tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, RankEnvError> {
        let first = |names: &[&str]| -> Result<Option<(String, usize)>, RankEnvError> {
            for name in names {
                if let Some(value) = lookup(name) {
                    let parsed = value.trim().parse::<usize>().map_err(|_| RankEnvError {
                        variable: name.to_string(),
                        value: value.clone(),
                        reason: "expected a non-negative integer".into(),
                    })?;
                    return Ok(Some((name.to_string(), parsed)));
                }
            }
            Ok(None)
        };
        let rank = first(&RANK_NAMES)?;
        let world = first(&WORLD_NAMES)?;
        let local = first(&LOCAL_NAMES)?;
        let (rank_name, rank) = rank.unwrap_or(("RANK".into(), 0));
        let (world_name, world_size) = world.unwrap_or(("WORLD_SIZE".into(), 1));
        if world_size == 0 {
            return Err(RankEnvError {
                variable: world_name,
                value: "0".into(),
                reason: "a process group has at least one process".into(),
            });
        }
        if rank >= world_size {
            return Err(RankEnvError {
                variable: rank_name,
                value: rank.to_string(),
                reason: format!("rank must be below the world size {world_size} ({world_name})"),
            });
        }
        let local_rank = local.map(|(_, v)| v).unwrap_or(rank);
        Ok(Self { rank, world_size, local_rank })
    }

    /// The variables a launcher sets for this rank.
    pub fn to_env(&self) -> Vec<(String, String)> {
        vec![
            ("RANK".into(), self.rank.to_string()),
            ("WORLD_SIZE".into(), self.world_size.to_string()),
            ("LOCAL_RANK".into(), self.local_rank.to_string()),
        ]
    }

    pub fn is_main(&self) -> bool {
        self.rank == 0
    }
}

/// The rank variables of every launcher family that `lookup` holds, in the order they are read:
/// for `accel env` and the run log.
pub fn rank_variables(lookup: impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    const OTHERS: [&str; 9] = [
        "OMPI_COMM_WORLD_LOCAL_SIZE",
        "PMIX_RANK",
        "PMIX_NAMESPACE",
        "SLURM_JOB_ID",
        "SLURM_STEP_ID",
        "SLURM_CPUS_PER_TASK",
        "SLURM_NTASKS_PER_NODE",
        "SLURM_NNODES",
        "SLURM_MPI_TYPE",
    ];
    RANK_NAMES
        .iter()
        .chain(&WORLD_NAMES)
        .chain(&LOCAL_NAMES)
        .chain(&OTHERS)
        .filter_map(|name| lookup(name).map(|v| (name.to_string(), v)))
        .collect()
}

/// Where the rank and the world size come from: the first of each family's names that is set,
/// e.g. "rank from SLURM_PROCID, world size from SLURM_NTASKS"; "no launcher" when none is.
pub fn rank_origin(lookup: impl Fn(&str) -> Option<String>) -> String {
    let first = |names: &[&str]| names.iter().find(|n| lookup(n).is_some()).map(|n| n.to_string());
    match (first(&RANK_NAMES), first(&WORLD_NAMES)) {
        (None, None) => "no launcher: a single process".into(),
        (rank, world) => format!(
            "rank from {}, world size from {}",
            rank.unwrap_or_else(|| "none (0)".into()),
            world.unwrap_or_else(|| "none (1)".into())
        ),
    }
}

/// The compute threads of a task that `srun` started, and why: `SLURM_CPUS_PER_TASK`, or 1 (Slurm
/// gives a task one CPU unless told otherwise). None outside an `srun` task, or when
/// `RAYON_NUM_THREADS` already says (as `accel launch` does).
pub fn slurm_threads(lookup: impl Fn(&str) -> Option<String>) -> Option<(usize, &'static str)> {
    if lookup("SLURM_PROCID").is_none() || lookup("SLURM_STEP_ID").is_none() || lookup("RAYON_NUM_THREADS").is_some() {
        return None;
    }
    match lookup("SLURM_CPUS_PER_TASK").and_then(|v| v.trim().parse::<usize>().ok()).filter(|n| *n > 0) {
        Some(n) => Some((n, "SLURM_CPUS_PER_TASK")),
        None => Some((1, "one CPU per task, Slurm's default (no SLURM_CPUS_PER_TASK)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<RankEnv, RankEnvError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        RankEnv::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn no_launcher_is_a_single_process() {
        assert_eq!(env(&[]).unwrap(), RankEnv::single());
    }

    #[test]
    fn reads_accel_and_mpi_names() {
        let e = env(&[("RANK", "1"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "1")]).unwrap();
        assert_eq!(e, RankEnv { rank: 1, world_size: 4, local_rank: 1 });
        let e = env(&[("OMPI_COMM_WORLD_RANK", "2"), ("OMPI_COMM_WORLD_SIZE", "3")]).unwrap();
        assert_eq!(e, RankEnv { rank: 2, world_size: 3, local_rank: 2 });
        let e = env(&[("SLURM_PROCID", "5"), ("SLURM_NTASKS", "8"), ("SLURM_LOCALID", "1")]).unwrap();
        assert_eq!(e, RankEnv { rank: 5, world_size: 8, local_rank: 1 });
    }

    #[test]
    fn round_trips_through_to_env() {
        let e = RankEnv { rank: 3, world_size: 8, local_rank: 1 };
        let vars: HashMap<String, String> = e.to_env().into_iter().collect();
        assert_eq!(RankEnv::from_lookup(|k| vars.get(k).cloned()).unwrap(), e);
    }

    #[test]
    fn slurm_tasks_take_their_cpus_per_task_and_say_where_ranks_come_from() {
        let map: HashMap<&str, &str> =
            [("SLURM_PROCID", "1"), ("SLURM_NTASKS", "2"), ("SLURM_STEP_ID", "0"), ("SLURM_CPUS_PER_TASK", "4")].into();
        let lookup = |k: &str| map.get(k).map(|v| v.to_string());
        assert_eq!(slurm_threads(lookup), Some((4, "SLURM_CPUS_PER_TASK")));
        assert_eq!(rank_origin(lookup), "rank from SLURM_PROCID, world size from SLURM_NTASKS");
        assert!(rank_variables(lookup).contains(&("SLURM_CPUS_PER_TASK".into(), "4".into())));
        let no_cpus = |k: &str| if k == "SLURM_CPUS_PER_TASK" { None } else { lookup(k) };
        assert_eq!(slurm_threads(no_cpus).map(|t| t.0), Some(1));
        let launched = |k: &str| if k == "RAYON_NUM_THREADS" { Some("2".into()) } else { lookup(k) };
        assert_eq!(slurm_threads(launched), None, "accel launch's thread count wins");
        assert_eq!(slurm_threads(|_| None), None);
        assert_eq!(rank_origin(|_| None), "no launcher: a single process");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let err = env(&[("RANK", "x")]).unwrap_err();
        assert_eq!(err.variable, "RANK");
        let err = env(&[("RANK", "4"), ("WORLD_SIZE", "4")]).unwrap_err();
        assert!(err.to_string().contains("RANK"), "{err}");
        assert!(env(&[("WORLD_SIZE", "0")]).is_err());
    }
}
