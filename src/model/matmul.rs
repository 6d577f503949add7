//! f32 matrix products written straight into buffers the caller owns (gemm), over strided views.
//!
//! candle's `matmul` zero-fills its output before the product overwrites it and cannot add into an
//! existing buffer. The fused kernels call gemm here instead: a linear layer starts from its bias
//! rows and adds the product in the same pass, gradients are written into fresh buffers without
//! the zero fill, and attention runs one single-threaded product per (batch, head) pair.

use gemm::{gemm, Parallelism};

use super::parallel::num_threads;

/// A row-major matrix in memory: base pointer and row stride, read as its transpose when `transposed`.
#[derive(Clone, Copy)]
pub(crate) struct View {
    ptr: *const f32,
    row_stride: usize,
    transposed: bool,
}

impl View {
    pub(crate) fn new(values: &[f32], row_stride: usize) -> Self {
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

/// How a product uses the CPU threads.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Threads {
    /// On the calling thread only (inside work that is already parallel).
    One,
    /// On candle's rayon pool.
    All,
}

/// `dst[m x n] = lhs[m x k] * rhs[k x n]`, or `dst += lhs * rhs` when `accumulate`; `dst` rows are
/// `dst_stride` apart. gemm splits the work over output blocks, never over `k`, so the result does
/// not depend on the number of threads.
///
/// # Safety
/// The views must cover the `m x k` and `k x n` matrices they present; `dst` must be valid for
/// writes (and, when `accumulate`, initialized) over `m` rows of `n` values `dst_stride` apart, and
/// must not overlap the inputs.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul_into(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_stride: usize,
    accumulate: bool,
    lhs: View,
    rhs: View,
    threads: Threads,
) {
    let (lhs_rs, lhs_cs) = lhs.strides();
    let (rhs_rs, rhs_cs) = rhs.strides();
    let parallelism = match threads {
        Threads::All if num_threads() > 1 => Parallelism::Rayon(num_threads()),
        _ => Parallelism::None,
    };
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
        parallelism,
    )
}

/// A new `m x n` matrix `lhs * rhs`, computed on all threads without zero-filling it first.
///
/// # Safety
/// The views must cover the `m x k` and `k x n` matrices they present.
pub(crate) unsafe fn matmul(m: usize, n: usize, k: usize, lhs: View, rhs: View) -> Vec<f32> {
    let mut out = Vec::with_capacity(m * n);
    matmul_into((m, n, k), out.as_mut_ptr(), n, false, lhs, rhs, Threads::All);
    // gemm wrote all m * n values.
    out.set_len(m * n);
    out
}
