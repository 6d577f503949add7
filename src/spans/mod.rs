//! Spans: where a process's time goes, phase by phase. The trainer and the gradient reducer open a
//! [`Span`] around each phase of an optimizer step (data, forward, backward, the all-reduce's wait
//! and buckets, clipping, the optimizer) and around evaluations and checkpoint writes. Closing one
//! costs two clock reads and an uncontended lock, so they are always on:
//!
//! - every step's phase times are kept (a few numbers per step) for the end-of-run report;
//! - with a profile range set ([`profile_steps`]), the spans of those steps are kept whole for the
//!   Chrome trace ([`trace`]);
//! - the innermost open span is what a rank is doing now, for the launcher's hang report
//!   ([`heartbeat`]).
//!
//! The record is the calling thread's (a trainer's steps run on one thread), so trainers on two
//! threads of one process keep apart.
//!
//! On a GPU the spans are host times: kernels queue and run later, so the step's total is right
//! (the step waits for its all-reduce) but its split is not, unless the spans wait for the device
//! ([`synchronize_with`], which profiling turns on).

pub mod heartbeat;
pub mod trace;

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use candle_core::Device;

/// Phase names: those inside a step, then the step itself, then what happens between steps.
pub const DATA: &str = "data";
pub const FORWARD: &str = "forward";
pub const BACKWARD: &str = "backward";
pub const ALL_REDUCE_WAIT: &str = "all-reduce wait";
pub const ALL_REDUCE: &str = "all-reduce";
pub const CLIP: &str = "clip";
pub const OPTIMIZER: &str = "optimizer";
/// ZeRO's gather of the updated weight slices.
pub const ALL_GATHER: &str = "all-gather";
/// The phases of a step, in order.
pub const STEP_PHASES: [&str; 8] = [DATA, FORWARD, BACKWARD, ALL_REDUCE_WAIT, ALL_REDUCE, CLIP, OPTIMIZER, ALL_GATHER];
pub const STEP: &str = "step";
pub const EVALUATION: &str = "evaluation";
pub const CHECKPOINT: &str = "checkpoint";

/// One closed span.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub name: &'static str,
    /// The optimizer step it belongs to (the step in progress, counted from 1).
    pub step: usize,
    /// A number that tells spans of one name apart (the all-reduce's bucket).
    pub arg: Option<usize>,
    /// The thread that ran it, numbered in order of first use.
    pub thread: usize,
    /// Microseconds since the process's clock started.
    pub start_us: f64,
    pub dur_us: f64,
}

/// A finished step: its duration and the time of each phase in it, in seconds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StepTimes {
    pub step: usize,
    pub seconds: f64,
    /// When it ended, in seconds since the process's clock started.
    pub ended_s: f64,
    pub phases: BTreeMap<&'static str, f64>,
}

/// What a span tells about where a rank is now.
#[derive(Debug, Clone, PartialEq)]
pub struct Current {
    pub name: &'static str,
    pub step: usize,
    pub arg: Option<usize>,
    /// Seconds it has been open.
    pub seconds: f64,
}

struct Open {
    id: u64,
    name: &'static str,
    step: usize,
    arg: Option<usize>,
    started: Instant,
    /// Seconds of step phases opened inside this one (a reduction run during backward): a
    /// phase's time in the step excludes them, so that the phases add up to the step.
    nested: f64,
}

#[derive(Default)]
struct State {
    next_id: u64,
    step: usize,
    /// Open spans, outermost first (spans nest on the training thread).
    open: Vec<Open>,
    /// Phase times of the step in progress.
    in_step: BTreeMap<&'static str, f64>,
    steps: Vec<StepTimes>,
    /// Seconds and count of each name outside steps (evaluation, checkpoint).
    totals: BTreeMap<&'static str, (f64, usize)>,
    profile: Option<RangeInclusive<usize>>,
    kept: Vec<Record>,
    sync: Option<Device>,
    publishes: bool,
}

thread_local!(static STATE: std::cell::RefCell<State> = Default::default());

/// Runs `f` on this thread's record.
fn with_state<R>(f: impl FnOnce(&mut State) -> R) -> R {
    STATE.with(|s| f(&mut s.borrow_mut()))
}

/// Whether the innermost span is published for another thread to read ([`published`]).
static PUBLISH: AtomicBool = AtomicBool::new(false);

