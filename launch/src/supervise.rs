//! supervise: runs the planned mpirun, turns its tagged output into `[rank N]` prefixed lines,
//! forwards Ctrl-C and termination signals, and when the job fails says which rank failed, after
//! which step, how, and what it printed last. mpirun itself ends the other ranks when one dies.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::plan::{LaunchError, Plan};
use crate::status::RankFailure;
use crate::STEP_MARKER;

/// Lines kept per rank for the failure report.
const TAIL_LINES: usize = 12;

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The exit status for `accel launch`: mpirun's, or 128 + the signal that ended it.
    pub code: i32,
    /// When the job failed: which rank, how, after which step, and its last lines.
    pub report: Option<String>,
    /// Seconds from the start of mpirun to the first optimizer step reported by a rank.
    pub first_step_s: Option<f64>,
    /// Seconds from the start of mpirun to its end.
    pub total_s: f64,
    /// The last optimizer step any rank reported.
    pub last_step: Option<usize>,
    /// The launcher got Ctrl-C or a termination signal and passed it on.
    pub interrupted: bool,
    /// The rank the failure report names.
    pub failed_rank: Option<usize>,
}

/// What the output said, as far as the failure report needs it.
#[derive(Debug, Default, Clone)]
pub struct Transcript {
    /// Ranks the job was planned with (0: unknown, the hostfile decides).
    pub nproc: usize,
    /// The last lines of each rank.
    pub tails: BTreeMap<usize, VecDeque<String>>,
    /// The last optimizer step each rank reported.
    pub steps: BTreeMap<usize, usize>,
    /// mpirun's own lines (not from a rank), the last few.
    pub launcher_lines: VecDeque<String>,
    /// When the first step marker arrived.
    pub first_step_at: Option<Instant>,
    /// Each rank's last heartbeat: where its training thread was.
    pub spans: BTreeMap<usize, Heartbeat>,
}

/// A rank's heartbeat: the span it was in, since how long, and when the launcher heard it.
#[derive(Debug, Clone, PartialEq)]
pub struct Heartbeat {
    pub heard: Instant,
    pub step: usize,
    pub arg: Option<usize>,
    /// None between spans.
    pub name: Option<String>,
    pub seconds: f64,
}

impl Heartbeat {
    /// Parses the text after [`SPAN_MARKER`].
    fn parse(text: &str, heard: Instant) -> Option<Self> {
        let mut words = text.split_whitespace();
        let step = words.next()?.parse().ok()?;
        let arg = match words.next()? {
            "-" => None,
            a => Some(a.parse().ok()?),
        };
        let name = match words.next()? {
            "-" => None,
            n => Some(n.replace('_', " ")),
        };
        let seconds = words.next()?.parse().ok()?;
        Some(Self { heard, step, arg, name, seconds })
    }

    /// "all-reduce of bucket 2 at step 41", or "between spans".
    fn what(&self) -> String {
        match (&self.name, self.arg) {
            (Some(name), Some(bucket)) => format!("{name} of bucket {bucket} at step {}", self.step),
            (Some(name), None) => format!("{name} at step {}", self.step),
            (None, _) => "no span".into(),
        }
    }
}

/// A heartbeat older than this means the rank stopped reporting.
const SILENT_AFTER: Duration = Duration::from_millis(2500);

/// Where each rank was at `now`, from its heartbeats: `rank 0: in all-reduce of bucket 2 at step 41
/// for 12.3 s; rank 1: no report for 12.9 s, last in backward at step 41`. None without heartbeats.
pub fn whereabouts(t: &Transcript, now: Instant) -> Option<String> {
    if t.spans.is_empty() {
        return None;
    }
    let ranks: Vec<usize> = if t.nproc > 0 { (0..t.nproc).collect() } else { t.spans.keys().copied().collect() };
    let parts: Vec<String> = ranks
        .iter()
        .map(|r| match t.spans.get(r) {
            None => format!("rank {r}: no report"),
            Some(h) => {
                let since = now.saturating_duration_since(h.heard);
                if since > SILENT_AFTER {
                    format!("rank {r}: no report for {:.1} s, last in {}", since.as_secs_f64(), h.what())
                } else {
                    format!("rank {r}: in {} for {:.1} s", h.what(), h.seconds + since.as_secs_f64())
                }
            }
        })
        .collect();
    Some(parts.join("; "))
}

static CHILD: AtomicI32 = AtomicI32::new(0);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static PREEMPTING: AtomicBool = AtomicBool::new(false);

