//! DataLoader: a sampler's batches of a dataset, collated; `set_epoch` reshuffles.

use std::sync::Arc;

use super::collate::{Batch, DataCollatorWithPadding};
use super::dataset::Dataset;
use super::sampler::BatchSampler;
use crate::Result;

/// Yields collated batches of `dataset` in the sampler's order for the current epoch.
#[derive(Debug, Clone)]
pub struct DataLoader {
    dataset: Arc<Dataset>,
    collator: DataCollatorWithPadding,
    sampler: BatchSampler,
    epoch: u64,
}

impl DataLoader {
    pub fn new(dataset: Arc<Dataset>, collator: DataCollatorWithPadding, sampler: BatchSampler) -> Self {
        Self { dataset, collator, sampler, epoch: 0 }
    }

    /// Selects the permutation of `epoch`.
    pub fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Batches per epoch for this rank.
    pub fn len(&self) -> usize {
        self.sampler.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dataset(&self) -> &Dataset {
        &self.dataset
    }

    pub fn sampler(&self) -> &BatchSampler {
        &self.sampler
    }

    /// The batches of the current epoch, collated one at a time.
    pub fn iter(&self) -> impl Iterator<Item = Result<Batch>> + '_ {
        self.iter_from(0)
    }

    /// The batches of the current epoch from batch `skip` on (resuming mid-epoch); skipped
    /// batches are not collated.
    pub fn iter_from(&self, skip: usize) -> impl Iterator<Item = Result<Batch>> + '_ {
        let batches = self.sampler.batches(self.epoch);
        batches.into_iter().skip(skip).map(move |rows| self.collator.collate(&self.dataset, &rows))
    }
}
