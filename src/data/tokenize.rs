//! PairTokenizer: a model's `tokenizer.json` with the course's semantics (truncate to the model's
//! maximum, no padding at map time), and [`Tokenize`], the batched map function that adds
//! `input_ids`, `token_type_ids` and `attention_mask` columns.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tokenizers::{EncodeInput, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::dataset::{Column, Dataset, Dtype, Feature, IntLists};
use super::map::BatchFn;
use crate::{Error, Result};

/// transformers writes `int(1e30)` as model_max_length when a tokenizer has no maximum.
const NO_MAXIMUM: f64 = 1e29;

/// Which side padding goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaddingSide {
    Right,
    Left,
}

/// The pad token's id and type id, and the side padding goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PadSpec {
    pub id: u32,
    pub type_id: u32,
    pub side: PaddingSide,
}

/// One window of a (question, context) pair: ids, type ids, which sequence each token belongs to
/// (`None` for special tokens) and its character offsets in that sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowEncoding {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    pub sequence_ids: Vec<Option<usize>>,
    pub offsets: Vec<(usize, usize)>,
}

impl From<&tokenizers::Encoding> for WindowEncoding {
    fn from(e: &tokenizers::Encoding) -> Self {
        Self {
            ids: e.get_ids().to_vec(),
            type_ids: e.get_type_ids().to_vec(),
            sequence_ids: e.get_sequence_ids(),
            offsets: e.get_offsets().to_vec(),
        }
    }
}

/// A model's tokenizer, parsed on first use: a cached map needs only the file's hash.
#[derive(Debug)]
pub struct PairTokenizer {
    path: PathBuf,
    bytes: Vec<u8>,
    hash: String,
    max_length: usize,
    padding_side: PaddingSide,
    pad_token: Option<String>,
    parsed: OnceLock<Tokenizer>,
    /// The tokenizer for words already split (`is_split_into_words`).
    for_words: OnceLock<Tokenizer>,
}

