//! Counters the Manager keeps for operators and tests, read lock-free from
//! any [`Cloister`](crate::Cloister) handle.

use std::sync::atomic::{AtomicU64, Ordering};

use cloister_core::TimerCounts;

/// What the Manager has done so far, from [`Cloister::stats`](crate::Cloister::stats).
/// Counts only grow; compare two readings to get a rate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Stats {
    /// Timer wake-ups that ran the membership machine. At rest a node wakes
    /// a few times per `heartbeat_interval`, however long it has run.
    pub wakeups: u64,
    /// Wake-ups that arrived after an earlier one replaced them, dropped
    /// without running anything.
    pub stale_wakeups: u64,
    /// Topology events published to listeners and subscribers.
    pub events: u64,
    /// Connections closed without authenticating (a wrong cookie, garbage
    /// on the port, a handshake that did not finish in time).
    pub strangers: u64,
}

/// The Manager's side: atomics it stores into after each step.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    wakeups: AtomicU64,
    stale_wakeups: AtomicU64,
    events: AtomicU64,
    strangers: AtomicU64,
    /// Where the management endpoint listens, once it does.
    management_addr: std::sync::OnceLock<std::net::SocketAddr>,
}

impl Counters {
    pub(crate) fn management_addr(&self) -> Option<std::net::SocketAddr> {
        self.management_addr.get().copied()
    }

    #[cfg_attr(not(feature = "management"), allow(dead_code))]
    pub(crate) fn set_management_addr(&self, addr: std::net::SocketAddr) {
        let _ = self.management_addr.set(addr);
    }

    pub(crate) fn timer(&self, counts: TimerCounts) {
        self.wakeups.store(counts.wakeups, Ordering::Relaxed);
        self.stale_wakeups.store(counts.stale, Ordering::Relaxed);
    }

    pub(crate) fn event(&self) {
        self.events.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn strangers(&self, count: u64) {
        self.strangers.fetch_add(count, Ordering::Relaxed);
    }

    pub(crate) fn read(&self) -> Stats {
        Stats {
            wakeups: self.wakeups.load(Ordering::Relaxed),
            stale_wakeups: self.stale_wakeups.load(Ordering::Relaxed),
            events: self.events.load(Ordering::Relaxed),
            strangers: self.strangers.load(Ordering::Relaxed),
        }
    }
}
