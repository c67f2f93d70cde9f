//! Who may be in their handshake on the node port: the caps per source and
//! in all, and the tally of the connections refused.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv6Addr};
use std::time::Duration;

use cloister_core::membership::name_stranger;
use cloister_core::tally::{Tally, REPORT_EVERY};

use crate::stats::Counters;

use super::{MAX_HANDSHAKES, MAX_PER_SOURCE};

/// Why a connection was closed before the NodeServer took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Its handshake did not finish within the deadline.
    Silent,
    /// Its source already had [`MAX_PER_SOURCE`] in their handshake.
    OverCap,
    /// It was the oldest of [`MAX_HANDSHAKES`] when a new one came.
    Evicted,
    /// The peer closed it (or it failed) before its first byte.
    Closed,
    /// Its TLS handshake failed, for this reason.
    Tls(&'static str),
    /// It sent bytes but did not authenticate for the longest handshake
    /// the Manager allows (which should have closed it first).
    Unauthenticated,
}

/// Who a connection counts against: its IPv4 address, or its IPv6 /64 (one
/// host usually holds a whole /64); `::1` stays itself.
pub(super) fn source_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) if !v6.is_loopback() => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
        other => other,
    }
}

/// The connections in their handshake: how many per source, and each one's
/// handle (`H`: what closes it), oldest first.
#[derive(Debug)]
pub(super) struct Admission<H> {
    total: usize,
    per_source: usize,
    open: BTreeMap<u64, (IpAddr, H)>,
    by_source: HashMap<IpAddr, usize>,
    next: u64,
}

impl<H> Admission<H> {
    pub(super) fn new(total: usize, per_source: usize) -> Self {
        Admission {
            total,
            per_source,
            open: BTreeMap::new(),
            by_source: HashMap::new(),
            next: 0,
        }
    }

    /// Admits a connection from `source`, its handle made from its number
    /// by `start`: `Err(())` when its source is at its cap (nothing
    /// started), else the handle of the oldest connection, evicted to make
    /// room, if the total was at its cap. Loopback sources count in the
    /// total only: every node of a cluster on one machine dials from
    /// `127.0.0.1`, and a local process can reach the uncapped side port
    /// anyway (see [`super`]).
    #[allow(clippy::result_unit_err)]
    pub(super) fn admit(
        &mut self,
        source: IpAddr,
        start: impl FnOnce(u64) -> H,
    ) -> Result<Option<H>, ()> {
        let count = self.by_source.get(&source).copied().unwrap_or(0);
        if count >= self.per_source && !source.is_loopback() {
            return Err(());
        }
        let evicted = if self.open.len() >= self.total {
            self.open
                .keys()
                .next()
                .copied()
                .and_then(|oldest| self.release(oldest))
        } else {
            None
        };
        let seq = self.next;
        self.next += 1;
        *self.by_source.entry(source).or_default() += 1;
        self.open.insert(seq, (source, start(seq)));
        Ok(evicted)
    }

    /// Connection `seq` left its handshake: its handle, if it was still in.
    pub(super) fn release(&mut self, seq: u64) -> Option<H> {
        let (source, handle) = self.open.remove(&seq)?;
        if let Some(count) = self.by_source.get_mut(&source) {
            *count -= 1;
            if *count == 0 {
                self.by_source.remove(&source);
            }
        }
        Some(handle)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.open.len()
    }
}

/// The refused connections since the last report, by reason, with the
/// first addresses each came from, and when to report: a [`Tally`], as for
/// every other stranger.
#[derive(Debug, Default)]
pub(super) struct Refused {
    pub(super) tally: Tally,
    by_reason: BTreeMap<&'static str, (u64, Vec<IpAddr>)>,
}

impl Refused {
    pub(super) fn note(
        &mut self,
        now: Duration,
        (refusal, from): (Refusal, IpAddr),
        deadline: Duration,
        counters: &Counters,
    ) {
        counters.strangers(1);
        let reason = match refusal {
            Refusal::Silent => "silent past the handshake deadline",
            Refusal::OverCap => "over the cap per source address",
            Refusal::Evicted => "the oldest when the total cap was reached",
            Refusal::Closed => "closed by the peer before a byte",
            Refusal::Tls(reason) => reason,
            Refusal::Unauthenticated => "not authenticated within the longest handshake",
        };
        let (count, sources) = self.by_reason.entry(reason).or_default();
        *count += 1;
        name_stranger(sources, from);
        if self.tally.note(now).is_some() {
            self.report(deadline);
        }
    }

