//! Question answering's pre-processing, as run_qa.py and the course do it: each (question,
//! context) pair tokenized into windows of `max_length` tokens that overlap by `stride`, the
//! question first and whole (leading spaces stripped), the context cut; per window the answer's
//! first and last token, or the first token (`[CLS]`) when the answer is not wholly inside it.
//! Each window keeps its example's row and its context tokens' character offsets, which
//! post-processing turns back into text.

use super::dataset::{Column, Dataset, Dtype, Feature, IntLists};
use super::map::BatchFn;
use super::tokenize::{PaddingSide, PairTokenizer, WindowEncoding};
use crate::Result;

/// The offset stored for a token outside the context (special tokens, the question).
pub const NOT_CONTEXT: i64 = -1;

/// The map from examples (`question`, `context`, `answer_text`, `answer_start`, `example`) to
/// windows: `input_ids`, `token_type_ids`, `attention_mask`, `start_positions`, `end_positions`,
/// `example` (the example's row) and `offsets` (two per token: the start and end character of a
/// context token, [`NOT_CONTEXT`] twice for the others).
#[derive(Debug)]
pub struct QaWindows<'a> {
    pub tokenizer: &'a PairTokenizer,
    pub max_length: usize,
    pub stride: usize,
}

impl QaWindows<'_> {
    fn context_first(&self) -> Result<bool> {
        Ok(self.tokenizer.padding()?.side == PaddingSide::Left)
    }
}

/// The answer's first and last token in `w`, or (0, 0) when it is not wholly inside the window's
/// context. `answer` is its first and end character.
fn positions(w: &WindowEncoding, context_index: usize, answer: Option<(usize, usize)>) -> (i64, i64) {
    let Some((start_char, end_char)) = answer else {
        return (0, 0);
    };
    let in_context = |k: &usize| w.sequence_ids[*k] == Some(context_index);
    let (Some(first), Some(last)) = ((0..w.ids.len()).find(in_context), (0..w.ids.len()).rfind(in_context)) else {
        return (0, 0);
    };
    if !(w.offsets[first].0 <= start_char && w.offsets[last].1 >= end_char) {
        return (0, 0);
    }
    let mut s = first;
    while s <= last && w.offsets[s].0 <= start_char {
        s += 1;
    }
    let mut e = last as i64;
    while e >= first as i64 && w.offsets[e as usize].1 >= end_char {
        e -= 1;
    }
    (s as i64 - 1, e + 1)
}

impl BatchFn for QaWindows<'_> {
    fn fingerprint(&self) -> String {
        format!(
            "qa-windows/v1 file={} max_length={} stride={} context_first={}",
            self.tokenizer.file_hash(),
            self.max_length,
            self.stride,
            self.context_first().unwrap_or(false)
        )
    }

    fn replaces_rows(&self) -> bool {
        true
    }

    fn apply(&self, batch: &Dataset) -> Result<Vec<(String, Feature, Column)>> {
        let (questions, contexts) = (batch.strings("question")?, batch.strings("context")?);
        let (texts, starts, examples) =
            (batch.str_lists("answer_text")?, batch.int_lists("answer_start")?, batch.ints("example")?);
        let pairs: Vec<(&str, &str)> =
            questions.iter().zip(contexts).map(|(q, c)| (q.trim_start(), c.as_str())).collect();
        let context_first = self.context_first()?;
        let context_index = usize::from(!context_first);
        let encoded = self.tokenizer.encode_windows(&pairs, self.max_length, self.stride, context_first)?;
        let (mut ids, mut types, mut mask, mut offsets) =
            (IntLists::new(), IntLists::new(), IntLists::new(), IntLists::new());
        let (mut start_positions, mut end_positions, mut example) = (Vec::new(), Vec::new(), Vec::new());
        for (row, windows) in encoded.iter().enumerate() {
            let answer = texts.row(row).first().map(|text| {
                let start = starts.row(row)[0] as usize;
                (start, start + text.chars().count())
            });
            for w in windows {
                ids.push(w.ids.iter().map(|&x| i64::from(x)));
                types.push(w.type_ids.iter().map(|&x| i64::from(x)));
                mask.push(std::iter::repeat_n(1, w.ids.len()));
                offsets.push(w.offsets.iter().zip(&w.sequence_ids).flat_map(|(&(a, b), s)| match s {
                    Some(s) if *s == context_index => [a as i64, b as i64],
                    _ => [NOT_CONTEXT, NOT_CONTEXT],
                }));
                let (s, e) = positions(w, context_index, answer);
                start_positions.push(s);
                end_positions.push(e);
                example.push(examples[row]);
            }
        }
        Ok(vec![
            ("input_ids".into(), Feature::List(Dtype::Int32), Column::IntList(ids)),
            ("token_type_ids".into(), Feature::List(Dtype::Int8), Column::IntList(types)),
            ("attention_mask".into(), Feature::List(Dtype::Int8), Column::IntList(mask)),
            ("start_positions".into(), Feature::Value(Dtype::Int64), Column::Int(start_positions)),
            ("end_positions".into(), Feature::Value(Dtype::Int64), Column::Int(end_positions)),
            ("example".into(), Feature::Value(Dtype::Int64), Column::Int(example)),
            ("offsets".into(), Feature::List(Dtype::Int64), Column::IntList(offsets)),
        ])
    }
}
