//! CPU work split into chunks whose boundaries do not depend on the thread count, run on the rayon pool candle's matrix products use.
//!
//! Fixed chunk boundaries make per-chunk partial sums, and anything else computed per chunk, the
//! same whatever the number of threads. Sharing rayon's pool with the matrix products keeps the
//! two from competing for cores.

use std::mem::MaybeUninit;
use std::ops::Range;
use std::sync::{Mutex, OnceLock};

/// About this many values per parallel work item.
pub(crate) const CHUNK_ELEMS: usize = 1 << 14;

pub(crate) fn rows_per_chunk(row_len: usize) -> usize {
    (CHUNK_ELEMS / row_len.max(1)).max(1)
}

/// Runs `f(&mut state)` for every state in parallel and returns the states. Uses rayon's pool
/// through candle, the pool its matrix products run on, so the two never compete for cores.
pub(crate) fn par_each<S: Send>(states: Vec<S>, f: impl Fn(&mut S) + Sync) -> Vec<S> {
    let threads = num_threads().min(states.len()).max(1);
    let cells: Vec<Mutex<S>> = states.into_iter().map(Mutex::new).collect();
    // Thread t takes items t, t + threads, ...; each cell is locked by one thread only.
    candle_core::cpu::kernels::par_for_each(threads, |t| {
        for cell in cells.iter().skip(t).step_by(threads) {
            f(&mut cell.lock().unwrap_or_else(|p| p.into_inner()));
        }
    });
    cells.into_iter().map(|c| c.into_inner().unwrap_or_else(|p| p.into_inner())).collect()
}

/// candle's thread count, read once: `get_num_threads` reads the environment and the CPU topology on every call.
pub(crate) fn num_threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(candle_core::utils::get_num_threads)
}

/// The row ranges of the work items for `rows` rows of `row_len` values.
pub(crate) fn row_ranges(rows: usize, row_len: usize) -> impl Iterator<Item = Range<usize>> {
    let per = rows_per_chunk(row_len);
    (0..rows.div_ceil(per)).map(move |i| i * per..((i + 1) * per).min(rows))
}

/// The work items for rows of uneven lengths, `sizes[i]` values each (packed sequences): consecutive
/// rows of at most `CHUNK_ELEMS` values together, a longer row alone. As with [`row_ranges`], the
/// boundaries depend on the sizes alone, never on the thread count.
pub(crate) fn sized_ranges(sizes: &[usize]) -> Vec<Range<usize>> {
    let (mut ranges, mut row) = (Vec::new(), 0);
    while row < sizes.len() {
        let (start, mut values) = (row, 0);
        while row < sizes.len() && (row == start || values + sizes[row] <= CHUNK_ELEMS) {
            values += sizes[row];
            row += 1;
        }
        ranges.push(start..row);
    }
    ranges
}

/// `values`, rows of `sizes[i]` values one after the other, cut into the work items of
/// [`sized_ranges`]: each item's rows and its part of `values`.
pub(crate) fn sized_chunks<'a, T>(mut values: &'a mut [T], sizes: &[usize]) -> Vec<(Range<usize>, &'a mut [T])> {
    sized_ranges(sizes)
        .into_iter()
        .map(|rows| {
            let (chunk, rest) = std::mem::take(&mut values).split_at_mut(sizes[rows.clone()].iter().sum());
            values = rest;
            (rows, chunk)
        })
        .collect()
}

/// Splits `out` into chunks of whole rows (`row_len` values each) and runs `f(rows, chunk, state)`
/// for each in parallel. Each chunk has its own `state` (for partial sums); the states are returned
/// in chunk order.
pub(crate) fn par_row_chunks<T: Send, S: Send>(
    out: &mut [T],
    row_len: usize,
    init: impl Fn() -> S,
    f: impl Fn(Range<usize>, &mut [T], &mut S) + Sync,
) -> Vec<S> {
    let rows = out.len() / row_len.max(1);
    let items: Vec<(Range<usize>, &mut [T], S)> = row_ranges(rows, row_len)
        .zip(out.chunks_mut(rows_per_chunk(row_len) * row_len.max(1)))
        .map(|(range, chunk)| (range, chunk, init()))
        .collect();
    par_each(items, |(range, chunk, state)| f(range.clone(), chunk, state)).into_iter().map(|(_, _, s)| s).collect()
}

