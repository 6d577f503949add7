//! plan: the one `mpirun` command line that starts every rank of a job, built from a
//! [`LaunchConfig`] without running anything (so it is printed by `--dry-run` and unit-tested).

use std::fmt;
use std::path::PathBuf;

use crate::config::LaunchConfig;
use crate::STEP_MARKER_VAR;

/// Variables passed on to every rank (`mpirun -x NAME`) when set here: accel's, Hugging Face's,
/// Rust's and MLflow's, so that ranks on other hosts see the same data, model, cache, fault and
/// tracking settings.
const FORWARDED_PREFIXES: [&str; 4] = ["ACCEL_", "HF_", "RUST_", "MLFLOW_"];

/// What the plan is built from besides the config: the program each rank runs and this process's
/// circumstances.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanInput {
    pub config: LaunchConfig,
    /// The executable each rank runs (accel itself) and its arguments (`train --config ...`).
    pub program: PathBuf,
    pub args: Vec<String>,
    /// Whether we run as root (OpenMPI then wants `--allow-run-as-root`).
    pub as_root: bool,
    /// Names of the variables set in this environment (only the forwarded ones are used).
    pub env_names: Vec<String>,
}

/// The command to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub mpirun: PathBuf,
    pub args: Vec<String>,
    /// Ranks to be started (0 when the hostfile's slots decide).
    pub nproc: usize,
    /// How long a preempted job may take to checkpoint before it is ended (None: no limit).
    pub preempt_grace: Option<std::time::Duration>,
}

/// A launch that cannot be planned; the message names the flag or key to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchError(pub String);

impl fmt::Display for LaunchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LaunchError {}

impl Plan {
    /// The command line as a shell would take it.
    pub fn shell_line(&self) -> String {
        std::iter::once(self.mpirun.display().to_string())
            .chain(self.args.iter().cloned())
            .map(|a| shell_quote(&a))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// Builds the mpirun command line: ranks, root handling, binding (one core per compute thread),
/// one compute thread per rank unless asked otherwise, oversubscription only when asked, tagged
/// output (the supervisor turns the tags into `[rank N]` prefixes), forwarded variables, then the
/// user's own mpirun arguments and the program.
pub fn plan(input: &PlanInput) -> Result<Plan, LaunchError> {
    let cfg = &input.config;
    let nproc = match (cfg.nproc, &cfg.hostfile) {
        (Some(0), _) => return Err(LaunchError("--nproc (launch.nproc) must be at least 1".into())),
        (Some(n), _) => n,
        (None, Some(_)) => 0,
        (None, None) => {
            return Err(LaunchError(
                "say how many ranks to start: --nproc N (or nproc in the config's [launch])".into(),
            ))
        }
    };
    let threads = cfg.threads_per_rank.unwrap_or(1);
    if threads == 0 {
        return Err(LaunchError("--threads-per-rank (launch.threads_per_rank) must be at least 1".into()));
    }
    if input.args.is_empty() {
        return Err(LaunchError(
            "give the command each rank runs, e.g. `accel launch --nproc 2 train --config C`".into(),
        ));
    }
    let mut args: Vec<String> = Vec::new();
    let mut push = |xs: &[&str]| args.extend(xs.iter().map(|s| s.to_string()));
    if nproc > 0 {
        push(&["-np", &nproc.to_string()]);
    }
    if let Some(hostfile) = &cfg.hostfile {
        push(&["--hostfile", &hostfile.display().to_string()]);
    }
    if input.as_root {
        push(&["--allow-run-as-root"]);
    }
    if cfg.oversubscribe == Some(true) {
        // Ranks outnumber cores: binding each to its own core is impossible.
        push(&["--oversubscribe", "--bind-to", "none"]);
    } else if threads == 1 {
        push(&["--bind-to", "core"]);
    } else {
        push(&["--map-by", &format!("slot:PE={threads}"), "--bind-to", "core"]);
    }
    push(&["--tag-output"]);
    let t = threads.to_string();
    for var in ["RAYON_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"] {
        push(&["-x", &format!("{var}={t}")]);
    }
    push(&["-x", &format!("{STEP_MARKER_VAR}=1")]);
    let mut forwarded: Vec<&String> = input
        .env_names
        .iter()
        .filter(|n| FORWARDED_PREFIXES.iter().any(|p| n.starts_with(p)) && n.as_str() != STEP_MARKER_VAR)
        .collect();
    forwarded.sort();
    forwarded.dedup();
    for name in forwarded {
        push(&["-x", name]);
    }
    args.extend(cfg.mpirun_args.iter().cloned());
    args.push(input.program.display().to_string());
    args.extend(input.args.iter().cloned());
    let preempt_grace = match cfg.preempt_grace {
        Some(s) if !(s.is_finite() && s > 0.0) => {
            return Err(LaunchError(format!(
                "--preempt-grace (launch.preempt_grace) must be a positive number of seconds, not {s}"
            )))
        }
        s => s.map(std::time::Duration::from_secs_f64),
    };
    Ok(Plan { mpirun: cfg.mpirun.clone().unwrap_or_else(|| PathBuf::from("mpirun")), args, nproc, preempt_grace })
}

/// `s` quoted for a POSIX shell when it needs to be.
fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_=./:,@%+".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(config: LaunchConfig) -> PlanInput {
        PlanInput {
            config,
            program: "/opt/accel".into(),
            args: vec!["train".into(), "--config".into(), "configs/mrpc.toml".into()],
            as_root: false,
            env_names: vec!["HF_HUB_OFFLINE".into(), "PATH".into(), "ACCEL_DATA_DIR".into()],
        }
    }

