//! `tls_check_names` on accepted connections: a peer's certificate names,
//! kept from its TLS handshake until its session says whom it claims to be.
//!
//! The name arrives only after TLS, in ractor_cluster's own handshake. So
//! the accept loop sends the Manager the DNS names of each accepted peer's
//! certificate, keyed by the peer's address, before it hands the stream to
//! the NodeServer (so the Manager has them before any event of that
//! session); the NodeServer reports the same address as the session's
//! `peer_addr`. When the session authenticates, [`NameCheck`] holds the
//! claimed name against the certificate ([`check_names`]); a session that
//! fails is closed by the Manager before it is admitted, its later `Ready`
//! is ignored and its close counts as a stranger's.
//!
//! A session that arrived through the NodeServer's loopback side port
//! (see [`crate::accept`]) has no names on record, and is refused.
//! Dialled peers are checked in their TLS handshake instead (see
//! [`super::Tls::connector`]).
//!
//! Nothing here grows without bound: names are taken when their session
//! authenticates and dropped when it closes, and names no session came for
//! (a connection the NodeServer never took) are dropped after
//! [`KEEP_UNCLAIMED`] handshake timeouts.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cloister_core::certified::{check_names, NotCertified};
use cloister_core::tally::{Tally, REPORT_EVERY};
use cloister_core::NodeName;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::CertificateDer;

/// How many handshake timeouts the names of a connection are kept for
/// when no session comes for them.
pub(crate) const KEEP_UNCLAIMED: u32 = 4;

/// The DNS names (subject alternative names) of a certificate, as written;
/// none when it has none or does not parse (it already passed the chain
/// check by then, so that is a CA issuing odd certificates).
pub(crate) fn dns_names(certificate: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, parsed)) = x509_parser::parse_x509_certificate(certificate.as_ref()) else {
        return Vec::new();
    };
    let Ok(Some(alternatives)) = parsed.subject_alternative_name() else {
        return Vec::new();
    };
    (alternatives.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some(dns.to_string()),
            _ => None,
        })
        .collect()
}

