//! Which of a padded batch's token rows the encoder computes: all of them, or only the real
//! tokens, packed one sequence after another.
//!
//! A padding position never reaches a real token's output: attention gives padded keys zero weight
//! and every other op of the encoder works row by row. So on the CPU the encoder drops the padding
//! after the embeddings, runs its dense layers, LayerNorms and attention on the real tokens only
//! (attention per sequence at its own length) and reads each sequence's first row for the pooler.
//! Batches padded to their longest row are a quarter to a third padding on MRPC; that much work
//! goes. The outputs are those of the padded computation: dropout keys each value's word by its
//! (row, token, head, key) coordinates, never the padded length, so packed rows draw exactly the
//! padded masks' real entries.

use candle_core::{DType, Device, Tensor};

use super::dropout::{apply_mask, Dropout, DropoutRng, MaskLayout};
use crate::kernels::cpu::Sequences;
use crate::Result;

/// How a batch's token rows are laid out in the encoder's [rows, hidden] matrices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenRows {
    /// `batch` x `seq` rows, padding included (masked in attention).
    Padded { batch: usize, seq: usize },
    /// The real tokens only, sequence after sequence.
    Packed(Packing),
}

impl TokenRows {
    /// Packed rows where `attention_mask` ([batch, seq], 1 = token, 0 = padding) pads some
    /// sequence at its end and none is empty; padded rows otherwise (no padding to drop, or a mask
    /// that is not a prefix of ones, which only the additive mask expresses).
    pub(crate) fn of(attention_mask: &Tensor) -> Result<Self> {
        let (batch, seq) = attention_mask.dims2()?;
        let padded = Self::Padded { batch, seq };
        let mut lens = Vec::with_capacity(batch);
        // Read as the additive mask reads it (f32), so both see the same ones and zeros.
        for row in attention_mask.to_dtype(DType::F32)?.to_vec2::<f32>()? {
            let len = row.iter().take_while(|&&m| m == 1.0).count();
            if len == 0 || row[len..].iter().any(|&m| m != 0.0) {
                return Ok(padded);
            }
            lens.push(len);
        }
        Ok(match lens.iter().all(|&len| len == seq) {
            true => padded,
            false => Self::Packed(Packing { seq, lens }),
        })
    }

    /// Each sequence's rows as the attention kernel reads them.
    pub(crate) fn sequences(&self) -> Sequences {
        match self {
            Self::Padded { batch, seq } => Sequences::padded(*batch, *seq),
            Self::Packed(p) => Sequences::packed(&p.lens),
        }
    }

    /// `xs` ([rows, hidden], laid out as these rows are) as [batch, seq, hidden], with zeros where
    /// padding was skipped.
    pub(crate) fn unpad(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::Packed(packing) => packing.unpack(xs),
            &Self::Padded { batch, seq } => Ok(xs.reshape((batch, seq, ()))?),
        }
    }

    /// `dropout` on token activations `xs` ([rows, width], laid out as these rows are), each row
    /// drawing its padded layout's mask.
    pub(crate) fn drop_tokens(&self, dropout: &Dropout, xs: &Tensor, rng: Option<&mut DropoutRng>) -> Result<Tensor> {
        let width = xs.dim(1)?;
        match self {
            &Self::Padded { seq, .. } => dropout.forward(xs, MaskLayout::Tokens { len: seq, width }, rng),
            Self::Packed(_) => match dropout.draw(&self.layouts(|len| MaskLayout::Tokens { len, width }), rng)? {
                Some(mask) => apply_mask(xs, mask),
                None => Ok(xs.clone()),
            },
        }
    }

    /// One dropout layout per sequence, at the length its rows have here.
    pub(crate) fn layouts(&self, layout: impl Fn(usize) -> MaskLayout) -> Vec<MaskLayout> {
        match self {
            Self::Padded { batch, seq } => vec![layout(*seq); *batch],
            Self::Packed(p) => p.lens.iter().map(|&len| layout(len)).collect(),
        }
    }
}

/// The token rows the encoder computes for `attention_mask` ([batch, seq]) on `device`: the real
/// tokens where the CPU packs them, every padded position otherwise (for model FLOP counts).
pub fn tokens_computed(attention_mask: &Tensor, device: &Device) -> Result<usize> {
    let (batch, seq) = attention_mask.dims2()?;
    Ok(match TokenRows::of(attention_mask)? {
        TokenRows::Packed(p) if device.is_cpu() => p.lens.iter().sum(),
        _ => batch * seq,
    })
}

/// The real tokens of a right-padded batch: each sequence's length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Packing {
    /// The padded length.
    seq: usize,
    lens: Vec<usize>,
}

impl Packing {
    fn index(values: Vec<u32>, device: &Device) -> Result<Tensor> {
        let n = values.len();
        Ok(Tensor::from_vec(values, n, device)?)
    }

