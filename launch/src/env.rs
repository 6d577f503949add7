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
    fn bad_values_name_the_variable() {
        let err = env(&[("RANK", "x")]).unwrap_err();
        assert_eq!(err.variable, "RANK");
        let err = env(&[("RANK", "4"), ("WORLD_SIZE", "4")]).unwrap_err();
        assert!(err.to_string().contains("RANK"), "{err}");
        assert!(env(&[("WORLD_SIZE", "0")]).is_err());
    }
}