/// Ctrl-C and SIGHUP end the job at once, through mpirun. The first SIGTERM or SIGUSR1 is a
/// preemption: mpirun passes SIGUSR1 on to every rank, which stop after their step in progress
/// with a checkpoint of it; a second signal, or the grace period running out, ends the job at once.
extern "C" fn forward_signal(sig: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
    let pid = CHILD.load(Ordering::SeqCst);
    let preempt = (sig == libc::SIGTERM || sig == libc::SIGUSR1) && !PREEMPTING.swap(true, Ordering::SeqCst);
    if pid > 0 {
        let forwarded = if preempt { libc::SIGUSR1 } else { sig };
        // SAFETY: kill is async-signal-safe; mpirun ends its ranks when signalled.
        unsafe { libc::kill(pid, forwarded) };
    }
}

/// Ends the job (SIGTERM to mpirun) once a preemption has waited `grace`, polling until `done`.
fn enforce_grace(grace: Duration, done: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let mut since: Option<Instant> = None;
        while !done.load(Ordering::SeqCst) {
            if PREEMPTING.load(Ordering::SeqCst) {
                let since = *since.get_or_insert_with(Instant::now);
                if since.elapsed() >= grace {
                    let pid = CHILD.load(Ordering::SeqCst);
                    if pid > 0 {
                        eprintln!(
                            "accel launch: the preemption grace of {:.0} s ran out: ending the job",
                            grace.as_secs_f64()
                        );
                        // SAFETY: kill has no memory preconditions.
                        unsafe { libc::kill(pid, libc::SIGTERM) };
                    }
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}

/// Runs `plan` to the end.
pub fn supervise(plan: &Plan) -> Result<Outcome, LaunchError> {
    let started = Instant::now();
    let mut command = Command::new(&plan.mpirun);
    command
        .args(&plan.args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group: a terminal's Ctrl-C reaches mpirun once, through us.
        .process_group(0);
    // SAFETY: prctl is async-signal-safe. If the launcher is killed (SIGKILL cannot be forwarded),
    // mpirun gets SIGTERM and ends the ranks instead of running on without a supervisor.
    #[cfg(target_os = "linux")]
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(|e| {
        LaunchError(format!(
            "cannot run {}: {e} (install OpenMPI, e.g. `apt-get install openmpi-bin`, or give --mpirun PATH)",
            plan.mpirun.display()
        ))
    })?;
    CHILD.store(child.id() as i32, Ordering::SeqCst);
    let done = Arc::new(AtomicBool::new(false));
    if let Some(grace) = plan.preempt_grace {
        enforce_grace(grace, done.clone());
    }
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGUSR1] {
        // SAFETY: installs a handler that only calls kill(2).
        unsafe { libc::signal(sig, forward_signal as *const () as libc::sighandler_t) };
    }
    let transcript = Arc::new(Mutex::new(Transcript { nproc: plan.nproc, ..Default::default() }));
    let prefix = plan.nproc != 1;
    let readers = [
        spawn_reader(child.stdout.take().expect("piped"), false, prefix, transcript.clone()),
        spawn_reader(child.stderr.take().expect("piped"), true, prefix, transcript.clone()),
    ];
    for r in readers {
        let _ = r.join();
    }
    let status = child.wait().map_err(|e| LaunchError(format!("waiting for mpirun: {e}")))?;
    CHILD.store(0, Ordering::SeqCst);
    done.store(true, Ordering::SeqCst);
    let code = status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
    let transcript = transcript.lock().unwrap_or_else(|p| p.into_inner());
    // A preempted job stopped as asked: nothing to diagnose.
    let failed = code != 0 && code != crate::restart::PREEMPTED_EXIT_CODE;
    let ended = Instant::now();
    let report = failed.then(|| match whereabouts(&transcript, ended) {
        Some(where_) => format!("{}\nwhere the ranks were: {where_}", diagnose(&transcript, code)),
        None => diagnose(&transcript, code),
    });
    let failed_rank = if failed { culprit(&transcript).map(|(rank, _)| rank) } else { None };
    let first_step_s = transcript.first_step_at.map(|t| t.duration_since(started).as_secs_f64());
    Ok(Outcome {
        code,
        report,
        first_step_s,
        total_s: started.elapsed().as_secs_f64(),
        last_step: transcript.steps.values().max().copied(),
        interrupted: INTERRUPTED.load(Ordering::SeqCst),
        failed_rank,
    })
}

fn spawn_reader(
    stream: impl Read + Send + 'static,
    is_stderr: bool,
    prefix: bool,
    transcript: Arc<Mutex<Transcript>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut raw = Vec::new();
        let mut assembler = Assembler::default();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\n', '\r']);
            for (rank, text) in assembler.push(line) {
                let shown = transcript.lock().unwrap_or_else(|p| p.into_inner()).record(rank, &text);
                let Some(text) = shown else { continue };
                let text = match (prefix, rank) {
                    (true, Some(r)) => format!("[rank {r}] {text}"),
                    _ => text,
                };
                // A closed pipe on our side (e.g. `| head`) must not stop the job's supervision.
                let _ = if is_stderr {
                    writeln!(std::io::stderr().lock(), "{text}")
                } else {
                    writeln!(std::io::stdout().lock(), "{text}")
                };
            }
        }
    })
}