impl PairTokenizer {
    /// Reads `tokenizer.json` from a model folder, and the maximum length from
    /// `tokenizer_config.json` (`model_max_length`), else `config.json` (`max_position_embeddings`).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let hash = format!("{:032x}", xxhash_rust::xxh3::xxh3_128(&bytes));
        let tok_config = read_json(&dir.join("tokenizer_config.json"))?;
        let model_config = read_json(&dir.join("config.json"))?;
        let from_tokenizer = tok_config
            .as_ref()
            .and_then(|c| c.get("model_max_length"))
            .and_then(|v| v.as_f64())
            .filter(|&v| v > 0.0 && v < NO_MAXIMUM)
            .map(|v| v as usize);
        let from_model = model_config
            .as_ref()
            .and_then(|c| c.get("max_position_embeddings"))
            .and_then(|v| v.as_u64())
            .map(|v| v as usize);
        let Some(max_length) = from_tokenizer.or(from_model) else {
            return Err(Error::data(
                dir,
                None,
                "no maximum length: neither tokenizer_config.json (model_max_length) nor config.json (max_position_embeddings) gives one",
            ));
        };
        let padding_side = match tok_config.as_ref().and_then(|c| c.get("padding_side")).and_then(|v| v.as_str()) {
            Some("left") => PaddingSide::Left,
            _ => PaddingSide::Right,
        };
        let pad_token = tok_config.as_ref().and_then(|c| c.get("pad_token")).and_then(|v| match v {
            serde_json::Value::String(s) => Some(s.clone()),
            serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_string),
            _ => None,
        });
        Ok(Self {
            path,
            bytes,
            hash,
            max_length,
            padding_side,
            pad_token,
            parsed: OnceLock::new(),
            for_words: OnceLock::new(),
        })
    }

    /// Truncates to `max_length` instead of the model's maximum.
    pub fn with_max_length(mut self, max_length: usize) -> Self {
        self.max_length = max_length;
        self.parsed = OnceLock::new();
        self.for_words = OnceLock::new();
        self
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A hash of the tokenizer file's bytes.
    pub fn file_hash(&self) -> &str {
        &self.hash
    }

    /// The parsed tokenizer, with truncation to [`Self::max_length`] and no padding (whatever the
    /// file has baked in).
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        if let Some(t) = self.parsed.get() {
            return Ok(t);
        }
        let context = || format!("{}", self.path.display());
        let mut tok = Tokenizer::from_bytes(&self.bytes).map_err(|e| Error::tokenizer(context(), e))?;
        self.unpadded(&mut tok)?;
        Ok(self.parsed.get_or_init(|| tok))
    }

    /// Sets truncation to [`Self::max_length`] and no padding, overriding what the file has baked in.
    fn unpadded(&self, tok: &mut Tokenizer) -> Result<()> {
        tok.with_padding(None);
        tok.with_truncation(Some(TruncationParams {
            max_length: self.max_length,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Right,
        }))
        .map_err(|e| Error::tokenizer(format!("{}", self.path.display()), e))?;
        Ok(())
    }

    /// The tokenizer for words already split, as transformers' `is_split_into_words` needs it: a
    /// byte-level BPE (RoBERTa's, ModernBERT's) marks every word as following a space
    /// (`add_prefix_space = True`, which transformers requires of these tokenizers for split words).
    pub fn word_tokenizer(&self) -> Result<&Tokenizer> {
        if let Some(t) = self.for_words.get() {
            return Ok(t);
        }
        let context = || format!("{}", self.path.display());
        let mut json: serde_json::Value = serde_json::from_slice(&self.bytes)
            .map_err(|e| Error::data(&self.path, Some(e.line()), format!("invalid JSON: {e}")))?;
        prefix_spaces(&mut json);
        let bytes = serde_json::to_vec(&json).map_err(|e| Error::Msg(format!("{}: {e}", context())))?;
        let mut tok = Tokenizer::from_bytes(&bytes).map_err(|e| Error::tokenizer(context(), e))?;
        self.unpadded(&mut tok)?;
        Ok(self.for_words.get_or_init(|| tok))
    }

    /// Encodes sentences given as words: per sentence the ids, the type ids and each token's word
    /// (`None` for special tokens), truncated to the maximum length.
    pub fn encode_words(&self, sentences: &[&[String]]) -> Result<Vec<WordEncoding>> {
        let tok = self.word_tokenizer()?;
        let inputs: Vec<EncodeInput> = sentences.iter().map(|words| (*words).into()).collect();
        // Not `encode_batch_fast`: it leaves out the word ids.
        let encodings = tok.encode_batch(inputs, true).map_err(|e| Error::tokenizer("encoding words", e))?;
        Ok(encodings
            .into_iter()
            .map(|e| WordEncoding {
                ids: e.get_ids().to_vec(),
                type_ids: e.get_type_ids().to_vec(),
                words: e.get_word_ids().to_vec(),
            })
            .collect())
    }

    /// Encodes (question, context) pairs into overlapping windows, as run_qa.py's
    /// `truncation="only_second"` (the context truncated, the question whole), `max_length`,
    /// `stride` and `return_overflowing_tokens` give them, with offsets in characters. With
    /// `context_first` (a tokenizer that pads on the left) the context comes first and is the one
    /// truncated. One list of windows per pair.
    pub fn encode_windows(
        &self,
        pairs: &[(&str, &str)],
        max_length: usize,
        stride: usize,
        context_first: bool,
    ) -> Result<Vec<Vec<WindowEncoding>>> {
        let context = || format!("{}", self.path.display());
        let parse = || -> Result<Tokenizer> {
            let mut tok = Tokenizer::from_bytes(&self.bytes).map_err(|e| Error::tokenizer(context(), e))?;
            tok.with_padding(None);
            tok.with_truncation(None).map_err(|e| Error::tokenizer(context(), e))?;
            Ok(tok)
        };
        // Each sequence is tokenized whole, then truncated into windows: tokenizers 0.23.2 stops
        // tokenizing a sequence at max_length tokens when truncation is set, which leaves the
        // overflowing windows short of the context's end.
        // No post-processor on the first pass: offsets are trimmed (RoBERTa's) once, on windows.
        let mut whole = parse()?;
        whole.with_post_processor(None::<tokenizers::PostProcessorWrapper>);
        let mut windowed = parse()?;
        windowed
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy: if context_first { TruncationStrategy::OnlyFirst } else { TruncationStrategy::OnlySecond },
                stride,
                direction: TruncationDirection::Right,
            }))
            .map_err(|e| Error::tokenizer(context(), e))?;
        let encode = |text: &str, type_id: u32| -> Result<tokenizers::Encoding> {
            let mut e = whole.encode_char_offsets(text, false).map_err(|e| Error::tokenizer("encoding windows", e))?;
            e.set_type_ids(vec![type_id; e.len()]);
            Ok(e)
        };
        let encodings = pairs
            .iter()
            .map(|&(q, c)| {
                let (first, second) = if context_first { (c, q) } else { (q, c) };
                windowed
                    .post_process(encode(first, 0)?, Some(encode(second, 1)?), true)
                    .map_err(|e| Error::tokenizer("encoding windows", e))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(encodings
            .into_iter()
            .map(|e| {
                let overflowing = e.get_overflowing().to_vec();
                std::iter::once(e).chain(overflowing).map(|w| WindowEncoding::from(&w)).collect()
            })
            .collect())
    }

    /// The pad token's id and type id, and the padding side: from tokenizer.json's padding
    /// section, else `pad_token` in tokenizer_config.json.
    pub fn padding(&self) -> Result<PadSpec> {
        let file_padding: Option<(u32, u32, PaddingSide)> = {
            let raw: serde_json::Value = serde_json::from_slice(&self.bytes)
                .map_err(|e| Error::data(&self.path, Some(e.line()), format!("invalid JSON: {e}")))?;
            raw.get("padding").filter(|p| !p.is_null()).map(|p| {
                let id = p.get("pad_id").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
                let type_id = p.get("pad_type_id").and_then(|v| v.as_u64()).unwrap_or(0) as u32;
                let dir = match p.get("direction").and_then(|v| v.as_str()) {
                    Some("Left") => PaddingSide::Left,
                    _ => PaddingSide::Right,
                };
                (id, type_id, dir)
            })
        };
        if let Some(token) = &self.pad_token {
            let id = self.tokenizer()?.token_to_id(token).ok_or_else(|| {
                Error::data(&self.path, None, format!("pad token {token:?} is not in the vocabulary"))
            })?;
            let type_id = file_padding.map(|p| p.1).unwrap_or(0);
            return Ok(PadSpec { id, type_id, side: self.padding_side });
        }
        match file_padding {
            Some((id, type_id, side)) => Ok(PadSpec { id, type_id, side }),
            None => Err(Error::data(&self.path, None, "the tokenizer has no pad token: dynamic padding needs one")),
        }
    }

    /// Encodes single texts or pairs: `(ids, type_ids)` per input.
    pub fn encode(&self, first: &[String], second: Option<&[String]>) -> Result<Vec<(Vec<u32>, Vec<u32>)>> {
        let tok = self.tokenizer()?;
        let inputs: Vec<EncodeInput> = match second {
            Some(second) => first.iter().zip(second).map(|(a, b)| (a.as_str(), b.as_str()).into()).collect(),
            None => first.iter().map(|a| a.as_str().into()).collect(),
        };
        let encodings = tok.encode_batch_fast(inputs, true).map_err(|e| Error::tokenizer("encoding a batch", e))?;
        Ok(encodings.into_iter().map(|e| (e.get_ids().to_vec(), e.get_type_ids().to_vec())).collect())
    }
}

