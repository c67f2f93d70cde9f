//! Counting what repeats, so a log line says it once per interval.
//!
//! Anyone who can reach a node's port can make it see the same thing
//! thousands of times a second: connections that never authenticate,
//! heartbeats that do not parse, heartbeats that speak for another node. A
//! [`Tally`] lets the first one through at once and then counts, reporting
//! the count at most once per interval, so the log stays readable and the
//! disk stays free, and nothing is hidden: every occurrence is in a count.

use std::time::Duration;

/// How often a [`Tally`] reports, at most: ten seconds.
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// One kind of repeated occurrence, counted. Time is passed as a value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Counted since the last report.
    pending: u64,
    /// When the last report went out.
    reported_at: Option<Duration>,
    /// Counted in all.
    total: u64,
}

impl Tally {
    /// An empty tally.
    pub fn new() -> Tally {
        Tally::default()
    }

    /// Counts one occurrence at `now`. Returns how many to report now (this
    /// one included) when a report is due: the first ever, or the first
    /// after a quiet interval. Otherwise the occurrence waits for
    /// [`Tally::flush`].
    pub fn note(&mut self, now: Duration) -> Option<u64> {
        self.pending += 1;
        self.total += 1;
        match self.reported_at {
            Some(at) if now < at.saturating_add(REPORT_EVERY) => None,
            _ => self.take(now),
        }
    }

    /// When the occurrences counted since the last report are due to be
    /// reported; `None` when there are none.
    pub fn due(&self) -> Option<Duration> {
        if self.pending == 0 {
            return None;
        }
        Some(
            self.reported_at
                .unwrap_or_default()
                .saturating_add(REPORT_EVERY),
        )
    }

    /// Returns the count to report if it is due at `now`.
    pub fn flush(&mut self, now: Duration) -> Option<u64> {
        match self.due() {
            Some(due) if due <= now => self.take(now),
            _ => None,
        }
    }

    /// Occurrences counted in all, reported or not.
    pub fn total(&self) -> u64 {
        self.total
    }

    fn take(&mut self, now: Duration) -> Option<u64> {
        let count = std::mem::take(&mut self.pending);
        self.reported_at = Some(now);
        Some(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn the_first_is_reported_at_once_then_a_count_per_interval() {
        let mut tally = Tally::new();
        assert_eq!(tally.note(Duration::ZERO), Some(1));
        // 6,000 more within the interval: no line each, one count later.
        for i in 0..6_000u64 {
            assert_eq!(tally.note(Duration::from_micros(i)), None);
        }
        assert_eq!(tally.due(), Some(REPORT_EVERY));
        assert_eq!(tally.flush(9 * S), None);
        assert_eq!(tally.flush(10 * S), Some(6_000));
        assert_eq!(tally.due(), None);
        assert_eq!(tally.total(), 6_001);
    }

    #[test]
    fn after_a_quiet_interval_the_next_one_is_reported_at_once() {
        let mut tally = Tally::new();
        assert_eq!(tally.note(Duration::ZERO), Some(1));
        assert_eq!(tally.note(30 * S), Some(1));
        assert_eq!(tally.note(31 * S), None);
        assert_eq!(tally.flush(40 * S), Some(1));
    }
}
