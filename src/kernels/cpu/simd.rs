//! The elementwise and per-row loops of the fused kernels, compiled for AVX-512 and AVX2 beside the baseline and chosen at run time.
//!
//! A release build targets baseline x86-64 (SSE2), so these loops would run four lanes wide at
//! best. [`simd_kernel!`] compiles each one three times, for AVX-512, AVX2 + FMA and the baseline,
//! and calls the widest the CPU supports. Rust never fuses a multiply and an add on its own, and
//! where a kernel fuses them on purpose (`mul_add`) the fused operation rounds once on every target
//! (an instruction, or the C library's `fmaf` on the baseline), so every version computes
//! bit-identical results: runs stay reproducible across machines.

use std::sync::atomic::{AtomicU8, Ordering};

/// 0: baseline, 1: AVX2 + FMA, 2: AVX-512 (F, VL, BW, DQ). Detected once.
#[cfg(target_arch = "x86_64")]
fn simd_level() -> u8 {
    static LEVEL: AtomicU8 = AtomicU8::new(u8::MAX);
    let level = LEVEL.load(Ordering::Relaxed);
    if level != u8::MAX {
        return level;
    }
    let level = if is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512dq")
    {
        2
    } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        1
    } else {
        0
    };
    LEVEL.store(level, Ordering::Relaxed);
    level
}

/// The level the kernels dispatch to: the CPU's, or in tests at most the one
/// [`with_level_cap`] set for the calling thread.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn dispatch_level() -> u8 {
    capped(simd_level())
}

#[cfg(not(test))]
#[inline(always)]
fn capped(level: u8) -> u8 {
    level
}

#[cfg(test)]
fn capped(level: u8) -> u8 {
    level.min(LEVEL_CAP.with(|c| c.get()))
}

#[cfg(test)]
thread_local! {
    static LEVEL_CAP: std::cell::Cell<u8> = const { std::cell::Cell::new(u8::MAX) };
}

/// Runs `f` with the kernels of the calling thread dispatching to at most `level`.
#[cfg(test)]
fn with_level_cap<R>(level: u8, f: impl FnOnce() -> R) -> R {
    let previous = LEVEL_CAP.with(|c| c.replace(level));
    let out = f();
    LEVEL_CAP.with(|c| c.set(previous));
    out
}

/// Defines a function whose body is compiled for AVX-512, for AVX2 + FMA and for the baseline
/// target, and runs the widest version the CPU supports.
macro_rules! simd_kernel {
    ($(#[$doc:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$doc])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn generic($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? {
                    generic($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? {
                    generic($($arg),*)
                }
                match dispatch_level() {
                    // SAFETY: simd_level found these features on this CPU (a test's cap only lowers it).
                    2 => return unsafe { v4($($arg),*) },
                    1 => return unsafe { v3($($arg),*) },
                    _ => {}
                }
            }
            generic($($arg),*)
        }
    };
}

/// e^x in f32: reduce to r in [-ln2/2, ln2/2] with x = n ln2 + r, evaluate Cephes' degree-6
/// polynomial for e^r, and scale by 2^n through the exponent bits. About 1 ulp where the result is
/// a normal number; below that it returns 0 (so masked attention scores get exactly zero weight).
/// Integer steps are bit operations, so a loop over it vectorizes.
#[inline(always)]
pub(crate) fn exp_f32(x: f32) -> f32 {
    exp_by(x, |a, b, c| a * b + c)
}

/// [`exp_f32`] with its reduction and polynomial steps as fused multiply-adds: half the
/// operations, the same accuracy, a rounding of its own. `mul_add` rounds once on every target
/// (an instruction on AVX2 and AVX-512, a library call on the baseline), so every version of a
/// kernel using it gives the same bits.
#[inline(always)]
fn exp_f32_fused(x: f32) -> f32 {
    exp_by(x, f32::mul_add)
}

