//! Node identity: names, addresses, sentry entries and incarnations.
//!
//! A node's name is ractor_cluster's peer name, `{node_name}@{host}`; its address
//! is `{host}:{port}` (an IPv6 host is bracketed: `[::1]:4001`). A static sentry
//! entry joins the two: `node1@127.0.0.1:4001`. Every type here parses from and
//! displays to the same text, so a name read from a config file, a log line or a
//! ractor_cluster event compares equal to the one cloister computed.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a name, host, address or sentry entry could not be parsed.
///
/// Parsing never changes any state; the error carries the offending text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The text has no `@` between a node name and a host.
    #[error("`{0}` is not a node name: expected `name@host`, for example `app@10.0.0.5`")]
    MissingAt(String),
    /// The part before `@` is empty or has characters other than ASCII letters,
    /// digits, `_`, `-` and `.`.
    #[error(
        "`{0}` has an invalid node name part: use 1-64 ASCII letters, digits, `_`, `-` or `.`"
    )]
    BadNodeName(String),
    /// The host is empty, or neither an IP address nor a DNS name.
    #[error("`{0}` has an invalid host: use an IPv4 address, an IPv6 address or a DNS name")]
    BadHost(String),
    /// An address lacks `:port`.
    #[error(
        "`{0}` has no port: expected `host:port`, for example `127.0.0.1:4001` or `[::1]:4001`"
    )]
    MissingPort(String),
    /// The port is not a number from 1 to 65535.
    #[error("`{0}` has an invalid port: use a number from 1 to 65535")]
    BadPort(String),
}

/// The host part of a name or address: an IP address or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Host {
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
    /// A DNS name, stored in lower case (DNS names compare case-insensitively).
    Dns(String),
}

impl Host {
    /// The IP address, if the host is one.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::Ip(ip) => Some(*ip),
            Host::Dns(_) => None,
        }
    }
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(ip) => write!(f, "{ip}"),
            Host::Dns(name) => f.write_str(name),
        }
    }
}

impl FromStr for Host {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bare = s
            .strip_prefix('[')
            .and_then(|rest| rest.strip_suffix(']'))
            .unwrap_or(s);
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(Host::Ip(ip));
        }
        if is_dns_name(s) {
            return Ok(Host::Dns(s.to_ascii_lowercase()));
        }
        Err(NameError::BadHost(s.to_string()))
    }
}

impl From<IpAddr> for Host {
    fn from(ip: IpAddr) -> Self {
        Host::Ip(ip)
    }
}

/// Labels of letters, digits, `-` and `_` (Docker and Compose accept `_`),
/// separated by dots, at most 253 characters.
fn is_dns_name(s: &str) -> bool {
    let s = s.strip_suffix('.').unwrap_or(s);
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

fn is_node_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

/// A node's name, `{node_name}@{host}`: ractor_cluster's peer name and the
/// member identity in the ring.
///
/// ```
/// use cloister_core::NodeName;
/// let name: NodeName = "cloister_test@172.18.0.3".parse().unwrap();
/// assert_eq!(name.node_name(), "cloister_test");
/// assert_eq!(name.to_string(), "cloister_test@172.18.0.3");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeName {
    /// The canonical text, kept so ordering, hashing and display agree; shared,
    /// so handing a name out of the ring costs no allocation.
    text: Arc<str>,
    /// Length of the part before `@`.
    at: usize,
}

impl NodeName {
    /// Builds `{node_name}@{host}`, checking the node name part.
    pub fn new(node_name: &str, host: &Host) -> Result<Self, NameError> {
        if !is_node_name_part(node_name) {
            return Err(NameError::BadNodeName(format!("{node_name}@{host}")));
        }
        Ok(NodeName {
            text: format!("{node_name}@{host}").into(),
            at: node_name.len(),
        })
    }

    /// The part before `@` (by default the app name).
    pub fn node_name(&self) -> &str {
        &self.text[..self.at]
    }