    #[test]
    fn two_ranks_one_thread_each() {
        let p = plan(&input(LaunchConfig { nproc: Some(2), ..Default::default() })).unwrap();
        assert_eq!(
            p.shell_line(),
            "mpirun -np 2 --bind-to core --tag-output -x RAYON_NUM_THREADS=1 -x OMP_NUM_THREADS=1 -x MKL_NUM_THREADS=1 \
             -x ACCEL_STEP_MARKERS=1 -x ACCEL_DATA_DIR -x HF_HUB_OFFLINE /opt/accel train --config configs/mrpc.toml"
        );
    }

    #[test]
    fn root_hostfile_threads_oversubscription_and_extra_args() {
        let cfg = LaunchConfig {
            nproc: Some(4),
            hostfile: Some("hosts".into()),
            threads_per_rank: Some(2),
            mpirun: Some("/usr/bin/mpirun.openmpi".into()),
            mpirun_args: vec!["--mca".into(), "btl".into(), "tcp,self".into()],
            oversubscribe: None,
            max_restarts: Some(3),
            min_nproc: Some(2),
            preempt_grace: Some(90.0),
        };
        let mut i = input(cfg.clone());
        i.as_root = true;
        let line = plan(&i).unwrap().shell_line();
        assert!(
            line.starts_with(
                "/usr/bin/mpirun.openmpi -np 4 --hostfile hosts --allow-run-as-root --map-by slot:PE=2 --bind-to core"
            ),
            "{line}"
        );
        assert!(
            line.contains("-x RAYON_NUM_THREADS=2") && line.contains("--mca btl tcp,self /opt/accel train"),
            "{line}"
        );
        let over = plan(&input(LaunchConfig { oversubscribe: Some(true), ..cfg })).unwrap().shell_line();
        assert!(over.contains("--oversubscribe --bind-to none") && !over.contains("PE="), "{over}");
    }

    #[test]
    fn missing_or_zero_counts_name_the_flag() {
        let err = plan(&input(LaunchConfig::default())).unwrap_err().to_string();
        assert!(err.contains("--nproc"), "{err}");
        let err = plan(&input(LaunchConfig { nproc: Some(0), ..Default::default() })).unwrap_err().to_string();
        assert!(err.contains("--nproc"), "{err}");
        let err = plan(&input(LaunchConfig { nproc: Some(2), threads_per_rank: Some(0), ..Default::default() }))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--threads-per-rank"), "{err}");
        let p = plan(&input(LaunchConfig { hostfile: Some("h".into()), ..Default::default() })).unwrap();
        assert!(!p.args.contains(&"-np".to_string()), "the hostfile's slots decide");
        assert_eq!(shell_quote("a b'c"), "'a b'\\''c'");
    }
}