/// The steps of [`exp_f32`], each `a * b + c` taken by `mul_add`.
#[inline(always)]
fn exp_by(x: f32, mul_add: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let flush = x < -87.0;
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5 * 2^23 rounds to the nearest integer n and leaves n in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let x = x.clamp(-87.0, 88.0);
    let shifted = mul_add(x, LOG2E, ROUND);
    let n = shifted - ROUND;
    let r = mul_add(-n, LN2_LO, mul_add(-n, LN2_HI, x));
    let mut p = 1.987_569_1e-4;
    p = mul_add(p, r, 1.398_199_9e-3);
    p = mul_add(p, r, 8.333_452e-3);
    p = mul_add(p, r, 4.166_579_6e-2);
    p = mul_add(p, r, 1.666_666_5e-1);
    // Cephes' 5.0000001201e-1 is 0.5 in f32.
    p = mul_add(p, r, 0.5);
    let er = mul_add(p * r, r, r) + 1.0;
    // n as an integer (|n| <= 127 after the clamp), then 2^n built from its exponent bits.
    let n_int = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    let value = er * f32::from_bits(n_int.wrapping_add(127) << 23);
    if flush {
        0.0
    } else {
        value
    }
}

/// erf(x) by Abramowitz & Stegun 7.1.26 (absolute error 1.5e-7, plus f32 rounding), the approximation
/// PyTorch's vectorized CPU kernels use, given `e = exp(-x^2)` so callers can share it.
#[inline(always)]
pub(crate) fn erf_with_exp(x: f32, e: f32) -> f32 {
    erf_by(x, e, |a, b, c| a * b + c)
}

/// The steps of [`erf_with_exp`], each `a * b + c` taken by `mul_add`.
#[inline(always)]
fn erf_by(x: f32, e: f32, mul_add: impl Fn(f32, f32, f32) -> f32) -> f32 {
    let t = 1.0 / mul_add(0.327_591_1, x.abs(), 1.0);
    let mut poly = mul_add(1.061_405_4, t, -1.453_152);
    poly = mul_add(poly, t, 1.421_413_8);
    poly = mul_add(poly, t, -0.284_496_74);
    poly = mul_add(poly, t, 0.254_829_6) * t;
    mul_add(-poly, e, 1.0).copysign(x)
}