fn published_slot() -> &'static Mutex<Option<(Current, Instant)>> {
    static SLOT: OnceLock<Mutex<Option<(Current, Instant)>>> = OnceLock::new();
    SLOT.get_or_init(Default::default)
}

/// Publishes the calling thread's innermost span from now on, for [`published`] (the training
/// thread of a launched rank, read by its heartbeat).
pub fn publish_from_this_thread() {
    PUBLISH.store(true, Ordering::SeqCst);
    with_state(|s| s.publishes = true);
    with_state(publish);
}

fn publish(s: &mut State) {
    if !s.publishes {
        return;
    }
    let now = s.open.last().map(|o| (Current { name: o.name, step: o.step, arg: o.arg, seconds: 0.0 }, o.started));
    *published_slot().lock().unwrap_or_else(|p| p.into_inner()) = now;
}

/// The innermost span of the publishing thread, if any.
pub fn published() -> Option<Current> {
    if !PUBLISH.load(Ordering::SeqCst) {
        return None;
    }
    let slot = published_slot().lock().unwrap_or_else(|p| p.into_inner());
    slot.as_ref().map(|(c, started)| Current { seconds: started.elapsed().as_secs_f64(), ..c.clone() })
}

/// The instant the process's span clock counts from (its first use, or [`start_clock`]).
pub fn clock_zero() -> Instant {
    static ZERO: OnceLock<Instant> = OnceLock::new();
    *ZERO.get_or_init(Instant::now)
}

/// Starts the span clock: call it first thing in `main`, so that times count from the start.
pub fn start_clock() {
    clock_zero();
}

fn thread_index() -> usize {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local!(static INDEX: usize = NEXT.fetch_add(1, Ordering::Relaxed));
    INDEX.with(|i| *i)
}

/// An open span: closed when dropped.
#[must_use = "a span measures until it is dropped"]
pub struct Span {
    id: u64,
}

/// Sets the optimizer step the next spans belong to (the step in progress, counted from 1; the
/// last step done between steps).
pub fn set_step(step: usize) {
    with_state(|s| s.step = step);
}

/// Opens a span `name` of the current step.
pub fn enter(name: &'static str) -> Span {
    enter_with(name, None)
}

/// Opens a span with an argument (the bucket of an all-reduce).
pub fn enter_with(name: &'static str, arg: Option<usize>) -> Span {
    with_state(|s| {
        s.next_id += 1;
        let (id, step) = (s.next_id, s.step);
        s.open.push(Open { id, name, step, arg, started: Instant::now(), nested: 0.0 });
        publish(s);
        Span { id }
    })
}

impl Drop for Span {
    fn drop(&mut self) {
        if let Some(device) = with_state(|s| s.sync.clone()) {
            // Profiling a GPU: the span ends when its kernels have run.
            let _ = device.synchronize();
        }
        let ended = Instant::now();
        with_state(|s| s.close(self.id, ended));
    }
}

impl State {
    fn close(&mut self, id: u64, ended: Instant) {
        let s = self;
        let Some(at) = s.open.iter().rposition(|o| o.id == id) else { return };
        let open = s.open.remove(at);
        let seconds = ended.duration_since(open.started).as_secs_f64();
        if open.name == STEP {
            let phases = std::mem::take(&mut s.in_step);
            let ended_s = ended.saturating_duration_since(clock_zero()).as_secs_f64();
            s.steps.push(StepTimes { step: open.step, seconds, ended_s, phases });
        } else if STEP_PHASES.contains(&open.name) {
            *s.in_step.entry(open.name).or_default() += seconds - open.nested;
            if let Some(outer) = s.open.iter_mut().rev().find(|o| STEP_PHASES.contains(&o.name)) {
                outer.nested += seconds;
            }
        } else {
            let total = s.totals.entry(open.name).or_default();
            total.0 += seconds;
            total.1 += 1;
        }
        if s.profile.as_ref().is_some_and(|r| r.contains(&open.step)) {
            let zero = clock_zero();
            s.kept.push(Record {
                name: open.name,
                step: open.step,
                arg: open.arg,
                thread: thread_index(),
                start_us: open.started.saturating_duration_since(zero).as_secs_f64() * 1e6,
                dur_us: seconds * 1e6,
            });
        }
        publish(s);
    }
}

