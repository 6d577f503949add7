//! Entity-level scores of a tagging, as `seqeval` computes them in its default (conlleval) mode:
//! entities are chunks of IOB/IOBES tags (an `I-` after `O` or after another type starts one, as
//! conlleval reads IOB1), and a predicted entity counts only when its type, start and end all match.

use std::collections::{BTreeMap, BTreeSet};

use super::metrics::Metrics;

/// One entity: its type and its first and last positions.
pub type Entity = (String, usize, usize);

/// The prefix (`B`, `I`, `E`, `S`, `O`) and type of a tag, as seqeval splits it: `B-LOC` is
/// (`B`, `LOC`), a tag with no type has type `_`.
fn split(tag: &str) -> (char, &str) {
    let mut chars = tag.chars();
    let prefix = chars.next().unwrap_or('O');
    let rest = chars.as_str();
    let kind = rest.split_once('-').map_or(rest, |(_, t)| t);
    (prefix, if kind.is_empty() { "_" } else { kind })
}

fn end_of_chunk(prev: char, tag: char, prev_type: &str, kind: &str) -> bool {
    matches!(prev, 'E' | 'S')
        || (matches!(prev, 'B' | 'I') && matches!(tag, 'B' | 'S' | 'O'))
        || (prev != 'O' && prev != '.' && prev_type != kind)
}

fn start_of_chunk(prev: char, tag: char, prev_type: &str, kind: &str) -> bool {
    matches!(tag, 'B' | 'S')
        || (matches!(prev, 'E' | 'S' | 'O') && matches!(tag, 'E' | 'I'))
        || (tag != 'O' && tag != '.' && prev_type != kind)
}

/// The entities of one sequence of tags, positions counted from `offset`.
pub fn entities<S: AsRef<str>>(tags: &[S], offset: usize) -> Vec<Entity> {
    let mut out = Vec::new();
    let (mut prev, mut prev_type, mut begin) = ('O', "", 0);
    for (i, tag) in tags.iter().map(AsRef::as_ref).chain(["O"]).enumerate() {
        let (t, kind) = split(tag);
        if end_of_chunk(prev, t, prev_type, kind) {
            out.push((prev_type.to_string(), offset + begin, offset + i - 1));
        }
        if start_of_chunk(prev, t, prev_type, kind) {
            begin = i;
        }
        (prev, prev_type) = (t, kind);
    }
    out
}

/// Precision, recall and F1 of one entity type (or of all), and how many gold entities it has.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub number: usize,
}

impl Score {
    /// From counts; a ratio whose denominator is zero is 0, as seqeval's `zero_division` default.
    fn new(correct: usize, predicted: usize, gold: usize) -> Self {
        let ratio = |a: usize, b: usize| if b == 0 { 0.0 } else { a as f64 / b as f64 };
        let (precision, recall) = (ratio(correct, predicted), ratio(correct, gold));
        let f1 = if precision + recall == 0.0 { 0.0 } else { 2.0 * precision * recall / (precision + recall) };
        Self { precision, recall, f1, number: gold }
    }
}

/// seqeval's report: micro-averaged scores over all entities, per type scores, and token accuracy.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub overall: Score,
    pub accuracy: f64,
    pub per_type: BTreeMap<String, Score>,
}

impl Report {
    /// Scores the predicted tag sequences against the gold ones (sentence by sentence, equal lengths).
    pub fn new<S: AsRef<str>>(gold: &[Vec<S>], predicted: &[Vec<S>]) -> Self {
        let all = |seqs: &[Vec<S>]| -> BTreeSet<Entity> {
            let mut offset = 0;
            let mut out = BTreeSet::new();
            for s in seqs {
                out.extend(entities(s, offset));
                offset += s.len() + 1;
            }
            out
        };
        let (gold_set, pred_set) = (all(gold), all(predicted));
        let types: BTreeSet<&str> = gold_set.iter().chain(&pred_set).map(|e| e.0.as_str()).collect();
        let count = |set: &BTreeSet<Entity>, t: &str| set.iter().filter(|e| e.0 == t).count();
        let per_type = types
            .into_iter()
            .map(|t| {
                let correct = gold_set.iter().filter(|e| e.0 == t && pred_set.contains(*e)).count();
                (t.to_string(), Score::new(correct, count(&pred_set, t), count(&gold_set, t)))
            })
            .collect();
        let correct = gold_set.intersection(&pred_set).count();
        let (mut right, mut tokens) = (0usize, 0usize);
        for (g, p) in gold.iter().zip(predicted) {
            tokens += g.len();
            right += g.iter().zip(p).filter(|(a, b)| a.as_ref() == b.as_ref()).count();
        }
        let accuracy = if tokens == 0 { 0.0 } else { right as f64 / tokens as f64 };
        Self { overall: Score::new(correct, pred_set.len(), gold_set.len()), accuracy, per_type }
    }

    /// As `run_ner.py` reports them with entity-level metrics: `precision`, `recall`, `f1`,
    /// `accuracy`, and per type `LOC_precision`, `LOC_recall`, `LOC_f1`, `LOC_number`.
    pub fn metrics(&self) -> Metrics {
        let mut m = Metrics::new();
        m.insert("precision".into(), self.overall.precision);
        m.insert("recall".into(), self.overall.recall);
        m.insert("f1".into(), self.overall.f1);
        m.insert("accuracy".into(), self.accuracy);
        for (t, s) in &self.per_type {
            m.insert(format!("{t}_precision"), s.precision);
            m.insert(format!("{t}_recall"), s.recall);
            m.insert(format!("{t}_f1"), s.f1);
            m.insert(format!("{t}_number"), s.number as f64);
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_follow_conlleval() {
        let e = |t: &[&str]| entities(t, 0);
        assert_eq!(e(&["B-PER", "I-PER", "O", "B-LOC"]), vec![("PER".into(), 0, 1), ("LOC".into(), 3, 3)]);
        // IOB1: an I- after O starts an entity; a change of type ends one.
        assert_eq!(e(&["I-ORG", "I-ORG", "I-LOC"]), vec![("ORG".into(), 0, 1), ("LOC".into(), 2, 2)]);
        // B- then B- of the same type: two entities.
        assert_eq!(e(&["B-PER", "B-PER"]), vec![("PER".into(), 0, 0), ("PER".into(), 1, 1)]);
        // IOBES.
        assert_eq!(e(&["S-LOC", "B-ORG", "E-ORG"]), vec![("LOC".into(), 0, 0), ("ORG".into(), 1, 2)]);
        assert!(e(&["O", "O"]).is_empty());
    }

    #[test]
    fn an_entity_counts_only_when_whole() {
        let gold = vec![vec!["B-PER", "I-PER", "O"], vec!["B-LOC", "O"]];
        let pred = vec![vec!["B-PER", "O", "O"], vec!["B-LOC", "O"]];
        let r = Report::new(&gold, &pred);
        assert_eq!(r.overall, Score::new(1, 2, 2));
        assert_eq!(r.per_type["PER"].f1, 0.0);
        assert_eq!(r.per_type["LOC"].f1, 1.0);
        assert_eq!(r.accuracy, 4.0 / 5.0);
        // A type only predicted is reported, with no gold entities.
        let r = Report::new(&[vec!["O"]], &[vec!["B-MISC"]]);
        assert_eq!(r.per_type["MISC"], Score { precision: 0.0, recall: 0.0, f1: 0.0, number: 0 });
    }
}