/// Puts ranks' lines back together from mpirun's tagged output. mpirun tags every chunk a rank
/// writes, so a line written in several pieces arrives as several tagged segments, possibly
/// between other ranks' segments on one output line: `[1,0]<stderr>:abc[1,1]<stderr>:xyz`. Every
/// segment but the last of an output line is a piece of its rank's line; the last ends it.
#[derive(Debug, Default)]
pub struct Assembler {
    partial: BTreeMap<usize, String>,
}

impl Assembler {
    /// Takes one output line of mpirun; returns the lines it completes (rank, or None for mpirun's
    /// own lines).
    pub fn push(&mut self, line: &str) -> Vec<(Option<usize>, String)> {
        let segments = split_tagged(line);
        if segments.is_empty() {
            return vec![(None, line.to_string())];
        }
        let last = segments.len() - 1;
        let mut done = Vec::new();
        for (i, (rank, text)) in segments.into_iter().enumerate() {
            let buf = self.partial.entry(rank).or_default();
            buf.push_str(text);
            if i == last {
                done.push((Some(rank), std::mem::take(buf)));
            }
        }
        done
    }
}

/// The tagged segments of a line that starts with a tag; empty when it does not.
fn split_tagged(line: &str) -> Vec<(usize, &str)> {
    let mut starts: Vec<(usize, usize, usize)> = Vec::new(); // (tag start, text start, rank)
    for (i, _) in line.match_indices('[') {
        if let Some((rank, len)) = parse_tag(&line[i..]) {
            starts.push((i, i + len, rank));
        }
    }
    if starts.first().map(|s| s.0) != Some(0) {
        return Vec::new();
    }
    (0..starts.len())
        .map(|k| {
            let end = starts.get(k + 1).map(|s| s.0).unwrap_or(line.len());
            (starts[k].2, &line[starts[k].1..end])
        })
        .collect()
}

/// The tag `[JOB,RANK]<stdout>:` (mpirun's `--tag-output`) at the start of `s`: (rank, its length).
fn parse_tag(s: &str) -> Option<(usize, usize)> {
    let rest = s.strip_prefix('[')?;
    let close = rest.find(']')?;
    let (job, rank) = rest[..close].split_once(',')?;
    if job.is_empty() || !job.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let rank = rank.parse().ok()?;
    let after = &rest[close + 1..];
    let stream_len = ["<stdout>:", "<stderr>:", "<stddiag>:"].iter().find(|t| after.starts_with(**t))?.len();
    Some((rank, 1 + close + 1 + stream_len))
}

impl Transcript {
    /// Records one whole line of a rank (or of mpirun itself, `None`); returns what to print
    /// (None for a step marker, which is hidden).
    pub fn record(&mut self, rank: Option<usize>, text: &str) -> Option<String> {
        match rank {
            Some(rank) => {
                if let Some(beat) = text.strip_prefix(crate::SPAN_MARKER) {
                    if let Some(h) = Heartbeat::parse(beat, Instant::now()) {
                        self.spans.insert(rank, h);
                        return None;
                    }
                }
                if let Some(step) = text.strip_prefix(STEP_MARKER) {
                    if let Ok(step) = step.trim().parse() {
                        self.first_step_at.get_or_insert_with(Instant::now);
                        self.steps.insert(rank, step);
                        return None;
                    }
                }
                let tail = self.tails.entry(rank).or_default();
                tail.push_back(text.to_string());
                if tail.len() > TAIL_LINES {
                    tail.pop_front();
                }
            }
            None => {
                self.launcher_lines.push_back(text.to_string());
                if self.launcher_lines.len() > 4 * TAIL_LINES {
                    self.launcher_lines.pop_front();
                }
            }
        }
        Some(text.to_string())
    }

