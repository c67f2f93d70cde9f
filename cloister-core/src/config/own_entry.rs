//! Which entry of a static `sentry` list is this node: decided from the
//! node's own addresses, not from its name alone.
//!
//! The Elixir original's usual list is one name on many hosts
//! (`shop@10.0.0.1:4000,shop@10.0.0.2:4000,shop@10.0.0.3:4000`), the same
//! image and environment everywhere. A name then tells nothing: the node's
//! entry is the one whose host is an address of this machine. The runtime
//! gathers those addresses (interfaces, and what the list's DNS hosts
//! resolve to) into [`LocalAddrs`]; [`Config::own_entry`] decides.
//!
//! The rules, in order:
//!
//! 1. `advertised_host` set: this node is `{node_name}@{advertised_host}`.
//!    If the list has that name, that is its own entry; if not, the list is
//!    a seed list (the node dials the listed nodes and is not one of them).
//! 2. The node name listed once: that entry (its host need not be local:
//!    behind NAT a node's listed address is not one of its interfaces).
//! 3. The node name listed on several hosts: the one entry whose host is an
//!    address of this machine; of several such, the one on `listen_port`.
//!    None, or several still: refused, naming the entries and what to set.
//! 4. The node name not listed, no `advertised_host`: refused (this node
//!    cannot tell its own host).
//!
//! Once the own entry is known, `consensus` is checked against the nodes
//! the cluster can have: the listed names when this node is one of them,
//! one more when the list is a seed list.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::IpAddr;

use super::{Config, Sentry};
use crate::names::{Host, NodeName, SentryNode};

/// What this machine knows of its own addresses, gathered by the runtime.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalAddrs {
    /// The addresses of this machine's interfaces (loopback included).
    pub ips: BTreeSet<IpAddr>,
    /// What each DNS host that [`Config::own_entry_lookups`] named resolved
    /// to. A name missing here did not resolve, and so is not local.
    pub resolved: BTreeMap<String, BTreeSet<IpAddr>>,
}

impl LocalAddrs {
    /// This machine's interface addresses, no DNS host resolved.
    pub fn new(ips: impl IntoIterator<Item = IpAddr>) -> LocalAddrs {
        LocalAddrs {
            ips: ips.into_iter().collect(),
            resolved: BTreeMap::new(),
        }
    }

    /// Records that the DNS host `name` resolved to `ips`.
    pub fn with_resolved(mut self, name: &str, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        self.resolved
            .insert(name.to_ascii_lowercase(), ips.into_iter().collect());
        self
    }

    /// Whether `host` is this machine: one of its IPs, or a DNS name that
    /// resolved to one.
    pub fn is_local(&self, host: &Host) -> bool {
        match host {
            Host::Ip(ip) => self.ips.contains(ip),
            Host::Dns(name) => self
                .resolved
                .get(name)
                .is_some_and(|ips| ips.iter().any(|ip| self.ips.contains(ip))),
        }
    }
}

/// Where this node stands in its static `sentry` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OwnEntry {
    /// This entry of the list is this node.
    Listed(SentryNode),
    /// This node is not in the list, which it uses as seeds; it is reached
    /// at this host (its `advertised_host`).
    Seed(Host),
}

impl OwnEntry {
    /// The host peers reach this node at, and the host part of its name.
    pub fn host(&self) -> &Host {
        match self {
            OwnEntry::Listed(entry) => entry.addr.host(),
            OwnEntry::Seed(host) => host,
        }
    }
}

