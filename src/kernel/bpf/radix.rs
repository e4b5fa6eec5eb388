//! A stable LSD radix sort by a u64 key, for the scan's two sorts (the buffers by inode, the
//! holders by inode and process).
//!
//! Written here rather than taken from a crate: no radix sort is among the crates an AOSP tree
//! carries, and the std sorts' n·log n comparisons cost 5× this in the TCG guests at 10k
//! buffers (3.8 ms against 0.7 ms for the buffers' order).

/// Sorts `v` by `key`, stably: one counting pass per byte in which the keys differ (two for
/// 10k inodes allocated from one counter), never more than eight.
pub(super) fn sort_by_key<T: Copy>(v: &mut Vec<T>, key: impl Fn(&T) -> u64) {
    let (mut any, mut all) = (0, u64::MAX);
    for k in v.iter().map(&key) {
        any |= k;
        all &= k;
    }
    let differ = any ^ all;
    let mut scratch = Vec::new();
    for shift in (0..64).step_by(8).filter(|s| (differ >> s) & 0xff != 0) {
        let digit = |t: &T| (key(t) >> shift) as u8 as usize;
        let mut start = [0usize; 256];
        for t in v.iter() {
            start[digit(t)] += 1;
        }
        let mut sum = 0;
        for s in &mut start {
            (*s, sum) = (sum, sum + *s);
        }
        if scratch.is_empty() {
            scratch = v.clone();
        }
        for t in v.iter() {
            let d = digit(t);
            scratch[start[d]] = *t;
            start[d] += 1;
        }
        std::mem::swap(v, &mut scratch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_by_the_key_keeping_equal_keys_in_their_order() {
        let mut v: Vec<(u64, u32)> = vec![(300, 0), (7, 1), (1 << 40, 2), (7, 3), (0, 4), (300, 5), (u64::MAX, 6)];
        sort_by_key(&mut v, |p| p.0);
        assert_eq!(v, [(0, 4), (7, 1), (7, 3), (300, 0), (300, 5), (1 << 40, 2), (u64::MAX, 6)]);
    }

    #[test]
    fn two_passes_sort_by_a_pair_and_a_sorted_or_constant_input_stays() {
        let mut v: Vec<(u64, u32)> = (0..1000u32).map(|i| (u64::from(i * 7919 % 13), i % 5)).collect();
        let mut expected = v.clone();
        expected.sort();
        sort_by_key(&mut v, |p| u64::from(p.1));
        sort_by_key(&mut v, |p| p.0);
        assert_eq!(v, expected);
        sort_by_key(&mut v, |p| p.0);
        assert_eq!(v, expected);
        let mut same = vec![(5u64, 1u32), (5, 0)];
        sort_by_key(&mut same, |p| p.0);
        assert_eq!(same, [(5, 1), (5, 0)]);
    }
}
