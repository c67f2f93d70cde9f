//! How the Manager carries out the membership machine's effects: dialing,
//! closing sessions, heartbeats, publishing topology events, and the
//! operator's log lines for what the machine reports.

use std::time::Duration;

use cloister_core::{
    DropReason, Effect, Host, Input, NodeAddr, NodeName, NodeState, SessionId, TopologyEvent,
};
use ractor::ActorRef;
use ractor_cluster::NodeServerMessage;

use crate::herald;
use crate::members::member_on;
use crate::sessions::SessionEvent;

use super::{CloisterMessage, Internal, ManagerState};

impl ManagerState {
    pub(super) fn carry_out(&mut self, myself: &ActorRef<CloisterMessage>) {
        while let Some(effect) = self.machine.poll() {
            match effect {
                Effect::Dial {
                    peer,
                    addr,
                    timeout,
                } => self.dial(myself, peer, addr, timeout),
                Effect::Disconnect { peer, session } => self.disconnect(peer, session),
                Effect::Resolve => {
                    if let Some(discovery) = &self.discovery {
                        discovery.resolve_into(myself.clone());
                    }
                }
                Effect::SendHeartbeat { to, heartbeat } => {
                    // The newest ready session with this peer (ids only grow).
                    let group = herald::group(&self.config.app);
                    let me = self.machine.name();
                    match member_on(&group, &to, me, &self.sessions).map(ActorRef::from) {
                        Some(herald) => {
                            let herald: ActorRef<herald::HeraldMessage> = herald;
                            let _ = herald.cast(herald::encode(&heartbeat));
                        }
                        None => self.no_herald_on(to),
                    }
                }
                Effect::Adopt { peer, session } => {
                    if let Some(link) = self.links.get(&session.0) {
                        let adopted = SessionEvent::Adopted {
                            id: session.0,
                            peer: peer.to_string(),
                            actor: link.clone(),
                        };
                        let _ = myself.cast(CloisterMessage::Internal(Internal::Session(adopted)));
                    }
                }
                Effect::Publish(event) => self.publish(event),
                Effect::Left { drained } => self.left(myself, drained),
                Effect::Refused { peer, why } => tracing::warn!(%peer, "{why}"),
                // Authenticated meanwhile: the news is on its way here.
                Effect::CloseSession { session } if self.authenticated.contains(session.0) => {
                    tracing::debug!(
                        session = session.0,
                        "not closing a connection past its handshake deadline: it has \
                         authenticated since"
                    );
                }
                Effect::CloseSession { session } => {
                    if let Some(link) = self.links.get(&session.0) {
                        tracing::debug!(
                            session = session.0,
                            "closing a connection that never authenticated"
                        );
                        link.stop(Some("cloister: handshake timed out".into()));
                    }
                }
                // Long enough to have dropped its peers without the excuse:
                // the operator should know the machine starves it.
                Effect::Stalled { late } if late >= self.config.heartbeat_timeout => {
                    tracing::warn!(
                        late_ms = late.as_millis() as u64,
                        "this node did not run for {late:?} (an overloaded machine or a paused \
                         process): its peers' silence meanwhile is not held against them"
                    );
                }
                Effect::Stalled { late } => tracing::info!(
                    late_ms = late.as_millis() as u64,
                    "this node ran {late:?} late: its peers' silence meanwhile is not held \
                     against them"
                ),
                Effect::Downing { downed, records } => {
                    let names: Vec<String> = downed.iter().map(ToString::to_string).collect();
                    let cuts: Vec<String> = (records.iter())
                        .map(|(observer, subject)| format!("{observer} cannot hear {subject}"))
                        .collect();
                    if names.is_empty() {
                        tracing::info!("partial partition over: nobody is out of the ring any more")
                    } else {
                        tracing::warn!(
                            "partial partition, held for stable_after: out of every ring now [{}] \
                             (contested records: {})",
                            names.join(", "),
                            cuts.join("; ")
                        )
                    }
                }
                Effect::Slow {
                    dial_timeout,
                    handshake_timeout,
                } => tracing::info!(
                    ?dial_timeout,
                    ?handshake_timeout,
                    "dials or handshakes are slower than their timeouts, or fast again: the \
                     timeouts are now {dial_timeout:?} and {handshake_timeout:?}"
                ),
                Effect::Unheard { peer } => tracing::warn!(
                    peer = %peer,
                    "{peer} came back after this node said it down, yet this node still hears \
                     nothing from it: it is alive and others reach it, so the link between the \
                     two fails (a partial partition). It stays a member, and this node will not \
                     say it down again until it hears from it"
                ),
                Effect::Strangers { count, from } => {
                    self.counters.strangers(count);
                    let from = crate::accept::sources(&from);
                    tracing::warn!(
                        count,
                        "{count} connection(s){from} closed without authenticating (a wrong \
                         cookie, not a cloister node, or garbage on the port); counted, logged at \
                         most every {:?}",
                        cloister_core::tally::REPORT_EVERY
                    );
                }
                Effect::Dropped { claimed, why } => match why {
                    DropReason::NotEchoed => tracing::warn!(peer = %claimed, "{why}"),
                    // A peer's hello can beat the ready event of a session
                    // this node has not heard of: not worth a warning.
                    DropReason::NoSession => tracing::debug!(peer = %claimed, "{why}"),
                },
            }
        }
    }

