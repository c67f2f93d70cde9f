//! `/metrics`: an [`Inspection`] in the OpenMetrics text format, which
//! Prometheus scrapes. Built fresh per scrape from what the Manager
//! counted, so nothing is counted twice and nothing is kept here.

use std::sync::atomic::AtomicU64;

use cloister_core::membership::Histogram;
use cloister_core::NodeState;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::Inspection;

/// The content type of the OpenMetrics text format.
pub(super) const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels = Vec<(&'static str, String)>;

const STATES: [NodeState; 7] = [
    NodeState::Down,
    NodeState::Assembling,
    NodeState::Ready,
    NodeState::Rehashing,
    NodeState::NoQuorum,
    NodeState::Stopping,
    NodeState::Stopped,
];

/// The metrics of one inspection, as text.
pub(super) fn encode(i: &Inspection) -> Result<String, std::fmt::Error> {
    let mut r = Registry::with_prefix("cloister");
    let s = &i.snapshot;
    let t = &i.telemetry;

    gauge(
        &mut r,
        "members",
        "Members in this node's ring, itself included",
        s.members.len() as f64,
    );
    let states = Family::<Labels, Gauge>::default();
    for state in STATES {
        let on = i64::from(s.state == state);
        states
            .get_or_create(&vec![("state", state.to_string())])
            .set(on);
    }
    r.register("state", "This node's state: 1 for the current one", states);
    gauge(
        &mut r,
        "quorum_held",
        "1 while the members hold the configured quorum (or none is configured)",
        f64::from(u8::from(s.holds_quorum())),
    );
    gauge(
        &mut r,
        "converged",
        "1 while every member reports this node's ring digest",
        f64::from(u8::from(s.converged)),
    );
    let sentry = Family::<Labels, Gauge>::default();
    if let Some(node) = &s.sentry {
        sentry
            .get_or_create(&vec![("node", node.to_string())])
            .set(1);
    }
    r.register("sentry", "The sentry this node names, as a label", sentry);
    let peers = Family::<Labels, Gauge>::default();
    for peer in &i.peers {
        peers
            .get_or_create(&vec![("status", peer.status.to_string())])
            .inc();
    }
    r.register(
        "peers",
        "Known peers by status (member, connected, connecting, unreachable, downed, refused)",
        peers,
    );
    let shares = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for share in &i.shares {
        shares
            .get_or_create(&vec![("node", share.node.to_string())])
            .set(share.share);
    }
    r.register(
        "ring_share",
        "Each member's share of the keys, 0 to 1",
        shares,
    );

    let events = Family::<Labels, Counter>::default();
    for (kind, n) in &t.events {
        events
            .get_or_create(&vec![("kind", kind.to_string())])
            .inc_by(*n);
    }
    r.register("events", "Topology events published, by kind", events);
    let downs = Family::<Labels, Counter>::default();
    for (reason, n) in &t.node_downs {
        downs
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc_by(*n);
    }
    r.register(
        "node_downs",
        "Members that left this node's ring, by reason",
        downs,
    );
    counter(&mut r, "dials", "Dials started", t.dials);
    counter(
        &mut r,
        "dial_failures",
        "Dials that failed or gave no ready session in time",
        t.dial_failures,
    );
    counter(
        &mut r,
        "strangers",
        "Connections closed without authenticating (wrong cookie, garbage, a port scan)",
        i.stats.strangers,
    );
    counter(
        &mut r,
        "wakeups",
        "Timer wake-ups of the Manager",
        i.stats.wakeups,
    );
    r.register_with_unit(
        "heartbeat_gap",
        "Time between two heartbeats from a member this node watches (heartbeats go one way, so not a round trip)",
        Unit::Seconds,
        Fixed(t.heartbeat_gaps.clone()),
    );
    r.register_with_unit(
        "unresponsive_detection",
        "Silence of a watched member when this node's heartbeat timeout dropped it",
        Unit::Seconds,
        Fixed(t.unresponsive_detection.clone()),
    );
    if let Some(took) = t.ready_after {
        let g = Gauge::<f64, AtomicU64>::default();
        g.set(took.as_secs_f64());
        r.register_with_unit(
            "ready_after",
            "From the start to the first Ready (time to consensus)",
            Unit::Seconds,
            g,
        );
    }
    let g = Gauge::<f64, AtomicU64>::default();
    g.set(i.uptime_ms as f64 / 1000.0);
    r.register_with_unit("uptime", "Since the Manager started", Unit::Seconds, g);

    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &r)?;
    Ok(text)
}

fn gauge(r: &mut Registry, name: &str, help: &str, value: f64) {
    let g = Gauge::<f64, AtomicU64>::default();
    g.set(value);
    r.register(name, help, g);
}

fn counter(r: &mut Registry, name: &str, help: &str, value: u64) {
    let c = Counter::<u64>::default();
    c.inc_by(value);
    r.register(name, help, c);
}

/// A histogram counted elsewhere (by the membership machine), encoded as is.
#[derive(Debug)]
struct Fixed(Histogram);

impl EncodeMetric for Fixed {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> = (self.0.buckets().into_iter())
            .map(|(bound, n)| (if bound.is_finite() { bound } else { f64::MAX }, n))
            .collect();
        encoder.encode_histogram::<NoLabelSet>(self.0.sum, self.0.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}