/// Sum of a slice with eight running sums, which the compiler can keep in one vector register.
#[inline(always)]
pub(crate) fn sum8(values: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = values.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Maximum of a slice with eight running maxima.
#[inline(always)]
fn max8(values: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let chunks = values.chunks_exact(8);
    let rest = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    for c in chunks {
        for i in 0..8 {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    acc.iter().fold(rest, |m, &v| if v > m { v } else { m })
}

/// Dot product with eight running sums.
#[inline(always)]
fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let rest: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(a, b)| a * b).sum();
    for (a8, b8) in ac.zip(bc) {
        for i in 0..8 {
            acc[i] += a8[i] * b8[i];
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// 1 / sqrt(2 pi), the standard normal density at 0.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

simd_kernel! {
    /// `dst = bf16(src)`, rounding to the nearest bf16 with ties to even (NaN stays NaN), as bits.
    pub(crate) fn f32_to_bf16_bits(src: &[f32], dst: &mut [u16]) {
        for (d, &x) in dst.iter_mut().zip(src) {
            let bits = x.to_bits();
            let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
            // A NaN keeps its sign and top mantissa bits, made quiet so it cannot round to infinity.
            let nan = ((bits >> 16) as u16) | 0x40;
            *d = if x.is_nan() { nan } else { rounded };
        }
    }
}
/// One ChaCha quarter round on word rows `a`, `b`, `c`, `d` of 16 blocks side by side.
#[inline(always)]
#[allow(clippy::needless_range_loop)]
fn quarter16(x: &mut [[u32; 16]; 16], a: usize, b: usize, c: usize, d: usize) {
    for l in 0..16 {
        x[a][l] = x[a][l].wrapping_add(x[b][l]);
        x[d][l] = (x[d][l] ^ x[a][l]).rotate_left(16);
        x[c][l] = x[c][l].wrapping_add(x[d][l]);
        x[b][l] = (x[b][l] ^ x[c][l]).rotate_left(12);
        x[a][l] = x[a][l].wrapping_add(x[b][l]);
        x[d][l] = (x[d][l] ^ x[a][l]).rotate_left(8);
        x[c][l] = x[c][l].wrapping_add(x[d][l]);
        x[b][l] = (x[b][l] ^ x[c][l]).rotate_left(7);
    }
}

simd_kernel! {
    /// ChaCha8 blocks `blocks` (64-bit block counters) for `key` and `stream`, computed side by
    /// side (one block per lane): `out[l][i]` is word i of block `blocks[l]`, the words
    /// `dropout_mask::chacha8_word` gives one at a time.
    pub(crate) fn chacha8_blocks16(key: &[u32; 8], stream: u64, blocks: &[u64; 16], out: &mut [[u32; 16]; 16]) {
        const SIGMA: [u32; 4] = [0x6170_7865, 0x3320_646e, 0x7962_2d32, 0x6b20_6574];
        let mut input = [[0u32; 16]; 16];
        for (w, row) in input.iter_mut().enumerate() {
            let value = match w {
                0..=3 => SIGMA[w],
                4..=11 => key[w - 4],
                14 => stream as u32,
                15 => (stream >> 32) as u32,
                _ => 0,
            };
            *row = [value; 16];
        }
        for (l, &block) in blocks.iter().enumerate() {
            input[12][l] = block as u32;
            input[13][l] = (block >> 32) as u32;
        }
        let mut x = input;
        for _ in 0..4 {
            for [a, b, c, d] in crate::kernels::dropout_mask::DOUBLE_ROUND {
                quarter16(&mut x, a, b, c, d);
            }
        }
        for (l, block) in out.iter_mut().enumerate() {
            for (w, word) in block.iter_mut().enumerate() {
                *word = x[w][l].wrapping_add(input[w][l]);
            }
        }
    }
}

/// `0.5 x (1 + erf(x / sqrt 2))`.
#[inline(always)]
fn gelu_value(x: f32) -> f32 {
    // erf(x / sqrt 2) needs exp(-(x / sqrt 2)^2) = exp(-x^2 / 2).
    let e = exp_f32(-0.5 * x * x);
    0.5 * x * (1.0 + erf_with_exp(x * std::f32::consts::FRAC_1_SQRT_2, e))
}

simd_kernel! {
    /// `ys = 0.5 x (1 + erf(x / sqrt 2))`, elementwise.
    pub(crate) fn gelu_forward(xs: &[f32], ys: &mut [f32]) {
        for (y, &x) in ys.iter_mut().zip(xs) {
            *y = gelu_value(x);
        }
    }
}

simd_kernel! {
    /// [`gelu_forward`] in place: the same arithmetic, the same bits.
    pub(crate) fn gelu_in_place(values: &mut [f32]) {
        for v in values.iter_mut() {
            *v = gelu_value(*v);
        }
    }
}

/// [`gelu_value`] with fused multiply-adds ([`exp_f32_fused`], and the erf polynomial): the
/// same approximation with fewer operations, a rounding of its own.
#[inline(always)]
fn gelu_value_fused(x: f32) -> f32 {
    let e = exp_f32_fused(-0.5 * x * x);
    let erf = erf_by(x * std::f32::consts::FRAC_1_SQRT_2, e, f32::mul_add);
    let half = 0.5 * x;
    half.mul_add(erf, half)
}

simd_kernel! {
    /// GELU in place with fused multiply-adds ([`gelu_value_fused`]): the epilogue of a bf16 product.
    pub(crate) fn gelu_fused_in_place(values: &mut [f32]) {
        for v in values.iter_mut() {
            *v = gelu_value_fused(*v);
        }
    }
}

simd_kernel! {
    /// `dx = g * d/dx [x Phi(x)] = g * (Phi(x) + x phi(x))`, elementwise.
    pub(crate) fn gelu_backward(xs: &[f32], grad: &[f32], dx: &mut [f32]) {
        for ((d, &x), &g) in dx.iter_mut().zip(xs).zip(grad) {
            let e = exp_f32(-0.5 * x * x);
            let cdf = 0.5 * (1.0 + erf_with_exp(x * std::f32::consts::FRAC_1_SQRT_2, e));
            *d = g * (cdf + x * FRAC_1_SQRT_2PI * e);
        }
    }
}

simd_kernel! {
    /// One row of attention probabilities: `p = softmax(scores * scale + mask)`.
    pub(crate) fn masked_softmax_row(scores: &[f32], mask: &[f32], scale: f32, p: &mut [f32]) {
        for ((p, &s), &m) in p.iter_mut().zip(scores).zip(mask) {
            *p = s * scale + m;
        }
        let max = max8(p);
        for v in p.iter_mut() {
            *v = exp_f32(*v - max);
        }
        let inv = 1.0 / sum8(p);
        p.iter_mut().for_each(|v| *v *= inv);
    }
}

simd_kernel! {
    /// Softmax down the columns of a block of rows of 16 values (one row per key, one column per
    /// query), in place: `p = softmax(s * scale + mask)` over each column, where the mask is
    /// `keys[j]` for every query of row `j`, or `block` (the block's shape) when it is not empty.
    /// Every step is elementwise across the 16 columns, so a column's sums run in key order in one
    /// lane, with no reduction across lanes.
    pub(crate) fn masked_softmax_columns(rows: &mut [f32], keys: &[f32], block: &[f32], scale: f32) {
        let mut max = [f32::NEG_INFINITY; 16];
        if block.is_empty() {
            for (row, &m) in rows.chunks_exact_mut(16).zip(keys) {
                for c in 0..16 {
                    let v = row[c].mul_add(scale, m);
                    row[c] = v;
                    max[c] = if v > max[c] { v } else { max[c] };
                }
            }
        } else {
            for (row, mask) in rows.chunks_exact_mut(16).zip(block.chunks_exact(16)) {
                for c in 0..16 {
                    let v = row[c].mul_add(scale, mask[c]);
                    row[c] = v;
                    max[c] = if v > max[c] { v } else { max[c] };
                }
            }
        }
        let mut sum = [0f32; 16];
        for row in rows.chunks_exact_mut(16) {
            for c in 0..16 {
                let e = exp_f32_fused(row[c] - max[c]);
                row[c] = e;
                sum[c] += e;
            }
        }
        let inv = sum.map(|s| 1.0 / s);
        for row in rows.chunks_exact_mut(16) {
            for c in 0..16 {
                row[c] *= inv[c];
            }
        }
    }
}

simd_kernel! {
    /// Two rows rounded to bf16 and interleaved as the matrix instructions read a pair of rows:
    /// word `j` holds `bf16(lo[j])` in its low half and `bf16(hi[j])` in its high half (rounded
    /// as [`f32_to_bf16_bits`] rounds; the values are finite).
    pub(crate) fn bf16_row_pair(lo: &[f32], hi: &[f32], out: &mut [u32]) {
        for ((o, &lo), &hi) in out.iter_mut().zip(lo).zip(hi) {
            let round = |bits: u32| bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
            *o = (round(hi.to_bits()) & 0xffff_0000) | (round(lo.to_bits()) >> 16);
        }
    }
}

simd_kernel! {
    /// One row of the softmax Jacobian-vector product, times the score scale:
    /// `d = scale * p * (g - <g, p>)`.
    pub(crate) fn softmax_backward_row(p: &[f32], g: &[f32], scale: f32, d: &mut [f32]) {
        let dot = dot8(p, g);
        for ((d, &p), &g) in d.iter_mut().zip(p).zip(g) {
            *d = scale * p * (g - dot);
        }
    }
}

/// Mean and 1/sqrt(var + eps) of one row (biased variance, two passes).
#[inline(always)]
fn row_stats(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = sum8(row) / n;
    let mut acc = [0f32; 8];
    let chunks = row.chunks_exact(8);
    let rest: f32 = chunks.remainder().iter().map(|v| (v - mean) * (v - mean)).sum();
    for c in chunks {
        for i in 0..8 {
            acc[i] += (c[i] - mean) * (c[i] - mean);
        }
    }
    let var = (acc.iter().sum::<f32>() + rest) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

simd_kernel! {
    /// LayerNorm of whole rows of `xs` (each `weight.len()` wide) into `ys`.
    pub(crate) fn layer_norm_rows(xs: &[f32], weight: &[f32], bias: &[f32], eps: f32, ys: &mut [f32]) {
        let width = weight.len();
        for (x, y) in xs.chunks_exact(width).zip(ys.chunks_exact_mut(width)) {
            let (mean, rstd) = row_stats(x, eps);
            for i in 0..width {
                y[i] = (x[i] - mean) * rstd * weight[i] + bias[i];
            }
        }
    }
}

simd_kernel! {
    /// LayerNorm backward for whole rows: writes `dx` and adds this chunk's weight and bias
    /// gradients to `dw` and `db`.
    pub(crate) fn layer_norm_backward_rows(
        xs: &[f32],
        grad: &[f32],
        weight: &[f32],
        eps: f32,
        dx: &mut [f32],
        dw: &mut [f32],
        db: &mut [f32],
    ) {
        let width = weight.len();
        let rows = xs.chunks_exact(width).zip(grad.chunks_exact(width)).zip(dx.chunks_exact_mut(width));
        for ((x, g), dx) in rows {
            let (mean, rstd) = row_stats(x, eps);
            // dx = rstd * (g*w - mean(g*w) - xhat * mean(g*w*xhat))
            let (mut sum_gw, mut sum_gw_xhat) = ([0f32; 8], [0f32; 8]);
            for i in 0..width {
                let xhat = (x[i] - mean) * rstd;
                let gw = g[i] * weight[i];
                sum_gw[i % 8] += gw;
                sum_gw_xhat[i % 8] += gw * xhat;
                dw[i] += g[i] * xhat;
                db[i] += g[i];
            }
            let mean_gw = sum_gw.iter().sum::<f32>() / width as f32;
            let mean_gw_xhat = sum_gw_xhat.iter().sum::<f32>() / width as f32;
            for i in 0..width {
                let xhat = (x[i] - mean) * rstd;
                dx[i] = rstd * (g[i] * weight[i] - mean_gw - xhat * mean_gw_xhat);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_and_erf_are_accurate() {
        for i in -8000..=8000 {
            let x = i as f32 * 0.01;
            let (ours, exact) = (exp_f32(x), f64::from(x).exp());
            assert!((f64::from(ours) - exact).abs() <= 3e-7 * exact, "exp({x}) = {ours} vs {exact}");
            let fused = exp_f32_fused(x);
            assert!((f64::from(fused) - exact).abs() <= 3e-7 * exact, "fused exp({x}) = {fused} vs {exact}");
            let (gelu, fused_gelu) = (gelu_value(x), gelu_value_fused(x));
            assert!((gelu - fused_gelu).abs() <= 1e-6 * (1.0 + gelu.abs()), "gelu({x}): {gelu} vs {fused_gelu}");
            let e = exp_f32(-x * x);
            let erf = erf_with_exp(x, e);
            let reference = candle_core::cpu::erf::erf_f64(f64::from(x));
            assert!((f64::from(erf) - reference).abs() < 5e-7, "erf({x}) = {erf} vs {reference}");
        }
        assert_eq!(exp_f32(-87.5), 0.0);
        assert_eq!(exp_f32(f32::MIN), 0.0);
        assert!(exp_f32(-87.0) > 0.0 && exp_f32(-87.0) < 1e-37);
        assert!(exp_f32(88.0).is_finite() && exp_f32(200.0) == exp_f32(88.0));
        assert_eq!(exp_f32_fused(-87.5), 0.0);
        assert_eq!(exp_f32_fused(f32::MIN), 0.0);
    }

    /// Every kernel, run at each level this CPU supports (AVX-512, AVX2 + FMA, the baseline),
    /// gives the baseline's bits; the baseline's GELU is also the scalar formula's.
    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        let xs: Vec<f32> = (0..1000).map(|i| (i as f32 - 500.0) * 0.013).collect();
        let gs: Vec<f32> = (0..1000).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.07).collect();
        let run_all = || {
            let mut out: Vec<Vec<u32>> = Vec::new();
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
            let mut bf16 = vec![0u16; xs.len()];
            f32_to_bf16_bits(&xs, &mut bf16);
            out.push(bf16.iter().map(|&b| u32::from(b)).collect());
            let mut ys = vec![0f32; xs.len()];
            gelu_forward(&xs, &mut ys);
            out.push(bits(&ys));
            gelu_backward(&xs, &gs, &mut ys);
            out.push(bits(&ys));
            let mut p = vec![0f32; 77];
            masked_softmax_row(&xs[..77], &xs[100..177], 0.5, &mut p);
            out.push(bits(&p));
            let mut d = vec![0f32; 77];
            softmax_backward_row(&p, &gs[..77], 0.5, &mut d);
            out.push(bits(&d));
            let (width, w, b) = (40, &gs[..40], &xs[200..240]);
            let mut ln = vec![0f32; 400];
            layer_norm_rows(&xs[..400], w, b, 1e-12, &mut ln);
            out.push(bits(&ln));
            let (mut dx, mut dw, mut db) = (vec![0f32; 400], vec![0f32; width], vec![0f32; width]);
            layer_norm_backward_rows(&xs[..400], &gs[..400], w, 1e-12, &mut dx, &mut dw, &mut db);
            out.extend([bits(&dx), bits(&dw), bits(&db)]);
            out.push(vec![max8(&xs[3..80]).to_bits(), dot8(&xs[..77], &gs[..77]).to_bits()]);
            let mut columns = xs[..16 * 9].to_vec();
            masked_softmax_columns(&mut columns, &gs[..9], &[], 0.5);
            out.push(bits(&columns));
            let mut banded = xs[..16 * 9].to_vec();
            masked_softmax_columns(&mut banded, &[], &gs[300..300 + 16 * 9], 0.5);
            out.push(bits(&banded));
            let mut fused = xs.clone();
            gelu_fused_in_place(&mut fused);
            out.push(bits(&fused));
            let mut pairs = vec![0u32; 16];
            bf16_row_pair(&xs[..16], &xs[16..32], &mut pairs);
            out.push(pairs);
            out
        };
        let baseline = with_level_cap(0, run_all);
        #[cfg(target_arch = "x86_64")]
        for level in 1..=simd_level() {
            assert_eq!(with_level_cap(level, run_all), baseline, "level {level} differs from the baseline");
        }
        let mut scalar = vec![0f32; xs.len()];
        for (y, &x) in scalar.iter_mut().zip(&xs) {
            let e = exp_f32(-0.5 * x * x);
            *y = 0.5 * x * (1.0 + erf_with_exp(x * std::f32::consts::FRAC_1_SQRT_2, e));
        }
        assert_eq!(baseline[1], scalar.iter().map(|x| x.to_bits()).collect::<Vec<u32>>());
        let p = &baseline[3];
        assert!((p.iter().map(|&b| f32::from_bits(b)).sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(f32::from_bits(baseline[9][0]), xs[79]);
        // Each column of the column softmax sums to one and matches the row softmax of that column.
        let columns: Vec<f32> = baseline[10].iter().map(|&b| f32::from_bits(b)).collect();
        for c in 0..16 {
            let scores: Vec<f32> = (0..9).map(|j| xs[j * 16 + c]).collect();
            let mut row = vec![0f32; 9];
            masked_softmax_row(&scores, &gs[..9], 0.5, &mut row);
            for (j, want) in row.iter().enumerate() {
                assert!((columns[j * 16 + c] - want).abs() < 1e-6, "column {c}, key {j}");
            }
        }
        // The pairs are the bf16 roundings of the two rows, low half first.
        let mut bf16 = vec![0u16; 32];
        f32_to_bf16_bits(&xs[..32], &mut bf16);
        let expected: Vec<u32> = (0..16).map(|j| u32::from(bf16[j]) | u32::from(bf16[16 + j]) << 16).collect();
        assert_eq!(baseline[13], expected);
    }
}
