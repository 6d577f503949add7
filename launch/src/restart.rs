//! restart: whether `accel launch --max-restarts N` starts a failed job again, and the command it
//! starts it with (resuming from the newest checkpoint).
//!
//! A job is restarted when it failed in a way another try can get past: a rank killed, stalled,
//! panicking or failing mid-run. It is not restarted when the launcher itself was interrupted (the
//! user or a scheduler ended it), when a rank said its configuration or data is at fault (exit code
//! [`NOT_RETRYABLE_EXIT_CODE`]), when the restarts are used up, or when it failed at the same step
//! as the try before, from the same checkpoint: that failure will repeat.

use std::path::Path;

/// The exit code of an accel rank whose configuration, data or model is at fault: a restart
/// would fail the same way.
pub const NOT_RETRYABLE_EXIT_CODE: i32 = 2;

/// The exit code of a run that stopped for preemption (SIGTERM or SIGUSR1) after checkpointing the
/// step it was in: 75, `EX_TEMPFAIL` ("try again later"). The scheduler restarts it, not `accel launch`.
pub const PREEMPTED_EXIT_CODE: i32 = 75;

/// Set by `accel launch` for its ranks: how many times the job was restarted before this try.
pub const RESTART_COUNT_VAR: &str = "ACCEL_RESTART_COUNT";

/// One failed try of the job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedTry {
    /// mpirun's exit code.
    pub code: i32,
    /// The launcher got a signal (Ctrl-C, a scheduler's SIGTERM) and passed it on.
    pub interrupted: bool,
    /// The last optimizer step a rank reported.
    pub last_step: Option<usize>,
    /// The step of the checkpoint this try resumed from (None: from the start).
    pub resumed_from: Option<usize>,
}

/// What to do after a failed try.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Restart,
    /// Stop, for this reason.
    Stop(String),
}

/// Whether to restart after `failed`, the try before it being `previous`, with `restarts_done` of
/// `max_restarts` used.
pub fn verdict(failed: &FailedTry, previous: Option<&FailedTry>, restarts_done: usize, max_restarts: usize) -> Verdict {
    if failed.interrupted {
        return Verdict::Stop("the launcher was interrupted by a signal".into());
    }
    if failed.code == PREEMPTED_EXIT_CODE {
        return Verdict::Stop("the job was preempted and checkpointed: its scheduler starts it again".into());
    }
    if failed.code == NOT_RETRYABLE_EXIT_CODE {
        return Verdict::Stop(
            "a rank's configuration, data or model is at fault: another try would fail the same way".into(),
        );
    }
    if let Some(previous) = previous {
        if previous.resumed_from == failed.resumed_from && previous.last_step == failed.last_step {
            let at = failed.last_step.map_or("before its first step".to_string(), |s| format!("after step {s}"));
            return Verdict::Stop(format!("it failed {at} again, from the same checkpoint: it would fail there again"));
        }
    }
    if restarts_done >= max_restarts {
        return Verdict::Stop(format!("the {max_restarts} restarts allowed (--max-restarts) are used up"));
    }
    Verdict::Restart
}

/// `command` (an accel command line) resuming from `checkpoint`: any `--resume-from-checkpoint`
/// it had is replaced.
pub fn with_resume(command: &[String], checkpoint: &Path) -> Vec<String> {
    with_flag(command, "--resume-from-checkpoint", &checkpoint.display().to_string())
}

/// `command` with `flag value` at its end, in place of any value it gave `flag` (as `flag v` or
/// `flag=v`).
pub fn with_flag(command: &[String], flag: &str, value: &str) -> Vec<String> {
    let mut out = Vec::with_capacity(command.len() + 2);
    let mut args = command.iter();
    let joined = format!("{flag}=");
    while let Some(arg) = args.next() {
        if arg == flag {
            args.next();
            continue;
        }
        if arg.starts_with(&joined) {
            continue;
        }
        out.push(arg.clone());
    }
    out.push(flag.into());
    out.push(value.into());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(code: i32, last_step: Option<usize>, resumed_from: Option<usize>) -> FailedTry {
        FailedTry { code, interrupted: false, last_step, resumed_from }
    }

    #[test]
    fn restarts_what_another_try_can_get_past() {
        let killed = failed(137, Some(5), None);
        assert_eq!(verdict(&killed, None, 0, 3), Verdict::Restart);
        // The next try resumed from step 4 and failed further on: progress, so again.
        let stalled = failed(1, Some(9), Some(4));
        assert_eq!(verdict(&stalled, Some(&killed), 1, 3), Verdict::Restart);
        let Verdict::Stop(why) = verdict(&stalled, Some(&killed), 3, 3) else { panic!("restarts ran out") };
        assert!(why.contains("3 restarts allowed"), "{why}");
    }

    #[test]
    fn stops_where_another_try_would_fail_the_same_way() {
        let Verdict::Stop(why) = verdict(&failed(NOT_RETRYABLE_EXIT_CODE, None, None), None, 0, 3) else { panic!() };
        assert!(why.contains("configuration"), "{why}");
        let interrupted = FailedTry { interrupted: true, ..failed(130, Some(3), None) };
        assert!(matches!(verdict(&interrupted, None, 0, 3), Verdict::Stop(_)));
        let Verdict::Stop(why) = verdict(&failed(PREEMPTED_EXIT_CODE, Some(3), None), None, 0, 3) else { panic!() };
        assert!(why.contains("preempted"), "{why}");
        let first = failed(1, Some(7), Some(4));
        let Verdict::Stop(why) = verdict(&first.clone(), Some(&first), 1, 3) else { panic!() };
        assert!(why.contains("after step 7 again"), "{why}");
        // The same step from another checkpoint is not a repeat.
        assert_eq!(verdict(&failed(1, Some(7), Some(6)), Some(&first), 1, 3), Verdict::Restart);
    }

    #[test]
    fn the_resume_flag_is_replaced_not_repeated() {
        let cmd: Vec<String> =
            ["train", "--config", "c.toml", "--resume-from-checkpoint", "old", "--resume-from-checkpoint=x"]
                .map(String::from)
                .to_vec();
        assert_eq!(
            with_resume(&cmd, Path::new("/o/checkpoint-4")),
            ["train", "--config", "c.toml", "--resume-from-checkpoint", "/o/checkpoint-4"]
        );
    }
}