/// The DNS names of a peer's leaf certificate, from a finished handshake.
pub(crate) fn peer_names(connection: &rustls::ServerConnection) -> Vec<String> {
    (connection.peer_certificates())
        .and_then(<[CertificateDer<'_>]>::first)
        .map(dns_names)
        .unwrap_or_default()
}

/// The name refusal inside a failed dial's TLS error, if that is why it
/// failed.
pub(crate) fn dial_refusal(error: &std::io::Error) -> Option<&NotCertified> {
    let tls = error.get_ref()?.downcast_ref::<rustls::Error>()?;
    let rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) = tls else {
        return None;
    };
    other.0.downcast_ref::<NotCertified>()
}

/// The Manager's record of accepted peers' certificate names, and of the
/// sessions it refused for them.
#[derive(Debug, Default)]
pub(crate) struct NameCheck {
    /// Names from finished TLS handshakes by peer address, with when they
    /// came: waiting for their session to authenticate.
    certified: BTreeMap<String, (Duration, Vec<String>)>,
    /// Inbound sessions not yet authenticated: their peer's address.
    inbound: BTreeMap<u64, String>,
    /// Dials under way by the address dialled, with when they began: the
    /// node dialled, whose name the certificate was checked for.
    dialled: BTreeMap<String, (Duration, NodeName)>,
    /// Sessions of those dials, not yet authenticated: the node dialled.
    outbound: BTreeMap<u64, NodeName>,
    /// Sessions refused for their name, until they close: their `Ready`
    /// is ignored and their close is a stranger's.
    refused: BTreeSet<u64>,
    /// Refusals, for a log line at most every [`REPORT_EVERY`].
    tally: Tally,
    /// The latest refusal, which that line quotes.
    latest: Option<String>,
}

impl NameCheck {
    /// An accepted connection from `addr` presented a certificate with
    /// these `names`. Names older than `keep` that no session took are
    /// dropped.
    pub(crate) fn certified(
        &mut self,
        now: Duration,
        addr: String,
        names: Vec<String>,
        keep: Duration,
    ) {
        self.certified
            .retain(|_, (at, _)| now.saturating_sub(*at) < keep);
        self.certified.insert(addr, (now, names));
    }

    /// This node dials `peer` at `addr` (an IP address and port, as the
    /// NodeServer will report it): its certificate is checked for `peer`
    /// in the handshake, and its session must then claim that name too.
    pub(crate) fn dialling(&mut self, now: Duration, addr: String, peer: NodeName, keep: Duration) {
        self.dialled
            .retain(|_, (at, _)| now.saturating_sub(*at) < keep);
        self.dialled.insert(addr, (now, peer));
    }

    /// Session `id` opened; `addr` is its peer's address.
    pub(crate) fn opened(&mut self, id: u64, addr: String, inbound: bool) {
        if inbound {
            self.inbound.insert(id, addr);
        } else if let Some((_, peer)) = self.dialled.remove(&addr) {
            self.outbound.insert(id, peer);
        }
    }

    /// Session `id` authenticated as `claimed`: whether its certificate
    /// names it. A dialled session's certificate was checked for the node
    /// dialled, so it must claim that node-name part. On `Err`, why not,
    /// in the words of the log; the session is refused from then on.
    pub(crate) fn authenticated(&mut self, id: u64, claimed: Option<&str>) -> Result<(), String> {
        if let Some(dialled) = self.outbound.remove(&id) {
            let part = dialled.node_name();
            let claimed = claimed.unwrap_or_default();
            let same = (claimed.split('@').next()).is_some_and(|c| c.eq_ignore_ascii_case(part));
            if !same {
                self.refused.insert(id);
                return Err(format!(
                    "a node dialled as `{dialled}`, whose certificate names `{part}`, claims \
                     `{claimed}`"
                ));
            }
            return Ok(());
        }
        let Some(addr) = self.inbound.remove(&id) else {
            return Ok(());
        };
        let names = self.certified.remove(&addr).map(|(_, names)| names);
        let verdict = match (claimed.map(str::parse::<NodeName>), names) {
            (Some(Ok(claimed)), Some(names)) => check_names(&claimed, &names)
                .map_err(|refusal| format!("a connection from {addr}: {refusal}")),
            (Some(Ok(claimed)), None) => Err(format!(
                "a connection from {addr} claims `{claimed}`, but no certificate names were \
                 recorded for it (it came through the NodeServer's loopback side port, not the \
                 node port)"
            )),
            (Some(Err(_)), _) => Err(format!(
                "a connection from {addr} claims a name that is not `name@host`"
            )),
            (None, _) => Err(format!(
                "a connection from {addr} authenticated without a name"
            )),
        };
        if verdict.is_err() {
            self.refused.insert(id);
        }
        verdict
    }

    /// Whether session `id` was refused for its name.
    pub(crate) fn is_refused(&self, id: u64) -> bool {
        self.refused.contains(&id)
    }

    /// Session `id` closed: forgets it, and says whether it was refused.
    pub(crate) fn closed(&mut self, id: u64) -> bool {
        if let Some(addr) = self.inbound.remove(&id) {
            self.certified.remove(&addr);
        }
        self.outbound.remove(&id);
        self.refused.remove(&id)
    }

    /// Counts a refusal, and logs it when a line is due.
    pub(crate) fn refused(&mut self, now: Duration, why: String) {
        self.latest = Some(why);
        if let Some(count) = self.tally.note(now) {
            self.report(count);
        }
    }

    /// Logs the refusals counted since the last line, when one is due.
    pub(crate) fn flush(&mut self, now: Duration) {
        if let Some(count) = self.tally.flush(now) {
            self.report(count);
        }
    }

    fn report(&mut self, count: u64) {
        let latest = self.latest.take().unwrap_or_default();
        tracing::warn!(
            count,
            "{count} peer(s) refused: their certificate does not name the node they claim to \
             be; the latest: {latest}. Give each node a certificate whose DNS \
             names include its node name; logged at most every {REPORT_EVERY:?}"
        );
    }

    #[cfg(test)]
    fn held(&self) -> (usize, usize, usize) {
        let sessions = self.inbound.len() + self.outbound.len();
        (
            self.certified.len() + self.dialled.len(),
            sessions,
            self.refused.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEEP: Duration = Duration::from_secs(4);

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn an_inbound_session_is_held_to_its_certificate_and_forgotten_when_it_closes() {
        let mut check = NameCheck::default();
        let now = Duration::from_secs(1);
        check.certified(now, "127.0.0.1:5001".into(), names(&["node-b"]), KEEP);
        check.certified(now, "127.0.0.1:5002".into(), names(&["mallory"]), KEEP);
        check.opened(1, "127.0.0.1:5001".into(), true);
        check.opened(2, "127.0.0.1:5002".into(), true);
        assert_eq!(check.authenticated(1, Some("node-b@127.0.0.1")), Ok(()));
        let why = check
            .authenticated(2, Some("node-b@127.0.0.1"))
            .expect_err("mallory claims node-b");
        assert!(why.contains("127.0.0.1:5002"), "{why}");
        assert!(why.contains("`mallory`"), "{why}");
        assert!(check.is_refused(2) && !check.is_refused(1));
        // Its close is the refused one's; then nothing is held.
        assert!(check.closed(2));
        assert!(!check.closed(1));
        assert_eq!(check.held(), (0, 0, 0));
    }

    #[test]
    fn without_recorded_names_or_a_name_the_session_is_refused() {
        let mut check = NameCheck::default();
        check.opened(7, "127.0.0.1:6000".into(), true);
        let why = check
            .authenticated(7, Some("node-b@127.0.0.1"))
            .expect_err("no names");
        assert!(why.contains("side port"), "{why}");
        check.certified(Duration::ZERO, "127.0.0.1:6001".into(), names(&["x"]), KEEP);
        check.opened(8, "127.0.0.1:6001".into(), true);
        assert!(check.authenticated(8, None).is_err());
    }

    #[test]
    fn a_dialled_session_must_claim_the_name_its_certificate_was_checked_for() {
        let mut check = NameCheck::default();
        let node_b: NodeName = "node-b@10.0.0.2".parse().expect("name");
        let now = Duration::ZERO;
        check.dialling(now, "10.0.0.2:4000".into(), node_b.clone(), KEEP);
        check.opened(3, "10.0.0.2:4000".into(), false);
        let why = check
            .authenticated(3, Some("node-c@10.0.0.2"))
            .expect_err("claims another name");
        assert!(why.contains("claims `node-c@10.0.0.2`"), "{why}");
        assert!(check.closed(3));
        check.dialling(now, "10.0.0.2:4000".into(), node_b, KEEP);
        check.opened(4, "10.0.0.2:4000".into(), false);
        assert_eq!(check.authenticated(4, Some("node-b@10.0.0.2")), Ok(()));
        // A dial by DNS name has no address on record: its certificate
        // was checked, its claim is not.
        check.opened(5, "10.0.0.3:4000".into(), false);
        assert_eq!(check.authenticated(5, Some("anyone@10.0.0.3")), Ok(()));
        assert_eq!(check.held(), (0, 0, 0));
    }

    #[test]
    fn names_no_session_came_for_are_dropped_after_a_while() {
        let mut check = NameCheck::default();
        for port in 0..100u16 {
            let at = Duration::from_millis(u64::from(port) * 100);
            check.certified(at, format!("10.0.0.9:{port}"), names(&["n"]), KEEP);
        }
        // At 9.9 s only those of the last 4 s are left.
        assert_eq!(check.held().0, 40);
    }
}
