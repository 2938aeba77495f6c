//! Data order: which images make up each step.
//!
//! The order of epoch `e` is a permutation drawn from a generator seeded by `(seed, e)` alone,
//! so the position inside an epoch (a single integer) is the whole data-loader state: a resumed
//! run draws exactly the batches the interrupted one would have drawn.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The generator that orders epoch `epoch`; its seed and stream are what the checkpoint records.
pub fn epoch_rng(seed: u64, epoch: u32) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(epoch as u64 + 1);
    rng
}

/// The permutation of `0..len` for one epoch.
pub fn epoch_order(seed: u64, epoch: u32, len: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    order.shuffle(&mut epoch_rng(seed, epoch));
    order
}

/// Steps in one epoch (the last batch may be short).
pub fn steps_per_epoch(len: usize, batch: usize) -> u64 {
    len.div_ceil(batch) as u64
}

/// The images of the batch starting at `position` in `order`.
pub fn batch(order: &[usize], position: usize, batch: usize) -> &[usize] {
    let end = (position + batch).min(order.len());
    &order[position.min(end)..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_epoch_is_a_permutation_and_epochs_differ() {
        let a = epoch_order(1, 0, 100);
        let b = epoch_order(1, 1, 100);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(a, b);
        assert_eq!(a, epoch_order(1, 0, 100));
    }

    #[test]
    fn batches_cover_the_epoch_once() {
        let order = epoch_order(3, 0, 10);
        let mut seen = Vec::new();
        for s in 0..steps_per_epoch(10, 4) as usize {
            seen.extend_from_slice(batch(&order, s * 4, 4));
        }
        assert_eq!(seen, order);
        assert_eq!(steps_per_epoch(10, 4), 3);
    }
}
