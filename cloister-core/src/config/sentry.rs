//! `Sentry`: how a node finds its peers, and how it is read from text; and
//! `RingMode`, who keeps the ring, and `Sessions`, which peers a node
//! keeps sessions with.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use super::{invalid, quoted, ConfigError, SENTRY};
use crate::names::{Host, SentryNode};

/// How a node finds its peers: cloister's `sentry`.
///
/// In files and environment variables a list is static nodes and a string is a
/// DNS service name, except that a string containing `@` is a comma-separated
/// node list (a DNS name never contains `@`). So these two lines mean the same,
/// and so does `CLOISTER_SENTRY=node1@127.0.0.1:4001,node2@127.0.0.1:4002`:
///
/// ```toml
/// sentry = ["node1@127.0.0.1:4001", "node2@127.0.0.1:4002"]
/// sentry = "node1@127.0.0.1:4001,node2@127.0.0.1:4002"
/// ```
///
/// The same rule parses text in code:
///
/// ```
/// use cloister_core::Sentry;
/// let nodes: Sentry = "node1@127.0.0.1:4001,node2@127.0.0.1:4002".parse()?;
/// assert_eq!(nodes.nodes().map(<[_]>::len), Some(2));
/// let srv: Sentry = "_node._tcp.cloister.default.svc.cluster.local".parse()?;
/// assert!(srv.is_srv());
/// # Ok::<(), cloister_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum Sentry {
    /// A static list of `name@host:port` entries. It may include this node or
    /// omit it.
    Nodes(Vec<SentryNode>),
    /// A DNS service name: its A/AAAA records, or its SRV records when it
    /// starts with `_` (see [`Sentry::is_srv`]).
    Service(String),
}

impl Sentry {
    /// A static list from `name@host:port` texts; the error names the first bad
    /// entry, or the first name listed twice.
    pub fn parse_nodes<I, S>(entries: I) -> Result<Sentry, ConfigError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let parse = |entry: S| {
            let entry = entry.as_ref().trim();
            let node = entry.parse::<SentryNode>();
            node.map_err(|err| invalid("sentry", quoted(entry), err))
        };
        let nodes: Vec<SentryNode> = entries.into_iter().map(parse).collect::<Result<_, _>>()?;
        no_name_twice(&nodes)?;
        Ok(Sentry::Nodes(nodes))
    }

    /// The static list, or `None` for a service.
    pub fn nodes(&self) -> Option<&[SentryNode]> {
        match self {
            Sentry::Nodes(nodes) => Some(nodes),
            Sentry::Service(_) => None,
        }
    }

    /// The DNS service name, or `None` for a static list.
    pub fn service(&self) -> Option<&str> {
        match self {
            Sentry::Nodes(_) => None,
            Sentry::Service(name) => Some(name),
        }
    }

    /// Whether this is an SRV service name (`_node._tcp.example.local`), whose
    /// records carry a port per peer.
    pub fn is_srv(&self) -> bool {
        self.service().is_some_and(|name| name.starts_with('_'))
    }

    pub(super) fn check(&self) -> Result<(), ConfigError> {
        match self {
            Sentry::Nodes(nodes) if nodes.is_empty() => Err(invalid(
                "sentry",
                "[]",
                "is required (it has no default): a list of `name@host:port` nodes \
                 or a DNS service name",
            )),
            Sentry::Nodes(nodes) => no_name_twice(nodes),
            Sentry::Service(name) => match name.parse::<Host>() {
                Ok(Host::Dns(_)) => Ok(()),
                _ => Err(invalid(
                    "sentry",
                    quoted(name),
                    "must be a DNS service name (labels of letters, digits, `-` and `_` \
                     joined by dots; SRV names start with `_`) or `name@host:port` nodes",
                )),
            },
        }
    }
}

/// Names are unique in a cluster: a list naming one node twice (at one
/// address or two: the port is not part of a name) is a mistake that would
/// also inflate the node count.
fn no_name_twice(nodes: &[SentryNode]) -> Result<(), ConfigError> {
    let mut seen = BTreeMap::new();
    for node in nodes {
        if let Some(earlier) = seen.insert(&node.name, &node.addr) {
            let list: Vec<String> = nodes.iter().map(|node| quoted(&node.to_string())).collect();
            let why = format!(
                "names `{}` twice, at {earlier} and at {}: node names must be unique (the port \
                 is not part of a name); give each node its own `node_name`",
                node.name, node.addr
            );
            return Err(invalid("sentry", format!("[{}]", list.join(", ")), why));
        }
    }
    Ok(())
}

impl FromStr for Sentry {
    type Err = ConfigError;

    /// A comma-separated node list if the text contains `@`, else a service name.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let sentry = if text.contains('@') {
            Sentry::parse_nodes(text.split(',').filter(|entry| !entry.trim().is_empty()))?
        } else {
            Sentry::Service(text.trim().to_string())
        };
        sentry.check()?;
        Ok(sentry)
    }
}

impl<'de> Deserialize<'de> for Sentry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SentryVisitor)
    }
}

/// Reads a string or a list of strings, so that a bad entry is reported as
/// itself rather than as "data did not match any variant".
struct SentryVisitor;

impl<'de> Visitor<'de> for SentryVisitor {
    type Value = Sentry;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(SENTRY)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Sentry, E> {
        text.parse().map_err(reason)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Sentry, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = seq.next_element::<String>()? {
            entries.push(entry);
        }
        Sentry::parse_nodes(entries).map_err(reason)
    }
}

/// Only the reason: the loader adds the field, the value and the source.
fn reason<E: de::Error>(error: ConfigError) -> E {
    match error {
        ConfigError::Invalid { allowed, .. } => E::custom(allowed),
        other => E::custom(other),
    }
}

/// Who keeps the consistent-hash ring (config `ring`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RingMode {
    /// cloister builds the ring of the members; `node_for` and routing use it.
    #[default]
    Builtin,
    /// The application keeps its own ring from the topology events; cloister
    /// builds none (members, digest and events are unchanged).
    External,
}

/// Which peers a node keeps sessions with (config `sessions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Sessions {
    /// Every node keeps a session with every other (default): a full mesh,
    /// as ractor_cluster and Erlang distribution make. Membership is the
    /// peers heard over their own sessions.
    #[default]
    Full,
    /// Each node keeps sessions with a bounded number of peers: the
    /// `monitors` nearest on each side in hash order and a few farther ones
    /// (about `2 * monitors + 2 * log2(n / monitors)`), and learns the
    /// other members from them: each change is passed on from neighbour to
    /// neighbour. For clusters of about 50 nodes and more, where a full
    /// mesh costs more than the work.
    Bounded,
}