/// Keeps the whole spans of the steps in `steps` for the trace (None: keeps none).
pub fn profile_steps(steps: Option<RangeInclusive<usize>>) {
    with_state(|s| s.profile = steps);
}

/// Makes every span wait for `device` before it ends (None: host times only).
pub fn synchronize_with(device: Option<Device>) {
    with_state(|s| s.sync = device.filter(|d| !d.is_cpu()));
}

/// Whether spans wait for a GPU before they end.
pub fn synchronizes() -> bool {
    with_state(|s| s.sync.is_some())
}

/// The innermost open span, if any.
pub fn current() -> Option<Current> {
    with_state(|s| {
        let open = s.open.last()?;
        Some(Current { name: open.name, step: open.step, arg: open.arg, seconds: open.started.elapsed().as_secs_f64() })
    })
}

/// The finished steps so far.
pub fn steps() -> Vec<StepTimes> {
    with_state(|s| s.steps.clone())
}

/// Seconds and count of the spans of `name` outside steps.
pub fn total(name: &str) -> (f64, usize) {
    with_state(|s| s.totals.get(name).copied().unwrap_or_default())
}

/// The spans kept for the trace, leaving none.
pub fn take_kept() -> Vec<Record> {
    with_state(|s| std::mem::take(&mut s.kept))
}

/// Forgets every step, total and kept span (a new run on this thread).
pub fn reset() {
    with_state(|s| {
        s.in_step.clear();
        s.steps.clear();
        s.totals.clear();
        s.kept.clear();
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reduction run inside backward counts as the reduction's time, not also as backward's:
    /// the phases add up to the step.
    #[test]
    fn a_phase_inside_another_counts_once() {
        let step = 2_000_000;
        set_step(step);
        {
            let _step = enter(STEP);
            let _backward = enter(BACKWARD);
            std::thread::sleep(std::time::Duration::from_millis(3));
            let _reduce = enter_with(ALL_REDUCE, Some(0));
            std::thread::sleep(std::time::Duration::from_millis(6));
        }
        let s = steps().into_iter().find(|s| s.step == step).unwrap();
        let sum: f64 = s.phases.values().sum();
        assert!(s.phases[ALL_REDUCE] >= 0.006 && s.phases[BACKWARD] >= 0.003, "{s:?}");
        // Counted twice, backward (9 ms and more) and the reduction (6 ms) would exceed the step.
        assert!(sum <= s.seconds + 1e-6, "backward excludes the reduction: {s:?}");
    }

    #[test]
    fn steps_collect_their_phases_and_the_profile_keeps_nested_spans() {
        let base = 1_000_000;
        profile_steps(Some(base + 2..=base + 2));
        for step in base + 1..=base + 3 {
            set_step(step);
            let _step = enter(STEP);
            {
                let _f = enter(FORWARD);
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            for bucket in 0..2 {
                let _b = enter_with(ALL_REDUCE, Some(bucket));
            }
        }
        let evaluations = total(EVALUATION).1;
        {
            let _e = enter(EVALUATION);
            assert_eq!(current().unwrap().name, EVALUATION);
        }
        let steps: Vec<StepTimes> = steps().into_iter().filter(|s| s.step > base).collect();
        assert_eq!(steps.iter().map(|s| s.step - base).collect::<Vec<_>>(), [1, 2, 3]);
        for s in &steps {
            assert!(s.phases[FORWARD] >= 0.002 && s.phases[FORWARD] <= s.seconds, "{s:?}");
            assert!(s.phases.contains_key(ALL_REDUCE));
        }
        assert!(total(EVALUATION).1 > evaluations);
        let kept: Vec<Record> =
            take_kept().into_iter().filter(|r| [STEP, FORWARD, ALL_REDUCE].contains(&r.name)).collect();
        // Step 2's forward, two buckets and the step, each inside the step's span.
        assert_eq!(
            kept.iter().map(|r| (r.name, r.arg)).collect::<Vec<_>>(),
            [(FORWARD, None), (ALL_REDUCE, Some(0)), (ALL_REDUCE, Some(1)), (STEP, None)]
        );
        let outer = kept.last().unwrap();
        for r in &kept {
            assert_eq!(r.step, base + 2);
            assert!(r.start_us >= outer.start_us && r.start_us + r.dur_us <= outer.start_us + outer.dur_us + 1.0);
        }
        profile_steps(None);
    }
}
