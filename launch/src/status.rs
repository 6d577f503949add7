//! A rank's last words: the one line a rank prints on its standard error when it fails, and how
//! the launcher reads that line back to say which rank failed and how. Both sides use this module,
//! so the words the ranks write and the words the launcher looks for cannot drift apart.

/// How a rank failed, as it says so itself.
#[derive(Debug, Clone, PartialEq)]
pub enum RankFailure {
    /// A Rust panic (the panic hook prints this, then aborts the job).
    Panicked,
    /// An error ended the rank; the message is the error's whole chain on one line.
    Error(String),
    /// A collective waited longer than `ddp_timeout` for the other ranks.
    TimedOut {
        /// The collective (`all_reduce`, `barrier`, ...).
        op: String,
        timeout_s: f64,
        /// The optimizer step the rank was at.
        step: usize,
    },
}

const PANICKED: &str = "panicked; aborting the job";
const ERROR: &str = "error: ";
const TIMED_OUT: &str = " did not complete within ddp_timeout = ";

impl RankFailure {
    /// The line rank `rank` prints: `rank R: ...`.
    pub fn line(&self, rank: usize) -> String {
        match self {
            Self::Panicked => format!("rank {rank}: {PANICKED}"),
            Self::Error(message) => format!("rank {rank}: {ERROR}{}", one_line(message)),
            Self::TimedOut { op, timeout_s, step } => format!(
                "rank {rank}: {op}{TIMED_OUT}{timeout_s} s (step {step}): another rank is stuck or gone; aborting the job"
            ),
        }
    }

    /// The rank and failure a line written by [`RankFailure::line`] tells of; `None` for any other line.
    pub fn parse(line: &str) -> Option<(usize, Self)> {
        let rest = line.strip_prefix("rank ")?;
        let (rank, what) = rest.split_once(": ")?;
        let rank = rank.parse().ok()?;
        if what.starts_with(PANICKED) {
            return Some((rank, Self::Panicked));
        }
        if let Some(message) = what.strip_prefix(ERROR) {
            return Some((rank, Self::Error(message.to_string())));
        }
        let (op, after) = what.split_once(TIMED_OUT)?;
        let (timeout, after) = after.split_once(" s (step ")?;
        let step = after.split(')').next()?.parse().ok()?;
        Some((rank, Self::TimedOut { op: op.to_string(), timeout_s: timeout.parse().ok()?, step }))
    }
}

/// A message on one line, so that the launcher sees it whole.
fn one_line(message: &str) -> String {
    message.lines().map(str::trim_end).collect::<Vec<_>>().join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every failure survives the trip from the rank's line to the launcher's reading.
    #[test]
    fn what_a_rank_writes_the_launcher_reads_back() {
        let failures = [
            RankFailure::Panicked,
            RankFailure::Error("data.csv:3: bad label \"x\"; expected one of [\"a\", \"b\"]".into()),
            RankFailure::TimedOut { op: "all_reduce".into(), timeout_s: 5.0, step: 4 },
            RankFailure::TimedOut { op: "barrier".into(), timeout_s: 0.5, step: 0 },
        ];
        for failure in failures {
            let line = failure.line(3);
            assert_eq!(RankFailure::parse(&line), Some((3, failure.clone())), "{line}");
        }
        assert_eq!(
            RankFailure::parse(&RankFailure::Error("first\nsecond".into()).line(0)),
            Some((0, RankFailure::Error("first | second".into()))),
            "a message of several lines arrives on one"
        );
        for other in ["rank 1: injected fault (ACCEL_FAULT): Kill at step 3", "ranks: 2", "rank x: error: y", "hello"] {
            assert_eq!(RankFailure::parse(other), None, "{other}");
        }
    }
}
