//! Whether an evaluation improves on the best so far: one rule for the two places that ask.
//!
//! transformers asks twice, with the same comparison and different margins:
//! - the best checkpoint (`Trainer._determine_best_metric`): `operator(value, best)`, where the
//!   operator is `>` when `greater_is_better` and `<` otherwise; no margin;
//! - early stopping (`EarlyStoppingCallback.check_metric_value`): the same comparison, and also
//!   `abs(value - best) > early_stopping_threshold`.
//!
//! Both treat a run with no best yet as improved.

use crate::{Error, Result};

use super::metrics::Metrics;

/// `value` beats `best` in the direction `greater_is_better` says, by more than `threshold`
/// (0 for the best checkpoint, `early_stopping_threshold` for early stopping).
pub fn improves(value: f64, best: Option<f64>, greater_is_better: bool, threshold: f64) -> bool {
    let Some(best) = best else { return true };
    let better = if greater_is_better { value > best } else { value < best };
    better && (value - best).abs() > threshold
}

/// The value of `name` (`metric_for_best_model` without its `eval_` prefix) in `metrics`, or an
/// error naming the metrics there are.
pub fn metric_value(metrics: &Metrics, name: &str) -> Result<f64> {
    metrics.get(name).copied().ok_or_else(|| {
        Error::config(
            "metric_for_best_model",
            format!("{name:?} is not among the evaluation metrics {:?}", metrics.keys().collect::<Vec<_>>()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_checkpoint_takes_any_strict_improvement() {
        assert!(improves(0.5, None, true, 0.0), "the first evaluation is the best so far");
        assert!(improves(0.81, Some(0.80), true, 0.0));
        assert!(!improves(0.80, Some(0.80), true, 0.0), "a tie is not an improvement");
        assert!(!improves(0.79, Some(0.80), true, 0.0));
        // Lower is better (a loss).
        assert!(improves(0.40, Some(0.41), false, 0.0));
        assert!(!improves(0.42, Some(0.41), false, 0.0));
    }

    #[test]
    fn early_stopping_needs_more_than_the_threshold() {
        assert!(improves(0.5, None, true, 0.1));
        assert!(!improves(0.85, Some(0.80), true, 0.1), "better, but by less than the threshold");
        assert!(!improves(0.90, Some(0.80), true, 0.1 + 1e-12), "by exactly the threshold is not more");
        assert!(improves(0.95, Some(0.80), true, 0.1));
        assert!(!improves(0.95, Some(0.80), false, 0.1), "far, but in the wrong direction");
        assert!(improves(0.60, Some(0.80), false, 0.1));
    }

    #[test]
    fn a_missing_metric_names_the_key_and_the_metrics_there_are() {
        let metrics = Metrics::from([("accuracy".to_string(), 0.8)]);
        assert_eq!(metric_value(&metrics, "accuracy").unwrap(), 0.8);
        let err = metric_value(&metrics, "f1").unwrap_err().to_string();
        assert!(err.contains("metric_for_best_model") && err.contains("accuracy"), "{err}");
    }
}
