//! Question answering's post-processing, as run_qa.py's `postprocess_qa_predictions` does it:
//! over every window of an example, the `n_best` highest start and end scores are paired; a pair
//! counts when both tokens are in the context, the end is not before the start and the span is at
//! most `max_answer_length` tokens; the best score (start + end logit) wins, and its character
//! offsets give the text. For SQuAD v2, the null answer (the first token's start + end, the lowest
//! over the windows) wins when it beats the best span by more than `null_score_diff_threshold`.
//! Scores are summed in f32, as numpy sums the logits.

/// The post-processing settings (run_qa.py's names and defaults).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AnswerOptions {
    pub n_best_size: usize,
    pub max_answer_length: usize,
    /// Whether a question may have no answer (SQuAD v2).
    pub version_2_with_negative: bool,
    pub null_score_diff_threshold: f64,
}

impl Default for AnswerOptions {
    fn default() -> Self {
        Self { n_best_size: 20, max_answer_length: 30, version_2_with_negative: false, null_score_diff_threshold: 0.0 }
    }
}

/// One window's scores and its tokens' character offsets in the context (`None` outside it).
#[derive(Debug, Clone, Copy)]
pub struct WindowScores<'a> {
    pub start: &'a [f32],
    pub end: &'a [f32],
    pub offsets: &'a [Option<(usize, usize)>],
}

/// The chosen answer, and for v2 the null score minus the best span's.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub text: String,
    pub null_score_diff: Option<f32>,
}

#[derive(Debug, Clone)]
struct Candidate {
    offsets: (usize, usize),
    score: f32,
    start_logit: f32,
    end_logit: f32,
}

/// The positions of the `n` highest scores, highest first (numpy's `argsort` reversed: among equal
/// scores the later position first).
fn top(scores: &[f32], n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(b.cmp(&a)));
    order.truncate(n);
    order
}

/// The characters `from..to` of `context` (offsets count characters, as Python does).
fn chars(context: &str, (from, to): (usize, usize)) -> String {
    context.chars().skip(from).take(to.saturating_sub(from)).collect()
}

/// The answer to one question from its windows' scores.
pub fn best_answer(context: &str, windows: &[WindowScores], opts: &AnswerOptions) -> Answer {
    let mut null: Option<Candidate> = None;
    let mut candidates = Vec::new();
    for w in windows {
        let feature_null = w.start[0] + w.end[0];
        if null.as_ref().is_none_or(|n| n.score > feature_null) {
            null =
                Some(Candidate { offsets: (0, 0), score: feature_null, start_logit: w.start[0], end_logit: w.end[0] });
        }
        let ends = top(w.end, opts.n_best_size);
        for s in top(w.start, opts.n_best_size) {
            for &e in &ends {
                let (Some(Some(from)), Some(Some(to))) = (w.offsets.get(s), w.offsets.get(e)) else {
                    continue;
                };
                if e < s || e - s + 1 > opts.max_answer_length {
                    continue;
                }
                candidates.push(Candidate {
                    offsets: (from.0, to.1),
                    score: w.start[s] + w.end[e],
                    start_logit: w.start[s],
                    end_logit: w.end[e],
                });
            }
        }
    }
    let null = null.filter(|_| opts.version_2_with_negative);
    if let Some(n) = &null {
        candidates.push(n.clone());
    }
    // A stable sort, highest first: equal scores keep their order, as Python's `sorted` does.
    candidates.sort_by(|a, b| b.score.total_cmp(&a.score));
    candidates.truncate(opts.n_best_size);
    if let Some(n) = &null {
        if !candidates.iter().any(|c| c.offsets == (0, 0)) {
            candidates.push(n.clone());
        }
    }
    let mut texts: Vec<(String, f32, f32)> =
        candidates.iter().map(|c| (chars(context, c.offsets), c.start_logit, c.end_logit)).collect();
    if texts.is_empty() || (texts.len() == 1 && texts[0].0.is_empty()) {
        // run_qa's stand-in when no span qualifies.
        texts.insert(0, ("empty".to_string(), 0.0, 0.0));
    }
    let Some(null) = null else {
        return Answer { text: texts.swap_remove(0).0, null_score_diff: None };
    };
    let best = texts.iter().find(|t| !t.0.is_empty()).expect("a non-empty text was inserted");
    let diff = null.score - best.1 - best.2;
    let text = if f64::from(diff) > opts.null_score_diff_threshold { String::new() } else { best.0.clone() };
    Answer { text, null_score_diff: Some(diff) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_span_inside_the_context_wins_and_v2_may_prefer_no_answer() {
        let context = "Brønby lies on the Aln.";
        // Tokens: [CLS] q [SEP] Brønby lies on the Aln . [SEP]
        let offsets = [
            None,
            None,
            None,
            Some((0, 6)),
            Some((7, 11)),
            Some((12, 14)),
            Some((15, 18)),
            Some((19, 22)),
            Some((22, 23)),
            None,
        ];
        let start = [0.5, 9.0, 0.0, 1.0, 0.0, 0.0, 3.0, 2.0, 0.0, 0.0];
        let end = [0.5, 0.0, 9.0, 0.0, 0.0, 0.0, 0.0, 3.0, 0.0, 0.0];
        let w = WindowScores { start: &start, end: &end, offsets: &offsets };
        let v1 = best_answer(context, &[w], &AnswerOptions::default());
        assert_eq!(v1.text, "the Aln", "the question's tokens score higher but are not the context");
        let v2 = AnswerOptions { version_2_with_negative: true, ..AnswerOptions::default() };
        assert_eq!(best_answer(context, &[w], &v2).text, "the Aln");
        let v2 = AnswerOptions { null_score_diff_threshold: -6.0, ..v2 };
        let a = best_answer(context, &[w], &v2);
        assert_eq!((a.text.as_str(), a.null_score_diff), ("", Some(1.0 - 6.0)));
        let short = AnswerOptions { max_answer_length: 1, ..AnswerOptions::default() };
        assert_eq!(best_answer(context, &[w], &short).text, "Aln");
    }
}
