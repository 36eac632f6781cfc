//! A bounded log of what changed in a published view (etcd's, the
//! services'), so the agent's loop, which reads the view's latest state
//! through a `tokio::sync::watch` channel, can apply only the entries after
//! the last it saw. When those are not all in the log (the first read, a
//! relist, a reader that fell more than the log's length behind) the
//! reader compares the whole view instead, which is always correct.

use std::collections::{BTreeSet, VecDeque};

/// The keys a view changed, in order, each with a sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeLog<T> {
    /// The number of the latest change (0: none yet).
    last: u64,
    /// Every change from this number on is in `log`.
    complete_from: u64,
    log: VecDeque<(u64, T)>,
    capacity: usize,
}

impl<T> Default for ChangeLog<T> {
    fn default() -> ChangeLog<T> {
        ChangeLog::with_capacity(CAPACITY)
    }
}

/// Entries kept: a burst longer than this between two reads costs the
/// reader one whole comparison.
pub const CAPACITY: usize = 4096;

impl<T> ChangeLog<T> {
    pub fn with_capacity(capacity: usize) -> ChangeLog<T> {
        ChangeLog { last: 0, complete_from: 1, log: VecDeque::new(), capacity: capacity.max(1) }
    }

    pub fn push(&mut self, changed: T) {
        self.last += 1;
        self.log.push_back((self.last, changed));
        if self.log.len() > self.capacity {
            self.log.pop_front();
            self.complete_from = self.log.front().map_or(self.last + 1, |(n, _)| *n);
        }
    }

    /// Anything may have changed (a relist, a bulk change): readers compare
    /// the whole view once.
    pub fn reset(&mut self) {
        self.last += 1;
        self.log.clear();
        self.complete_from = self.last + 1;
    }
}

impl<T> ChangeLog<T> {
    /// The latest change's number: a reader compares it to see whether
    /// anything changed.
    pub fn last(&self) -> u64 {
        self.last
    }
}

impl<T: Ord> ChangeLog<T> {
    /// Everything changed after change `seen`, each once; `None` when the
    /// log does not hold all of it.
    fn since(&self, seen: u64) -> Option<BTreeSet<&T>> {
        if seen > self.last || seen + 1 < self.complete_from {
            return None;
        }
        // The log's numbers are consecutive and end at `last`: what came
        // after `seen` is its tail, found without walking the 4,096
        // entries a long-running agent's log holds.
        let after = usize::try_from(self.last - seen).unwrap_or(usize::MAX);
        let from = self.log.len().saturating_sub(after);
        Some(self.log.range(from..).map(|(_, c)| c).collect())
    }
}

/// One reader of a log: the last change it took.
#[derive(Debug, Clone, Default)]
pub struct LogReader {
    seen: Option<u64>,
}

impl LogReader {
    /// What changed since the last read (`None`: compare the whole view);
    /// the reader is then up to date with `log`.
    pub fn read<'a, T: Ord>(&mut self, log: &'a ChangeLog<T>) -> Option<BTreeSet<&'a T>> {
        let changed = self.seen.and_then(|s| log.since(s));
        self.seen = Some(log.last);
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_gets_what_changed_after_it_or_nothing_when_the_log_lost_some() {
        let mut c = ChangeLog::with_capacity(3);
        assert_eq!(c.since(0), Some(BTreeSet::new()));
        c.push("red");
        c.push("node");
        c.push("red");
        assert_eq!(c.since(0), Some(BTreeSet::from([&"red", &"node"])), "each once");
        assert_eq!(c.since(2), Some(BTreeSet::from([&"red"])));
        assert_eq!(c.since(3), Some(BTreeSet::new()));
        assert_eq!(c.since(4), None, "from the future: not this log");
        c.push("config");
        assert_eq!(c.since(0), None, "change 1 fell out of the log");
        assert!(c.since(1).is_some());
        c.reset();
        assert_eq!(c.since(4), None, "a reset: compare the whole view");
        assert_eq!(c.since(5), Some(BTreeSet::new()));
        // A reader: the whole view first, then what changed.
        let mut r = LogReader::default();
        assert_eq!(r.read(&c), None);
        c.push("blue");
        assert_eq!(r.read(&c), Some(BTreeSet::from([&"blue"])));
        assert_eq!(r.read(&c), Some(BTreeSet::new()));
    }

    /// What a reader is given from the log's tail is what a walk of the
    /// whole log finds after it, through pushes past the capacity and resets.
    #[test]
    fn the_tail_is_every_entry_after_the_one_seen() {
        let mut next = ovs_flows::samples::random_below(0xc0ffee);
        let mut c = ChangeLog::with_capacity(5);
        for _ in 0..500 {
            match next(12) {
                0 => c.reset(),
                _ => c.push(next(4)),
            }
            for seen in c.complete_from.saturating_sub(1)..=c.last {
                let walked: BTreeSet<&u64> =
                    c.log.iter().filter(|(n, _)| *n > seen).map(|(_, v)| v).collect();
                assert_eq!(c.since(seen), Some(walked), "after {seen} of {c:?}");
            }
        }
    }
}
