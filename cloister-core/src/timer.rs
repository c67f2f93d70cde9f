//! The one timer rule, shared by the runtime and the simulator: a node has
//! at most one wake-up that counts, and every wake-up carries a token.
//!
//! The membership machine only says when it wants to run next
//! ([`Membership::poll_timeout`](crate::Membership::poll_timeout)). Whoever
//! drives it asks a [`Timer`] whether that needs a new wake-up: only when
//! nothing is armed, or the wanted time is earlier than the armed one. A
//! wake-up armed earlier and then replaced still arrives (a runtime cannot
//! take back a message it has sent), but its token no longer matches, so
//! [`Timer::fire`] tells the driver to drop it instead of running the
//! machine and arming again. Without the token every replaced wake-up would
//! start a chain of its own that re-arms forever, and a node's wake-ups
//! would grow with every session event of its life (foca's `TimerToken`
//! solves the same problem).
//!
//! Heartbeat rounds fall on a grid: the multiples of `heartbeat_interval` on
//! the machine's clock ([`next_round`]). A driver starts its clock on a
//! multiple of the interval in wall-clock time ([`grid_phase`]), so every
//! node's rounds fall at the same moments (within the clocks' skew). A node
//! then hears its watchers' heartbeats together and wakes once for them
//! instead of once each: at 100 nodes on one machine this cut idle CPU by
//! a third (BENCHMARKS.md). The simulator's nodes share one clock, so their
//! rounds line up the same way.

use std::time::Duration;

/// Identifies one armed wake-up. Pass it back to [`Timer::fire`] when the
/// wake-up arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TimerToken(u64);

/// A wake-up the driver must schedule: deliver `token` at `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arm {
    /// The token to hand back to [`Timer::fire`].
    pub token: TimerToken,
    /// When, on the same clock as the machine's `now`.
    pub at: Duration,
}

/// How many wake-ups a [`Timer`] ran and dropped, for the operator.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TimerCounts {
    /// Wake-ups that ran the machine.
    pub wakeups: u64,
    /// Wake-ups that arrived after they were replaced, and were dropped.
    pub stale: u64,
    /// Wake-ups armed in all.
    pub armed: u64,
}

/// At most one live wake-up per node. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct Timer {
    armed: Option<Arm>,
    counts: TimerCounts,
}

impl Timer {
    /// The shortest delay a wake-up is armed with: one due now (or in the
    /// past) fires a moment later, so a driver cannot spin on it.
    pub const MIN_DELAY: Duration = Duration::from_micros(1);

    /// A timer with nothing armed.
    pub fn new() -> Timer {
        Timer::default()
    }

    /// The driver wants to run at `due` (`None`: nothing to wait for).
    /// Returns the wake-up to schedule, or `None` when the one already armed
    /// comes soon enough. A wake-up it returns replaces the armed one, whose
    /// token goes stale.
    pub fn arm(&mut self, now: Duration, due: Option<Duration>) -> Option<Arm> {
        let at = due?.max(now.saturating_add(Self::MIN_DELAY));
        if self.armed.is_some_and(|armed| armed.at <= at) {
            return None;
        }
        self.counts.armed += 1;
        let arm = Arm {
            token: TimerToken(self.counts.armed),
            at,
        };
        self.armed = Some(arm);
        Some(arm)
    }

    /// A wake-up arrived. True when it is the armed one: run the machine's
    /// timeouts, then arm again. False when it was replaced: drop it, and do
    /// not arm because of it.
    pub fn fire(&mut self, token: TimerToken) -> bool {
        if self.armed.is_some_and(|armed| armed.token == token) {
            self.armed = None;
            self.counts.wakeups += 1;
            true
        } else {
            self.counts.stale += 1;
            false
        }
    }

    /// Forgets the armed wake-up (the node stopped or was restarted): every
    /// token issued so far is stale from now on.
    pub fn clear(&mut self) {
        self.armed = None;
    }

    /// When the armed wake-up is due, if one is.
    pub fn armed_at(&self) -> Option<Duration> {
        self.armed.map(|armed| armed.at)
    }

    /// What this timer has done so far.
    pub fn counts(&self) -> TimerCounts {
        self.counts
    }
}

/// The first heartbeat round after `now`: the next multiple of `interval`
/// on the machine's clock (see the module docs). A round that ran late
/// does not move the ones after it.
pub fn next_round(now: Duration, interval: Duration) -> Duration {
    let every = interval.as_nanos().max(1);
    let next = (now.as_nanos() / every + 1) * every;
    u64::try_from(next).map_or(Duration::MAX, Duration::from_nanos)
}

