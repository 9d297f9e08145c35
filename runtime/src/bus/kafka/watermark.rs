//! The contiguous watermark of one partition: events of a partition run concurrently and finish
//! in any order, but the offset committed is only ever the first offset not yet handled, so a
//! restart (or the next owner of the partition) resumes exactly after the handled prefix.
//!
//! ```text
//!  received  10 11 12 13 14
//!  handled    ✓  ✓     ✓        in flight: {12, 14}   commit 12 (= every offset < 12 handled)
//!  handled    ✓  ✓  ✓  ✓        in flight: {14}       commit 14
//!  handled    ✓  ✓  ✓  ✓  ✓     in flight: {}         commit 15 (= last received + 1)
//! ```
//!
//! Offsets the partition skips (compaction, transaction markers) are never received and so
//! never wait: "every offset ≤ N handled" means every offset *received* ≤ N.

use std::collections::BTreeSet;

/// One partition's received-but-unhandled offsets and the position to commit.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Watermark {
    in_flight: BTreeSet<i64>,
    /// The last offset received, if any.
    last: Option<i64>,
    /// The position last handed to Kafka (stored or committed); at first, the first offset
    /// received.
    committed: Option<i64>,
}

impl Watermark {
    /// An empty watermark (nothing received since the assignment).
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that `offset` was handed out (offsets of a partition arrive in order).
    pub fn received(&mut self, offset: i64) {
        // The first offset received is where the group's committed position stood.
        self.committed.get_or_insert(offset);
        self.in_flight.insert(offset);
        self.last = Some(self.last.map_or(offset, |l| l.max(offset)));
    }

    /// Records that `offset` was handled; returns the new position to commit when it moved.
    pub fn handled(&mut self, offset: i64) -> Option<i64> {
        if !self.in_flight.remove(&offset) {
            return None;
        }
        let position = self.position()?;
        if self.committed.is_some_and(|c| c >= position) {
            return None;
        }
        self.committed = Some(position);
        Some(position)
    }

    /// The position to commit: the lowest offset in flight, or one past the last received;
    /// `None` before anything was received.
    pub fn position(&self) -> Option<i64> {
        match self.in_flight.first() {
            Some(first) => Some(*first),
            None => self.last.map(|l| l + 1),
        }
    }

    /// Events handed out and not yet handled.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_completion_moves_the_position_only_over_the_contiguous_prefix() {
        let mut w = Watermark::new();
        assert_eq!(w.position(), None);
        for o in 10..=14 {
            w.received(o);
        }
        assert_eq!(w.position(), Some(10));
        assert_eq!(w.handled(11), None, "10 is still in flight");
        assert_eq!(w.handled(13), None);
        assert_eq!(w.handled(10), Some(12));
        assert_eq!(w.handled(12), Some(14));
        assert_eq!(w.in_flight(), 1);
        assert_eq!(w.handled(14), Some(15));
        assert_eq!(w.in_flight(), 0);
    }

    #[test]
    fn gaps_in_offsets_do_not_hold_the_position_back() {
        let mut w = Watermark::new();
        w.received(3);
        w.received(7);
        assert_eq!(w.handled(7), None);
        assert_eq!(w.handled(3), Some(8));
    }

    #[test]
    fn a_repeated_or_unknown_ack_changes_nothing() {
        let mut w = Watermark::new();
        w.received(0);
        assert_eq!(w.handled(0), Some(1));
        assert_eq!(w.handled(0), None);
        assert_eq!(w.handled(42), None);
        assert_eq!(w.position(), Some(1));
    }
}
