//! Dropout masks from their ChaCha8 words, computed 16 blocks side by side (one block per SIMD
//! lane) instead of one generator call per word: the words `dropout_mask::chacha8_word` names, so
//! the masks are the same values the generator, the reference and the GPU kernel give.

use super::simd::chacha8_blocks16;

/// Part of one block that a mask reads: its words `from..from + count`, for the mask values at
/// `at..at + count`.
#[derive(Clone, Copy, Default)]
struct Segment {
    block: u64,
    from: usize,
    count: usize,
    at: usize,
}

/// The words' comparisons with the threshold, written as mask values.
struct Writer<'a> {
    key: &'a [u32; 8],
    stream: u64,
    threshold: u64,
    scale: f32,
    pending: [Segment; 16],
    len: usize,
}

impl Writer<'_> {
    fn push(&mut self, segment: Segment, out: &mut [f32]) {
        self.pending[self.len] = segment;
        self.len += 1;
        if self.len == 16 {
            self.flush(out);
        }
    }

    fn flush(&mut self, out: &mut [f32]) {
        if self.len == 0 {
            return;
        }
        let mut blocks = [0u64; 16];
        for (b, s) in blocks.iter_mut().zip(&self.pending[..self.len]) {
            *b = s.block;
        }
        let mut words = [[0u32; 16]; 16];
        chacha8_blocks16(self.key, self.stream, &blocks, &mut words);
        let (threshold, scale) = (self.threshold, self.scale);
        for (s, block) in self.pending[..self.len].iter().zip(&words) {
            let dst = &mut out[s.at..s.at + s.count];
            for (m, &w) in dst.iter_mut().zip(&block[s.from..s.from + s.count]) {
                *m = if u64::from(w) >= threshold { scale } else { 0.0 };
            }
        }
        self.len = 0;
    }
}

/// Writes the mask values of `runs` (each a first word position and a count of consecutive words,
/// their values one after the other in `out`): `scale` where the word of ChaCha8 with `key` on
/// `stream` is at least `threshold`, 0 where it is below.
pub(crate) fn fill_mask(
    (key, stream): (&[u32; 8], u64),
    runs: impl IntoIterator<Item = (u128, usize)>,
    (threshold, scale): (u64, f32),
    out: &mut [f32],
) {
    let mut writer = Writer { key, stream, threshold, scale, pending: [Segment::default(); 16], len: 0 };
    let mut at = 0;
    for (pos, count) in runs {
        let end = pos + count as u128;
        let mut word = pos;
        while word < end {
            // The generator's block counter is 64 bits: word w sits in block (w / 16) mod 2^64.
            let (block, from) = ((word >> 4) as u64, (word & 15) as usize);
            let count = (16 - from).min((end - word) as usize);
            writer.push(Segment { block, from, count, at }, out);
            at += count;
            word += count as u128;
        }
    }
    writer.flush(out);
    debug_assert_eq!(at, out.len(), "the runs cover the mask");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::dropout_mask::chacha8_word;

    #[test]
    fn masks_are_the_reference_words_compared_with_the_threshold() {
        let key = [3, 0x9e37_79b9, 7, 11, 0xffff_ffff, 0, 42, 0x1234_5678];
        let stream = (5 << 12) + 3;
        let (threshold, scale) = ((0.1f64 * 4_294_967_296.0).round() as u64, 1.0 / 0.9f32);
        // Runs that start inside a block, span several, cross the 32-bit counter boundary, and
        // leave lanes unused at the end.
        let runs = [(5u128, 40usize), (16 * 0xffff_ffff + 9, 50), (1 << 40, 16), (77, 1), (3 << 32, 300)];
        let total: usize = runs.iter().map(|r| r.1).sum();
        let mut ours = vec![-1f32; total];
        fill_mask((&key, stream), runs, (threshold, scale), &mut ours);
        let expected: Vec<f32> = runs
            .iter()
            .flat_map(|&(pos, count)| (0..count as u64).map(move |i| pos as u64 + i))
            .map(|w| if u64::from(chacha8_word(&key, stream, w)) >= threshold { scale } else { 0.0 })
            .collect();
        assert_eq!(ours, expected);
        assert!(ours.contains(&0.0) && ours.contains(&scale));
    }
}
