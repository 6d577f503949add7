//! Matrix products written straight into buffers the caller owns, over strided views: f32 through
//! gemm, bf16 (f32 accumulation and output) through the library `bf16_library` chose.
//!
//! candle's `matmul` zero-fills its output before the product overwrites it and cannot add into an
//! existing buffer. The fused kernels call gemm here instead: a linear layer starts from its bias
//! rows and adds the product in the same pass, gradients are written into fresh buffers without
//! the zero fill, and attention runs one single-threaded product per (batch, head) pair.

use gemm::{gemm, Parallelism};

use super::bf16::{to_bf16_local, Bf16, OutputCopy};
use super::bf16_library::{bf16_backend, Library};
use super::simd::{gelu_fused_in_place, gelu_in_place};
use super::threads::{num_threads, par_each};
use super::{mkl, onednn};

/// An element type the products take as input; they accumulate and write f32.
pub(crate) trait Element: Copy + Default + Send + Sync + 'static {
    /// One single-threaded product, with the arguments of [`matmul_into`].
    ///
    /// # Safety
    /// As [`matmul_into`].
    unsafe fn product(
        dims: (usize, usize, usize),
        dst: *mut f32,
        dst_stride: usize,
        accumulate: bool,
        lhs: View<Self>,
        rhs: View<Self>,
    );

    /// `src` as this type, on the calling thread: `src` itself for f32, else converted into
    /// `scratch` (same length).
    fn staged<'a>(src: &'a [f32], scratch: &'a mut [Self]) -> &'a [Self];

    /// Whether GELU after the product ([`Then`]) takes its fused form: bf16 does (its output is
    /// rounded to bf16 next, and the fused form measured 5-10% off an evaluation pass); f32 keeps
    /// the bits of the separate GELU op, which its runs' figures were measured with.
    const FUSED_GELU: bool;
}

impl Element for f32 {
    unsafe fn product(
        (m, n, k): (usize, usize, usize),
        dst: *mut f32,
        dst_stride: usize,
        accumulate: bool,
        lhs: View<f32>,
        rhs: View<f32>,
    ) {
        let (lhs_rs, lhs_cs) = lhs.strides();
        let (rhs_rs, rhs_cs) = rhs.strides();
        gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_stride as isize,
            accumulate,
            lhs.ptr,
            lhs_cs,
            lhs_rs,
            rhs.ptr,
            rhs_cs,
            rhs_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        )
    }

    fn staged<'a>(src: &'a [f32], _scratch: &'a mut [f32]) -> &'a [f32] {
        src
    }

    const FUSED_GELU: bool = false;
}

impl Element for Bf16 {
    unsafe fn product(
        dims: (usize, usize, usize),
        dst: *mut f32,
        dst_stride: usize,
        accumulate: bool,
        lhs: View<Bf16>,
        rhs: View<Bf16>,
    ) {
        // bf16 products are only built once `Autocast` has found the library.
        let backend = bf16_backend().expect("a bf16 product without a bf16 library chosen");
        let operand = |v: View<Bf16>| (v.ptr.cast::<u16>(), v.row_stride, v.transposed);
        match backend.library {
            Library::OneDnn => {
                let lib = onednn::get().expect("chosen, so loaded");
                lib.gemm_bf16(dims, dst, dst_stride, accumulate, operand(lhs), operand(rhs))
            }
            Library::Mkl => {
                let lib = mkl::get().expect("chosen, so loaded");
                lib.gemm(dims, dst, dst_stride, accumulate, operand(lhs), operand(rhs))
            }
            Library::Emulated => {
                let (m, n, k) = dims;
                let (l, r) = (lhs.widened(m, k), rhs.widened(k, n));
                f32::product(dims, dst, dst_stride, accumulate, View::new(&l, k), View::new(&r, n))
            }
        }
    }

