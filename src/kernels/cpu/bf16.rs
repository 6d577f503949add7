//! bf16 values as the products read them: f32 rounded to 8 mantissa bits, converted in parallel.

use super::simd::f32_to_bf16_bits;
use super::threads::par_row_chunks;

/// A bf16 number (the top half of an f32's bits), the input type of the bf16 products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(transparent)]
pub(crate) struct Bf16(pub(crate) u16);

impl Bf16 {
    #[cfg(test)]
    pub(crate) fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self.0) << 16)
    }
}

/// `values` rounded to bf16 (nearest, ties to even), on all threads.
pub(crate) fn to_bf16(values: &[f32]) -> Vec<Bf16> {
    let mut out = vec![Bf16(0); values.len()];
    to_bf16_into(values, &mut out);
    out
}

/// Writes `values` rounded to bf16 into `out` (same length), on all threads.
pub(crate) fn to_bf16_into(values: &[f32], out: &mut [Bf16]) {
    par_row_chunks(out, 1, || (), |elems, chunk, _| f32_to_bf16_bits(&values[elems], bits_mut(chunk)));
}

/// Rounds `values` to bf16 on the calling thread (inside work that is already parallel).
pub(crate) fn to_bf16_local(values: &[f32], out: &mut [Bf16]) {
    f32_to_bf16_bits(values, bits_mut(out));
}

/// A bf16 copy of an op's f32 output, written by the threads that write the output, each its own
/// values right after computing them (while they are in cache): the next product reads it
/// instead of converting the output in a pass of its own.
pub(crate) struct OutputCopy {
    values: Vec<Bf16>,
    ptr: *mut Bf16,
    n: usize,
}

// SAFETY: threads write disjoint ranges through `ptr` (the contract of `write`).
unsafe impl Sync for OutputCopy {}
unsafe impl Send for OutputCopy {}

impl OutputCopy {
    /// Room for `n` values.
    pub(crate) fn new(n: usize) -> Self {
        let mut values = Vec::with_capacity(n);
        let ptr = values.as_mut_ptr();
        Self { values, ptr, n }
    }

    /// How many values it holds.
    pub(crate) fn len(&self) -> usize {
        self.n
    }

    /// Writes `values` rounded to bf16 at `at..at + values.len()`, on the calling thread.
    ///
    /// # Safety
    /// No other thread writes the same range at the same time.
    pub(crate) unsafe fn write(&self, at: usize, values: &[f32]) {
        assert!(at + values.len() <= self.n, "bf16 copy: write past its end");
        // SAFETY: inside the allocation (checked above); the range is this caller's alone.
        let out = unsafe { std::slice::from_raw_parts_mut(self.ptr.add(at), values.len()) };
        to_bf16_local(values, out);
    }

    /// The copy.
    ///
    /// # Safety
    /// [`OutputCopy::write`] covered every one of the `n` values.
    pub(crate) unsafe fn finish(mut self) -> Vec<Bf16> {
        // SAFETY: all n values were written (the caller's promise), inside the capacity.
        unsafe { self.values.set_len(self.n) };
        self.values
    }
}

fn bits_mut(values: &mut [Bf16]) -> &mut [u16] {
    // SAFETY: Bf16 is a transparent u16.
    unsafe { std::slice::from_raw_parts_mut(values.as_mut_ptr().cast::<u16>(), values.len()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_to_nearest_even_and_keeps_specials() {
        let cases = [
            (1.0f32, 0x3f80u16),
            // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to the even mantissa (1.0).
            (f32::from_bits(0x3f80_8000), 0x3f80),
            // 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: even is 1 + 2^-6.
            (f32::from_bits(0x3f81_8000), 0x3f82),
            (f32::from_bits(0x3f80_8001), 0x3f81),
            (-2.5, 0xc020),
            (f32::INFINITY, 0x7f80),
            (f32::MAX, 0x7f80),
            (0.0, 0),
        ];
        let (xs, expected): (Vec<f32>, Vec<u16>) = cases.into_iter().unzip();
        let ours: Vec<u16> = to_bf16(&xs).into_iter().map(|b| b.0).collect();
        assert_eq!(ours, expected);
        let nan = to_bf16(&[f32::NAN, -f32::NAN]);
        assert!(nan.iter().all(|b| b.to_f32().is_nan()));
        // Relative error at most 2^-8 (half an ulp of 8 significant bits), on a long (multi-chunk) input.
        let xs: Vec<f32> = (0..100_000).map(|i| ((i as f32) * 0.731).sin() * 10f32.powi(i % 9 - 4)).collect();
        for (x, b) in xs.iter().zip(to_bf16(&xs)) {
            assert!((b.to_f32() - x).abs() <= x.abs() * 2f32.powi(-8), "{x} -> {}", b.to_f32());
        }
    }
}