/// Why a node cannot take its place in its static `sentry` list. Nothing
/// was started when this is returned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OwnEntryError {
    /// No entry has this node's name and `advertised_host` is unset, so
    /// the node cannot tell its own host.
    #[error(
        "cannot tell this node's host: no `sentry` entry is named `{node_name}` (its \
         `node_name`, or `app` when that is unset); list this node in `sentry`, or set \
         `advertised_host` (CLOISTER_ADVERTISED_HOST) to this node's address to use the \
         list as seeds, or set `node_name` (CLOISTER_NODE_NAME)"
    )]
    NotListed {
        /// This node's name part.
        node_name: String,
    },
    /// The name is listed on several hosts and none of them is an address
    /// of this machine.
    #[error(
        "cannot tell which `sentry` entry is this node: `{node_name}` is listed on {} hosts \
         ({}) and none of them is this machine's (its addresses: {}){}; set `advertised_host` \
         (CLOISTER_ADVERTISED_HOST) to this node's address (a listed one, or another to use \
         the list as seeds), or give each node its own `node_name` (CLOISTER_NODE_NAME)",
        .entries.len(), join(.entries), join(.local), did_not_resolve(.unresolved)
    )]
    NoneLocal {
        /// This node's name part.
        node_name: String,
        /// Every entry with that name.
        entries: Vec<SentryNode>,
        /// This machine's addresses.
        local: Vec<IpAddr>,
        /// The entries' DNS hosts that did not resolve.
        unresolved: Vec<String>,
    },
    /// The name is listed on several hosts that are all this machine's,
    /// and `listen_port` does not single one out.
    #[error(
        "cannot tell which `sentry` entry is this node: `{node_name}` is listed on {} hosts \
         that are all this machine's ({}), and listen port {listen_port} does not pick one; \
         set `advertised_host` (CLOISTER_ADVERTISED_HOST) to the one this node is, or give \
         each node its own `node_name` (CLOISTER_NODE_NAME)",
        .entries.len(), join(.entries)
    )]
    SeveralLocal {
        /// This node's name part.
        node_name: String,
        /// The entries with that name on this machine.
        entries: Vec<SentryNode>,
        /// The configured listen port.
        listen_port: u16,
    },
    /// `consensus` is more than the nodes the cluster can have.
    #[error(
        "invalid `consensus` = {consensus}: can never be met: the sentry lists {listed} \
         node(s), {}",
        match .me { Some(me) => format!("this one ({me}) among them"), None => "plus this one".into() }
    )]
    Consensus {
        /// The configured consensus.
        consensus: usize,
        /// The distinct names in the list.
        listed: usize,
        /// This node's name when it is listed, `None` for a seed list.
        me: Option<NodeName>,
    },
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    let texts: Vec<String> = items.iter().map(ToString::to_string).collect();
    texts.join(", ")
}

fn did_not_resolve(names: &[String]) -> String {
    match names {
        [] => String::new(),
        names => format!("; these hosts did not resolve: {}", join(names)),
    }
}

impl Config {
    /// The DNS hosts [`Config::own_entry`] needs resolved: those of the
    /// entries named like this node, when there are several and
    /// `advertised_host` is unset. Empty otherwise, and for a service.
    pub fn own_entry_lookups(&self) -> Vec<String> {
        if self.advertised_host.is_some() {
            return Vec::new();
        }
        let named = self.named_entries();
        if named.len() < 2 {
            return Vec::new();
        }
        let names: BTreeSet<String> = named
            .iter()
            .filter_map(|entry| match entry.addr.host() {
                Host::Dns(name) => Some(name.clone()),
                Host::Ip(_) => None,
            })
            .collect();
        names.into_iter().collect()
    }