    fn staged<'a>(src: &'a [f32], scratch: &'a mut [Bf16]) -> &'a [Bf16] {
        to_bf16_local(src, scratch);
        scratch
    }

    const FUSED_GELU: bool = true;
}

/// A row-major matrix in memory: base pointer and row stride, read as its transpose when `transposed`.
pub(crate) struct View<T> {
    ptr: *const T,
    row_stride: usize,
    transposed: bool,
}

impl<T> Clone for View<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for View<T> {}

impl<T> View<T> {
    pub(crate) fn new(values: &[T], row_stride: usize) -> Self {
        Self { ptr: values.as_ptr(), row_stride, transposed: false }
    }

    /// The same memory read as its transpose.
    pub(crate) fn t(self) -> Self {
        Self { transposed: !self.transposed, ..self }
    }

    /// (row stride, column stride) of the matrix this view presents.
    fn strides(self) -> (isize, isize) {
        if self.transposed {
            (1, self.row_stride as isize)
        } else {
            (self.row_stride as isize, 1)
        }
    }
}

impl View<Bf16> {
    /// The `rows x cols` matrix this view presents, widened to f32 and stored row-major.
    ///
    /// # Safety
    /// The view must cover that matrix.
    unsafe fn widened(self, rows: usize, cols: usize) -> Vec<f32> {
        let (rs, cs) = self.strides();
        let mut out = Vec::with_capacity(rows * cols);
        for i in 0..rows as isize {
            for j in 0..cols as isize {
                // SAFETY: (i, j) is inside the matrix the caller promised.
                out.push(f32::from_bits(u32::from((*self.ptr.offset(i * rs + j * cs)).0) << 16));
            }
        }
        out
    }
}

// SAFETY: a view only reads; the callers of `matmul_into` promise the memory stays valid.
unsafe impl<T> Send for View<T> {}
unsafe impl<T> Sync for View<T> {}

impl<T> View<T> {
    /// The view starting `rows` rows further down the matrix it presents.
    fn skip_rows(self, rows: usize) -> Self {
        let (row_stride, _) = self.strides();
        // SAFETY: callers skip only rows inside the matrix.
        Self { ptr: unsafe { self.ptr.offset(row_stride * rows as isize) }, ..self }
    }
}

/// An output buffer that parallel work items write disjoint parts of (row blocks here, (batch,
/// head) blocks in attention).
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub(crate) *mut f32);
// SAFETY: users write only the part of the buffer their work item owns.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer `offset` values in (a method, so closures capture the whole value).
    pub(crate) fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: callers pass offsets inside the buffer.
        unsafe { self.0.add(offset) }
    }
}

/// Fewest rows (or columns) worth a thread of their own.
const MIN_PER_THREAD: usize = 32;

/// How a product uses the CPU threads.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Threads {
    /// On the calling thread only (inside work that is already parallel).
    One,
    /// On candle's rayon pool.
    All,
}

/// `dst[m x n] = lhs[m x k] * rhs[k x n]`, or `dst += lhs * rhs` when `accumulate`; `dst` rows are
/// `dst_stride` apart. With [`Threads::All`] the rows (or columns) of `dst` are split into one
/// contiguous block per thread, each a single-threaded product: on these shapes that scales better over two cores
/// than gemm's own splitting (about 320 against 250 GFLOP/s for 592x384x1536 here). Every output
/// value is one single-threaded dot product over all of `k`, so the result does not depend on the
/// number of threads.
///
/// # Safety
/// The views must cover the `m x k` and `k x n` matrices they present; `dst` must be valid for
/// writes (and, when `accumulate`, initialized) over `m` rows of `n` values `dst_stride` apart, and
/// must not overlap the inputs.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul_into<T: Element>(
    dims: (usize, usize, usize),
    dst: *mut f32,
    dst_stride: usize,
    accumulate: bool,
    lhs: View<T>,
    rhs: View<T>,
    threads: Threads,
) {
    let started = (threads == Threads::All && super::profile::enabled()).then(std::time::Instant::now);
    let init = if accumulate { Start::Accumulate } else { Start::Overwrite };
    split_matmul_into(dims, dst, dst_stride, (init, None), lhs, rhs, threads);
    if let Some(started) = started {
        super::profile::record_product(dims, (lhs.transposed, rhs.transposed), is_bf16::<T>(), started.elapsed());
    }
}

