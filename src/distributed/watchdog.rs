//! Watchdog: catches a collective that never completes (a rank stuck, not dead) and ends the job
//! after `ddp_timeout`, instead of every other rank waiting forever.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Watches one rank's collectives from a thread of its own.
#[derive(Debug)]
pub struct Watchdog {
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    rank: usize,
    timeout: Duration,
    epoch: Instant,
    /// Milliseconds since `epoch` at which the collective in progress started, plus 1; 0 when idle.
    entered_ms: AtomicU64,
    op: Mutex<&'static str>,
    step: AtomicUsize,
    stopped: AtomicBool,
}

/// The collective in progress; dropping it marks the collective complete.
#[must_use]
pub struct Watch<'a> {
    state: &'a State,
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        self.state.entered_ms.store(0, Ordering::Release);
    }
}

impl Watchdog {
    /// Starts the watching thread. `on_timeout` gets the message and must end the process (it is
    /// called at most once).
    pub fn start(rank: usize, timeout: Duration, on_timeout: impl Fn(&str) + Send + 'static) -> Self {
        let state = Arc::new(State {
            rank,
            timeout,
            epoch: Instant::now(),
            entered_ms: AtomicU64::new(0),
            op: Mutex::new(""),
            step: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
        });
        let watched = state.clone();
        let poll = (timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        std::thread::Builder::new()
            .name("accel-watchdog".into())
            .spawn(move || {
                while !watched.stopped.load(Ordering::Acquire) {
                    std::thread::sleep(poll);
                    if let Some(message) = watched.expired() {
                        on_timeout(&message);
                        return;
                    }
                }
            })
            .expect("spawning the watchdog thread");
        Self { state }
    }

    /// Marks the start of collective `op`; the returned guard marks its end.
    pub fn enter(&self, op: &'static str) -> Watch<'_> {
        *self.state.op.lock().unwrap_or_else(|p| p.into_inner()) = op;
        let now = self.state.epoch.elapsed().as_millis() as u64 + 1;
        self.state.entered_ms.store(now, Ordering::Release);
        Watch { state: &self.state }
    }

    /// The optimizer step, for the message.
    pub fn set_step(&self, step: usize) {
        self.state.step.store(step, Ordering::Relaxed);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.state.stopped.store(true, Ordering::Release);
    }
}

impl State {
    fn expired(&self) -> Option<String> {
        let entered = self.entered_ms.load(Ordering::Acquire);
        if entered == 0 {
            return None;
        }
        let waited = Duration::from_millis((self.epoch.elapsed().as_millis() as u64 + 1).saturating_sub(entered));
        if waited < self.timeout {
            return None;
        }
        let op = *self.op.lock().unwrap_or_else(|p| p.into_inner());
        let failure = accel_launch::RankFailure::TimedOut {
            op: op.to_string(),
            timeout_s: self.timeout.as_secs_f64(),
            step: self.step.load(Ordering::Relaxed),
        };
        Some(failure.line(self.rank))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[test]
    fn fires_only_for_a_collective_that_outlives_the_timeout() {
        let (tx, rx) = mpsc::channel();
        let dog = Watchdog::start(1, Duration::from_millis(100), move |m| tx.send(m.to_string()).unwrap());
        dog.set_step(7);
        {
            let _quick = dog.enter("barrier");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(200));
        assert!(rx.try_recv().is_err(), "a completed collective must not fire");
        let _stuck = dog.enter("all_reduce");
        let message = rx.recv_timeout(Duration::from_secs(5)).expect("the watchdog fires");
        assert!(message.contains("rank 1: all_reduce") && message.contains("step 7"), "{message}");
    }
}
