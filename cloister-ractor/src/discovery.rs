//! Finding peers and naming this node: the static list, or a DNS service.
//!
//! A service name is resolved with hickory-resolver from the system's resolver
//! configuration with caching off: Docker answers a scaled service with TTL
//! 600, and a cached answer would hide every container started later. An
//! ordinary name gives A/AAAA records, all peers on `listen_port`; a name
//! starting with `_` is an SRV name whose records give each peer's host and
//! port (a Kubernetes headless Service). In service mode this node's own host
//! is the address in the answer that belongs to one of its interfaces. From a
//! static list the core picks this node's entry (`Config::own_entry`) from the
//! interfaces' addresses, and from what the entries' DNS hosts resolve to
//! when one name is listed on several of them.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use cloister_core::config::{LocalAddrs, OwnEntry};
use cloister_core::{Config, Host, NodeAddr, Sentry, SentryNode};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::{Name, ResolverBuilder, TokioResolver};
use ractor::{ActorProcessingErr, ActorRef};

use crate::manager::{CloisterMessage, Internal};

/// How this node finds peers.
#[derive(Clone)]
pub(crate) enum Discovery {
    /// A static list (the config's): nothing to resolve on every tick.
    List,
    /// A DNS service (boxed: the resolver is large).
    Service(Box<Service>),
}