/// `dst[m x n] = bias + lhs[m x k] * rhs[k x n]`, with `bias` [n] in every row, on all threads:
/// each thread writes the bias into its own block of `dst` just before its product adds to it, so
/// the block is still in cache (no separate pass over the output). Each thread then does what
/// `then` says to its block (`then.at` is 0 here; a copy is laid out as `dst`, rows `dst_stride`
/// apart).
///
/// # Safety
/// As [`matmul_into`], with `dst` only valid for writes (it need not be initialized) and `bias`
/// of `n` values.
pub(crate) unsafe fn matmul_bias_into<T: Element>(
    dims: (usize, usize, usize),
    dst: *mut f32,
    dst_stride: usize,
    bias: &[f32],
    lhs: View<T>,
    rhs: View<T>,
    then: Then<'_>,
) {
    debug_assert_eq!(bias.len(), dims.1);
    let started = super::profile::enabled().then(std::time::Instant::now);
    let then = (then.gelu || then.copy.is_some()).then_some(then);
    split_matmul_into(dims, dst, dst_stride, (Start::Bias(bias), then), lhs, rhs, Threads::All);
    if let Some(started) = started {
        super::profile::record_product(dims, (lhs.transposed, rhs.transposed), is_bf16::<T>(), started.elapsed());
    }
}

/// Whether `T` is the bf16 element (for the profile's record of a product).
fn is_bf16<T: Element>() -> bool {
    std::any::TypeId::of::<T>() == std::any::TypeId::of::<Bf16>()
}

/// What a product starts from in `dst`.
#[derive(Clone, Copy)]
enum Start<'a> {
    /// Nothing: the product overwrites it.
    Overwrite,
    /// What is there: the product adds to it.
    Accumulate,
    /// This row of values, written into every row of the block first; the product adds to it.
    Bias(&'a [f32]),
}

/// What a block's product does to its values while they are in cache: GELU (exact) in place,
/// then their bf16 copy (the block's values start at `at` in it).
#[derive(Clone, Copy)]
pub(crate) struct Then<'a> {
    pub(crate) gelu: bool,
    pub(crate) copy: Option<&'a OutputCopy>,
    pub(crate) at: usize,
}

