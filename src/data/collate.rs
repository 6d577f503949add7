//! DataCollatorWithPadding: pads a batch of tokenized rows to its longest row and returns
//! `[B, L]` integer tensors (u32), as transformers' collator of the same name does.

use candle_core::{Device, Tensor};

use super::dataset::Dataset;
use super::tokenize::{PadSpec, PaddingSide, PairTokenizer};
use crate::{Error, Result};

/// A collated batch. `labels` (class ids as u32, or regression targets as f32) is `None` for
/// unlabelled rows (label -1 or NaN, GLUE test splits).
#[derive(Debug, Clone)]
pub struct Batch {
    pub input_ids: Tensor,
    pub token_type_ids: Tensor,
    pub attention_mask: Tensor,
    pub labels: Option<Tensor>,
    /// The largest class id in `labels`, known on the host so that the loss checks the label range
    /// without reading the labels back from the device; `None` for regression targets.
    pub max_label: Option<u32>,
    /// Token classification's labels (a `labels` column of lists), when the rows have them.
    pub token_labels: Option<TokenLabels>,
    /// Question answering's answer positions (`start_positions`, `end_positions`), when the rows
    /// have them.
    pub spans: Option<Spans>,
    /// The dataset rows in this batch, in order.
    pub rows: Vec<usize>,
    /// Tokens that are not padding.
    pub tokens: usize,
}

/// Per-token tags, padded as the ids are: `ids` [batch, seq] (u32; 0 where a token is not
/// labelled) and `weights` [batch, seq] (f32: 1 where it is, 0 for the label -100 and padding).
#[derive(Debug, Clone)]
pub struct TokenLabels {
    pub ids: Tensor,
    pub weights: Tensor,
    /// Tokens labelled, and the largest tag id among them (checked against the model's tags on the
    /// host, with no read of the labels back from their device).
    pub count: usize,
    pub max: u32,
}

/// Each row's answer: the positions [batch] (u32) of its first and last token in the window.
#[derive(Debug, Clone)]
pub struct Spans {
    pub start: Tensor,
    pub end: Tensor,
}

/// The label of tokens that have none (special tokens, later pieces of a word, padding).
pub const IGNORED: i64 = -100;

impl Batch {
    /// `(batch size, padded length)`.
    pub fn dims(&self) -> Result<(usize, usize)> {
        Ok(self.input_ids.dims2()?)
    }
}

/// Pads to the longest row of each batch (optionally up to a multiple of `pad_to_multiple_of`),
/// or every batch to `pad_to_length` (question answering's windows, as run_qa's
/// `pad_to_max_length` pads them).
#[derive(Debug, Clone)]
pub struct DataCollatorWithPadding {
    pub pad: PadSpec,
    pub pad_to_multiple_of: Option<usize>,
    pub pad_to_length: Option<usize>,
    pub device: Device,
}

impl DataCollatorWithPadding {
    /// A collator padding with the tokenizer's pad token and side, building tensors on the CPU.
    pub fn new(tokenizer: &PairTokenizer) -> Result<Self> {
        Ok(Self { pad: tokenizer.padding()?, pad_to_multiple_of: None, pad_to_length: None, device: Device::Cpu })
    }

    pub fn on(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// Rows of tags padded to `len` on the padding side with [`IGNORED`], as
    /// `DataCollatorForTokenClassification` pads them.
    fn token_labels<'a>(&self, rows: impl Iterator<Item = &'a [i64]>, len: usize) -> Result<TokenLabels> {
        let (mut ids, mut weights, mut count, mut max, mut b) = (Vec::new(), Vec::new(), 0, 0u32, 0);
        for row in rows {
            let pad = len.saturating_sub(row.len());
            let padded: Vec<i64> = match self.pad.side {
                PaddingSide::Left => std::iter::repeat_n(IGNORED, pad).chain(row.iter().copied()).collect(),
                PaddingSide::Right => row.iter().copied().chain(std::iter::repeat_n(IGNORED, pad)).collect(),
            };
            for tag in padded {
                let labelled = tag >= 0;
                let id = if labelled { u32::try_from(tag).unwrap_or(u32::MAX) } else { 0 };
                ids.push(id);
                weights.push(f32::from(u8::from(labelled)));
                count += usize::from(labelled);
                max = max.max(id);
            }
            b += 1;
        }
        Ok(TokenLabels {
            ids: Tensor::from_vec(ids, (b, len), &self.device)?,
            weights: Tensor::from_vec(weights, (b, len), &self.device)?,
            count,
            max,
        })
    }

