//! BatchSampler: which rows go in which batch, for which rank.
//!
//! Every rank draws the same permutation from `(seed, epoch)` (ChaCha8, value-stable on every
//! machine), cuts it into batches of `batch_size`, and takes batch `k` when `k % world_size == rank`,
//! as Accelerate's `BatchSamplerShard` does. With `even_batches` (training), the last batch is
//! completed and whole batches are added from the start of the permutation until every rank has
//! the same number, so all ranks issue the same number of collectives. With `drop_last`, only full
//! batches in full rounds are kept. A single process is never padded: its last batch may be short.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// How rows are ordered, batched and sharded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSampler {
    pub num_rows: usize,
    pub batch_size: usize,
    pub shuffle: bool,
    pub seed: u64,
    pub drop_last: bool,
    pub even_batches: bool,
    pub rank: usize,
    pub world_size: usize,
}

impl BatchSampler {
    /// A single-process sampler.
    pub fn new(num_rows: usize, batch_size: usize, shuffle: bool, seed: u64) -> Self {
        Self {
            num_rows,
            batch_size: batch_size.max(1),
            shuffle,
            seed,
            drop_last: false,
            even_batches: true,
            rank: 0,
            world_size: 1,
        }
    }

    /// This sampler for `rank` of `world_size`.
    pub fn shard(mut self, rank: usize, world_size: usize) -> Self {
        self.rank = rank;
        self.world_size = world_size.max(1);
        self
    }

    pub fn drop_last(mut self, drop_last: bool) -> Self {
        self.drop_last = drop_last;
        self
    }

    pub fn even_batches(mut self, even: bool) -> Self {
        self.even_batches = even;
        self
    }

    /// The global row order of `epoch`.
    pub fn order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.num_rows).collect();
        if self.shuffle {
            shuffle(&mut order, self.seed, epoch);
        }
        order
    }

    /// The batches of every rank, in global order.
    pub(crate) fn global_batches(&self, epoch: u64) -> Vec<Vec<usize>> {
        let order = self.order(epoch);
        let world = self.world_size;
        let mut batches: Vec<Vec<usize>> = order.chunks(self.batch_size).map(|c| c.to_vec()).collect();
        if self.drop_last {
            if batches.last().is_some_and(|b| b.len() < self.batch_size) {
                batches.pop();
            }
            batches.truncate(batches.len() - batches.len() % world);
        } else if self.even_batches && world > 1 && !order.is_empty() {
            let mut refill = order.iter().copied().cycle();
            if let Some(last) = batches.last_mut() {
                while last.len() < self.batch_size {
                    last.extend(refill.next());
                }
            }
            while !batches.len().is_multiple_of(world) {
                batches.push(refill.by_ref().take(self.batch_size).collect());
            }
        }
        batches
    }

    /// This rank's batches for `epoch`.
    pub fn batches(&self, epoch: u64) -> Vec<Vec<usize>> {
        self.global_batches(epoch)
            .into_iter()
            .enumerate()
            .filter(|(k, _)| k % self.world_size == self.rank)
            .map(|(_, b)| b)
            .collect()
    }

    /// How many batches this rank gets per epoch.
    pub fn len(&self) -> usize {
        self.batches(0).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Fisher-Yates over `order` with ChaCha8 seeded by `seed` on stream `epoch`.
fn shuffle(order: &mut [usize], seed: u64, epoch: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch);
    for i in (1..order.len()).rev() {
        let j = below(&mut rng, i as u64 + 1) as usize;
        order.swap(i, j);
    }
}

/// A uniform integer in `0..n` (Lemire's multiply-and-reject), defined here so the order never
/// depends on a library's sampling algorithm.
fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    let threshold = n.wrapping_neg() % n;
    loop {
        let m = (rng.next_u64() as u128) * (n as u128);
        if (m as u64) >= threshold {
            return (m >> 64) as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unshuffled_batches_keep_order() {
        let s = BatchSampler::new(5, 2, false, 0);
        assert_eq!(s.batches(0), vec![vec![0, 1], vec![2, 3], vec![4]]);
        assert_eq!(s.clone().drop_last(true).batches(0), vec![vec![0, 1], vec![2, 3]]);
    }

    #[test]
    fn the_same_seed_gives_the_same_order_and_epochs_differ() {
        let s = BatchSampler::new(50, 8, true, 42);
        assert_eq!(s.order(0), s.order(0));
        assert_ne!(s.order(0), s.order(1));
        assert_ne!(s.order(0), BatchSampler::new(50, 8, true, 43).order(0));
        let mut sorted = s.order(3);
        sorted.sort();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        // Pinned: the order is part of reproducibility across machines and releases.
        assert_eq!(&BatchSampler::new(10, 1, true, 42).order(0), &PINNED_SEED42);
    }

    const PINNED_SEED42: [usize; 10] = [9, 7, 2, 5, 0, 1, 4, 3, 8, 6];

    #[test]
    fn shards_take_every_nth_batch_and_even_out() {
        // 7 rows, batch 2, 2 ranks: batches [0,1] [2,3] [4,5] [6,+0] and nothing more needed.
        let s = BatchSampler::new(7, 2, false, 0);
        assert_eq!(s.clone().shard(0, 2).batches(0), vec![vec![0, 1], vec![4, 5]]);
        assert_eq!(s.clone().shard(1, 2).batches(0), vec![vec![2, 3], vec![6, 0]]);
        // 5 rows, batch 2, 2 ranks: [0,1] [2,3] [4,0] then one more batch from the start: [1,2].
        let s = BatchSampler::new(5, 2, false, 0);
        assert_eq!(s.clone().shard(0, 2).batches(0), vec![vec![0, 1], vec![4, 0]]);
        assert_eq!(s.clone().shard(1, 2).batches(0), vec![vec![2, 3], vec![1, 2]]);
        // Uneven (evaluation): no padding, the last rank may get fewer.
        let s = BatchSampler::new(5, 2, false, 0).even_batches(false);
        assert_eq!(s.clone().shard(0, 2).batches(0), vec![vec![0, 1], vec![4]]);
        assert_eq!(s.clone().shard(1, 2).batches(0), vec![vec![2, 3]]);
        // drop_last keeps full rounds of full batches only.
        let s = BatchSampler::new(7, 2, false, 0).drop_last(true);
        assert_eq!(s.clone().shard(0, 2).batches(0), vec![vec![0, 1]]);
        assert_eq!(s.clone().shard(1, 2).batches(0), vec![vec![2, 3]]);
    }

    #[test]
    fn shards_of_one_permutation_cover_it() {
        // 40 rows in batches of 5 make 8 batches: 2 per rank, nothing repeated.
        let s = BatchSampler::new(40, 5, true, 7);
        let mut union: Vec<usize> = (0..4).flat_map(|r| s.clone().shard(r, 4).batches(2).concat()).collect();
        union.sort();
        assert_eq!(union, (0..40).collect::<Vec<_>>());
        // Rank r's k-th batch is global batch k * world + r.
        let global = s.batches(2);
        assert_eq!(s.clone().shard(3, 4).batches(2), vec![global[3].clone(), global[7].clone()]);
    }
}