/// What one resolve of a service found: the peers, and the SRV targets
/// that did not resolve, if some did not (the others are still used).
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) peers: Vec<SentryNode>,
    pub(crate) unresolved: Option<String>,
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
            Sentry::Nodes(_) => Ok(Discovery::List),
            Sentry::Service(name) => Ok(Discovery::Service(Box::new(Service::new(
                config,
                name,
                resolver()?,
            )))),
        }
    }

    /// The DNS half, if any: what the Manager resolves on every tick.
    pub(crate) fn for_service(&self) -> Option<Discovery> {
        matches!(self, Discovery::Service(_)).then(|| self.clone())
    }

    /// This node's host. From a list: its own entry, which the core picks
    /// from this machine's addresses and what the list's DNS hosts resolve
    /// to; a refusal is a (boxed) `OwnEntryError`. From a service:
    /// `advertised_host` (a name: the address of this machine it resolves
    /// to), else the answer's address that is one of this machine's own,
    /// waited for until `startup_deadline`.
    pub(crate) async fn own_host(&self, config: &Config) -> Result<Host, ActorProcessingErr> {
        match self {
            Discovery::List => {
                let mut local = LocalAddrs::new(local_ips()?);
                let lookups = config.own_entry_lookups();
                if !lookups.is_empty() {
                    let resolver = resolver()?;
                    for host in lookups {
                        match lookup(&resolver, &host).await {
                            Ok(ips) => local = local.with_resolved(&host, ips),
                            Err(error) => tracing::info!("sentry host {error}"),
                        }
                    }
                }
                match config.own_entry(&local)? {
                    Some(OwnEntry::Listed(entry)) => {
                        tracing::info!(%entry, "this node's own `sentry` entry");
                        Ok(entry.addr.host().clone())
                    }
                    Some(OwnEntry::Seed(host)) => {
                        tracing::info!(%host, "this node is not in `sentry`: it uses the list as seeds");
                        Ok(host)
                    }
                    None => Err("a static `sentry` list has no list".into()),
                }
            }
            Discovery::Service(service) => match &config.advertised_host {
                Some(Host::Dns(name)) => Ok(Host::Ip(service.own_address_of(name).await?)),
                Some(host) => Ok(host.clone()),
                None => Ok(service
                    .find_own_host(config.startup_deadline, config.consensus == 1)
                    .await?),
            },
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
    /// `name`, asked through `resolver`.
    fn new(config: &Config, name: &str, resolver: TokioResolver) -> Service {
        Service {
            name: name.to_string(),
            node_name: config.effective_node_name().to_string(),
            port: config.listen_port,
            resolver,
        }
    }

    /// The peers the service names now, this node among them if it is up.
    async fn resolve(&self) -> Result<Answer, String> {
        // Names parse relaxed (see `lookup`).
        let (addrs, unresolved) = if self.name.starts_with('_') {
            self.resolve_srv().await?
        } else {
            let ips = lookup(&self.resolver, &self.name).await?;
            (ips.into_iter().map(|ip| (ip, self.port)).collect(), None)
        };
        let peers = addrs
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
            .collect::<Result<_, String>>()?;
        Ok(Answer { peers, unresolved })
    }

    /// An SRV name's targets, each resolved at once (a hundred pods cost one
    /// round trip, not a hundred). A target that does not resolve (a pod
    /// going away between the two lookups) is left out and named; only when
    /// none resolves is the answer an error.
    async fn resolve_srv(&self) -> Result<(BTreeSet<(IpAddr, u16)>, Option<String>), String> {
        let name = Name::from_str_relaxed(&self.name)
            .map_err(|e| format!("`{}` is not a DNS name: {e}", self.name))?;
        let srv = self
            .resolver
            .srv_lookup(name)
            .await
            .map_err(|e| format!("SRV lookup of `{}` failed: {e}", self.name))?;
        let lookups = srv.iter().map(|record| {
            let target = record.target().clone();
            async move {
                let ips = self.resolver.lookup_ip(target.clone()).await;
                (target, record.port(), ips)
            }
        });
        let mut found = BTreeSet::new();
        let mut failed = Vec::new();
        for (target, port, ips) in futures::future::join_all(lookups).await {
            match ips {
                Ok(ips) => found.extend(ips.iter().map(|ip| (ip, port))),
                Err(error) => failed.push(format!("`{target}` ({error})")),
            }
        }
        if failed.is_empty() {
            return Ok((found, None));
        }
        failed.sort();
        let (unresolved, all) = (failed.len(), srv.iter().count());
        let failed = failed.join(", ");
        if found.is_empty() {
            return Err(format!(
                "no SRV target of `{}` resolves: {failed}",
                self.name
            ));
        }
        let unresolved = format!(
            "{unresolved} of the {all} SRV targets of `{}` do not resolve (the others are \
             used): {failed}",
            self.name,
        );
        Ok((found, Some(unresolved)))
    }

    /// The address of this machine that `name` (an `advertised_host`)
    /// resolves to. Peers name a node of a service after its address in the
    /// service's answer, so a name must become that address. This is how a
    /// Swarm task names itself before Swarm's DNS lists it: Swarm adds a task
    /// with a health check to the service's answer only once it is healthy,
    /// but Docker writes the task's `hostname` with its address into
    /// `/etc/hosts`, which the resolver reads first.
    async fn own_address_of(&self, name: &str) -> Result<IpAddr, String> {
        let error = |why: String| format!("`advertised_host` = {name:?}: {why}");
        let ips = lookup(&self.resolver, name).await.map_err(error)?;
        let local = local_ips()?;
        let mut own: Vec<IpAddr> = ips
            .iter()
            .copied()
            .filter(|ip| local.contains(ip))
            .collect();
        // A non-loopback address first: peers cannot dial a loopback one.
        own.sort_by_key(IpAddr::is_loopback);
        own.first().copied().ok_or_else(|| {
            error(format!(
                "it resolves to {ips:?}, none of them an address of this machine; in service \
                 mode an advertised name must resolve to this node's own address (for example \
                 through /etc/hosts), or set the address itself"
            ))
        })
    }

    /// Waits until the service's answer holds one of this machine's
    /// addresses. With `alone_ok` (consensus 1) a name that does not resolve
    /// at all does not hold the node back: it goes on alone, named after its
    /// first non-loopback address, and keeps resolving to find peers later.
    async fn find_own_host(&self, deadline: Duration, alone_ok: bool) -> Result<Host, String> {
        let until = Instant::now() + deadline;
        let mut last = String::new();
        loop {
            let local = local_ips()?;
            let outcome = match self.resolve().await {
                Ok(Answer { peers, .. }) => {
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

/// The addresses of this machine's interfaces, loopback included.
fn local_ips() -> Result<BTreeSet<IpAddr>, String> {
    let interfaces = if_addrs::get_if_addrs()
        .map_err(|e| format!("cannot list this machine's interfaces: {e}"))?;
    Ok(interfaces.into_iter().map(|i| i.ip()).collect())
}

/// A resolver from the system's configuration (`/etc/resolv.conf`, and
/// `/etc/hosts`), with caching off.
fn resolver() -> Result<TokioResolver, String> {
    let builder = TokioResolver::builder(TokioConnectionProvider::default())
        .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?;
    Ok(without_cache(builder))
}

/// `builder`'s resolver with caching off and one short attempt per query.
fn without_cache(mut builder: ResolverBuilder<TokioConnectionProvider>) -> TokioResolver {
    let options = builder.options_mut();
    options.cache_size = 0;
    options.positive_max_ttl = Some(Duration::ZERO);
    options.negative_max_ttl = Some(Duration::ZERO);
    options.timeout = Duration::from_secs(2);
    options.attempts = 1;
    builder.build()
}

/// The addresses `host` resolves to.
async fn lookup(resolver: &TokioResolver, host: &str) -> Result<Vec<IpAddr>, String> {
    // Relaxed: hickory's strict parsing (IDNA, STD3) refuses `_` inside a
    // label, and Compose aliases such as `cloister_test.local` have one.
    let name =
        Name::from_str_relaxed(host).map_err(|e| format!("`{host}` is not a DNS name: {e}"))?;
    let ips = resolver
        .lookup_ip(name)
        .await
        .map_err(|e| format!("lookup of `{host}` failed: {e}"))?;
    Ok(ips.iter().collect())
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig};
    use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
    use hickory_resolver::proto::rr::rdata::{A, SRV};
    use hickory_resolver::proto::rr::{RData, Record, RecordType};

    use super::*;

    const SRV_NAME: &str = "_cloister._tcp.shop.svc.cluster.local.";

    /// A name server on 127.0.0.1 for one headless Service: an SRV record per
    /// pod (`pod-N.shop...` on port `400N`), and each pod's A record
    /// (`10.1.0.N`); and an SRV record per gone pod (`gone-N.shop...`),
    /// whose name no longer exists. Any other name does not exist.
    async fn name_server(pods: u8, gone: u8) -> u16 {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = socket.local_addr().expect("address").port();
        let pod =
            |n: u8| Name::from_ascii(format!("pod-{n}.shop.svc.cluster.local.")).expect("name");
        let gone_pod =
            |n: u8| Name::from_ascii(format!("gone-{n}.shop.svc.cluster.local.")).expect("name");
        tokio::spawn(async move {
            let mut buffer = [0u8; 1500];
            while let Ok((len, from)) = socket.recv_from(&mut buffer).await {
                let Ok(query) = Message::from_vec(&buffer[..len]) else {
                    continue;
                };
                let mut answer = Message::new();
                answer
                    .set_id(query.id())
                    .set_message_type(MessageType::Response);
                answer.set_op_code(query.op_code()).set_authoritative(true);
                answer.set_recursion_desired(query.recursion_desired());
                answer.add_queries(query.queries().to_vec());
                let mut known = false;
                for question in query.queries() {
                    let name = question.name();
                    if name.to_ascii() == SRV_NAME {
                        known = true;
                        if question.query_type() == RecordType::SRV {
                            for n in 1..=pods {
                                let srv = SRV::new(0, 0, 4000 + u16::from(n), pod(n));
                                answer.add_answer(Record::from_rdata(
                                    name.clone(),
                                    5,
                                    RData::SRV(srv),
                                ));
                            }
                            for n in 1..=gone {
                                let srv = SRV::new(0, 0, 4100 + u16::from(n), gone_pod(n));
                                answer.add_answer(Record::from_rdata(
                                    name.clone(),
                                    5,
                                    RData::SRV(srv),
                                ));
                            }
                        }
                    }
                    for n in 1..=pods {
                        if *name == pod(n) {
                            known = true;
                            if question.query_type() == RecordType::A {
                                let a = A(Ipv4Addr::new(10, 1, 0, n));
                                answer.add_answer(Record::from_rdata(name.clone(), 5, RData::A(a)));
                            }
                        }
                    }
                }
                if !known {
                    answer.set_response_code(ResponseCode::NXDomain);
                }
                if let Ok(bytes) = answer.to_vec() {
                    let _ = socket.send_to(&bytes, from).await;
                }
            }
        });
        port
    }

    fn service_at(name: &str, dns_port: u16) -> Service {
        let servers =
            NameServerConfigGroup::from_ips_clear(&[Ipv4Addr::LOCALHOST.into()], dns_port, true);
        let config = ResolverConfig::from_parts(None, Vec::new(), servers);
        let builder =
            TokioResolver::builder_with_config(config, TokioConnectionProvider::default());
        let config = Config::service("shop", name);
        Service::new(&config, name, without_cache(builder))
    }

    #[tokio::test]
    async fn an_srv_service_gives_each_pod_with_its_own_port() {
        let dns = name_server(3, 0).await;
        let answer = service_at(SRV_NAME, dns).resolve().await.expect("resolves");
        assert!(answer.unresolved.is_none(), "{answer:?}");
        let peers = answer.peers;
        let found: Vec<String> = peers
            .iter()
            .map(|p| format!("{} {}", p.name, p.addr))
            .collect();
        assert_eq!(
            found,
            [
                "shop@10.1.0.1 10.1.0.1:4001",
                "shop@10.1.0.2 10.1.0.2:4002",
                "shop@10.1.0.3 10.1.0.3:4003",
            ]
        );
    }

    #[tokio::test]
    async fn an_unknown_srv_service_is_an_error_that_names_it() {
        let dns = name_server(1, 0).await;
        let missing = "_cloister._tcp.nothing.svc.cluster.local.";
        let error = service_at(missing, dns)
            .resolve()
            .await
            .expect_err("NXDOMAIN");
        assert!(
            error.contains("SRV lookup") && error.contains(missing),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_srv_target_that_does_not_resolve_leaves_the_others_usable() {
        // A rolling update: two pods are gone from DNS, but their SRV
        // records are still served.
        let dns = name_server(3, 2).await;
        let answer = service_at(SRV_NAME, dns).resolve().await.expect("resolves");
        let found: Vec<String> = answer.peers.iter().map(|p| p.addr.to_string()).collect();
        assert_eq!(found, ["10.1.0.1:4001", "10.1.0.2:4002", "10.1.0.3:4003"]);
        let problem = answer.unresolved.expect("the gone pods are named");
        assert!(
            problem.starts_with("2 of the 5 SRV targets")
                && problem.contains("gone-1.shop.svc.cluster.local.")
                && problem.contains("gone-2.shop.svc.cluster.local."),
            "{problem}"
        );
    }

    #[tokio::test]
    async fn an_srv_service_whose_targets_all_fail_is_an_error_naming_them() {
        let dns = name_server(0, 2).await;
        let error = service_at(SRV_NAME, dns)
            .resolve()
            .await
            .expect_err("no target resolves");
        assert!(
            error.starts_with("no SRV target of")
                && error.contains("gone-1.shop")
                && error.contains("gone-2.shop"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn an_advertised_name_becomes_the_own_address_it_resolves_to() {
        // `localhost` resolves through /etc/hosts, as a Swarm task's hostname does.
        let service = Service::new(
            &Config::service("shop", "shop.local"),
            "shop.local",
            resolver().expect("system resolver"),
        );
        let ip = service.own_address_of("localhost").await.expect("resolves");
        assert!(ip.is_loopback(), "{ip}");
    }

    #[tokio::test]
    async fn an_advertised_name_of_another_machine_is_an_error_that_names_it() {
        let dns = name_server(1, 0).await;
        let service = service_at(SRV_NAME, dns);
        let error = service
            .own_address_of("pod-1.shop.svc.cluster.local.")
            .await
            .expect_err("10.1.0.1 is not this machine's");
        assert!(
            error.contains("advertised_host") && error.contains("10.1.0.1"),
            "{error}"
        );
        let error = service
            .own_address_of("nothing.shop.svc.cluster.local.")
            .await
            .expect_err("NXDOMAIN");
        assert!(error.contains("nothing.shop"), "{error}");
    }

    #[test]
    fn compose_aliases_with_underscores_are_names() {
        // The Elixir original's alias; a strict parse refuses it.
        assert!(Name::from_str_relaxed("cloister_test.local").is_ok());
        assert!(Name::from_str_relaxed("_node._tcp.cloister.default.svc.cluster.local").is_ok());
    }
}