/// [`matmul_into`] without the profile.
#[allow(clippy::too_many_arguments)]
unsafe fn split_matmul_into<T: Element>(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_stride: usize,
    (init, then): (Start<'_>, Option<Then<'_>>),
    lhs: View<T>,
    rhs: View<T>,
    threads: Threads,
) {
    // Each thread packs the operand it does not split, so split the dimension whose other operand
    // is smaller: rows of dst when n <= m (every thread packs rhs), columns otherwise.
    let by_rows = n <= m;
    let split = if by_rows { m } else { n };
    let blocks = match threads {
        Threads::All => num_threads().min(split / MIN_PER_THREAD).max(1),
        Threads::One => 1,
    };
    if blocks > 1 {
        let per = split.div_ceil(blocks);
        let dst = SharedMut(dst);
        par_each((0..blocks).collect(), |&mut block| {
            let (start, end) = (block * per, ((block + 1) * per).min(split));
            if start >= end {
                return;
            }
            // SAFETY: rows (or columns) start..end of every matrix, inside what the caller promised.
            unsafe {
                if by_rows {
                    let dims = (end - start, n, k);
                    let (dst, lhs) = (dst.at(start * dst_stride), lhs.skip_rows(start));
                    let then = then.map(|t| Then { at: t.at + start * dst_stride, ..t });
                    split_matmul_into(dims, dst, dst_stride, (init, then), lhs, rhs, Threads::One)
                } else {
                    let dims = (m, end - start, k);
                    let (dst, rhs) = (dst.at(start), rhs.t().skip_rows(start).t());
                    let init = match init {
                        Start::Bias(bias) => Start::Bias(&bias[start..end]),
                        other => other,
                    };
                    let then = then.map(|t| Then { at: t.at + start, ..t });
                    split_matmul_into(dims, dst, dst_stride, (init, then), lhs, rhs, Threads::One)
                }
            }
        });
        return;
    }
    let accumulate = match init {
        Start::Overwrite => false,
        Start::Accumulate => true,
        Start::Bias(bias) => {
            for row in 0..m {
                // SAFETY: row `row` of dst holds n values (the caller's promise), bias n as well.
                std::ptr::copy_nonoverlapping(bias.as_ptr(), dst.add(row * dst_stride), n);
            }
            true
        }
    };
    T::product((m, n, k), dst, dst_stride, accumulate, lhs, rhs);
    if let Some(Then { gelu, copy, at }) = then {
        for row in 0..m {
            // SAFETY: row `row` of this block: n values the product just wrote, this block's alone
            // (in `copy` as in `dst`).
            let values = std::slice::from_raw_parts_mut(dst.add(row * dst_stride), n);
            match gelu {
                true if T::FUSED_GELU => gelu_fused_in_place(values),
                true => gelu_in_place(values),
                false => {}
            }
            if let Some(copy) = copy {
                copy.write(at + row * dst_stride, values);
            }
        }
    }
}

/// A new `m x n` matrix `lhs * rhs`, computed on all threads without zero-filling it first.
///
/// # Safety
/// The views must cover the `m x k` and `k x n` matrices they present.
pub(crate) unsafe fn matmul<T: Element>(m: usize, n: usize, k: usize, lhs: View<T>, rhs: View<T>) -> Vec<f32> {
    let mut out = Vec::with_capacity(m * n);
    matmul_into((m, n, k), out.as_mut_ptr(), n, false, lhs, rhs, Threads::All);
    // gemm wrote all m * n values.
    out.set_len(m * n);
    out
}

