//! Metrics for GLUE-style evaluation: accuracy, F1 (positive label 1), Matthews correlation,
//! Pearson and Spearman correlation, and the per-task defaults (`compute_metrics`).

use std::collections::BTreeMap;

/// Named metric values, sorted by name.
pub type Metrics = BTreeMap<String, f64>;

/// What evaluation hands to a metric function: predicted class ids (or scores for regression)
/// and the reference labels, in dataset order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EvalPrediction {
    pub predictions: Vec<f64>,
    pub labels: Vec<f64>,
}

/// A pluggable `compute_metrics`: anything that turns predictions into named values.
pub type ComputeMetrics = fn(&EvalPrediction) -> Metrics;

/// Fraction of predictions equal to their label.
pub fn accuracy(pred: &[f64], labels: &[f64]) -> f64 {
    if pred.is_empty() {
        return 0.0;
    }
    pred.iter().zip(labels).filter(|(p, l)| p == l).count() as f64 / pred.len() as f64
}

/// Binary F1 with label 1 as the positive class (scikit-learn's `f1_score(pos_label=1)`; 0 when
/// there are no true positives).
pub fn f1(pred: &[f64], labels: &[f64]) -> f64 {
    let (mut tp, mut fp, mut fn_) = (0.0, 0.0, 0.0);
    for (&p, &l) in pred.iter().zip(labels) {
        match (p == 1.0, l == 1.0) {
            (true, true) => tp += 1.0,
            (true, false) => fp += 1.0,
            (false, true) => fn_ += 1.0,
            _ => {}
        }
    }
    if tp == 0.0 {
        0.0
    } else {
        2.0 * tp / (2.0 * tp + fp + fn_)
    }
}

/// Matthews correlation coefficient for binary labels (0 when undefined, as scikit-learn).
pub fn matthews_corrcoef(pred: &[f64], labels: &[f64]) -> f64 {
    let (mut tp, mut tn, mut fp, mut fn_) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for (&p, &l) in pred.iter().zip(labels) {
        match (p == 1.0, l == 1.0) {
            (true, true) => tp += 1.0,
            (false, false) => tn += 1.0,
            (true, false) => fp += 1.0,
            (false, true) => fn_ += 1.0,
        }
    }
    let denom = ((tp + fp) * (tp + fn_) * (tn + fp) * (tn + fn_)).sqrt();
    if denom == 0.0 {
        0.0
    } else {
        (tp * tn - fp * fn_) / denom
    }
}

/// Pearson correlation (NaN when either side is constant).
pub fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    sxy / (sxx * syy).sqrt()
}

/// Ranks with ties given their average rank (1-based), as scipy's `rankdata`.
fn ranks(x: &[f64]) -> Vec<f64> {
    let mut order: Vec<usize> = (0..x.len()).collect();
    order.sort_by(|&a, &b| x[a].total_cmp(&x[b]));
    let mut out = vec![0.0; x.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && x[order[j + 1]] == x[order[i]] {
            j += 1;
        }
        let rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            out[k] = rank;
        }
        i = j + 1;
    }
    out
}

/// Spearman rank correlation.
pub fn spearman(x: &[f64], y: &[f64]) -> f64 {
    pearson(&ranks(x), &ranks(y))
}

/// Accuracy and F1 (MRPC, QQP).
pub fn accuracy_and_f1(p: &EvalPrediction) -> Metrics {
    Metrics::from([
        ("accuracy".to_string(), accuracy(&p.predictions, &p.labels)),
        ("f1".to_string(), f1(&p.predictions, &p.labels)),
    ])
}

/// Accuracy alone (SST-2, RTE, QNLI, WNLI, MNLI).
pub fn accuracy_only(p: &EvalPrediction) -> Metrics {
    Metrics::from([("accuracy".to_string(), accuracy(&p.predictions, &p.labels))])
}

/// Matthews correlation (CoLA).
pub fn matthews(p: &EvalPrediction) -> Metrics {
    Metrics::from([("matthews_correlation".to_string(), matthews_corrcoef(&p.predictions, &p.labels))])
}

/// Pearson and Spearman correlation (STS-B).
pub fn correlations(p: &EvalPrediction) -> Metrics {
    Metrics::from([
        ("pearson".to_string(), pearson(&p.predictions, &p.labels)),
        ("spearmanr".to_string(), spearman(&p.predictions, &p.labels)),
    ])
}

/// The metrics for a task: Pearson and Spearman for a regression, else [`for_task`].
pub fn for_task_kind(name: &str, regression: bool) -> ComputeMetrics {
    if regression {
        correlations
    } else {
        for_task(name)
    }
}

/// The metrics GLUE reports for a task (`glue/mrpc`, ...); accuracy for anything else.
pub fn for_task(name: &str) -> ComputeMetrics {
    match name.rsplit('/').next().unwrap_or(name) {
        "mrpc" | "qqp" => accuracy_and_f1,
        "cola" => matthews,
        "stsb" => correlations,
        _ => accuracy_only,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(xs: &[i32]) -> Vec<f64> {
        xs.iter().map(|&x| x as f64).collect()
    }

    #[test]
    fn classification_metrics_match_scikit_learn() {
        // sklearn: accuracy_score / f1_score / matthews_corrcoef of these two lists
        // give 0.625, 0.6666666666666666 and 0.2581988897471611.
        let pred = v(&[1, 0, 1, 1, 0, 1, 0, 0]);
        let gold = v(&[1, 0, 0, 1, 1, 1, 0, 1]);
        assert!((accuracy(&pred, &gold) - 0.625).abs() < 1e-12);
        assert!((f1(&pred, &gold) - 2.0 / 3.0).abs() < 1e-12);
        assert!((matthews_corrcoef(&pred, &gold) - 0.2581988897471611).abs() < 1e-12);
        assert_eq!(f1(&v(&[0, 0]), &v(&[1, 0])), 0.0);
        assert_eq!(matthews_corrcoef(&v(&[1, 1]), &v(&[1, 0])), 0.0);
    }

    #[test]
    fn correlations_match_scipy() {
        // scipy.stats.pearsonr([1,2,3,4,5],[2,1,4,3,5]) = 0.8; spearmanr with a tie
        // ([1,2,2,3],[1,3,2,4]) = 0.9486832980505138.
        assert!((pearson(&v(&[1, 2, 3, 4, 5]), &v(&[2, 1, 4, 3, 5])) - 0.8).abs() < 1e-12);
        assert!((spearman(&v(&[1, 2, 2, 3]), &v(&[1, 3, 2, 4])) - 0.9486832980505138).abs() < 1e-12);
    }

    #[test]
    fn tasks_get_glue_metrics() {
        let p = EvalPrediction { predictions: v(&[1, 0]), labels: v(&[1, 1]) };
        assert_eq!(for_task("glue/mrpc")(&p).keys().collect::<Vec<_>>(), ["accuracy", "f1"]);
        assert_eq!(for_task("glue/sst2")(&p).keys().collect::<Vec<_>>(), ["accuracy"]);
        assert_eq!(for_task("data/train.csv")(&p)["accuracy"], 0.5);
    }
}
