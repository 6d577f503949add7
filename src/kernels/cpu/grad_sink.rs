//! Parameter gradients handed over as the backward pass makes them. The CPU ops that own
//! parameters (linear, layer norm, the embedding sum) offer each parameter's gradient to the sink
//! of [`with_grad_sink`] before returning it to candle; a gradient the sink takes never enters
//! candle's store. ZeRO-2 uses it to reduce-scatter a bucket of gradients as soon as the bucket is
//! complete, so that the full gradients never exist at once.

use std::cell::Cell;
use std::ptr::NonNull;

use candle_core::Tensor;

/// Takes `(parameter, gradient)`: `Ok(None)` when it took the gradient, `Ok(Some(gradient))` to
/// leave it to candle's store.
pub type GradSink<'a> = dyn FnMut(&Tensor, Tensor) -> candle_core::Result<Option<Tensor>> + 'a;

thread_local! {
    /// The sink of the innermost `with_grad_sink` on this thread, its lifetime erased: it is only
    /// set while that call runs.
    static SINK: Cell<Option<NonNull<GradSink<'static>>>> = const { Cell::new(None) };
}

/// Runs `f` (a backward pass) on this thread with `sink` offered every parameter gradient that the
/// CPU ops make.
pub fn with_grad_sink<R>(sink: &mut GradSink<'_>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<NonNull<GradSink<'static>>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SINK.with(|s| s.set(self.0));
        }
    }
    // SAFETY: only the lifetime is erased; the pointer is taken out again when this function
    // returns or unwinds (by `Restore`), so it is never used after `sink`'s borrow ends.
    let erased: NonNull<GradSink<'static>> = unsafe { std::mem::transmute(NonNull::from(sink)) };
    let _restore = Restore(SINK.with(|s| s.replace(Some(erased))));
    f()
}

/// Offers `grad`, the gradient of `param`, to this thread's sink; returns it when there is none or
/// the sink leaves it to candle's store.
pub(crate) fn hand_over(param: &Tensor, grad: Tensor) -> candle_core::Result<Option<Tensor>> {
    let Some(mut sink) = SINK.with(|s| s.take()) else { return Ok(Some(grad)) };
    struct Restore(NonNull<GradSink<'static>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            SINK.with(|s| s.set(Some(self.0)));
        }
    }
    // Taken out while it runs, so that it is never entered twice; put back after.
    let _restore = Restore(sink);
    // SAFETY: the pointer is live while `with_grad_sink` runs (see there), and no other reference
    // to the sink exists while this one is used: it was taken out of the thread's slot.
    unsafe { sink.as_mut()(param, grad) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_sink_takes_what_it_wants_only_inside_its_scope() {
        let (a, b) = (Tensor::new(&[1f32], &Device::Cpu).unwrap(), Tensor::new(&[2f32], &Device::Cpu).unwrap());
        let mut taken = Vec::new();
        let mut sink = |p: &Tensor, g: Tensor| {
            if p.id() == a.id() {
                taken.push(g.to_vec1::<f32>()?[0]);
                Ok(None)
            } else {
                Ok(Some(g))
            }
        };
        let left = with_grad_sink(&mut sink, || {
            let grad = || Tensor::new(&[5f32], &Device::Cpu).unwrap();
            (hand_over(&a, grad()).unwrap().is_none(), hand_over(&b, grad()).unwrap().is_some())
        });
        assert_eq!(left, (true, true));
        assert!(hand_over(&a, b.clone()).unwrap().is_some(), "no sink outside the scope");
        assert_eq!(taken, [5.0]);
    }
}