    pub(super) fn flush(&mut self, now: Duration, deadline: Duration) {
        if self.tally.flush(now).is_some() {
            self.report(deadline);
        }
    }

    /// One line per reason, so a refused certificate is never lost among
    /// silent connections.
    fn report(&mut self, deadline: Duration) {
        for (reason, (count, from)) in std::mem::take(&mut self.by_reason) {
            let from = sources(&from);
            tracing::warn!(
                count,
                reason,
                "{count} connection(s){from} closed without authenticating before the node \
                 server took them: {reason} (handshake deadline {deadline:?}, at most \
                 {MAX_PER_SOURCE} per address and {MAX_HANDSHAKES} in all); counted, logged at \
                 most every {REPORT_EVERY:?}"
            );
        }
    }
}

/// Where strangers came from, for a log line: ` from 192.0.2.7, 192.0.2.9
/// (the first addresses since the last report)`, or nothing when unknown.
pub(crate) fn sources(from: &[IpAddr]) -> String {
    match from {
        [] => String::new(),
        [one] => format!(" from {one}"),
        _ => {
            let list: Vec<String> = from.iter().map(IpAddr::to_string).collect();
            let first = format!("the first {} addresses since the last report", from.len());
            format!(" from {} ({first})", list.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an ip")
    }

    #[test]
    fn a_source_past_its_cap_is_refused_and_others_still_get_in() {
        let mut admission = Admission::new(10, 2);
        let (a, b) = (ip("10.0.0.1"), ip("10.0.0.2"));
        assert_eq!(admission.admit(a, |seq| seq), Ok(None));
        assert_eq!(admission.admit(a, |seq| seq), Ok(None));
        // A third from `a` waits for none of the others: it is refused.
        assert_eq!(admission.admit(a, |seq| seq), Err(()));
        assert_eq!(admission.admit(b, |seq| seq), Ok(None));
        // One of `a`'s ends its handshake: `a` may open another.
        assert_eq!(admission.release(0), Some(0));
        assert_eq!(admission.admit(a, |seq| seq), Ok(None));
        assert_eq!(admission.len(), 3);
    }

    #[test]
    fn loopback_counts_in_the_total_only() {
        let mut admission = Admission::new(3, 1);
        let local = ip("127.0.0.1");
        assert_eq!(admission.admit(local, |seq| seq), Ok(None));
        assert_eq!(admission.admit(local, |seq| seq), Ok(None));
        assert_eq!(admission.admit(source_of(ip("::1")), |seq| seq), Ok(None));
        assert_eq!(admission.admit(local, |seq| seq), Ok(Some(0)));
        assert_eq!(admission.admit(ip("10.0.0.1"), |seq| seq), Ok(Some(1)));
        assert_eq!(admission.admit(ip("10.0.0.1"), |seq| seq), Err(()));
    }

    #[test]
    fn at_the_total_cap_the_oldest_makes_room_for_the_newest() {
        let mut admission = Admission::new(3, 3);
        for n in 1..=3 {
            let source = ip(&format!("10.0.0.{n}"));
            assert_eq!(admission.admit(source, |seq| seq), Ok(None));
        }
        // Full: the fourth evicts connection 0, and its source's count drops.
        assert_eq!(admission.admit(ip("10.0.0.9"), |seq| seq), Ok(Some(0)));
        assert_eq!(admission.len(), 3);
        assert_eq!(admission.by_source.get(&ip("10.0.0.1")), None);
        // An evicted connection's own end later changes nothing.
        assert_eq!(admission.release(0), None);
        assert_eq!(admission.len(), 3);
    }

    #[test]
    fn a_source_is_an_ipv4_address_or_an_ipv6_slash_64() {
        assert_eq!(source_of(ip("10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(source_of(ip("::ffff:10.1.2.3")), ip("10.1.2.3"));
        assert_eq!(source_of(ip("2001:db8:0:1::5")), ip("2001:db8:0:1::"));
        assert_eq!(
            source_of(ip("2001:db8:0:1:ffff::9")),
            source_of(ip("2001:db8:0:1::1"))
        );
        assert_ne!(
            source_of(ip("2001:db8:0:2::1")),
            source_of(ip("2001:db8:0:1::1"))
        );
    }
}
