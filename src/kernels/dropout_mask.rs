//! Dropout masks as numbers any device can draw: a [`MaskPlan`] names one dropout call's mask by
//! its ChaCha8 key and stream, the place of its first row in the step's global batch, and the
//! [`MaskLayout`] of each row, so that a value's word depends on where it sits, never on padding or
//! on which rank holds the row. [`chacha8_word`] gives any word of a plan: the CPU's reference,
//! which the kernel in `kernels/cuda` follows line for line.

/// Longest sequence the key space provides for (words per position are reserved up to it).
pub(crate) const MAX_SEQ: u128 = 1 << 16;
/// The shape of a tensor dropout masks, per batch row: the row's values are keyed by these
/// coordinates, so masks do not change with the padding of the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskLayout {
    /// [batch, len, width] token activations.
    Tokens { len: usize, width: usize },
    /// [batch, heads, len, len] attention probabilities.
    Scores { heads: usize, len: usize },
    /// [batch, width] pooled vectors.
    Pooled { width: usize },
}

impl MaskLayout {
    pub(crate) fn row_values(self) -> usize {
        match self {
            Self::Tokens { len, width } => len * width,
            Self::Scores { heads, len } => heads * len * len,
            Self::Pooled { width } => width,
        }
    }

    /// Words reserved per global row.
    pub(crate) fn row_words(self) -> u128 {
        match self {
            Self::Tokens { width, .. } => MAX_SEQ * width as u128,
            Self::Scores { heads, .. } => heads as u128 * MAX_SEQ * MAX_SEQ,
            Self::Pooled { width } => width as u128,
        }
    }

    /// The row's values as (offset in the row's words, count) runs, in row-major order.
    pub(crate) fn runs(self) -> Vec<(u128, usize)> {
        match self {
            Self::Tokens { len, width } => vec![(0, len * width)],
            Self::Scores { heads, len } => (0..heads * len)
                .map(|hi| {
                    let (h, i) = (hi / len, hi % len);
                    (((h as u128) * MAX_SEQ + i as u128) * MAX_SEQ, len)
                })
                .collect(),
            Self::Pooled { width } => vec![(0, width)],
        }
    }
}

/// One dropout call's mask, as numbers a kernel on any device can draw it from: value `v` of row
/// `r` is kept (times `scale`) when word [`MaskPlan::word_pos`] of ChaCha8 with `key` on `stream`
/// is at least `threshold`, and dropped (0) otherwise.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct MaskPlan {
    /// The ChaCha8 key: the generator's seed as 8 little-endian words.
    pub key: [u32; 8],
    /// The ChaCha8 stream (nonce): step x calls per pass + call.
    pub stream: u64,
    /// The first row's place in the step's global batch.
    pub first_row: u64,
    pub layout: MaskLayout,
    pub threshold: u64,
    pub scale: f32,
}

impl MaskPlan {
    /// The word position of value `v` (row-major within its row) of local row `row`.
    pub fn word_pos(&self, row: u64, v: u64) -> u64 {
        let row_base = (self.first_row + row) * self.layout.row_words() as u64;
        match self.layout {
            MaskLayout::Scores { len, .. } => {
                let (hi, j) = (v / len as u64, v % len as u64);
                let (h, i) = (hi / len as u64, hi % len as u64);
                row_base + (h * MAX_SEQ as u64 + i) * MAX_SEQ as u64 + j
            }
            MaskLayout::Tokens { .. } | MaskLayout::Pooled { .. } => row_base + v,
        }
    }
}

/// The quarter rounds of one ChaCha double round (columns, then diagonals), by state word; ChaCha8
/// runs four.
pub(crate) const DOUBLE_ROUND: [[usize; 4]; 8] = [
    [0, 4, 8, 12],
    [1, 5, 9, 13],
    [2, 6, 10, 14],
    [3, 7, 11, 15],
    [0, 5, 10, 15],
    [1, 6, 11, 12],
    [2, 7, 8, 13],
    [3, 4, 9, 14],
];

/// Word `pos` of the ChaCha8 keystream for `key` and `stream` (64-bit block counter and nonce), as
/// `ChaCha8Rng` gives it after `set_stream(stream)` and `set_word_pos(pos)`. The CUDA kernel
/// (`kernels/cuda/dropout.cu`) is this function line for line; the tests hold both to the generator.
pub(crate) fn chacha8_word(key: &[u32; 8], stream: u64, pos: u64) -> u32 {
    let block = pos >> 4;
    let mut input = [0u32; 16];
    input[..4].copy_from_slice(&[0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574]);
    input[4..12].copy_from_slice(key);
    input[12..].copy_from_slice(&[block as u32, (block >> 32) as u32, stream as u32, (stream >> 32) as u32]);
    let mut x = input;
    let quarter = |x: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize| {
        x[a] = x[a].wrapping_add(x[b]);
        x[d] = (x[d] ^ x[a]).rotate_left(16);
        x[c] = x[c].wrapping_add(x[d]);
        x[b] = (x[b] ^ x[c]).rotate_left(12);
        x[a] = x[a].wrapping_add(x[b]);
        x[d] = (x[d] ^ x[a]).rotate_left(8);
        x[c] = x[c].wrapping_add(x[d]);
        x[b] = (x[b] ^ x[c]).rotate_left(7);
    };
    for _ in 0..4 {
        for [a, b, c, d] in DOUBLE_ROUND {
            quarter(&mut x, a, b, c, d);
        }
    }
    let i = (pos & 15) as usize;
    x[i].wrapping_add(input[i])
}
