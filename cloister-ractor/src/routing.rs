//! Working across the cluster: reach the actor that owns a key, or a named
//! group's actor on every member.
//!
//! A [`Group`] is a name under which one actor per node joins, typed by the
//! messages its actors take. Lookups read one version of the ring and never
//! block: when the owner's node is gone or has no actor in the group, the
//! caller gets an error at once instead of a silent drop.
//!
//! Messages that cross nodes need a network-serializable type:
//! `#[derive(ractor_cluster::RactorClusterMessage)]`, with `#[rpc]` on the
//! variants that carry an `RpcReplyPort` (whose reply type, like every
//! field, implements `ractor::BytesConvertable`).

use std::time::Duration;

use cloister_core::NodeName;
use ractor::rpc::CallResult;
use ractor::{ActorCell, ActorRef, Message, RpcReplyPort};

use crate::group::Group;
use crate::handle::{Cloister, Found, View};
use crate::members::{is_closing, member_on};

/// Why a message could not be routed. Nothing was sent unless said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The ring is empty: this node is leaving (its ring no longer holds
    /// it) and no other member is left.
    #[error("the ring has no members")]
    EmptyRing,
    /// This node runs with `ring = "external"`: cloister keeps no hash ring
    /// to route by. Find the node with your own ring, then use
    /// [`Cloister::actor_on`].
    #[error("cloister keeps no ring to route by (`ring = \"external\"`): place the key with your own ring and use `actor_on`")]
    ExternalRing,
    /// A `quorum` is configured and this node's ring does not hold it (the
    /// minority side of a partition, or most of the cluster gone): the
    /// owner here may not be the owner on the side that holds quorum, so
    /// nothing is routed by key. Nothing was sent. It passes once enough
    /// members are back.
    #[error("no quorum: this node sees {members} member(s), {needed} are needed; routing by key is refused until enough are back")]
    NoQuorum {
        /// Members this node sees, itself included.
        members: usize,
        /// Members the `quorum` setting needs.
        needed: usize,
    },
    /// The owner is a member, but no actor of the group runs on it.
    #[error("no actor of group `{group}` on {node}")]
    NoSuchActor {
        /// The group asked for.
        group: String,
        /// The node that should have had one.
        node: NodeName,
    },
    /// The node owned the key in the ring the caller read, but its session
    /// has closed since: it is gone (or going) from the ring.
    #[error("{0} is no longer connected")]
    NodeGone(NodeName),
    /// Under `sessions = "bounded"`: the node is a member this node holds
    /// no session with yet. One is being opened; nothing was sent. Try
    /// again in a moment: [`Cloister::call_owner`] waits for it within
    /// its timeout.
    #[error("no session with {0} yet (`sessions = \"bounded\"`): one is being opened, nothing was sent; try again in a moment")]
    Connecting(NodeName),
    /// The message could not be sent (the actor stopped meanwhile).
    #[error("sending to {node} failed: {reason}")]
    SendFailed {
        /// The node.
        node: NodeName,
        /// What ractor said.
        reason: String,
    },
    /// The request was dropped before the timeout, without a reply, and
    /// its node is still connected: the actor stopped while it held the
    /// request, or a handler let the reply port go. (A remote handler that
    /// drops the port sends nothing back: across nodes that shows as
    /// [`RouteError::Timeout`].)
    #[error("{0}'s actor dropped the request without replying")]
    NoReply(NodeName),
    /// No reply within the timeout from a node that is still connected: it
    /// is slow, frozen or overloaded, or (across nodes) its handler dropped
    /// the request.
    #[error("{node} did not reply within {timeout:?}")]
    Timeout {
        /// The node.
        node: NodeName,
        /// The time waited: the timeout given.
        timeout: Duration,
    },
    /// [`Cloister::await_group`] waited `waited` and these members still
    /// had no actor in the group.
    #[error("after {waited:?}, no actor of group `{group}` on {}", names(.missing))]
    GroupIncomplete {
        /// The group waited for.
        group: String,
        /// The members without an actor in it.
        missing: Vec<NodeName>,
        /// How long it waited.
        waited: Duration,
    },
    /// The cloister Manager of this node is gone (it left, failed or was
    /// stopped): this handle no longer routes. A restarted Manager gives a
    /// new handle.
    #[error(
        "the cloister manager of this node is not running ({0}); this handle no longer routes"
    )]
    Stopped(String),
}

fn names(nodes: &[NodeName]) -> String {
    let names: Vec<String> = nodes.iter().map(ToString::to_string).collect();
    names.join(", ")
}