/// Median seconds of one product of `shape` alone, on fresh inputs, over `reps` runs.
pub fn time_alone(shape: super::profile::Shape, reps: usize) -> f64 {
    let ((m, n, k), (ta, tb), bf16) = shape;
    let lhs: Vec<f32> = (0..m * k).map(|i| ((i % 13) as f32 - 6.0) * 0.01).collect();
    let rhs: Vec<f32> = (0..k * n).map(|i| ((i % 7) as f32 - 3.0) * 0.01).collect();
    let mut out = vec![0f32; m * n];
    fn run<T: Element>(dims: (usize, usize, usize), l: &[T], r: &[T], (ta, tb): (bool, bool), out: &mut [f32]) {
        let (m, n, k) = dims;
        let lv = if ta { View::new(l, m).t() } else { View::new(l, k) };
        let rv = if tb { View::new(r, k).t() } else { View::new(r, n) };
        // SAFETY: l holds m x k and r k x n values in the layouts the flags describe; out m x n.
        unsafe { matmul_into(dims, out.as_mut_ptr(), n, false, lv, rv, Threads::All) }
    }
    let (lb, rb) = (super::bf16::to_bf16(&lhs), super::bf16::to_bf16(&rhs));
    let mut times: Vec<f64> = (0..reps + 1)
        .map(|_| {
            let t = std::time::Instant::now();
            if bf16 {
                run((m, n, k), &lb, &rb, (ta, tb), &mut out);
            } else {
                run((m, n, k), &lhs, &rhs, (ta, tb), &mut out);
            }
            t.elapsed().as_secs_f64()
        })
        .skip(1)
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[times.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_blocks_give_the_same_bits_as_one_product() {
        for (m, n, k) in [(101, 37, 300), (40, 203, 77)] {
            check_blocks(m, n, k);
        }
    }

    fn check_blocks(m: usize, n: usize, k: usize) {
        let lhs: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1e-3).collect();
        let rhs: Vec<f32> = (0..n * k).map(|i| ((i * 104_729 % 997) as f32 - 498.0) * 1e-3).collect();
        let (a, b) = (View::new(&lhs, k), View::new(&rhs, k).t());
        let mut one = vec![0f32; m * n];
        unsafe { matmul_into((m, n, k), one.as_mut_ptr(), n, false, a, b, Threads::One) };
        let all = unsafe { matmul(m, n, k, a, b) };
        assert_eq!(one, all);
        // The same product by hand (f64) as a check on strides and transposes.
        let (i, j) = (m / 2, n / 3);
        let exact: f64 = (0..k).map(|t| f64::from(lhs[i * k + t]) * f64::from(rhs[j * k + t])).sum();
        assert!((f64::from(one[i * n + j]) - exact).abs() < 1e-4);
        // Accumulating adds to what is there.
        let mut twice = one.clone();
        unsafe { matmul_into((m, n, k), twice.as_mut_ptr(), n, true, a, b, Threads::All) };
        assert!(twice.iter().zip(&one).all(|(t, o)| (t - 2.0 * o).abs() <= 1e-5 * o.abs().max(1.0)));
    }

    #[test]
    fn bf16_products_sum_the_rounded_inputs_in_f32() {
        if !crate::kernels::cpu::testing::bf16_available("bf16_products_sum_the_rounded_inputs_in_f32") {
            return;
        }
        use crate::kernels::cpu::bf16::to_bf16;
        let (m, n, k) = (67, 45, 300);
        let lhs: Vec<f32> = (0..m * k).map(|i| ((i * 7919 % 1000) as f32 - 500.0) * 1.3e-3).collect();
        let rhs: Vec<f32> = (0..k * n).map(|i| ((i * 104_729 % 997) as f32 - 498.0) * 0.7e-3).collect();
        let (lb, rb) = (to_bf16(&lhs), to_bf16(&rhs));
        // rhs stored [n, k] and read transposed, lhs stored [k, m] and read transposed: every flag.
        let rhs_nk: Vec<Bf16> = (0..n * k).map(|i| rb[(i % k) * n + i / k]).collect();
        let lhs_km: Vec<Bf16> = (0..k * m).map(|i| lb[(i % m) * k + i / m]).collect();
        for (name, a, b) in [
            ("plain", View::new(&lb, k), View::new(&rb, n)),
            ("rhs transposed", View::new(&lb, k), View::new(&rhs_nk, k).t()),
            ("lhs transposed", View::new(&lhs_km, m).t(), View::new(&rb, n)),
        ] {
            let ours = unsafe { matmul(m, n, k, a, b) };
            let mut one = vec![0f32; m * n];
            unsafe { matmul_into((m, n, k), one.as_mut_ptr(), n, false, a, b, Threads::One) };
            assert_eq!(ours, one, "{name}: thread blocks changed the result");
            for (i, j) in [(0, 0), (m / 2, n / 3), (m - 1, n - 1)] {
                let terms = (0..k).map(|t| {
                    let (x, y) = (lb[i * k + t].to_f32(), rb[t * n + j].to_f32());
                    (f64::from(x) * f64::from(y), f64::from((x * y).abs()))
                });
                let (exact, magnitude) = terms.fold((0.0, 0.0), |(s, a), (v, m)| (s + v, a + m));
                // Exact products of 8-bit mantissas, summed in f32: error below k ulps of the magnitude.
                let err = (f64::from(ours[i * n + j]) - exact).abs();
                assert!(err <= magnitude * k as f64 * 6e-8, "{name} ({i}, {j}): {} vs {exact}", ours[i * n + j]);
            }
        }
    }
}
