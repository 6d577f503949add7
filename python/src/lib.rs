//! `accel._native`: runs one accel command (`accel train`, `accel launch ...`) as a child process
//! for the Python module, with the GIL released while it runs. Each line the child writes is handed
//! to a Python callback as it comes; a KeyboardInterrupt (Ctrl-C, or a notebook's interrupt) stops
//! the job as SIGINT stops the CLI: the child (in a process group of its own, so that a terminal's
//! Ctrl-C reaches it once, through here) gets SIGINT, is waited for, and the KeyboardInterrupt
//! goes on; a job that outlives the grace period is killed with its process group.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pyo3::prelude::*;

/// How often the wait looks for a signal when the child is quiet.
const POLL: Duration = Duration::from_millis(100);

/// A line from the child: whether it came on standard error, and its text.
type Line = (bool, String);

/// The lines' queue, waited on with the GIL released (hence shareable: a Mutex around it).
type Lines = Mutex<Receiver<Line>>;

fn next_line(rx: &Lines, wait: Duration) -> Result<Line, RecvTimeoutError> {
    rx.lock().unwrap_or_else(|p| p.into_inner()).recv_timeout(wait)
}

fn spawn_reader(stream: impl Read + Send + 'static, is_stderr: bool, tx: mpsc::Sender<Line>) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut raw = Vec::new();
        loop {
            raw.clear();
            match reader.read_until(b'\n', &mut raw) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&raw).trim_end_matches(['\n', '\r']).to_string();
            if tx.send((is_stderr, text)).is_err() {
                break;
            }
        }
    });
}

/// The exit code as a shell reports it (128 + the signal for a killed process).
fn exit_code(child: &mut Child) -> i32 {
    match child.wait() {
        Ok(status) => status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        Err(_) => -1,
    }
}

fn signal_group(child: &Child, signal: libc::c_int) {
    // SAFETY: kill(2) on the child's own process group (it was started as its leader).
    unsafe {
        libc::kill(-(child.id() as libc::pid_t), signal);
    }
}

/// Stops the job after an interrupt: SIGINT to its process group, then the lines it still writes
/// (handed to `on_line`) until it ends; after `grace`, or at a second interrupt, SIGKILL to the
/// group (`accel launch` then takes mpirun and the ranks with it: they end when it does).
fn stop(py: Python<'_>, child: &mut Child, rx: &Lines, on_line: &Bound<'_, PyAny>, grace: Duration) {
    signal_group(child, libc::SIGINT);
    let deadline = Instant::now() + grace;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || py.check_signals().is_err() {
            signal_group(child, libc::SIGKILL);
            break;
        }
        match py.detach(|| next_line(rx, left.min(POLL))) {
            Ok((is_stderr, text)) => {
                // The interrupt is already on its way up: a failing callback changes nothing.
                let _ = on_line.call1((is_stderr, text));
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    py.detach(|| {
        let _ = child.wait();
    });
}

/// Runs `program` with `args` (and `env` added to this process's environment), calling
/// `on_line(is_stderr, text)` for each line it writes, and returns its exit code. Python exceptions
/// raised meanwhile (KeyboardInterrupt, or one from `on_line`) stop the job, then propagate.
#[pyfunction]
#[pyo3(signature = (program, args, env, on_line, grace_seconds = 30.0))]
fn run(
    py: Python<'_>,
    program: String,
    args: Vec<String>,
    env: HashMap<String, String>,
    on_line: Bound<'_, PyAny>,
    grace_seconds: f64,
) -> PyResult<i32> {
    let mut command = Command::new(&program);
    command.args(&args).envs(&env).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    // SAFETY: prctl is async-signal-safe. A job whose Python process dies (a restarted kernel, a
    // killed script) gets SIGTERM, which stops it as a preemption does, instead of running on.
    unsafe {
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let mut child =
        command.spawn().map_err(|e| pyo3::exceptions::PyOSError::new_err(format!("cannot run {program}: {e}")))?;
    let (tx, rx) = mpsc::channel();
    spawn_reader(child.stdout.take().expect("piped"), false, tx.clone());
    spawn_reader(child.stderr.take().expect("piped"), true, tx);
    let rx = Mutex::new(rx);
    let grace = Duration::from_secs_f64(grace_seconds.max(0.0));
    loop {
        let failure = match py.detach(|| next_line(&rx, POLL)) {
            Ok((is_stderr, text)) => on_line.call1((is_stderr, text)).err(),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        if let Some(err) = failure.or_else(|| py.check_signals().err()) {
            stop(py, &mut child, &rx, &on_line, grace);
            return Err(err);
        }
    }
    Ok(py.detach(|| exit_code(&mut child)))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(run, m)?)?;
    Ok(())
}