/// A new vector of `n` values, whole rows of `row_len`, written by `f(rows, chunk, state)` over
/// chunks of rows in parallel as [`par_row_chunks`] runs it. Each chunk is zero-filled by the
/// thread that writes it, just before `f`, while it is in cache: no separate pass over memory (as
/// [`zeroed`] then [`par_row_chunks`] would make). Returns the values and the chunks' states in
/// chunk order.
pub(crate) fn par_new_rows<S: Send>(
    n: usize,
    row_len: usize,
    init: impl Fn() -> S,
    f: impl Fn(Range<usize>, &mut [f32], &mut S) + Sync,
) -> (Vec<f32>, Vec<S>) {
    assert!(n.is_multiple_of(row_len.max(1)), "{n} values are not whole rows of {row_len}");
    let mut values: Vec<f32> = Vec::with_capacity(n);
    let chunk = rows_per_chunk(row_len) * row_len.max(1);
    let items: Vec<_> = row_ranges(n / row_len.max(1), row_len)
        .zip(values.spare_capacity_mut()[..n].chunks_mut(chunk))
        .map(|(rows, chunk)| (rows, chunk, init()))
        .collect();
    let states: Vec<S> = par_each(items, |(rows, chunk, state)| f(rows.clone(), init_zeroed(chunk), state))
        .into_iter()
        .map(|(_, _, s)| s)
        .collect();
    // SAFETY: the chunks cover all n values (whole rows), and each was initialized above.
    unsafe { values.set_len(n) };
    (values, states)
}

/// `values` set to zero, as initialized floats.
pub(crate) fn init_zeroed(values: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    values.fill(MaybeUninit::new(0.0));
    // SAFETY: every element was just initialized; MaybeUninit<f32> has f32's layout.
    unsafe { &mut *(values as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

/// `n` zeros, written by all threads: a zero fill of a large activation is a serial memset
/// otherwise, on the thread the other workers wait for.
pub(crate) fn zeroed(n: usize) -> Vec<f32> {
    let mut values: Vec<f32> = Vec::with_capacity(n);
    // Whole chunks filled at once (a memset each): as rows of one value, every value was a loop
    // step of its own.
    let chunks: Vec<_> = values.spare_capacity_mut()[..n].chunks_mut(CHUNK_ELEMS * 4).collect();
    par_each(chunks, |chunk| chunk.fill(std::mem::MaybeUninit::new(0.0)));
    // SAFETY: every one of the n values was written above.
    unsafe { values.set_len(n) };
    values
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uneven rows are grouped as even ones are, and each item's part of the values is its rows'.
    #[test]
    fn sized_work_items_group_rows_as_even_ones_do() {
        let even = vec![100; 1000];
        assert_eq!(sized_ranges(&even), row_ranges(1000, 100).collect::<Vec<_>>());
        let sizes = [CHUNK_ELEMS - 1, 1, 1, CHUNK_ELEMS * 2, 5];
        assert_eq!(sized_ranges(&sizes), [0..2, 2..3, 3..4, 4..5]);
        let mut values = vec![0u8; sizes.iter().sum()];
        let lens: Vec<usize> = sized_chunks(&mut values, &sizes).iter().map(|(_, c)| c.len()).collect();
        assert_eq!(lens, [CHUNK_ELEMS, 1, CHUNK_ELEMS * 2, 5]);
    }

    #[test]
    fn zeroed_and_new_rows_fill_every_value() {
        for n in [0, 1, CHUNK_ELEMS * 4, CHUNK_ELEMS * 9 + 3] {
            let zeros = zeroed(n);
            assert_eq!(zeros.len(), n);
            assert!(zeros.iter().all(|&v| v.to_bits() == 0), "{n}");
        }
        // Each chunk starts from zeros: f adds to every value, and its states come back in order.
        for (rows, width) in [(0, 3), (1, 5), (CHUNK_ELEMS / 3 + 7, 3), (3, CHUNK_ELEMS + 1)] {
            let (values, states) = par_new_rows(
                rows * width,
                width,
                || 0usize,
                |range, chunk, first| {
                    *first = range.start;
                    for (i, v) in chunk.iter_mut().enumerate() {
                        *v += (range.start * width + i) as f32;
                    }
                },
            );
            assert_eq!(values, (0..rows * width).map(|i| i as f32).collect::<Vec<_>>());
            assert_eq!(states, row_ranges(rows, width).map(|r| r.start).collect::<Vec<_>>());
        }
    }
}