/// Every reply of a [`Cloister::multicall`], and every node that failed.
#[derive(Debug)]
pub struct Multicall<R> {
    /// The replies, by node, in member order.
    pub replies: Vec<(NodeName, R)>,
    /// The members that did not reply, and why.
    pub failures: Vec<(NodeName, RouteError)>,
}

impl View {
    /// Whom multicast and multicall address: every member, or this node
    /// alone once the Manager is gone, so the caller sees `Stopped` rather
    /// than an empty answer.
    fn targets(&self, me: &NodeName) -> Vec<NodeName> {
        match self.stopped {
            Some(_) => vec![me.clone()],
            None => self.ring.members().to_vec(),
        }
    }

    /// The group's actor on `node`, per this view. Found once by scanning
    /// the group, then by name while it runs: an actor that stops is looked
    /// up again, and a session change brings a new view, found afresh.
    pub(crate) fn actor_on<M>(
        &self,
        me: &NodeName,
        group: Group<M>,
        node: &NodeName,
    ) -> Result<ActorCell, RouteError> {
        if let Some(cause) = &self.stopped {
            return Err(RouteError::Stopped(cause.clone()));
        }
        let found = self.found.load();
        if let Some(cell) = found.get(group.name()).and_then(|nodes| nodes.get(node)) {
            if !is_closing(cell) {
                return Ok(cell.clone());
            }
        }
        if let Some(cell) = member_on(&group.pg(), node, me, &self.sessions) {
            self.found.rcu(|found| {
                let mut found = Found::clone(found);
                let nodes = found.entry(group.name().to_string()).or_default();
                nodes.insert(node.clone(), cell.clone());
                found
            });
            return Ok(cell);
        }
        if node != me && !self.connected(node) {
            if self.on_demand && self.ring.contains(node) {
                return Err(RouteError::Connecting(node.clone()));
            }
            return Err(RouteError::NodeGone(node.clone()));
        }
        Err(RouteError::NoSuchActor {
            group: group.name().to_string(),
            node: node.clone(),
        })
    }
}

