//! The official SQuAD scores, as `evaluate`'s `squad` (v1.1) and `squad_v2` compute them: answers
//! normalised (lower case, ASCII punctuation and the articles a/an/the removed, spaces collapsed),
//! exact match and token F1 against each gold answer, the best over gold answers, in percent.
//! v2 counts an unanswerable question right when the prediction is empty, and adds HasAns and
//! NoAns figures and the best no-answer thresholds.

use std::collections::HashMap;

use super::metrics::Metrics;

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Lower case, punctuation removed, articles removed, whitespace collapsed.
pub fn normalize(s: &str) -> String {
    let lower = s.to_lowercase();
    let chars: Vec<char> = lower.chars().filter(|c| !c.is_ascii_punctuation()).collect();
    // `\b(a|an|the)\b` replaced by a space.
    let mut out = String::with_capacity(chars.len());
    let mut i = 0;
    while i < chars.len() {
        let boundary_before = i == 0 || !is_word(chars[i - 1]);
        let article = ["a", "an", "the"].into_iter().find(|w| {
            let n = w.chars().count();
            boundary_before
                && chars.len() >= i + n
                && chars[i..i + n].iter().copied().eq(w.chars())
                && (i + n == chars.len() || !is_word(chars[i + n]))
        });
        match article {
            Some(w) => {
                out.push(' ');
                i += w.len();
            }
            None => {
                out.push(chars[i]);
                i += 1;
            }
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn exact(gold: &str, predicted: &str) -> f64 {
    f64::from(u8::from(normalize(gold) == normalize(predicted)))
}

/// Token F1; with `empty_agrees` (v2), an empty gold or prediction scores 1 when both are empty.
fn f1(gold: &str, predicted: &str, empty_agrees: bool) -> f64 {
    let (g, p) = (normalize(gold), normalize(predicted));
    let (g, p): (Vec<&str>, Vec<&str>) = (g.split_whitespace().collect(), p.split_whitespace().collect());
    if empty_agrees && (g.is_empty() || p.is_empty()) {
        return f64::from(u8::from(g == p));
    }
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for t in &g {
        *counts.entry(t).or_default() += 1;
    }
    let mut same = 0;
    for t in &p {
        if let Some(c) = counts.get_mut(t) {
            if *c > 0 {
                *c -= 1;
                same += 1;
            }
        }
    }
    if same == 0 {
        return 0.0;
    }
    let (precision, recall) = (same as f64 / p.len() as f64, same as f64 / g.len() as f64);
    2.0 * precision * recall / (precision + recall)
}

/// One question's gold answers (empty: unanswerable) and the predicted text.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored<'a> {
    pub gold: &'a [String],
    pub predicted: &'a str,
}

/// `squad`'s `exact_match` and `f1` (every question answerable).
pub fn squad_v1(questions: &[Scored]) -> Metrics {
    let (mut em, mut f) = (0.0, 0.0);
    for q in questions {
        em += q.gold.iter().map(|g| exact(g, q.predicted)).fold(0.0, f64::max);
        f += q.gold.iter().map(|g| f1(g, q.predicted, false)).fold(0.0, f64::max);
    }
    let n = questions.len().max(1) as f64;
    Metrics::from([("exact_match".to_string(), 100.0 * em / n), ("f1".to_string(), 100.0 * f / n)])
}

/// `squad_v2`'s figures with every no-answer probability 0: `exact`, `f1`, `total`, the same for
/// `HasAns_` and `NoAns_` questions, and `best_exact` / `best_f1` with their thresholds.
pub fn squad_v2(questions: &[Scored]) -> Metrics {
    let mut scores = Vec::with_capacity(questions.len());
    for q in questions {
        let gold: Vec<&str> = q.gold.iter().map(String::as_str).filter(|g| !normalize(g).is_empty()).collect();
        let gold = if gold.is_empty() { vec![""] } else { gold };
        let em = gold.iter().map(|g| exact(g, q.predicted)).fold(0.0, f64::max);
        let f = gold.iter().map(|g| f1(g, q.predicted, true)).fold(0.0, f64::max);
        scores.push((!q.gold.is_empty(), em, f));
    }
    let mut m = Metrics::new();
    let mut add = |prefix: &str, filter: &dyn Fn(bool) -> bool| {
        let chosen: Vec<_> = scores.iter().filter(|s| filter(s.0)).collect();
        if chosen.is_empty() && !prefix.is_empty() {
            return;
        }
        let n = chosen.len() as f64;
        let sum = |k: fn(&(bool, f64, f64)) -> f64| chosen.iter().map(|s| k(s)).sum::<f64>();
        m.insert(format!("{prefix}exact"), 100.0 * sum(|s| s.1) / n);
        m.insert(format!("{prefix}f1"), 100.0 * sum(|s| s.2) / n);
        m.insert(format!("{prefix}total"), n);
    };
    add("", &|_| true);
    add("HasAns_", &|has| has);
    add("NoAns_", &|has| !has);
    // The official script's best threshold over no-answer probabilities, all 0 here: start from
    // answering no question, then answer them in order and keep the best running score.
    let best = |k: fn(&(bool, f64, f64)) -> f64| {
        let no_answers = scores.iter().filter(|s| !s.0).count() as f64;
        let (mut current, mut best) = (no_answers, no_answers);
        for (s, q) in scores.iter().zip(questions) {
            current += if s.0 {
                k(s)
            } else if q.predicted.is_empty() {
                0.0
            } else {
                -1.0
            };
            best = f64::max(best, current);
        }
        100.0 * best / scores.len().max(1) as f64
    };
    m.insert("best_exact".into(), best(|s| s.1));
    m.insert("best_exact_thresh".into(), 0.0);
    m.insert("best_f1".into(), best(|s| s.2));
    m.insert("best_f1_thresh".into(), 0.0);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_is_the_official_one() {
        assert_eq!(normalize("The  Crane Mill."), "crane mill");
        assert_eq!(normalize("an Anne, a theatre"), "anne theatre");
        assert_eq!(normalize("Brønby's  A"), "brønbys");
        assert_eq!(normalize("and"), "and");
    }

    #[test]
    fn f1_counts_shared_tokens_and_v2_agrees_on_empty() {
        assert!((f1("Edith Crane", "Crane", false) - 2.0 / 3.0).abs() < 1e-12);
        assert_eq!(f1("", "", true), 1.0);
        assert_eq!(f1("", "x", true), 0.0);
        assert_eq!(f1("x", "", false), 0.0);
    }
}