/// How far wall-clock time `since_unix_epoch` is past the last multiple of
/// `interval`: a driver that starts its clock this long before now puts
/// its rounds on the same grid as every other node's.
pub fn grid_phase(since_unix_epoch: Duration, interval: Duration) -> Duration {
    let every = interval.as_nanos().max(1);
    Duration::from_nanos(u64::try_from(since_unix_epoch.as_nanos() % every).unwrap_or(0))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn an_earlier_deadline_replaces_the_armed_one_and_the_old_token_is_dropped() {
        let mut timer = Timer::new();
        // The machine wants to run at 300 ms (the heartbeat).
        let heartbeat = timer.arm(Duration::ZERO, Some(300 * MS)).unwrap();
        // A later want does not arm a second wake-up.
        assert_eq!(timer.arm(10 * MS, Some(400 * MS)), None);
        // A session comes up: the machine wants to run at 50 ms. New token.
        let early = timer.arm(10 * MS, Some(50 * MS)).unwrap();
        assert_ne!(early.token, heartbeat.token);
        // The early one fires and runs; the driver arms for 300 ms again.
        assert!(timer.fire(early.token));
        let again = timer.arm(50 * MS, Some(300 * MS)).unwrap();
        // The replaced wake-up still arrives at 300 ms: it is dropped, and
        // the re-armed one runs. One wake-up that counts, not two chains.
        assert!(!timer.fire(heartbeat.token));
        assert!(timer.fire(again.token));
        let counts = timer.counts();
        assert_eq!((counts.wakeups, counts.stale, counts.armed), (2, 1, 3));
    }

    #[test]
    fn rounds_fall_on_multiples_of_the_interval_however_late_one_ran() {
        let every = 300 * MS;
        assert_eq!(next_round(Duration::ZERO, every), 300 * MS);
        // Started between grid points: the first round is the next one.
        assert_eq!(next_round(7 * MS, every), 300 * MS);
        // A round due at 300 ms that ran at 303 ms: the next is at 600.
        assert_eq!(next_round(303 * MS, every), 600 * MS);
        // Exactly on a grid point: the one after it.
        assert_eq!(next_round(600 * MS, every), 900 * MS);
        // A zero interval is refused by the config; it still cannot divide by zero.
        assert!(next_round(5 * MS, Duration::ZERO) > 5 * MS);
    }

    #[test]
    fn two_drivers_started_apart_put_their_rounds_at_the_same_wall_clock_moments() {
        let every = 300 * MS;
        // Two nodes start 1234 ms apart (in wall-clock time since the epoch).
        let (start_a, start_b) = (
            Duration::from_millis(1_700_000_000_010),
            Duration::from_millis(1_700_000_001_244),
        );
        // Each node's clock starts at its origin, so it reads the phase at
        // its start; its rounds, in wall time, are origin + round.
        let wall_rounds = |start: Duration| {
            let phase = grid_phase(start, every);
            let origin = start - phase;
            let mut now = phase;
            let mut rounds = Vec::new();
            for _ in 0..10 {
                now = next_round(now, every);
                rounds.push(origin + now);
            }
            rounds
        };
        let a = wall_rounds(start_a);
        let b = wall_rounds(start_b);
        // Both on the grid, after their starts, and every round of b's while
        // a still runs is one of a's.
        assert!(a
            .iter()
            .chain(&b)
            .all(|t| t.as_nanos() % every.as_nanos() == 0));
        assert!(a[0] > start_a && b[0] > start_b && b[0] - start_b <= every);
        let overlap: Vec<_> = b.iter().filter(|t| **t <= a[9]).collect();
        assert!(overlap.len() >= 5, "{a:?} {b:?}");
        assert!(overlap.iter().all(|t| a.contains(t)), "{a:?} {b:?}");
        assert_eq!(grid_phase(1234 * MS, every), 34 * MS);
    }

    #[test]
    fn a_deadline_in_the_past_fires_a_moment_later() {
        let mut timer = Timer::new();
        let arm = timer.arm(100 * MS, Some(20 * MS)).unwrap();
        assert_eq!(arm.at, 100 * MS + Timer::MIN_DELAY);
    }

    #[test]
    fn nothing_wanted_arms_nothing_and_clear_makes_every_token_stale() {
        let mut timer = Timer::new();
        assert_eq!(timer.arm(Duration::ZERO, None), None);
        let arm = timer.arm(Duration::ZERO, Some(MS)).unwrap();
        timer.clear();
        assert!(!timer.fire(arm.token));
        assert_eq!(timer.armed_at(), None);
    }

    #[test]
    fn a_huge_deadline_does_not_overflow() {
        let mut timer = Timer::new();
        let arm = timer.arm(Duration::MAX, Some(Duration::MAX)).unwrap();
        assert_eq!(arm.at, Duration::MAX);
    }
}
