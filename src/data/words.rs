//! Tokenizing words for token classification, as the course's `tokenize_and_align_labels` does:
//! each sentence's words tokenized together (`is_split_into_words`), the first piece of each word
//! taking the word's tag, its later pieces -100 (or, with `label_all_tokens`, the word's tag with a
//! B- turned into the I- of the same type), special tokens -100.

use super::dataset::{Column, Dataset, Dtype, Feature, IntLists};
use super::map::BatchFn;
use super::tokenize::PairTokenizer;
use crate::data::collate::IGNORED;
use crate::Result;

/// The batched map adding `input_ids`, `token_type_ids`, `attention_mask`, `labels` (aligned
/// tags) and `word_ids` (each token's word, -1 for special tokens) to rows of `tokens` and
/// `ner_tags`.
#[derive(Debug)]
pub struct TokenizeWords<'a> {
    pub tokenizer: &'a PairTokenizer,
    /// The tag names, by id.
    pub label_names: Vec<String>,
    pub label_all_tokens: bool,
}

impl TokenizeWords<'_> {
    /// For each tag id, the id a word's later pieces take under `label_all_tokens`: the I- tag of
    /// a B- tag's type where the labels have one, else the tag itself.
    fn inside(&self) -> Vec<i64> {
        let names = &self.label_names;
        (0..names.len())
            .map(|i| {
                let inner = names[i].strip_prefix("B-").map(|t| format!("I-{t}"));
                inner.and_then(|n| names.iter().position(|m| *m == n)).unwrap_or(i) as i64
            })
            .collect()
    }
}

impl BatchFn for TokenizeWords<'_> {
    fn fingerprint(&self) -> String {
        format!(
            "tokenize-words/v1 file={} max_length={} label_all_tokens={} labels={:?}",
            self.tokenizer.file_hash(),
            self.tokenizer.max_length(),
            self.label_all_tokens,
            self.label_names
        )
    }

    fn apply(&self, batch: &Dataset) -> Result<Vec<(String, Feature, Column)>> {
        let words = batch.str_lists("tokens")?;
        let tags = batch.int_lists("ner_tags").ok();
        let sentences: Vec<&[String]> = (0..words.len()).map(|i| words.row(i)).collect();
        let encoded = self.tokenizer.encode_words(&sentences)?;
        let inside = self.inside();
        let (mut ids, mut types, mut mask, mut labels, mut word_ids) =
            (IntLists::new(), IntLists::new(), IntLists::new(), IntLists::new(), IntLists::new());
        for (row, e) in encoded.iter().enumerate() {
            ids.push(e.ids.iter().map(|&x| x as i64));
            types.push(e.type_ids.iter().map(|&x| x as i64));
            mask.push(std::iter::repeat_n(1, e.ids.len()));
            word_ids.push(e.words.iter().map(|w| w.map_or(-1, i64::from)));
            let row_tags = tags.map(|t| t.row(row));
            let mut previous = None;
            labels.push(e.words.iter().map(|&word| {
                let tag = match (word, row_tags) {
                    (None, _) | (_, None) => IGNORED,
                    (Some(w), Some(tags)) if Some(w) != previous => tags[w as usize],
                    (Some(w), Some(tags)) if self.label_all_tokens => inside[tags[w as usize] as usize],
                    _ => IGNORED,
                };
                previous = word;
                tag
            }));
        }
        Ok(vec![
            ("input_ids".into(), Feature::List(Dtype::Int32), Column::IntList(ids)),
            ("token_type_ids".into(), Feature::List(Dtype::Int8), Column::IntList(types)),
            ("attention_mask".into(), Feature::List(Dtype::Int8), Column::IntList(mask)),
            ("labels".into(), Feature::List(Dtype::Int64), Column::IntList(labels)),
            ("word_ids".into(), Feature::List(Dtype::Int32), Column::IntList(word_ids)),
        ])
    }
}
