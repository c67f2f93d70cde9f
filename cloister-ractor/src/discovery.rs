//! Finding peers and naming this node: the static list, or a DNS service.
//!
//! A service name is resolved with hickory-resolver from the system's resolver
//! configuration with caching off: Docker answers a scaled service with TTL
//! 600, and a cached answer would hide every container started later. An
//! ordinary name gives A/AAAA records, all peers on `listen_port`; a name
//! starting with `_` is an SRV name whose records give each peer's host and
//! port (a Kubernetes headless Service). In service mode this node's own host
//! is the address in the answer that belongs to one of its interfaces.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use cloister_core::{Config, Host, NodeAddr, Sentry, SentryNode};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{Name, TokioResolver};
use ractor::ActorRef;

use crate::manager::{CloisterMessage, Internal};

/// How this node finds peers.
#[derive(Clone)]
pub(crate) enum Discovery {
    /// A static list: nothing to resolve.
    List(Vec<SentryNode>),
    /// A DNS service (boxed: the resolver is large).
    Service(Box<Service>),
}

/// A DNS service and the resolver that asks for it.
#[derive(Clone)]
pub(crate) struct Service {
    name: String,
    node_name: String,
    port: u16,
    resolver: TokioResolver,
}

impl Discovery {
    pub(crate) fn new(config: &Config) -> Result<Self, String> {
        match &config.sentry {
            Sentry::Nodes(nodes) => Ok(Discovery::List(nodes.clone())),
            Sentry::Service(name) => {
                let mut builder = TokioResolver::builder(TokioConnectionProvider::default())
                    .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?;
                let options = builder.options_mut();
                options.cache_size = 0;
                options.positive_max_ttl = Some(Duration::ZERO);
                options.negative_max_ttl = Some(Duration::ZERO);
                options.timeout = Duration::from_secs(2);
                options.attempts = 1;
                Ok(Discovery::Service(Box::new(Service {
                    name: name.clone(),
                    node_name: config.effective_node_name().to_string(),
                    port: config.listen_port,
                    resolver: builder.build(),
                })))
            }
        }
    }

    /// The DNS half, if any: what the Manager resolves on every tick.
    pub(crate) fn for_service(&self) -> Option<Discovery> {
        matches!(self, Discovery::Service(_)).then(|| self.clone())
    }

    /// This node's host when the config does not say it. From a list: the
    /// entry with this node's name (and port, if several share the name).
    /// From a service: the answer's address that is one of this machine's
    /// own, waited for until `startup_deadline`.
    pub(crate) async fn find_own_host(&self, config: &Config) -> Result<Host, String> {
        match self {
            Discovery::List(nodes) => {
                let mine: Vec<&SentryNode> = nodes
                    .iter()
                    .filter(|n| n.name.node_name() == config.effective_node_name())
                    .collect();
                let chosen = match mine.as_slice() {
                    [one] => Some(*one),
                    many => many
                        .iter()
                        .copied()
                        .find(|n| n.addr.port() == config.listen_port),
                };
                chosen.map(|n| n.addr.host().clone()).ok_or_else(|| {
                    format!(
                        "cannot tell this node's host: no `sentry` entry is named `{}` on port {}; \
                         list this node there or set `advertised_host`",
                        config.effective_node_name(),
                        config.listen_port
                    )
                })
            }
            Discovery::Service(service) => {
                service
                    .find_own_host(config.startup_deadline, config.consensus == 1)
                    .await
            }
        }
    }

    /// Resolves in the background and sends the answer to the Manager.
    pub(crate) fn resolve_into(&self, manager: ActorRef<CloisterMessage>) {
        if let Discovery::Service(service) = self {
            let service = service.clone();
            tokio::spawn(async move {
                let answer = service.resolve().await;
                let _ = manager.cast(CloisterMessage::Internal(Internal::Discovered(answer)));
            });
        }
    }
}

impl Service {
    /// The peers the service names now, this node among them if it is up.
    async fn resolve(&self) -> Result<Vec<SentryNode>, String> {
        // Relaxed: hickory's strict parsing (IDNA, STD3) refuses `_` inside a
        // label, and Compose aliases such as `cloister_test.local` have one.
        let name = Name::from_str_relaxed(&self.name)
            .map_err(|e| format!("`{}` is not a DNS name: {e}", self.name))?;
        let addrs: BTreeSet<(IpAddr, u16)> = if self.name.starts_with('_') {
            let srv = self
                .resolver
                .srv_lookup(name)
                .await
                .map_err(|e| format!("SRV lookup of `{}` failed: {e}", self.name))?;
            let mut found = BTreeSet::new();
            for record in srv.iter() {
                let target = record.target().clone();
                let ips = self
                    .resolver
                    .lookup_ip(target.clone())
                    .await
                    .map_err(|e| format!("lookup of SRV target `{target}` failed: {e}"))?;
                found.extend(ips.iter().map(|ip| (ip, record.port())));
            }
            found
        } else {
            let ips = self
                .resolver
                .lookup_ip(name)
                .await
                .map_err(|e| format!("lookup of `{}` failed: {e}", self.name))?;
            ips.iter().map(|ip| (ip, self.port)).collect()
        };
        addrs
            .into_iter()
            .map(|(ip, port)| {
                let host = Host::Ip(ip);
                let name = cloister_core::NodeName::new(&self.node_name, &host)
                    .map_err(|e| e.to_string())?;
                Ok(SentryNode {
                    name,
                    addr: NodeAddr::new(host, port),
                })
            })
            .collect()
    }

    /// Waits until the service's answer holds one of this machine's
    /// addresses. With `alone_ok` (consensus 1) a name that does not resolve
    /// at all does not hold the node back: it goes on alone, named after its
    /// first non-loopback address, and keeps resolving to find peers later.
    async fn find_own_host(&self, deadline: Duration, alone_ok: bool) -> Result<Host, String> {
        let until = Instant::now() + deadline;
        let mut last = String::new();
        loop {
            let local: BTreeSet<IpAddr> = if_addrs::get_if_addrs()
                .map_err(|e| format!("cannot list this machine's interfaces: {e}"))?
                .into_iter()
                .map(|i| i.ip())
                .collect();
            let outcome = match self.resolve().await {
                Ok(peers) => {
                    let mine = peers
                        .iter()
                        .find_map(|p| p.addr.host().ip().filter(|ip| local.contains(ip)));
                    if let Some(ip) = mine {
                        tracing::info!(service = %self.name, %ip, "found this node in the service's answer");
                        return Ok(Host::Ip(ip));
                    }
                    format!(
                        "none of the {} address(es) `{}` answers with is this machine's",
                        peers.len(),
                        self.name
                    )
                }
                Err(error) if alone_ok => {
                    if let Some(ip) = local.iter().copied().find(|ip| !ip.is_loopback()) {
                        tracing::warn!(
                            service = %self.name, %ip,
                            "{error}; consensus is 1, so this node goes on alone"
                        );
                        return Ok(Host::Ip(ip));
                    }
                    error
                }
                Err(error) => error,
            };
            if outcome != last {
                tracing::info!("waiting to find this node in DNS: {outcome}");
                last = outcome;
            }
            if Instant::now() >= until {
                return Err(format!(
                    "cannot name this node from service `{}` within {deadline:?}: {last}",
                    self.name
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compose_aliases_with_underscores_are_names() {
        // The Elixir original's alias; a strict parse refuses it.
        assert!(Name::from_str_relaxed("cloister_test.local").is_ok());
        assert!(Name::from_str_relaxed("_node._tcp.cloister.default.svc.cluster.local").is_ok());
    }
}
