//! Where a CPU step's time goes, for benchmarks: each fused op's forward and backward pass by
//! name, and the layer-level products (the linear layers'; attention's per-head products run
//! inside its own thread split and count as attention's time) by shape, with the share of each
//! op's time its products took.
//!
//! Off unless [`enable`]d: then each op and product costs two clock reads and a lock. The same
//! products timed alone, for comparison: `gemm::time_alone`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One product shape: (m, n, k), whether lhs and rhs are read transposed, and whether bf16.
pub type Shape = ((usize, usize, usize), (bool, bool), bool);

/// An op's pass: its name and "forward" or "backward" (or what else the caller names).
pub type OpPass = (&'static str, &'static str);

/// What one op's passes took: how many, their total time, and the products' part of it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct OpTime {
    pub calls: u64,
    pub total: Duration,
    pub products: Duration,
}

static ON: AtomicBool = AtomicBool::new(false);
static PRODUCTS: Mutex<BTreeMap<Shape, (u64, Duration)>> = Mutex::new(BTreeMap::new());
static OPS: Mutex<BTreeMap<OpPass, OpTime>> = Mutex::new(BTreeMap::new());

thread_local! {
    /// The product time of the ops open on this thread, innermost last.
    static OPEN: RefCell<Vec<Duration>> = const { RefCell::new(Vec::new()) };
}

pub(super) fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

pub(super) fn record_product(dims: (usize, usize, usize), trans: (bool, bool), bf16: bool, took: Duration) {
    let mut seen = PRODUCTS.lock().unwrap_or_else(|e| e.into_inner());
    let entry = seen.entry((dims, trans, bf16)).or_default();
    entry.0 += 1;
    entry.1 += took;
    OPEN.with(|open| {
        if let Some(inner) = open.borrow_mut().last_mut() {
            *inner += took;
        }
    });
}

/// Times one pass of an op from now until it is dropped (nothing when the profile is off).
pub struct OpTimer {
    open: Option<(OpPass, Instant)>,
}

/// Starts timing `pass` of op `name` on the calling thread.
pub fn op(name: &'static str, pass: &'static str) -> OpTimer {
    if !enabled() {
        return OpTimer { open: None };
    }
    OPEN.with(|open| open.borrow_mut().push(Duration::ZERO));
    OpTimer { open: Some(((name, pass), Instant::now())) }
}

impl Drop for OpTimer {
    fn drop(&mut self) {
        let Some((key, started)) = self.open.take() else { return };
        let took = started.elapsed();
        let products = OPEN.with(|open| open.borrow_mut().pop()).unwrap_or_default();
        let mut ops = OPS.lock().unwrap_or_else(|e| e.into_inner());
        let entry = ops.entry(key).or_default();
        entry.calls += 1;
        entry.total += took;
        entry.products += products;
    }
}

/// Starts (or stops) recording.
pub fn enable(on: bool) {
    ON.store(on, Ordering::Relaxed);
}

/// The products recorded since the last call, per shape: (calls, total time); and clears them.
pub fn take() -> BTreeMap<Shape, (u64, Duration)> {
    std::mem::take(&mut *PRODUCTS.lock().unwrap_or_else(|e| e.into_inner()))
}

/// The op passes recorded since the last call; and clears them.
pub fn take_ops() -> BTreeMap<OpPass, OpTime> {
    std::mem::take(&mut *OPS.lock().unwrap_or_else(|e| e.into_inner()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ops_record_their_time_and_the_products_inside_them() {
        enable(true);
        {
            let _outer = op("profile-test", "forward");
            record_product((1, 2, 3), (false, false), false, Duration::from_millis(2));
            std::thread::sleep(Duration::from_millis(3));
        }
        enable(false);
        // Other tests may record products meanwhile; this op's name is its own.
        let ops = take_ops();
        let mine = ops[&("profile-test", "forward")];
        assert_eq!(mine.calls, 1);
        assert_eq!(mine.products, Duration::from_millis(2));
        assert!(mine.total >= Duration::from_millis(3));
        let _off = op("profile-test", "backward");
        drop(_off);
        assert!(!take_ops().contains_key(&("profile-test", "backward")));
    }
}