    /// The host part after `@`.
    pub fn host(&self) -> Host {
        // Checked at construction, so parsing again cannot fail.
        Host::from_str(&self.text[self.at + 1..])
            .unwrap_or_else(|_| Host::Dns(self.text[self.at + 1..].to_string()))
    }

    /// The whole name as text, `{node_name}@{host}`.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl FromStr for NodeName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, host) = s
            .split_once('@')
            .ok_or_else(|| NameError::MissingAt(s.to_string()))?;
        if !is_node_name_part(name) {
            return Err(NameError::BadNodeName(s.to_string()));
        }
        let host = Host::from_str(host).map_err(|_| NameError::BadHost(s.to_string()))?;
        NodeName::new(name, &host)
    }
}

/// Where a node listens: `{host}:{port}`, IPv6 hosts in brackets.
///
/// ```
/// use cloister_core::NodeAddr;
/// let addr: NodeAddr = "[::1]:4001".parse().unwrap();
/// assert_eq!(addr.port(), 4001);
/// assert_eq!(addr.to_string(), "[::1]:4001");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeAddr {
    host: Host,
    port: u16,
}

impl NodeAddr {
    /// An address from its parts. Port 0 is refused by parsing but allowed here
    /// for listeners that let the OS pick.
    pub fn new(host: Host, port: u16) -> Self {
        NodeAddr { host, port }
    }

    /// The host part.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl fmt::Display for NodeAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]:{}", self.port),
            host => write!(f, "{host}:{}", self.port),
        }
    }
}

impl FromStr for NodeAddr {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (host, port) = if let Some(rest) = s.strip_prefix('[') {
            let (v6, after) = rest
                .split_once(']')
                .ok_or_else(|| NameError::BadHost(s.to_string()))?;
            let port = after
                .strip_prefix(':')
                .ok_or_else(|| NameError::MissingPort(s.to_string()))?;
            let ip: Ipv6Addr = v6.parse().map_err(|_| NameError::BadHost(s.to_string()))?;
            (Host::Ip(IpAddr::V6(ip)), port)
        } else {
            let (host, port) = s
                .rsplit_once(':')
                .ok_or_else(|| NameError::MissingPort(s.to_string()))?;
            if host.contains(':') {
                // An IPv6 address without brackets is ambiguous with its port.
                return Err(NameError::BadHost(s.to_string()));
            }
            let host = Host::from_str(host).map_err(|_| NameError::BadHost(s.to_string()))?;
            (host, port)
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(NameError::BadPort(s.to_string())),
        };
        Ok(NodeAddr { host, port })
    }
}

/// One entry of a static sentry list, `{node_name}@{host}:{port}`: whom to dial
/// and the name its NodeServer answers with.
///
/// ```
/// use cloister_core::SentryNode;
/// let node: SentryNode = "node1@127.0.0.1:4001".parse().unwrap();
/// assert_eq!(node.name.to_string(), "node1@127.0.0.1");
/// assert_eq!(node.addr.to_string(), "127.0.0.1:4001");
/// assert!("node1@".parse::<SentryNode>().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SentryNode {
    /// The peer's name, `{node_name}@{host}`.
    pub name: NodeName,
    /// Where it listens, `{host}:{port}`.
    pub addr: NodeAddr,
}

impl fmt::Display for SentryNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name.node_name(), self.addr)
    }
}

impl FromStr for SentryNode {
    type Err = NameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, addr) = s
            .split_once('@')
            .ok_or_else(|| NameError::MissingAt(s.to_string()))?;
        if addr.is_empty() {
            return Err(NameError::BadHost(s.to_string()));
        }
        let addr = NodeAddr::from_str(addr)?;
        let name =
            NodeName::new(name, addr.host()).map_err(|_| NameError::BadNodeName(s.to_string()))?;
        Ok(SentryNode { name, addr })
    }
}