    /// Collates `rows` of a tokenized dataset (columns `input_ids`, `token_type_ids`,
    /// `attention_mask`, and `label` when present).
    pub fn collate(&self, ds: &Dataset, rows: &[usize]) -> Result<Batch> {
        if rows.is_empty() {
            return Err(Error::Msg("cannot collate an empty batch".into()));
        }
        let ids = ds.int_lists("input_ids")?;
        let types = ds.int_lists("token_type_ids").ok();
        let mask = ds.int_lists("attention_mask").ok();
        let longest = rows.iter().map(|&r| ids.row(r).len()).max().unwrap_or(0);
        let len = match self.pad_to_multiple_of {
            Some(m) if m > 1 => longest.div_ceil(m) * m,
            _ => longest,
        };
        let len = len.max(self.pad_to_length.unwrap_or(0));
        let b = rows.len();
        let mut tokens = 0;
        let mut id_buf = Vec::with_capacity(b * len);
        let mut type_buf = Vec::with_capacity(b * len);
        let mut mask_buf = Vec::with_capacity(b * len);
        for &r in rows {
            let row = ids.row(r);
            let n = row.len();
            tokens += n;
            let pad = len - n;
            let to_u32 = |x: &i64| *x as u32;
            let row_types: Vec<u32> = match types {
                Some(t) => t.row(r).iter().map(to_u32).collect(),
                None => vec![0; n],
            };
            let row_mask: Vec<u32> = match mask {
                Some(m) => m.row(r).iter().map(to_u32).collect(),
                None => vec![1; n],
            };
            let (PadSpec { id, type_id, .. }, left) = (self.pad, self.pad.side == PaddingSide::Left);
            if left {
                id_buf.extend(std::iter::repeat_n(id, pad));
                type_buf.extend(std::iter::repeat_n(type_id, pad));
                mask_buf.extend(std::iter::repeat_n(0, pad));
            }
            id_buf.extend(row.iter().map(to_u32));
            type_buf.extend(row_types);
            mask_buf.extend(row_mask);
            if !left {
                id_buf.extend(std::iter::repeat_n(id, pad));
                type_buf.extend(std::iter::repeat_n(type_id, pad));
                mask_buf.extend(std::iter::repeat_n(0, pad));
            }
        }
        // Class ids (u32), or regression targets (f32); None unless every row has a label.
        let mut max_label = None;
        let labels = if let Ok(all) = ds.ints("label") {
            let picked: Vec<i64> = rows.iter().map(|&r| all[r]).collect();
            match picked.iter().all(|&l| l >= 0) {
                true => {
                    let ids: Vec<u32> = picked.iter().map(|&l| u32::try_from(l).unwrap_or(u32::MAX)).collect();
                    max_label = ids.iter().copied().max();
                    Some(Tensor::from_vec(ids, b, &self.device)?)
                }
                false => None,
            }
        } else if let Ok(all) = ds.floats("label") {
            let picked: Vec<f32> = rows.iter().map(|&r| all[r] as f32).collect();
            match picked.iter().all(|v| v.is_finite()) {
                true => Some(Tensor::from_vec(picked, b, &self.device)?),
                false => None,
            }
        } else {
            None
        };
        let token_labels = match ds.int_lists("labels") {
            Ok(lists) => Some(self.token_labels(rows.iter().map(|&r| lists.row(r)), len)?),
            Err(_) => None,
        };
        let spans = match (ds.ints("start_positions"), ds.ints("end_positions")) {
            (Ok(start), Ok(end)) => {
                // Positions count from the window's first token, which left padding moves.
                let shift =
                    |r: usize| if self.pad.side == PaddingSide::Left { (len - ids.row(r).len()) as i64 } else { 0 };
                let pick = |all: &[i64]| -> Result<Tensor> {
                    let v: Vec<u32> =
                        rows.iter().map(|&r| u32::try_from(all[r] + shift(r)).unwrap_or(u32::MAX)).collect();
                    Ok(Tensor::from_vec(v, b, &self.device)?)
                };
                Some(Spans { start: pick(start)?, end: pick(end)? })
            }
            _ => None,
        };
        Ok(Batch {
            input_ids: Tensor::from_vec(id_buf, (b, len), &self.device)?,
            token_type_ids: Tensor::from_vec(type_buf, (b, len), &self.device)?,
            attention_mask: Tensor::from_vec(mask_buf, (b, len), &self.device)?,
            labels,
            max_label,
            token_labels,
            spans,
            rows: rows.to_vec(),
            tokens,
        })
    }
}