    fn all_lines(&self) -> impl Iterator<Item = (Option<usize>, &str)> {
        self.tails
            .iter()
            .flat_map(|(r, t)| t.iter().map(move |l| (Some(*r), l.as_str())))
            .chain(self.launcher_lines.iter().map(|l| (None, l.as_str())))
    }
}

/// Which rank failed and how, from what the ranks and mpirun printed.
pub fn diagnose(t: &Transcript, code: i32) -> String {
    let Some((rank, how)) = culprit(t) else {
        let tail: Vec<&str> = t.launcher_lines.iter().map(String::as_str).filter(|l| !l.trim().is_empty()).collect();
        return format!(
            "the job failed (mpirun exit status {code}); mpirun's last lines:\n{}",
            indent(tail.iter().copied())
        );
    };
    let step = match t.steps.get(&rank) {
        Some(s) => format!("after step {s}"),
        None => "before its first optimizer step".into(),
    };
    let tail =
        t.tails.get(&rank).map(|l| indent(l.iter().map(String::as_str))).unwrap_or_else(|| "  (no output)".into());
    format!("rank {rank} {how}, {step} (exit status {code}); its last lines:\n{tail}")
}

/// The rank that failed first and how, if the output says.
fn culprit(t: &Transcript) -> Option<(usize, String)> {
    let number_after = |line: &str, key: &str| -> Option<usize> {
        let rest = &line[line.find(key)? + key.len()..];
        rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    };
    let mut culprit: Option<(usize, String)> = None;
    // 1. mpirun saw a rank die from a signal (SIGKILL, a segfault, the OOM killer).
    for (_, line) in t.all_lines() {
        if line.contains("exited on signal") {
            if let Some(rank) = number_after(line, "process rank ") {
                let signal = line.split("exited on signal ").nth(1).unwrap_or("").trim_end_matches('.').to_string();
                culprit = Some((rank, format!("was killed by signal {signal}")));
                break;
            }
        }
    }
    // 2. A rank said it panicked or failed with an error.
    if culprit.is_none() {
        culprit = t.all_lines().find_map(|(_, line)| match RankFailure::parse(line)? {
            (rank, RankFailure::Panicked) => Some((rank, "panicked".to_string())),
            (rank, RankFailure::Error(err)) => Some((rank, format!("failed: {err}"))),
            (_, RankFailure::TimedOut { .. }) => None,
        });
    }
    // 3. Ranks timed out waiting in a collective: the one that did not is the one they waited for.
    if culprit.is_none() {
        let timed_out: BTreeSet<usize> = t
            .all_lines()
            .filter_map(|(_, line)| match RankFailure::parse(line)? {
                (rank, RankFailure::TimedOut { .. }) => Some(rank),
                _ => None,
            })
            .collect();
        if !timed_out.is_empty() {
            let known: BTreeSet<usize> = if t.nproc > 0 {
                (0..t.nproc).collect()
            } else {
                t.tails.keys().chain(t.steps.keys()).copied().collect()
            };
            let stuck: Vec<usize> = known.difference(&timed_out).copied().collect();
            let waited = timed_out.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ");
            culprit = Some(match stuck.first() {
                Some(&r) => (r, format!("stopped responding (rank {waited} timed out waiting for it in a collective)")),
                None => (*timed_out.iter().next().expect("not empty"), "timed out in a collective".into()),
            });
        }
    }
    // 4. MPI's own words.
    if culprit.is_none() {
        for (_, line) in t.all_lines() {
            if let Some(rank) = number_after(line, "MPI_ABORT was invoked on rank ") {
                culprit = Some((rank, "called MPI_Abort".into()));
                break;
            }
            if line.trim_start().starts_with("Process name: [[") {
                if let Some(rank) = line.rsplit(',').next().and_then(|r| r.trim_end_matches(']').trim().parse().ok()) {
                    culprit = Some((rank, "exited with a non-zero status".into()));
                    break;
                }
            }
        }
    }
    culprit
}