/// A value that differs at every process start, so that a node restarted under
/// the same name is told apart from the one that died. Larger is newer: the
/// runtime builds it from the wall clock at start (see
/// [`Incarnation::from_unix_nanos`]), the core only compares.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(transparent)]
pub struct Incarnation(pub u64);

impl Incarnation {
    /// An incarnation from the process start time in nanoseconds since the Unix
    /// epoch. Two starts of the same node are ordered by their start times.
    pub fn from_unix_nanos(nanos: u128) -> Self {
        Incarnation(u64::try_from(nanos).unwrap_or(u64::MAX))
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

macro_rules! serde_as_text {
    ($($ty:ty),*) => {$(
        impl Serialize for $ty {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let text = String::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    )*};
}

serde_as_text!(Host, NodeName, NodeAddr, SentryNode);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_for_ipv4_ipv6_and_dns_hosts() {
        for text in [
            "node1@127.0.0.1",
            "app@::1",
            "cloister_test@cloister_test.local",
            "a.b-c_d@10.0.0.1",
        ] {
            let name: NodeName = text.parse().expect(text);
            assert_eq!(name.to_string(), text);
            assert_eq!(name.to_string().parse::<NodeName>().expect(text), name);
        }
    }

    #[test]
    fn addresses_round_trip_and_bracket_ipv6() {
        for text in ["127.0.0.1:4001", "[::1]:4001", "cloister_test.local:4369"] {
            let addr: NodeAddr = text.parse().expect(text);
            assert_eq!(addr.to_string(), text);
        }
        let v6: NodeAddr = "[::1]:4001".parse().expect("v6");
        assert_eq!(v6.host().ip(), Some("::1".parse().expect("ip")));
    }

    #[test]
    fn sentry_entries_join_name_and_address() {
        let v6: SentryNode = "n@[::1]:4001".parse().expect("v6 entry");
        assert_eq!(v6.name.as_str(), "n@::1");
        assert_eq!(v6.addr.to_string(), "[::1]:4001");
        assert_eq!(v6.to_string(), "n@[::1]:4001");
    }

    #[test]
    fn bad_text_names_what_was_wrong() {
        assert!(matches!(
            "node1@".parse::<SentryNode>(),
            Err(NameError::BadHost(_))
        ));
        assert!(matches!(
            "node1".parse::<NodeName>(),
            Err(NameError::MissingAt(_))
        ));
        assert!(matches!(
            "@host".parse::<NodeName>(),
            Err(NameError::BadNodeName(_))
        ));
        assert!(matches!(
            "n@127.0.0.1:70000".parse::<SentryNode>(),
            Err(NameError::BadPort(_))
        ));
        assert!(matches!(
            "n@127.0.0.1:0".parse::<SentryNode>(),
            Err(NameError::BadPort(_))
        ));
        assert!(matches!(
            "n@127.0.0.1".parse::<SentryNode>(),
            Err(NameError::MissingPort(_))
        ));
        assert!(matches!(
            "::1:4001".parse::<NodeAddr>(),
            Err(NameError::BadHost(_))
        ));
        assert!(matches!(
            "n@bad host:1".parse::<SentryNode>(),
            Err(NameError::BadHost(_))
        ));
        let message = "node1@"
            .parse::<SentryNode>()
            .expect_err("no host")
            .to_string();
        assert!(
            message.contains("node1@") && message.contains("host"),
            "{message}"
        );
    }

    #[test]
    fn dns_hosts_compare_case_insensitively() {
        let a: NodeName = "app@Node.Example".parse().expect("a");
        let b: NodeName = "app@node.example".parse().expect("b");
        assert_eq!(a, b);
    }

    #[test]
    fn names_serialize_as_text() {
        let name: NodeName = "app@10.0.0.1".parse().expect("name");
        let json = serde_json::to_string(&name).expect("json");
        assert_eq!(json, "\"app@10.0.0.1\"");
        let back: NodeName = serde_json::from_str(&json).expect("back");
        assert_eq!(back, name);
    }
}