    pub(super) fn dial(
        &mut self,
        myself: &ActorRef<CloisterMessage>,
        peer: NodeName,
        addr: NodeAddr,
        timeout: Duration,
    ) {
        let node_server = self.node_server.clone();
        if let (Some(names), Host::Ip(ip)) = (&mut self.names, addr.host()) {
            let target = std::net::SocketAddr::new(*ip, addr.port()).to_string();
            let keep = timeout * crate::tls::names::KEEP_UNCLAIMED;
            names.dialling(self.epoch.elapsed(), target, peer.clone(), keep);
        }
        let expected = self.config.tls_check_names.then_some(&peer);
        let tls = self.tls.as_ref().map(|tls| tls.connector(expected));
        let myself = myself.clone();
        tokio::spawn(async move {
            // Dialing a peer that already has a session can tear it down
            // (ractor_cluster's duplicate election): look first. The core
            // dials only peers it knows no ready session with, so a session
            // listed here was never reported ready: usually one still
            // syncing (its Ready follows), but ractor_cluster reports
            // readiness only if the session is elected at that moment and
            // says nothing when it wins later, so without adoption such a
            // peer stayed unreachable while its session was fine. Adopted
            // early, a session may not show the peer's herald yet: the
            // core's hello resend covers that.
            if let Ok(sessions) =
                ractor::call_t!(node_server, NodeServerMessage::GetSessions, 1_000)
            {
                // The newest, if several: ids only grow.
                let existing = sessions
                    .values()
                    .filter(|s| {
                        s.peer_name
                            .as_ref()
                            .is_some_and(|p| p.name == peer.as_str())
                    })
                    .max_by_key(|s| s.node_id);
                if let Some(session) = existing {
                    let adopted = SessionEvent::Adopted {
                        id: session.node_id,
                        peer: peer.to_string(),
                        actor: session.actor.get_cell(),
                    };
                    let _ = myself.cast(CloisterMessage::Internal(Internal::Session(adopted)));
                    return;
                }
            }
            let target = match addr.host() {
                Host::Ip(ip) => std::net::SocketAddr::new(*ip, addr.port()).to_string(),
                Host::Dns(_) => addr.to_string(),
            };
            let connect = async {
                match tls {
                    Some(connector) => {
                        let name = crate::tls::server_name(addr.host());
                        ractor_cluster::client_connect_enc(
                            &node_server,
                            target.as_str(),
                            connector,
                            name,
                        )
                        .await
                    }
                    None => ractor_cluster::client_connect(&node_server, target.as_str()).await,
                }
            };
            let result = tokio::time::timeout(timeout, connect).await;
            let error = match result {
                Ok(Ok(())) => return,
                Ok(Err(ractor_cluster::ClientConnectErr::Socket(error))) => {
                    format!("dial {addr} failed: {error}")
                }
                Ok(Err(ractor_cluster::ClientConnectErr::Encryption(error))) => {
                    if let Some(refusal) = crate::tls::names::dial_refusal(&error) {
                        let why = format!("dialled at {addr}: {refusal}");
                        let _ = myself.cast(CloisterMessage::Internal(Internal::Misnamed(why)));
                    }
                    format!("dial {addr} failed in its TLS handshake: {error}")
                }
                Ok(Err(error)) => format!("dial {addr} failed: {error:?}"),
                Err(_) => format!("dial {addr} timed out after {timeout:?}"),
            };
            let _ = myself.cast(CloisterMessage::Internal(Internal::DialFailed(peer, error)));
        });
    }