impl Cloister {
    /// The group's actor on a given member: for replicas (the nodes of
    /// [`Cloister::nodes_for`]) or for placement the application keeps
    /// itself. This node's own actor comes without a network hop.
    ///
    /// # Examples
    ///
    /// Put a key on its owner and on the next node of the ring:
    ///
    /// ```no_run
    /// # use cloister_ractor::Group;
    /// # #[derive(ractor_cluster::RactorClusterMessage)]
    /// # enum KvMsg { Put(String, String) }
    /// const KV: Group<KvMsg> = Group::new("kv");
    /// # fn demo(cloister: cloister_ractor::Cloister) -> Result<(), Box<dyn std::error::Error>> {
    /// for node in cloister.nodes_for("user:42", 2) {
    ///     let kv = cloister.actor_on(KV, &node)?;
    ///     kv.cast(KvMsg::Put("user:42".into(), "Ada".into()))?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn actor_on<M: Message>(
        &self,
        group: Group<M>,
        node: &NodeName,
    ) -> Result<ActorRef<M>, RouteError> {
        let cell = self.find(&self.view(), group, node)?;
        Ok(cell.into())
    }

    /// The owner of `key` and its actor in `group`. Refused with
    /// [`RouteError::NoQuorum`] while a configured `quorum` is not held.
    ///
    /// # Examples
    ///
    /// Look the owner up once, then talk to its actor directly:
    ///
    /// ```no_run
    /// # use cloister_ractor::Group;
    /// # #[derive(ractor_cluster::RactorClusterMessage)]
    /// # enum KvMsg { Put(String, String) }
    /// const KV: Group<KvMsg> = Group::new("kv");
    /// # fn demo(cloister: cloister_ractor::Cloister) -> Result<(), Box<dyn std::error::Error>> {
    /// let (owner, kv) = cloister.owner_of(KV, "user:42")?;
    /// kv.cast(KvMsg::Put("user:42".into(), "Ada".into()))?;
    /// println!("user:42 is kept on {owner}");
    /// # Ok(()) }
    /// ```
    pub fn owner_of<M: Message>(
        &self,
        group: Group<M>,
        key: impl AsRef<[u8]>,
    ) -> Result<(NodeName, ActorRef<M>), RouteError> {
        let view = self.view();
        if let Some(cause) = &view.stopped {
            return Err(RouteError::Stopped(cause.clone()));
        }
        if !view.snapshot.holds_quorum() {
            return Err(RouteError::NoQuorum {
                members: view.snapshot.members.len(),
                needed: view.snapshot.quorum.unwrap_or_default(),
            });
        }
        let owner = match view.ring.node_for(key) {
            Some(owner) => owner.clone(),
            None if view.ring.vnodes() == 0 => return Err(RouteError::ExternalRing),
            None => return Err(RouteError::EmptyRing),
        };
        let cell = self.find(&view, group, &owner)?;
        Ok((owner, cell.into()))
    }

    /// Sends `message` to the owner of `key` in `group`; returns the owner.
    /// A cast: `Ok` means it left for the owner's session, not that it
    /// arrived (use [`Cloister::call_owner`] to know).
    ///
    /// # Examples
    ///
    /// Fire and forget to whichever node owns the key:
    ///
    /// ```no_run
    /// use cloister_ractor::Group;
    ///
    /// #[derive(ractor_cluster::RactorClusterMessage)]
    /// enum KvMsg {
    ///     Put(String, String),
    /// }
    /// const KV: Group<KvMsg> = Group::new("kv");
    ///
    /// # fn demo(cloister: cloister_ractor::Cloister) -> Result<(), cloister_ractor::RouteError> {
    /// let owner = cloister.route(KV, "user:42", KvMsg::Put("user:42".into(), "Ada".into()))?;
    /// # let _ = owner; Ok(()) }
    /// ```
    pub fn route<M: Message>(
        &self,
        group: Group<M>,
        key: impl AsRef<[u8]>,
        message: M,
    ) -> Result<NodeName, RouteError> {
        let (owner, actor) = self.owner_of(group, key)?;
        actor
            .send_message(message)
            .map_err(|e| RouteError::SendFailed {
                node: owner.clone(),
                reason: e.to_string(),
            })?;
        Ok(owner)
    }

    /// Asks the owner of `key` in `group`, waiting at most `timeout`; returns
    /// the owner with its reply, so the caller need not look it up again
    /// (and race a ring change). No answer in time from an owner still
    /// connected is [`RouteError::Timeout`] naming it; an owner gone
    /// meanwhile is [`RouteError::NodeGone`]; a request its actor dropped
    /// early (it stopped) is [`RouteError::NoReply`].
    ///
    /// # Examples
    ///
    /// Read a value from the node that owns it (`#[rpc]` marks the variant
    /// that carries the reply port):
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use cloister_ractor::{Group, RouteError};
    ///
    /// #[derive(ractor_cluster::RactorClusterMessage)]
    /// enum KvMsg {
    ///     #[rpc]
    ///     Get(String, ractor::RpcReplyPort<String>),
    /// }
    /// const KV: Group<KvMsg> = Group::new("kv");
    ///
    /// # async fn demo(cloister: cloister_ractor::Cloister) {
    /// let get = |reply| KvMsg::Get("user:42".into(), reply);
    /// match cloister.call_owner(KV, "user:42", get, Duration::from_millis(500)).await {
    ///     Ok((owner, value)) => println!("{owner} says {value}"),
    ///     Err(RouteError::Timeout { node, timeout }) => eprintln!("{node}: no answer in {timeout:?}"),
    ///     Err(error) => eprintln!("{error}"),
    /// }
    /// # }
    /// ```
    pub async fn call_owner<M, R>(
        &self,
        group: Group<M>,
        key: impl AsRef<[u8]>,
        request: impl FnOnce(RpcReplyPort<R>) -> M,
        timeout: Duration,
    ) -> Result<(NodeName, R), RouteError>
    where
        M: Message,
        R: Send + 'static,
    {
        let asked = tokio::time::Instant::now();
        let deadline = asked + timeout;
        // Under bounded sessions, the owner may be a member without a
        // session yet: it is dialed, and the call waits for it.
        let (owner, actor) = loop {
            match self.owner_of(group, key.as_ref()) {
                Err(RouteError::Connecting(node)) => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(RouteError::Timeout { node, timeout });
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                found => break found?,
            }
        };
        // The wait is what is left of the timeout; an error names the
        // timeout the caller gave.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match self.call(owner.clone(), &actor, request, left).await {
            Ok(reply) => Ok((owner, reply)),
            Err(RouteError::Timeout { node, .. }) => Err(RouteError::Timeout { node, timeout }),
            Err(other) => Err(other),
        }
    }

    /// Sends `message` to the group's actor on every member, this node's
    /// included (without a network hop); returns each member's outcome.
    ///
    /// # Examples
    ///
    /// Tell every node's `cache` actor to drop a key, and log the misses:
    ///
    /// ```no_run
    /// # use cloister_ractor::Group;
    /// # #[derive(ractor_cluster::RactorClusterMessage, Clone)]
    /// # enum CacheMsg { Evict(String) }
    /// const CACHE: Group<CacheMsg> = Group::new("cache");
    /// # fn demo(cloister: cloister_ractor::Cloister) {
    /// for (node, sent) in cloister.multicast(CACHE, CacheMsg::Evict("user:42".into())) {
    ///     if let Err(error) = sent {
    ///         eprintln!("{node} not told: {error}");
    ///     }
    /// }
    /// # }
    /// ```
    pub fn multicast<M: Message + Clone>(
        &self,
        group: Group<M>,
        message: M,
    ) -> Vec<(NodeName, Result<(), RouteError>)> {
        let view = self.view();
        view.targets(self.me())
            .iter()
            .map(|node| {
                let sent = self.find(&view, group, node).and_then(|cell| {
                    ActorRef::<M>::from(cell)
                        .send_message(message.clone())
                        .map_err(|e| RouteError::SendFailed {
                            node: node.clone(),
                            reason: e.to_string(),
                        })
                });
                (node.clone(), sent)
            })
            .collect()
    }

    /// Asks the group's actor on every member at once and waits at most
    /// `timeout` for all of them: every reply with its node, and separately
    /// every member that failed and why (timeout, gone, no such actor).
    ///
    /// # Examples
    ///
    /// Count the keys held across the cluster, naming the nodes that did not
    /// answer:
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use cloister_ractor::Group;
    /// # #[derive(ractor_cluster::RactorClusterMessage)]
    /// # enum KvMsg { #[rpc] Count(ractor::RpcReplyPort<u64>) }
    /// const KV: Group<KvMsg> = Group::new("kv");
    /// # async fn demo(cloister: cloister_ractor::Cloister) {
    /// let all = cloister.multicall(KV, KvMsg::Count, Duration::from_millis(500)).await;
    /// let total: u64 = all.replies.iter().map(|(_, count)| count).sum();
    /// for (node, error) in &all.failures {
    ///     eprintln!("{node} not counted: {error}");
    /// }
    /// # let _ = total; }
    /// ```
    pub async fn multicall<M, R>(
        &self,
        group: Group<M>,
        request: impl Fn(RpcReplyPort<R>) -> M,
        timeout: Duration,
    ) -> Multicall<R>
    where
        M: Message,
        R: Send + 'static,
    {
        let mut calls = Vec::new();
        let mut failures = Vec::new();
        {
            let view = self.view();
            for node in &view.targets(self.me()) {
                match self.find(&view, group, node) {
                    Ok(cell) => calls.push((node.clone(), ActorRef::<M>::from(cell))),
                    Err(error) => failures.push((node.clone(), error)),
                }
            }
        }
        let asked = calls
            .iter()
            .map(|(node, actor)| self.call(node.clone(), actor, &request, timeout));
        let mut replies = Vec::new();
        for ((node, _), outcome) in calls.iter().zip(futures::future::join_all(asked).await) {
            match outcome {
                Ok(reply) => replies.push((node.clone(), reply)),
                Err(error) => failures.push((node.clone(), error)),
            }
        }
        Multicall { replies, failures }
    }
}

