//! What a node counts about itself, for operators: read with
//! [`Membership::telemetry`](super::Membership::telemetry), exported as
//! Prometheus metrics by the runtime's management endpoint. Counts only
//! grow; the machine keeps them, so the simulator sees the same numbers.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::Membership;
use crate::events::TopologyEvent;
use crate::names::{Incarnation, NodeAddr, NodeName};

/// Upper bounds, in seconds, of the buckets of every [`Histogram`] here:
/// from a fast heartbeat to a slow detection.
pub const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0,
];

/// Durations counted into [`BUCKETS`], as Prometheus histograms are.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Histogram {
    /// How many fell in each bucket of [`BUCKETS`] (not cumulative), then
    /// how many above the last bound.
    pub counts: [u64; BUCKETS.len() + 1],
    /// The sum of every duration counted, in seconds.
    pub sum: f64,
    /// How many durations were counted.
    pub count: u64,
}

impl Histogram {
    /// Counts one duration.
    pub fn observe(&mut self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        self.counts[bucket] += 1;
        self.sum += seconds;
        self.count += 1;
    }

    /// `(upper bound in seconds, how many fell in that bucket)`, not
    /// cumulative, the last bound `f64::INFINITY`.
    pub fn buckets(&self) -> Vec<(f64, u64)> {
        (BUCKETS.iter().copied())
            .chain([f64::INFINITY])
            .zip(self.counts)
            .collect()
    }
}

/// What one node counted since it started.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Telemetry {
    /// Dials started (each [`Effect::Dial`](super::Effect::Dial)).
    pub dials: u64,
    /// Dials that failed or gave no ready session in time.
    pub dial_failures: u64,
    /// Topology events published, by kind (`node_up`, `state_changed`...).
    pub events: BTreeMap<&'static str, u64>,
    /// Members that left this node's ring, by reason (`crashed`,
    /// `unresponsive`, `left`, `restarted`, `downed`).
    pub node_downs: BTreeMap<&'static str, u64>,
    /// The time between two heartbeats that count from a member this node
    /// watches: what its failure detector waits on. Heartbeats go one way,
    /// from a member to its watchers, so this is not a round trip; a gap
    /// near `heartbeat_timeout` is a member about to be dropped.
    pub heartbeat_gaps: Histogram,
    /// How long a member this node watched had been silent when its own
    /// `heartbeat_timeout` dropped it as unresponsive: the freeze detection
    /// this node gave (a member dropped on a watcher's report is not
    /// counted here).
    pub unresponsive_detection: Histogram,
    /// From the start to the first time this node was `Ready`.
    pub ready_after: Option<Duration>,
}

impl Telemetry {
    /// Counts a published event.
    pub(super) fn event(&mut self, event: &TopologyEvent) {
        *self.events.entry(event.name()).or_default() += 1;
        if let TopologyEvent::NodeDown { reason, .. } = event {
            *self.node_downs.entry(reason.name()).or_default() += 1;
        }
    }
}

/// One known peer as this node sees it, for operators: what the
/// management endpoint's `/members` lists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PeerStatus {
    /// Its name.
    pub name: NodeName,
    /// Where this node dials it; `None` for a peer that only dialed in.
    pub addr: Option<NodeAddr>,
    /// `member` (in this node's ring), `downed` (out of every ring to end
    /// a partial partition), `refused` (another `app`, or it places keys differently),
    /// `connected` (a session, not admitted yet), `connecting` (no session,
    /// no failed dial yet) or `unreachable` (no session, dials failing).
    pub status: &'static str,
    /// Its incarnation while it is a member.
    pub incarnation: Option<Incarnation>,
    /// A ractor_cluster session with it is up.
    pub connected: bool,
    /// This node watches it: its silence for `heartbeat_timeout` drops it.
    pub watched: bool,
    /// It watches this node.
    pub watches_me: bool,
    /// Milliseconds since its last heartbeat, for a member this node
    /// watches (others are not heard from periodically).
    pub heard_ms_ago: Option<u64>,
    /// Dials in a row that failed.
    pub failed_dials: u32,
    /// Why it is not a member, or why it was last dropped.
    pub why: Option<String>,
}

impl Membership {
    /// Every known peer as this node sees it at `now`, by name.
    pub fn peer_statuses(&self, now: Duration) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .map(|(name, p)| {
                let incarnation = p.member.as_ref().map(|m| m.incarnation);
                let downed = self.downed_incarnation(name).is_some();
                let status = match () {
                    _ if incarnation.is_some() => "member",
                    _ if downed => "downed",
                    _ if p.refused.is_some() => "refused",
                    _ if p.session.is_some() => "connected",
                    _ if p.failed_dials == 0 => "connecting",
                    _ => "unreachable",
                };
                let heard = p.member.as_ref().filter(|_| p.watching);
                PeerStatus {
                    name: name.clone(),
                    addr: p.addr.clone(),
                    status,
                    incarnation,
                    connected: p.session.is_some(),
                    watched: p.watching,
                    watches_me: p.watches_me,
                    heard_ms_ago: heard.map(|m| millis(now.saturating_sub(m.last_heard))),
                    failed_dials: p.failed_dials,
                    why: p.refused.clone().or_else(|| p.last_error.clone()),
                }
            })
            .collect()
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_counts_each_duration_in_the_first_bucket_that_holds_it() {
        let mut h = Histogram::default();
        h.observe(Duration::from_millis(300)); // on a bound: in that bucket
        h.observe(Duration::from_millis(301));
        h.observe(Duration::from_secs(9)); // above every bound
        let buckets = h.buckets();
        assert_eq!(buckets[5], (0.2, 0));
        assert_eq!(buckets[6], (0.3, 1));
        assert_eq!(buckets[7], (0.5, 1));
        assert_eq!(buckets[12], (f64::INFINITY, 1));
        assert_eq!(buckets.len(), BUCKETS.len() + 1);
        assert_eq!(h.count, 3);
        assert!((h.sum - 9.601).abs() < 1e-9);
    }
}
