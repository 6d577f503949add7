//! shrink: how `accel launch --min-nproc M` restarts a job without the host where a rank failed.
//!
//! With a hostfile, mpirun fills each host's slots in file order (its default mapping), so a
//! rank's host follows from the slots before it. The restarted job runs on the other hosts, on
//! the most ranks they hold (at least M) that can keep the global batch (processes x per-device
//! batch x accumulation): the per-device batch stays where it can, and accumulation makes up the
//! missing ranks, so the checkpoint resumes as the uninterrupted run would have gone on.

use std::path::Path;

use crate::plan::LaunchError;

/// One `host slots=N` line of an OpenMPI hostfile.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostLine {
    text: String,
    host: String,
    slots: usize,
}

/// An OpenMPI hostfile's hosts, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hostfile {
    lines: Vec<HostLine>,
}

impl Hostfile {
    /// Parses `text` (from `path`, for errors): `host [slots=N] [max_slots=N]` lines, `#`
    /// comments and blank lines. A host without `slots` has one.
    pub fn parse(text: &str, path: &Path) -> Result<Self, LaunchError> {
        let mut lines = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let content = line.split('#').next().unwrap_or("").trim();
            let mut words = content.split_whitespace();
            let Some(host) = words.next() else { continue };
            let mut slots = 1;
            for word in words {
                if let Some(v) = word.strip_prefix("slots=") {
                    slots = v
                        .parse()
                        .map_err(|_| LaunchError(format!("{}:{}: slots={v} is not a number", path.display(), n + 1)))?;
                }
            }
            lines.push(HostLine { text: content.to_string(), host: host.to_string(), slots });
        }
        if lines.is_empty() {
            return Err(LaunchError(format!("{}: names no host", path.display())));
        }
        Ok(Self { lines })
    }

    pub fn read(path: &Path) -> Result<Self, LaunchError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| LaunchError(format!("cannot read the hostfile {}: {e}", path.display())))?;
        Self::parse(&text, path)
    }

    pub fn slots(&self) -> usize {
        self.lines.iter().map(|l| l.slots).sum()
    }

    /// The host rank `rank` runs on.
    pub fn host_of_rank(&self, rank: usize) -> Option<&str> {
        let mut first = 0;
        for line in &self.lines {
            if rank < first + line.slots {
                return Some(&line.host);
            }
            first += line.slots;
        }
        None
    }

    /// The hostfile without `host`.
    pub fn without(&self, host: &str) -> Self {
        Self { lines: self.lines.iter().filter(|l| l.host != host).cloned().collect() }
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    pub fn text(&self) -> String {
        self.lines.iter().map(|l| format!("{}\n", l.text)).collect()
    }
}

/// Processes, per-device batch and accumulation of a training job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub nproc: usize,
    pub batch: usize,
    pub accumulation: usize,
}

/// The shape for at most `available` (and at least `min`) processes that keeps `from`'s global
/// batch: the most processes that divide it, the largest per-device batch up to `from`'s that
/// divides their share, and accumulation for the rest. None when no count from `min` up can.
pub fn smaller_shape(from: Shape, available: usize, min: usize) -> Option<Shape> {
    let global = from.nproc * from.batch * from.accumulation;
    (min.max(1)..=available.min(from.nproc)).rev().find(|n| global.is_multiple_of(*n)).map(|nproc| {
        let share = global / nproc;
        let batch = (1..=from.batch.min(share)).rev().find(|b| share.is_multiple_of(*b)).unwrap_or(1);
        Shape { nproc, batch, accumulation: share / batch }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_fill_hosts_in_order_and_a_host_can_be_left_out() {
        let path = Path::new("hosts");
        let h = Hostfile::parse("# two machines\nh1 slots=2\n\nh2 slots=1 max_slots=4 # spare\nh3\n", path).unwrap();
        assert_eq!(h.slots(), 4);
        let hosts: Vec<_> = (0..5).map(|r| h.host_of_rank(r)).collect();
        assert_eq!(hosts, [Some("h1"), Some("h1"), Some("h2"), Some("h3"), None]);
        let rest = h.without("h2");
        assert_eq!((rest.slots(), rest.text()), (3, "h1 slots=2\nh3\n".to_string()));
        let err = Hostfile::parse("h1 slots=two\n", path).unwrap_err().0;
        assert!(err.contains("hosts:1: slots=two"), "{err}");
        assert!(Hostfile::parse("# nothing\n", path).is_err());
    }

    #[test]
    fn fewer_ranks_keep_the_global_batch_through_accumulation() {
        let two_by_four = Shape { nproc: 2, batch: 4, accumulation: 1 };
        assert_eq!(smaller_shape(two_by_four, 1, 1), Some(Shape { nproc: 1, batch: 4, accumulation: 2 }));
        // 4 x 3 = 12 rows on 3 hosts' worth of ranks: 3 x 4; on 2 ranks of batch 3: 2 x 3 x 2.
        let four_by_three = Shape { nproc: 4, batch: 3, accumulation: 1 };
        assert_eq!(smaller_shape(four_by_three, 3, 1), Some(Shape { nproc: 3, batch: 2, accumulation: 2 }));
        assert_eq!(smaller_shape(four_by_three, 2, 2), Some(Shape { nproc: 2, batch: 3, accumulation: 2 }));
        // 8 ranks of 1 row on 7 slots: 4 ranks is the most that divides 8.
        let eight = Shape { nproc: 8, batch: 1, accumulation: 1 };
        assert_eq!(smaller_shape(eight, 7, 2), Some(Shape { nproc: 4, batch: 1, accumulation: 2 }));
        assert_eq!(smaller_shape(Shape { nproc: 5, batch: 1, accumulation: 1 }, 4, 2), None);
    }
}
