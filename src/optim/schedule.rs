//! Learning-rate schedules with warmup (linear, constant, cosine) as pure functions of the step, matching transformers.
//!
//! `lr_at(step)` is the rate the optimizer uses for update number `step + 1` (steps count from 0),
//! the same value `scheduler.get_last_lr()` returns before that update in PyTorch. Because it is a
//! pure function, resuming from a checkpoint needs only the step count.

use crate::{Error, Result};

/// The shape of the decay after warmup.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScheduleKind {
    /// `get_linear_schedule_with_warmup`: down to 0 at `total_steps`.
    Linear,
    /// `get_constant_schedule_with_warmup` (or `get_constant_schedule` with no warmup).
    Constant,
    /// `get_cosine_schedule_with_warmup`; `num_cycles` is 0.5 for one half-cosine down to 0.
    Cosine { num_cycles: f64 },
}

/// How long the warmup lasts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Warmup {
    Steps(usize),
    /// A fraction of the total steps, rounded up as transformers' `get_warmup_steps` does.
    Ratio(f64),
}

/// A learning-rate schedule: `base_lr` times transformers' multiplier for the step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrSchedule {
    kind: ScheduleKind,
    base_lr: f64,
    warmup_steps: usize,
    total_steps: usize,
}

impl LrSchedule {
    pub fn new(kind: ScheduleKind, base_lr: f64, warmup: Warmup, total_steps: usize) -> Result<Self> {
        let warmup_steps = match warmup {
            Warmup::Steps(n) => n,
            Warmup::Ratio(r) if (0.0..=1.0).contains(&r) => (total_steps as f64 * r).ceil() as usize,
            Warmup::Ratio(r) => {
                return Err(Error::config("warmup_ratio", format!("{r} is not in [0, 1]")));
            }
        };
        if !(base_lr.is_finite() && base_lr >= 0.0) {
            return Err(Error::config("learning_rate", format!("{base_lr} is not a non-negative number")));
        }
        Ok(Self { kind, base_lr, warmup_steps, total_steps })
    }

    pub fn warmup_steps(&self) -> usize {
        self.warmup_steps
    }

    pub fn total_steps(&self) -> usize {
        self.total_steps
    }

    pub fn base_lr(&self) -> f64 {
        self.base_lr
    }

    /// The learning rate for update number `step + 1` (`step` counts completed updates).
    pub fn lr_at(&self, step: usize) -> f64 {
        self.base_lr * self.multiplier(step)
    }

    /// transformers' `lr_lambda(current_step)`, in the same floating-point operations.
    fn multiplier(&self, step: usize) -> f64 {
        let (step_f, warmup) = (step as f64, self.warmup_steps);
        if step < warmup {
            return step_f / warmup.max(1) as f64;
        }
        let decay_span = self.total_steps.saturating_sub(warmup).max(1) as f64;
        match self.kind {
            ScheduleKind::Constant => 1.0,
            ScheduleKind::Linear => (0.0f64).max((self.total_steps as f64 - step_f) / decay_span),
            ScheduleKind::Cosine { num_cycles } => {
                let progress = (step - warmup) as f64 / decay_span;
                (0.0f64).max(0.5 * (1.0 + (std::f64::consts::PI * num_cycles * 2.0 * progress).cos()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lrs(s: &LrSchedule, steps: std::ops::Range<usize>) -> Vec<f64> {
        steps.map(|i| s.lr_at(i)).collect()
    }

    #[test]
    fn linear_without_warmup_matches_the_golden_trace() {
        // get_linear_schedule_with_warmup(warmup=0, total=4), lr=5e-5:
        // lambda(s) = max(0, (4 - s) / max(1, 4 - 0)) -> 1, 0.75, 0.5, 0.25, 0
        let s = LrSchedule::new(ScheduleKind::Linear, 5e-5, Warmup::Steps(0), 4).unwrap();
        assert_eq!(lrs(&s, 0..6), [5e-5, 5e-5 * 0.75, 5e-5 * 0.5, 5e-5 * 0.25, 0.0, 0.0]);
    }

    #[test]
    fn linear_with_warmup() {
        // warmup=2, total=10, lr=1.0: s < 2 -> s / 2; else (10 - s) / 8.
        let s = LrSchedule::new(ScheduleKind::Linear, 1.0, Warmup::Steps(2), 10).unwrap();
        assert_eq!(lrs(&s, 0..4), [0.0, 0.5, 8.0 / 8.0, 7.0 / 8.0]);
        assert_eq!(s.lr_at(10), 0.0);
    }

    #[test]
    fn warmup_ratio_rounds_up() {
        // math.ceil(10 * 0.25) = 3; math.ceil(1000 * 0.06) = 60; math.ceil(7 * 0.1) = 1.
        let steps =
            |total, r| LrSchedule::new(ScheduleKind::Linear, 1.0, Warmup::Ratio(r), total).unwrap().warmup_steps();
        assert_eq!(steps(10, 0.25), 3);
        assert_eq!(steps(1000, 0.06), 60);
        assert_eq!(steps(7, 0.1), 1);
        assert!(LrSchedule::new(ScheduleKind::Linear, 1.0, Warmup::Ratio(1.5), 10).is_err());
    }

    #[test]
    fn constant_with_warmup() {
        // s < 3 -> s / max(1, 3); else 1.
        let s = LrSchedule::new(ScheduleKind::Constant, 2.0, Warmup::Steps(3), 100).unwrap();
        assert_eq!(lrs(&s, 0..5), [0.0, 2.0 / 3.0, 2.0 * 2.0 / 3.0, 2.0, 2.0]);
        let s = LrSchedule::new(ScheduleKind::Constant, 2.0, Warmup::Steps(0), 100).unwrap();
        assert_eq!(s.lr_at(0), 2.0);
    }

    #[test]
    fn cosine_with_warmup() {
        // warmup=2, total=10, cycles=0.5: progress = (s - 2) / 8; 0.5 * (1 + cos(pi * progress)).
        let s = LrSchedule::new(ScheduleKind::Cosine { num_cycles: 0.5 }, 1.0, Warmup::Steps(2), 10).unwrap();
        assert_eq!(s.lr_at(1), 0.5);
        assert_eq!(s.lr_at(2), 1.0);
        let mid = s.lr_at(6); // progress 0.5 -> 0.5 * (1 + cos(pi / 2)) = 0.5
        assert!((mid - 0.5).abs() < 1e-15);
        let at4 = s.lr_at(4); // progress 0.25 -> 0.5 * (1 + cos(pi / 4)) = 0.8535533905932737
        assert!((at4 - 0.853_553_390_593_273_7).abs() < 1e-15);
        assert!(s.lr_at(10).abs() < 1e-15);
    }
}
