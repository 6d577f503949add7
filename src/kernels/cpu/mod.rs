//! The CPU kernels: fused candle custom ops with hand-written backward passes (embeddings, linear,
//! attention, LayerNorm, residual + LayerNorm, GELU, masked softmax, dropout's mask), the matrix products
//! they run on (f32 through the gemm crate, bf16 through the library `bf16_library` picks for the
//! CPU, where `bf16_calibration` measured it to pay, and attention's small bf16 products on the
//! matrix instructions directly, `tile_products`), the SIMD loops and the thread split, each tested
//! against candle's composed ops.
//!
//! Composed from elementary candle ops, one BERT layer runs dozens of single-purpose passes over
//! memory, and the generic backward of a bias broadcast or a transposed weight takes slow strided
//! paths. These ops do each block in one or two passes, spread over the CPU threads in chunks that
//! do not depend on the thread count (`threads.rs`); partial sums are added in chunk order, so
//! results are the same with any number of threads.
//!
//! The model uses them for f32 tensors on the CPU ([`enabled`]); other devices take the composed
//! path in `model/layers.rs`, which is also the reference these kernels are tested against.

mod attention;
pub(crate) mod autocast;
pub(crate) mod bf16;
pub mod bf16_calibration;
pub mod bf16_library;
pub(crate) mod dropout_words;
mod dynlib;
pub(crate) mod embedding;
mod gelu;
pub(crate) mod gemm;
pub mod grad_sink;
mod layer_norm;
mod linear;
mod mask;
mod mkl;
mod onednn;
mod onednn_matmul;
pub mod profile;
mod residual_norm;
mod simd;
mod softmax;
pub(crate) mod storage;
#[cfg(test)]
mod testing;
pub(crate) mod threads;
mod tile_products;

use std::cell::RefCell;
use std::thread::LocalKey;

use candle_core::{DType, Tensor};

pub(crate) use attention::{attention, Sequences};
pub use bf16_calibration::bf16_products;
pub use bf16_library::{bf16_backend, Bf16Backend};
pub use embedding::collect_table_grads;
pub(crate) use embedding::{embedding_sum, Positions};
pub(crate) use gelu::gelu_erf;
pub use gemm::time_alone;
pub use grad_sink::{with_grad_sink, GradSink};
pub(crate) use layer_norm::layer_norm;
pub(crate) use linear::{linear, linear_for_products, linear_gelu};
pub(crate) use mask::mask_mul;
pub(crate) use residual_norm::residual_layer_norm;
pub(crate) use softmax::masked_softmax;

thread_local! {
    static REFERENCE_ONLY: RefCell<bool> = const { RefCell::new(false) };
}

/// Runs `f` with the thread-local `key` set to `value`, then puts the previous value back (on a
/// panic too); returns `f`'s result and the value `f` left in `key`.
pub(crate) fn with_local<T: 'static, R>(key: &'static LocalKey<RefCell<T>>, value: T, f: impl FnOnce() -> R) -> (R, T) {
    struct Restore<T: 'static> {
        key: &'static LocalKey<RefCell<T>>,
        before: Option<T>,
    }
    impl<T: 'static> Drop for Restore<T> {
        fn drop(&mut self) {
            if let Some(before) = self.before.take() {
                self.key.with(|k| k.replace(before));
            }
        }
    }
    let mut restore = Restore { key, before: Some(key.with(|k| k.replace(value))) };
    let out = f();
    let before = restore.before.take().expect("restored only once");
    (out, key.with(|k| k.replace(before)))
}

/// Whether the fused kernels apply to `xs`.
pub(crate) fn enabled(xs: &Tensor) -> bool {
    xs.device().is_cpu() && xs.dtype() == DType::F32 && !REFERENCE_ONLY.with(|r| *r.borrow())
}

/// Runs `f` with the composed reference ops instead of the fused kernels on this thread (the
/// backward pass follows whatever the forward pass built). For tests and benchmarks.
pub fn with_reference_ops<R>(f: impl FnOnce() -> R) -> R {
    with_local(&REFERENCE_ONLY, true, f).0
}
