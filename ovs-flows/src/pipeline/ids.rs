//! The free namespace ids of a node, as runs of consecutive ids, so the
//! lowest free one is found, taken and given back in O(log n) however many
//! namespaces the node has (10,000 at the scale model) and however sparse
//! ids read back from a switch are.

use std::collections::BTreeMap;

/// Ids `1..=u32::MAX` not in use (0 is "no namespace", never given out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct FreeIds {
    /// Run start -> run end (inclusive); runs never touch or overlap.
    runs: BTreeMap<u32, u32>,
}

impl FreeIds {
    /// Every id free but `taken`.
    pub(super) fn without(taken: impl IntoIterator<Item = u32>) -> FreeIds {
        let mut free = FreeIds { runs: BTreeMap::from([(1, u32::MAX)]) };
        for id in taken {
            free.take(id);
        }
        free
    }

    /// The lowest free id, now taken; `None` when all four billion are.
    pub(super) fn take_lowest(&mut self) -> Option<u32> {
        let (&start, _) = self.runs.iter().next()?;
        self.take(start);
        Some(start)
    }

    /// Marks `id` taken (already taken, or 0: nothing changes).
    pub(super) fn take(&mut self, id: u32) {
        let Some((&start, &end)) = self.runs.range(..=id).next_back() else { return };
        if id > end {
            return;
        }
        self.runs.remove(&start);
        if start < id {
            self.runs.insert(start, id - 1);
        }
        if id < end {
            self.runs.insert(id + 1, end);
        }
    }

    /// Makes `id` free again, merged with the runs beside it.
    pub(super) fn give(&mut self, id: u32) {
        if id == 0 || self.is_free(id) {
            return;
        }
        let (mut start, mut end) = (id, id);
        if let Some((&s, &e)) = self.runs.range(..id).next_back() {
            if e.checked_add(1) == Some(id) {
                self.runs.remove(&s);
                start = s;
            }
        }
        if let Some(next) = id.checked_add(1) {
            if let Some(e) = self.runs.remove(&next) {
                end = e;
            }
        }
        self.runs.insert(start, end);
    }

    pub(super) fn is_free(&self, id: u32) -> bool {
        self.runs.range(..=id).next_back().is_some_and(|(_, &end)| id <= end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lowest_free_id_comes_first_and_given_back_ids_are_reused() {
        let mut f = FreeIds::without([2, 3, 7]);
        assert_eq!(f.take_lowest(), Some(1));
        assert_eq!(f.take_lowest(), Some(4));
        f.give(2);
        assert_eq!(f.take_lowest(), Some(2));
        assert_eq!((f.take_lowest(), f.take_lowest(), f.take_lowest()), (Some(5), Some(6), Some(8)));
        // Given back in any order, the runs merge again.
        for id in [3, 1, 2, 8, 5, 4, 7, 6] {
            f.give(id);
        }
        assert_eq!(f, FreeIds::without([]));
        // Taking twice or giving a free id changes nothing.
        f.take(9);
        f.take(9);
        f.give(10);
        assert_eq!(f, FreeIds::without([9]));
        assert!(!f.is_free(0) && !f.is_free(9) && f.is_free(10) && f.is_free(u32::MAX));
    }

    #[test]
    fn sparse_ids_read_back_cost_one_run_each() {
        let mut f = FreeIds::without([5, u32::MAX, 1_000_000_000]);
        assert_eq!(f.runs.len(), 3);
        f.give(u32::MAX);
        assert_eq!(f.runs.len(), 3);
        f.give(1_000_000_000);
        assert_eq!(f.runs.len(), 2);
        assert_eq!(f.take_lowest(), Some(1));
    }

    /// The runs always equal a plain set's complement (the reference).
    #[test]
    fn runs_match_a_plain_set_on_random_operations() {
        use std::collections::BTreeSet;
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let mut f = FreeIds::without([]);
        let mut taken = BTreeSet::new();
        for _ in 0..5000 {
            let id = 1 + next(64) as u32;
            match next(3) {
                0 => {
                    f.take(id);
                    taken.insert(id);
                }
                1 => {
                    f.give(id);
                    taken.remove(&id);
                }
                _ => {
                    let want = (1..).find(|i| !taken.contains(i));
                    assert_eq!(f.take_lowest(), want);
                    taken.extend(want);
                }
            }
            for i in 1..70 {
                assert_eq!(f.is_free(i), !taken.contains(&i), "id {i}");
            }
        }
    }
}