    /// A heartbeat for `to` found no herald of this app on its newest
    /// session. If a herald of another app runs there, the machine hears
    /// of it (the effects loop that called this carries out its answer).
    fn no_herald_on(&mut self, to: NodeName) {
        let newest = self.sessions.iter().rev().find(|(_, n)| **n == to);
        let other = newest.and_then(|(id, _)| herald::other_app_on(*id, &self.config.app));
        match other {
            Some(app) => {
                let now = self.now();
                self.machine.handle(now, Input::OtherApp { peer: to, app });
            }
            None => tracing::trace!(peer = %to, "no cloister herald on this peer yet"),
        }
    }

    pub(super) fn disconnect(&self, peer: NodeName, session: SessionId) {
        let node_server = self.node_server.clone();
        tokio::spawn(async move {
            let Ok(sessions) = ractor::call_t!(node_server, NodeServerMessage::GetSessions, 1_000)
            else {
                return;
            };
            if let Some(ses) = sessions.get(&session.0) {
                tracing::info!(%peer, "closing the session of a peer still silent a heartbeat_timeout after it was dropped as unresponsive");
                ses.actor.stop(Some("cloister: peer unresponsive".into()));
            }
        });
    }

    /// Tells everyone about `event`: the log, the handle, the listeners and
    /// the subscribers, and only then the waiters, so an application released
    /// by `Ready` starts after its listeners have seen why.
    pub(super) fn publish(&mut self, event: TopologyEvent) {
        match &event {
            TopologyEvent::StateChanged { from, to, snapshot } => {
                if *to == NodeState::NoQuorum {
                    tracing::warn!(
                        members = snapshot.members.len(),
                        quorum = snapshot.quorum,
                        "state {from} -> {to}: fewer members than the quorum; routing by key is refused until enough are back"
                    );
                } else {
                    tracing::info!(
                        members = snapshot.members.len(),
                        consensus = snapshot.consensus,
                        "state {from} -> {to}"
                    );
                }
            }
            TopologyEvent::NodeUp { node, incarnation } => {
                tracing::info!(peer = %node, %incarnation, "node up");
            }
            TopologyEvent::NodeDown { node, reason, .. } => {
                tracing::warn!(peer = %node, %reason, "node down");
            }
            TopologyEvent::RingChanged { members, digest } => {
                tracing::info!(%digest, members = members.len(), "ring changed");
            }
            TopologyEvent::SentryChanged {
                sentry: Some(sentry),
            } => {
                tracing::info!(%sentry, "sentry moved");
            }
            TopologyEvent::SentryChanged { sentry: None }
                if self.machine.state() == NodeState::Stopping =>
            {
                tracing::info!("no sentry: this node is leaving and has no other member");
            }
            TopologyEvent::SentryChanged { sentry: None } => {
                tracing::warn!("no sentry: the members do not hold quorum");
            }
            TopologyEvent::Snapshot { .. } | TopologyEvent::Leaving { .. } => {}
        }
        self.store_view();
        for listener in &self.listeners {
            if let TopologyEvent::StateChanged { from, to, snapshot } = &event {
                listener.on_state_change(*from, *to, snapshot);
            }
            listener.on_event(&event);
        }
        let ready = match &event {
            TopologyEvent::StateChanged {
                to: NodeState::Ready,
                snapshot,
                ..
            } => Some(snapshot.clone()),
            _ => None,
        };
        self.counters.event();
        self.recent.push(self.now(), &event);
        self.subscribers.send(&event);
        if let Some(snapshot) = ready {
            for (_, reply) in self.waiters.drain(..) {
                let _ = reply.send(Ok(snapshot.clone()));
            }
        }
    }
}
