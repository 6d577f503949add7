//! Fault injection for tests and drills: `ACCEL_FAULT=KIND:RANK:STEP` makes rank RANK fail once it
//! has done STEP optimizer steps, by `panic`, `error` (an error returned from training), `kill`
//! (SIGKILL to itself) or `stall` (sleeps forever inside the step, so that the other ranks wait in
//! the next collective until `ddp_timeout`).

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
}

/// A fault armed for one rank and step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    pub rank: usize,
    pub step: usize,
}

impl Fault {
    /// The fault `ACCEL_FAULT` asks for, if set; a malformed value is an error naming the variable.
    pub fn from_env() -> Result<Option<Self>> {
        match std::env::var(FAULT_VAR) {
            Ok(v) if !v.trim().is_empty() => Self::parse(&v).map(Some),
            _ => Ok(None),
        }
    }

    pub fn parse(text: &str) -> Result<Self> {
        let bad = |why: &str| {
            Error::config(
                FAULT_VAR,
                format!("{text:?}: {why} (expected KIND:RANK:STEP, KIND one of panic, error, kill, stall)"),
            )
        };
        let parts: Vec<&str> = text.trim().split(':').collect();
        let [kind, rank, step] = parts[..] else { return Err(bad("three fields")) };
        let kind = match kind {
            "panic" => FaultKind::Panic,
            "error" => FaultKind::Error,
            "kill" => FaultKind::Kill,
            "stall" => FaultKind::Stall,
            _ => return Err(bad("unknown kind")),
        };
        let rank = rank.parse().map_err(|_| bad("RANK is not a number"))?;
        let step = step.parse().map_err(|_| bad("STEP is not a number"))?;
        Ok(Self { kind, rank, step })
    }

    /// Fails as armed when this is the rank and `global_step` steps are done.
    pub fn fire_if_due(&self, rank: usize, global_step: usize) -> Result<()> {
        if rank != self.rank || global_step != self.step {
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_the_variable_on_errors() {
        assert_eq!(Fault::parse("kill:1:3").unwrap(), Fault { kind: FaultKind::Kill, rank: 1, step: 3 });
        for bad in ["kill:1", "boom:1:3", "panic:x:3"] {
            let err = Fault::parse(bad).unwrap_err().to_string();
            assert!(err.contains(FAULT_VAR) && err.contains(bad), "{err}");
        }
        let f = Fault::parse("error:1:3").unwrap();
        assert!(f.fire_if_due(0, 3).is_ok() && f.fire_if_due(1, 2).is_ok());
        assert!(f.fire_if_due(1, 3).unwrap_err().to_string().contains("injected error on rank 1 at step 3"));
    }
}
