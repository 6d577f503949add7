//! Flat buckets: parameters in name order packed into a few large contiguous f32 buffers (DDP's
//! `bucket_cap_mb`, default 25 MB), so that a collective moves one buffer per bucket. Gradient
//! averaging and the weight broadcast both cut their buffers here.

use std::ops::Range;

use candle_core::{CpuStorage, Storage, Tensor};

use crate::Result;

/// PyTorch DDP's default bucket size.
pub const DEFAULT_BUCKET_BYTES: usize = 25 << 20;

/// Consecutive index ranges over tensors of `sizes` elements (f32), each closed once it holds at
/// least `bucket_bytes`; a tensor larger than a bucket gets one of its own.
pub fn buckets(sizes: impl IntoIterator<Item = usize>, bucket_bytes: usize) -> Vec<Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes, mut end) = (0, 0usize, 0);
    for (i, n) in sizes.into_iter().enumerate() {
        end = i + 1;
        bytes += n * 4;
        if bytes >= bucket_bytes {
            out.push(start..end);
            start = end;
            bytes = 0;
        }
    }
    if start < end {
        out.push(start..end);
    }
    out
}

/// Appends the f32 values of `xs` in row-major order, straight from CPU storage when contiguous.
pub(crate) fn append_f32(out: &mut Vec<f32>, xs: &Tensor) -> Result<()> {
    {
        let (storage, layout) = xs.storage_and_layout();
        if let (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) = (&*storage, layout.contiguous_offsets()) {
            out.extend_from_slice(&data[start..end]);
            return Ok(());
        }
    }
    out.extend(xs.flatten_all()?.to_vec1::<f32>()?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_close_at_the_cap() {
        assert_eq!(buckets([1, 1, 1, 1, 1], 8), [0..2, 2..4, 4..5]);
        assert_eq!(buckets([10, 1, 1], 8), [0..1, 1..3]);
        assert_eq!(buckets([1, 1], 1 << 20), vec![0..2]);
        assert!(buckets(std::iter::empty(), 8).is_empty());
    }
}