fn indent<'a>(lines: impl Iterator<Item = &'a str>) -> String {
    lines.map(|l| format!("  | {l}")).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transcript(nproc: usize, lines: &[&str]) -> Transcript {
        let mut t = Transcript { nproc, ..Default::default() };
        let mut a = Assembler::default();
        for l in lines {
            for (rank, text) in a.push(l) {
                t.record(rank, &text);
            }
        }
        t
    }

    #[test]
    fn tags_become_ranks_and_markers_are_hidden() {
        let mut a = Assembler::default();
        let mut t = Transcript::default();
        assert_eq!(a.push("[12,1]<stdout>:hello [x]"), [(Some(1), "hello [x]".to_string())]);
        assert_eq!(a.push("plain"), [(None, "plain".to_string())]);
        assert_eq!(t.record(Some(0), "@accel-step 7"), None);
        assert_eq!(t.steps[&0], 7);
        assert_eq!(t.record(Some(0), "shown"), Some("shown".into()));
    }

    #[test]
    fn pieces_of_lines_are_put_back_together() {
        let mut a = Assembler::default();
        assert_eq!(
            a.push("[1,0]<stderr>:@accel-step [1,1]<stderr>:@accel-step 1"),
            [(Some(1), "@accel-step 1".to_string())]
        );
        assert_eq!(a.push("[1,0]<stderr>:1[1,0]<stderr>:"), [(Some(0), "@accel-step 1".to_string())]);
        assert_eq!(a.push("[1,0]<stdout>:[1,0]"), [(Some(0), "[1,0]".to_string())], "text that looks like a tag half");
    }

    #[test]
    fn a_killed_rank_is_named_with_its_step() {
        let t = transcript(
            2,
            &[
                "[5,1]<stderr>:@accel-step 3",
                "[5,1]<stderr>:rank 1: injected fault (ACCEL_FAULT): Kill at step 3",
                "mpirun noticed that process rank 1 with PID 0 on node h exited on signal 9 (Killed).",
            ],
        );
        let r = diagnose(&t, 137);
        assert!(r.starts_with("rank 1 was killed by signal 9 (Killed), after step 3"), "{r}");
        assert!(r.contains("| rank 1: injected fault"), "{r}");
    }

    /// The ranks' lines are written as the ranks write them ([`RankFailure::line`]).
    #[test]
    fn panics_errors_and_stalls() {
        let said = |rank: usize, failure: RankFailure| format!("[5,{rank}]<stderr>:{}", failure.line(rank));
        let t = transcript(2, &["[5,0]<stderr>:@accel-step 2", &said(0, RankFailure::Panicked)]);
        assert!(diagnose(&t, 101).starts_with("rank 0 panicked, after step 2"));
        let error = RankFailure::Error("data.csv:3: bad label".into());
        let t = transcript(3, &[&said(2, error), "MPI_ABORT was invoked on rank 2"]);
        assert!(diagnose(&t, 1).starts_with("rank 2 failed: data.csv:3: bad label, before its first"));
        let stall = RankFailure::TimedOut { op: "all_reduce".into(), timeout_s: 5.0, step: 4 };
        let t = transcript(2, &["[5,1]<stderr>:@accel-step 4", &said(0, stall)]);
        let r = diagnose(&t, 124);
        assert!(r.starts_with("rank 1 stopped responding (rank 0 timed out"), "{r}");
        let t = transcript(2, &["something else"]);
        assert!(diagnose(&t, 3).contains("mpirun exit status 3"));
    }

    #[test]
    fn heartbeats_say_where_each_rank_was_and_are_hidden() {
        let mut t = transcript(3, &[]);
        assert_eq!(t.record(Some(0), "@accel-span 41 2 all-reduce 12.25"), None, "a heartbeat is not shown");
        t.record(Some(1), "@accel-span 41 - backward 0.5");
        t.record(Some(2), "@accel-span 0 - - 0");
        t.spans.get_mut(&1).unwrap().heard -= Duration::from_secs(12);
        let now = t.spans[&0].heard + Duration::from_millis(100);
        let w = whereabouts(&t, now).unwrap();
        assert!(w.starts_with("rank 0: in all-reduce of bucket 2 at step 41 for 12.3 s; "), "{w}");
        assert!(w.contains("rank 1: no report for 12.1 s, last in backward at step 41"), "{w}");
        assert!(w.ends_with("rank 2: in no span for 0.1 s"), "{w}");
        t.record(Some(0), "@accel-span 41 - all-reduce_wait 1.0");
        assert_eq!(t.spans[&0].name.as_deref(), Some("all-reduce wait"));
        assert!(whereabouts(&transcript(2, &[]), now).is_none());
    }
}