    /// The padded row of each packed row: `padded.index_select(&this, 0)` packs.
    pub(crate) fn real_rows(&self, device: &Device) -> Result<Tensor> {
        let rows = self.lens.iter().enumerate().flat_map(|(s, &len)| (0..len).map(move |p| (s * self.seq + p) as u32));
        Self::index(rows.collect(), device)
    }

    /// Each sequence's packed rows.
    pub(crate) fn ranges(&self) -> impl Iterator<Item = std::ops::Range<usize>> + '_ {
        self.lens.iter().scan(0, |next, &len| {
            let start = std::mem::replace(next, *next + len);
            Some(start..start + len)
        })
    }

    /// The packed row of each sequence's first token.
    pub(crate) fn first_rows(&self, device: &Device) -> Result<Tensor> {
        let starts = self.lens.iter().scan(0u32, |next, &len| Some(std::mem::replace(next, *next + len as u32)));
        Self::index(starts.collect(), device)
    }

    /// `packed` ([real tokens, hidden]) back in the padded [batch, seq, hidden] layout, with zeros
    /// at the padding.
    pub(crate) fn unpack(&self, packed: &Tensor) -> Result<Tensor> {
        let (rows, hidden) = packed.dims2()?;
        let with_zero = Tensor::cat(&[packed, &Tensor::zeros((1, hidden), packed.dtype(), packed.device())?], 0)?;
        let mut next = 0u32;
        let mut index = Vec::with_capacity(self.lens.len() * self.seq);
        for &len in &self.lens {
            index.extend((0..self.seq).map(|p| if p < len { next + p as u32 } else { rows as u32 }));
            next += len as u32;
        }
        let index = Self::index(index, packed.device())?;
        Ok(with_zero.index_select(&index, 0)?.reshape((self.lens.len(), self.seq, hidden))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(rows: &[&[u32]]) -> Tensor {
        Tensor::new(rows.iter().map(|r| r.to_vec()).collect::<Vec<_>>(), &Device::Cpu).unwrap()
    }

    #[test]
    fn only_right_padded_batches_with_padding_are_packed() {
        let packed = TokenRows::of(&mask(&[&[1, 1, 1], &[1, 0, 0]])).unwrap();
        let TokenRows::Packed(p) = &packed else { panic!("{packed:?}") };
        assert_eq!(p.lens, [3, 1]);
        assert_eq!(p.real_rows(&Device::Cpu).unwrap().to_vec1::<u32>().unwrap(), [0, 1, 2, 3]);
        assert_eq!(p.first_rows(&Device::Cpu).unwrap().to_vec1::<u32>().unwrap(), [0, 3]);
        let padded = |b, s| TokenRows::Padded { batch: b, seq: s };
        // Nothing to drop; a hole in the mask; left padding; an empty row.
        assert_eq!(TokenRows::of(&mask(&[&[1, 1], &[1, 1]])).unwrap(), padded(2, 2));
        assert_eq!(TokenRows::of(&mask(&[&[1, 0, 1], &[1, 1, 1]])).unwrap(), padded(2, 3));
        assert_eq!(TokenRows::of(&mask(&[&[0, 1, 1], &[1, 1, 1]])).unwrap(), padded(2, 3));
        assert_eq!(TokenRows::of(&mask(&[&[0, 0], &[1, 1]])).unwrap(), padded(2, 2));
        let cpu = Device::Cpu;
        assert_eq!(tokens_computed(&mask(&[&[1, 1, 1], &[1, 0, 0]]), &cpu).unwrap(), 4);
        assert_eq!(tokens_computed(&mask(&[&[0, 1, 1], &[1, 1, 1]]), &cpu).unwrap(), 6);
        // Values other than 0 and 1 are not a padding mask the encoder can drop.
        let halves = Tensor::new(&[[1f32, 0.5], [1., 1.]], &cpu).unwrap();
        assert_eq!(TokenRows::of(&halves).unwrap(), padded(2, 2));
    }

    #[test]
    fn unpacking_puts_rows_back_with_zeros_at_the_padding() {
        let p = Packing { seq: 3, lens: vec![1, 3] };
        let packed = Tensor::new(&[[1f32, 1.], [2., 2.], [3., 3.], [4., 4.]], &Device::Cpu).unwrap();
        let padded = p.unpack(&packed).unwrap().to_vec3::<f32>().unwrap();
        let expected = [[[1., 1.], [0., 0.], [0., 0.]], [[2., 2.], [3., 3.], [4., 4.]]];
        assert_eq!(padded, expected.map(|s| s.map(|r| r.to_vec()).to_vec()).to_vec());
        let layouts = TokenRows::Packed(p).layouts(|len| MaskLayout::Tokens { len, width: 2 });
        assert_eq!(layouts, [MaskLayout::Tokens { len: 1, width: 2 }, MaskLayout::Tokens { len: 3, width: 2 }]);
    }
}