    /// This node's place in its static `sentry` list, decided from `local`
    /// (see the module docs for the rules), and `consensus` checked against
    /// it. `None` for a service, whose nodes are found from its DNS answer.
    ///
    /// ```
    /// use cloister_core::config::{Config, LocalAddrs, OwnEntry};
    /// let config = Config::nodes("shop", ["shop@10.0.0.1:4000", "shop@10.0.0.2:4000"])?;
    /// let here = LocalAddrs::new(["127.0.0.1".parse()?, "10.0.0.2".parse()?]);
    /// let own = config.own_entry(&here)?.expect("a static list");
    /// assert_eq!(own.host().to_string(), "10.0.0.2");
    /// assert!(matches!(own, OwnEntry::Listed(_)));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn own_entry(&self, local: &LocalAddrs) -> Result<Option<OwnEntry>, OwnEntryError> {
        let Sentry::Nodes(list) = &self.sentry else {
            return Ok(None);
        };
        let named = self.named_entries();
        let node_name = self.effective_node_name().to_string();
        let own = match (&self.advertised_host, named.as_slice()) {
            (Some(host), _) => match named.iter().find(|entry| entry.addr.host() == host) {
                Some(entry) => OwnEntry::Listed((*entry).clone()),
                None => OwnEntry::Seed(host.clone()),
            },
            (None, []) => return Err(OwnEntryError::NotListed { node_name }),
            (None, [one]) => OwnEntry::Listed((*one).clone()),
            (None, many) => OwnEntry::Listed(self.by_address(many, local)?),
        };
        let listed = list.iter().map(|e| &e.name).collect::<BTreeSet<_>>().len();
        let me = match &own {
            OwnEntry::Listed(entry) => Some(entry.name.clone()),
            OwnEntry::Seed(_) => None,
        };
        let most = listed + usize::from(me.is_none());
        if self.consensus > most {
            let consensus = self.consensus;
            return Err(OwnEntryError::Consensus {
                consensus,
                listed,
                me,
            });
        }
        Ok(Some(own))
    }

    /// The list's entries with this node's name part, one per name.
    fn named_entries(&self) -> Vec<&SentryNode> {
        let mut seen = BTreeSet::new();
        let node_name = self.effective_node_name();
        self.sentry
            .nodes()
            .unwrap_or_default()
            .iter()
            .filter(|entry| entry.name.node_name() == node_name && seen.insert(&entry.name))
            .collect()
    }

    /// Of several entries with this node's name, the one on this machine.
    fn by_address(
        &self,
        named: &[&SentryNode],
        local: &LocalAddrs,
    ) -> Result<SentryNode, OwnEntryError> {
        let node_name = self.effective_node_name().to_string();
        let here: Vec<&SentryNode> = named
            .iter()
            .copied()
            .filter(|entry| local.is_local(entry.addr.host()))
            .collect();
        let on_port: Vec<&SentryNode> = here
            .iter()
            .copied()
            .filter(|entry| entry.addr.port() == self.listen_port)
            .collect();
        match (here.as_slice(), on_port.as_slice()) {
            ([one], _) | (_, [one]) => Ok((*one).clone()),
            ([], _) => {
                let unresolved = named
                    .iter()
                    .filter_map(|entry| match entry.addr.host() {
                        Host::Dns(name) if !local.resolved.contains_key(name) => Some(name.clone()),
                        _ => None,
                    })
                    .collect();
                Err(OwnEntryError::NoneLocal {
                    node_name,
                    entries: named.iter().map(|e| (*e).clone()).collect(),
                    local: local.ips.iter().copied().collect(),
                    unresolved,
                })
            }
            (several, _) => Err(OwnEntryError::SeveralLocal {
                node_name,
                entries: several.iter().map(|e| (*e).clone()).collect(),
                listen_port: self.listen_port,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const THREE: &str = "shop@10.0.0.1:4000,shop@10.0.0.2:4000,shop@10.0.0.3:4000";

    fn with_list(sentry: &str) -> Config {
        Config::default()
            .with_app("shop")
            .with_sentry(sentry.parse().expect("a valid sentry"))
    }

    /// A machine with loopback and `ips`.
    fn machine(ips: &[&str]) -> LocalAddrs {
        let ips = ips.iter().map(|ip| ip.parse().expect("an IP"));
        LocalAddrs::new(ips.chain(["127.0.0.1".parse().expect("an IP")]))
    }

    fn listed(own: Result<Option<OwnEntry>, OwnEntryError>) -> String {
        match own {
            Ok(Some(OwnEntry::Listed(entry))) => entry.to_string(),
            other => panic!("expected a listed entry, got {other:?}"),
        }
    }

    #[test]
    fn a_unique_name_is_its_entry_wherever_it_is() {
        // node2's entry is on 10.0.0.2, not an address of this machine:
        // behind NAT a listed address need not be an interface, and a name
        // listed once leaves no doubt.
        let config = with_list("node1@10.0.0.1:4001,node2@10.0.0.2:4002").with_node_name("node2");
        assert_eq!(config.own_entry_lookups(), Vec::<String>::new());
        let own = config.own_entry(&machine(&["192.168.1.9"]));
        assert_eq!(listed(own), "node2@10.0.0.2:4002");
    }

    #[test]
    fn one_name_on_several_hosts_is_told_apart_by_address() {
        // The Elixir original's list: the same text on every node, which
        // each finds its own entry in by its own interface.
        let config = with_list(THREE).with_consensus(3);
        for (ip, entry) in [
            ("10.0.0.1", "shop@10.0.0.1:4000"),
            ("10.0.0.2", "shop@10.0.0.2:4000"),
            ("10.0.0.3", "shop@10.0.0.3:4000"),
        ] {
            assert_eq!(listed(config.own_entry(&machine(&[ip]))), entry);
        }
    }

    #[test]
    fn one_name_on_several_hosts_none_local_is_refused() {
        let config = with_list(THREE);
        let error = config
            .own_entry(&machine(&["10.0.0.9"]))
            .expect_err("no entry is this machine's");
        assert!(
            matches!(error, OwnEntryError::NoneLocal { .. }),
            "{error:?}"
        );
        let text = error.to_string();
        for entry in THREE.split(',') {
            assert!(text.contains(entry), "{text} does not name {entry}");
        }
        assert!(
            text.contains("10.0.0.9"),
            "{text} does not list the machine's IPs"
        );
        assert!(text.contains("CLOISTER_ADVERTISED_HOST"), "{text}");
        assert!(text.contains("`node_name`"), "{text}");
    }

    #[test]
    fn one_name_on_several_local_hosts_needs_the_port_or_is_refused() {
        // A machine with two interfaces, both listed under one name.
        let here = machine(&["10.0.0.1", "192.168.1.1"]);
        let config = with_list("shop@10.0.0.1:4001,shop@192.168.1.1:4002,shop@10.0.0.3:4003");
        let on_4002 = config.clone().with_listen_port(4002);
        assert_eq!(listed(on_4002.own_entry(&here)), "shop@192.168.1.1:4002");

        // Same port on both: nothing tells them apart.
        let same = with_list("shop@10.0.0.1:4000,shop@192.168.1.1:4000,shop@10.0.0.3:4000");
        let error = same.own_entry(&here).expect_err("two entries are local");
        let OwnEntryError::SeveralLocal { entries, .. } = &error else {
            panic!("expected SeveralLocal, got {error:?}");
        };
        let entries: Vec<String> = entries.iter().map(ToString::to_string).collect();
        assert_eq!(entries, ["shop@10.0.0.1:4000", "shop@192.168.1.1:4000"]);
        assert!(error.to_string().contains("CLOISTER_ADVERTISED_HOST"));

        // Loopback is always local: a list with 127.0.0.1 and this
        // machine's address under one name and port is ambiguous too.
        let loopback = with_list("shop@127.0.0.1:4000,shop@10.0.0.1:4000");
        assert!(matches!(
            loopback.own_entry(&here),
            Err(OwnEntryError::SeveralLocal { .. })
        ));
    }

    #[test]
    fn one_name_twice_on_one_host_is_refused_by_validation() {
        // `shop@127.0.0.1:4001` and `shop@127.0.0.1:4002` are two nodes with
        // one name, `shop@127.0.0.1`: they could never tell each other apart.
        let error = "shop@127.0.0.1:4001,shop@127.0.0.1:4002"
            .parse::<Sentry>()
            .expect_err("one name at two addresses");
        let text = error.to_string();
        assert!(
            text.contains("`shop@127.0.0.1` twice, at 127.0.0.1:4001 and at 127.0.0.1:4002"),
            "{text}"
        );
        assert!(text.contains("`node_name`"), "{text}");
        // The same entry twice is refused too: names are unique in a list.
        assert!("shop@127.0.0.1:4001,shop@127.0.0.1:4001"
            .parse::<Sentry>()
            .is_err());
    }

    #[test]
    fn not_listed_with_advertised_host_is_a_seed_list() {
        let mut config = with_list(THREE).with_consensus(4);
        config.advertised_host = Some("10.0.0.4".parse().expect("a host"));
        assert_eq!(config.own_entry_lookups(), Vec::<String>::new());
        let own = config
            .own_entry(&machine(&["10.0.0.4"]))
            .expect("a seed list");
        assert_eq!(
            own,
            Some(OwnEntry::Seed("10.0.0.4".parse().expect("a host")))
        );
    }

    #[test]
    fn advertised_host_picks_its_listed_entry() {
        // Behind NAT the listed address is not an interface: the advertised
        // host still says which entry this node is.
        let mut config = with_list(THREE).with_consensus(3);
        config.advertised_host = Some("10.0.0.2".parse().expect("a host"));
        assert_eq!(
            listed(config.own_entry(&machine(&["172.17.0.5"]))),
            "shop@10.0.0.2:4000"
        );
    }

    #[test]
    fn not_listed_without_advertised_host_is_refused() {
        let config = with_list(THREE).with_node_name("cart");
        let error = config
            .own_entry(&machine(&["10.0.0.1"]))
            .expect_err("not listed");
        assert_eq!(
            error,
            OwnEntryError::NotListed {
                node_name: "cart".into()
            }
        );
        assert!(error.to_string().contains("CLOISTER_ADVERTISED_HOST"));
    }

    #[test]
    fn dns_hosts_are_local_when_they_resolve_to_this_machine() {
        let config = with_list("shop@node1:4000,shop@node2.local:4000,shop@10.0.0.3:4000");
        assert_eq!(config.own_entry_lookups(), ["node1", "node2.local"]);
        let here = machine(&["172.20.0.2"])
            .with_resolved("node1", ["172.20.0.5".parse().expect("an IP")])
            .with_resolved("NODE2.local", ["172.20.0.2".parse().expect("an IP")]);
        assert_eq!(listed(config.own_entry(&here)), "shop@node2.local:4000");

        // node2.local did not resolve: no entry is local, and the error says
        // which names did not resolve.
        let here =
            machine(&["172.20.0.2"]).with_resolved("node1", ["172.20.0.5".parse().expect("an IP")]);
        let error = config.own_entry(&here).expect_err("nothing local");
        let text = error.to_string();
        assert!(text.contains("did not resolve: node2.local"), "{text}");
        assert!(!text.contains("did not resolve: node1"), "{text}");
    }

    #[test]
    fn consensus_counts_this_node_once_when_it_is_listed() {
        // Listed: the cluster has at most the three listed nodes.
        let here = machine(&["10.0.0.1"]);
        assert!(with_list(THREE).with_consensus(3).own_entry(&here).is_ok());
        let error = with_list(THREE)
            .with_consensus(4)
            .own_entry(&here)
            .expect_err("four of three");
        assert_eq!(
            error.to_string(),
            "invalid `consensus` = 4: can never be met: the sentry lists 3 node(s), \
             this one (shop@10.0.0.1) among them"
        );
        // A seed list: this node is a fourth.
        let mut seed = with_list(THREE).with_consensus(5);
        seed.advertised_host = Some("10.0.0.4".parse().expect("a host"));
        assert!(
            seed.validate().is_err(),
            "validate already refuses 5 > 3 + 1"
        );
        seed.consensus = 4;
        assert!(seed.own_entry(&here).is_ok());
    }

    #[test]
    fn a_service_has_no_list_entry() {
        let config = Config::service("shop", "shop.local");
        assert_eq!(config.own_entry(&machine(&["10.0.0.1"])), Ok(None));
        assert!(config.own_entry_lookups().is_empty());
    }
}