impl Cloister {
    /// Asks `actor` on `node`. A dropped reply port means the node went
    /// away when its session is gone too; else, at the timeout, that it did
    /// not answer in time (ractor_cluster's generated remote call drops the
    /// port with a timer of its own, started after ours, so a remote timeout
    /// arrives as a dropped port); before it, that the actor dropped the
    /// request.
    /// The group's actor on `node` in `view`; a member without a session
    /// yet (`sessions = "bounded"`) is asked for from the Manager.
    pub(crate) fn find<M>(
        &self,
        view: &View,
        group: Group<M>,
        node: &NodeName,
    ) -> Result<ActorCell, RouteError> {
        let found = view.actor_on(self.me(), group, node);
        if let Err(RouteError::Connecting(node)) = &found {
            self.request_session(node);
        }
        found
    }

    async fn call<M: Message, R: Send + 'static>(
        &self,
        node: NodeName,
        actor: &ActorRef<M>,
        request: impl FnOnce(RpcReplyPort<R>) -> M,
        timeout: Duration,
    ) -> Result<R, RouteError> {
        let asked = tokio::time::Instant::now();
        match actor.call(request, Some(timeout)).await {
            Ok(CallResult::Success(reply)) => Ok(reply),
            Ok(CallResult::Timeout) => Err(RouteError::Timeout { node, timeout }),
            Ok(CallResult::SenderError) => {
                let connected = node == *self.me() || self.view().connected(&node);
                Err(if !connected {
                    RouteError::NodeGone(node)
                } else if asked.elapsed() >= timeout {
                    RouteError::Timeout { node, timeout }
                } else {
                    RouteError::NoReply(node)
                })
            }
            Err(error) => Err(RouteError::SendFailed {
                node,
                reason: error.to_string(),
            }),
        }
    }
}
