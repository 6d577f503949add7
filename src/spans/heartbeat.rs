//! The heartbeat of a launched rank: a thread that prints the training thread's innermost span as
//! a marker line for `accel launch` whenever it changes, and at least once a second, so that when a
//! job fails the launcher can say where each rank was and for how long, even for a rank stuck in a
//! collective (its training thread is blocked; this thread is not).

use std::time::{Duration, Instant};

/// Starts the heartbeat for the calling (training) thread's spans; once per process.
pub fn start() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        super::publish_from_this_thread();
        let _ = std::thread::Builder::new().name("accel-heartbeat".into()).spawn(beat);
    });
}

/// What a heartbeat says: span name, step and argument.
type Said = (&'static str, usize, Option<usize>);

fn beat() {
    let mut last: Option<(Said, Instant)> = None;
    loop {
        std::thread::sleep(Duration::from_millis(100));
        let current = super::published();
        let key = current.as_ref().map_or(("-", 0, None), |c| (c.name, c.step, c.arg));
        if last.is_none_or(|(k, at)| k != key || at.elapsed() >= Duration::from_secs(1)) {
            crate::io::eprint_line(&marker(current));
            last = Some((key, Instant::now()));
        }
    }
}

/// `@accel-span STEP ARG NAME SECONDS`: ARG is `-` without one, NAME `-` between spans.
fn marker(current: Option<super::Current>) -> String {
    match current {
        Some(c) => format!(
            "{}{} {} {} {:.3}",
            accel_launch::SPAN_MARKER,
            c.step,
            c.arg.map_or("-".to_string(), |a| a.to_string()),
            c.name.replace(' ', "_"),
            c.seconds
        ),
        None => format!("{}0 - - 0", accel_launch::SPAN_MARKER),
    }
}
