//! Fault injection for tests and drills: `ACCEL_FAULT=KIND:RANK:STEP` makes rank RANK fail once it
//! has done STEP optimizer steps, by `panic`, `error` (an error returned from training), `kill`
//! (SIGKILL to itself) or `stall` (sleeps forever inside the step, so that the other ranks wait in
//! the next collective until `ddp_timeout`), or `perturb` (scales its gradients by 1.01 in that
//! step and goes on: what `accel verify` must catch). Several faults are separated by commas; `@N` after one
//! arms it only in the job's try after N restarts (`accel launch --max-restarts`), default the
//! first try: `kill:1:5,stall:0:9@1`.

use std::time::Duration;

use crate::{Error, Result};

/// The variable that arms a fault.
pub const FAULT_VAR: &str = "ACCEL_FAULT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    Panic,
    Error,
    Kill,
    Stall,
    Perturb,
}

/// A fault armed for one rank and step, in one try of the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    pub rank: usize,
    pub step: usize,
    /// The restarts before the try it fires in.
    pub attempt: usize,
}

impl Fault {
    /// The faults `ACCEL_FAULT` arms for this try of the job (the launcher's restart count); a
    /// malformed value is an error naming the variable.
    pub fn from_env() -> Result<Vec<Self>> {
        let attempt = std::env::var(accel_launch::RESTART_COUNT_VAR).ok().and_then(|v| v.parse().ok()).unwrap_or(0);
        match std::env::var(FAULT_VAR) {
            Ok(v) if !v.trim().is_empty() => {
                let all = v.split(',').map(Self::parse).collect::<Result<Vec<_>>>()?;
                Ok(all.into_iter().filter(|f| f.attempt == attempt).collect())
            }
            _ => Ok(Vec::new()),
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::config(
                FAULT_VAR,
                format!("{text:?}: {why} (expected KIND:RANK:STEP[@RESTARTS], KIND one of panic, error, kill, stall, perturb)"),
            )
        };
        let (text_fault, attempt) = match text.trim().split_once('@') {
            Some((fault, attempt)) => (fault, attempt.parse().map_err(|_| bad("RESTARTS is not a number"))?),
            None => (text.trim(), 0),
        };
        let parts: Vec<&str> = text_fault.split(':').collect();
        let [kind, rank, step] = parts[..] else { return Err(bad("three fields")) };
        let kind = match kind {
            "panic" => FaultKind::Panic,
            "error" => FaultKind::Error,
            "kill" => FaultKind::Kill,
            "stall" => FaultKind::Stall,
            "perturb" => FaultKind::Perturb,
            _ => return Err(bad("unknown kind")),
        };
        let rank = rank.parse().map_err(|_| bad("RANK is not a number"))?;
        let step = step.parse().map_err(|_| bad("STEP is not a number"))?;
        Ok(Self { kind, rank, step, attempt })
    }

    /// Whether this rank's gradients are to be perturbed in the step after `global_step` steps.
    pub fn perturbs(&self, rank: usize, global_step: usize) -> bool {
        self.kind == FaultKind::Perturb && rank == self.rank && global_step == self.step
    }

    /// Fails as armed when this is the rank and `global_step` steps are done.
    pub fn fire_if_due(&self, rank: usize, global_step: usize) -> Result<()> {
        if rank != self.rank || global_step != self.step || self.kind == FaultKind::Perturb {
            return Ok(());
        }
        crate::io::eprint_line(&format!(
            "rank {rank}: injected fault ({FAULT_VAR}): {:?} at step {global_step}",
            self.kind
        ));
        match self.kind {
            FaultKind::Panic => panic!("injected panic on rank {rank} at step {global_step}"),
            FaultKind::Error => Err(Error::Msg(format!("injected error on rank {rank} at step {global_step}"))),
            FaultKind::Kill => {
                // SAFETY: sends SIGKILL to this process; nothing runs after it.
                unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
                unreachable!("SIGKILL did not end the process")
            }
            FaultKind::Stall => loop {
                std::thread::sleep(Duration::from_secs(3600));
            },
            FaultKind::Perturb => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_the_variable_on_errors() {
        assert_eq!(Fault::parse("kill:1:3").unwrap(), Fault { kind: FaultKind::Kill, rank: 1, step: 3, attempt: 0 });
        assert_eq!(
            Fault::parse("stall:0:9@2").unwrap(),
            Fault { kind: FaultKind::Stall, rank: 0, step: 9, attempt: 2 }
        );
        for bad in ["kill:1", "boom:1:3", "panic:x:3", "kill:1:3@x"] {
            let err = Fault::parse(bad).unwrap_err().to_string();
            assert!(err.contains(FAULT_VAR) && err.contains(bad), "{err}");
        }
        let f = Fault::parse("error:1:3").unwrap();
        assert!(f.fire_if_due(0, 3).is_ok() && f.fire_if_due(1, 2).is_ok());
        assert!(f.fire_if_due(1, 3).unwrap_err().to_string().contains("injected error on rank 1 at step 3"));
    }
}