/// A sentence of words encoded: ids, type ids, and each token's word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WordEncoding {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
    pub words: Vec<Option<u32>>,
}

/// Sets `add_prefix_space` in every byte-level pre-tokenizer and post-processor of a
/// `tokenizer.json` (nested in sequences too).
fn prefix_spaces(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            let kind = map.get("type").and_then(|t| t.as_str()).map(str::to_string);
            if matches!(kind.as_deref(), Some("ByteLevel" | "RobertaProcessing"))
                && map.contains_key("add_prefix_space")
            {
                map.insert("add_prefix_space".into(), true.into());
            }
            for (key, v) in map.iter_mut() {
                if key != "model" {
                    prefix_spaces(v);
                }
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(prefix_spaces),
        _ => {}
    }
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::data(path, Some(e.line()), format!("invalid JSON: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// The batched tokenization map: `tok(texts..., truncation=True)` per row.
#[derive(Debug)]
pub struct Tokenize<'a> {
    pub tokenizer: &'a PairTokenizer,
    /// One or two text columns.
    pub text_columns: Vec<String>,
}

impl BatchFn for Tokenize<'_> {
    fn fingerprint(&self) -> String {
        format!(
            "tokenize/v1 file={} max_length={} truncation=longest_first special_tokens=true columns={:?}",
            self.tokenizer.file_hash(),
            self.tokenizer.max_length(),
            self.text_columns
        )
    }

    fn apply(&self, batch: &Dataset) -> Result<Vec<(String, Feature, Column)>> {
        let (first, second) = match self.text_columns.as_slice() {
            [a] => (batch.strings(a)?, None),
            [a, b] => (batch.strings(a)?, Some(batch.strings(b)?)),
            other => {
                return Err(Error::config("data.text_columns", format!("expected one or two columns, got {other:?}")))
            }
        };
        let encoded = self.tokenizer.encode(first, second)?;
        let mut ids = IntLists::new();
        let mut types = IntLists::new();
        let mut mask = IntLists::new();
        for (i, t) in &encoded {
            ids.push(i.iter().map(|&x| x as i64));
            types.push(t.iter().map(|&x| x as i64));
            mask.push(std::iter::repeat_n(1, i.len()));
        }
        Ok(vec![
            ("input_ids".into(), Feature::List(Dtype::Int32), Column::IntList(ids)),
            ("token_type_ids".into(), Feature::List(Dtype::Int8), Column::IntList(types)),
            ("attention_mask".into(), Feature::List(Dtype::Int8), Column::IntList(mask)),
        ])
    }
}
