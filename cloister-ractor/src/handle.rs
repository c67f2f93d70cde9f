//! The ring handle: lock-free reads of the latest ring and view, from any thread.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use cloister_core::{Digest, NodeName, NodeState, Ring, Snapshot};

/// What a [`Cloister`] handle reads: replaced whole by the Manager on every
/// change, never mutated.
#[derive(Debug)]
pub(crate) struct View {
    pub(crate) ring: Arc<Ring>,
    pub(crate) snapshot: Snapshot,
    /// Ready ractor_cluster sessions by id: which node a remote actor is on
    /// (a remote `ActorId`'s node is its session's id).
    pub(crate) sessions: Arc<BTreeMap<u64, NodeName>>,
}

/// A cheap, cloneable handle on this node's view of the cluster.
///
/// Every read loads the latest snapshot the Manager published (an atomic
/// pointer swap): no actor round trip, callable from any thread, never
/// blocking. Two nodes whose `digest()` is equal answer `node_for` alike,
/// provided they run with the same `ring_vnodes` (a cluster-wide setting).
///
/// ```no_run
/// # fn demo(cloister: cloister_ractor::Cloister) {
/// match cloister.node_for("user:42") {
///     Some(owner) if owner == *cloister.me() => { /* handle it here */ }
///     Some(owner) => { /* forward to owner */ let _ = owner; }
///     None => { /* this node has left the cluster */ }
/// }
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Cloister {
    view: Arc<ArcSwap<View>>,
    me: NodeName,
}

impl Cloister {
    pub(crate) fn new(view: Arc<ArcSwap<View>>, me: NodeName) -> Self {
        Cloister { view, me }
    }

    /// The whole current view, for the routing functions.
    pub(crate) fn view(&self) -> arc_swap::Guard<Arc<View>> {
        self.view.load()
    }

    /// This node's name.
    pub fn me(&self) -> &NodeName {
        &self.me
    }

    /// The member that owns `key`; `None` only when the ring is empty.
    pub fn node_for(&self, key: impl AsRef<[u8]>) -> Option<NodeName> {
        self.view.load().ring.node_for(key).cloned()
    }

    /// Up to `n` distinct members for `key`, its owner first: where to keep
    /// replicas.
    pub fn nodes_for(&self, key: impl AsRef<[u8]>, n: usize) -> Vec<NodeName> {
        self.view
            .load()
            .ring
            .nodes_for(key, n)
            .into_iter()
            .cloned()
            .collect()
    }

    /// True when this node owns `key` (cloister's `mine?`).
    pub fn is_mine(&self, key: impl AsRef<[u8]>) -> bool {
        self.view.load().ring.node_for(key) == Some(&self.me)
    }

    /// The members, sorted, this node included.
    pub fn members(&self) -> Vec<NodeName> {
        self.view.load().ring.members().to_vec()
    }

    /// The current ring itself, for many lookups against one version.
    pub fn ring(&self) -> Arc<Ring> {
        Arc::clone(&self.view.load().ring)
    }

    /// This node's state.
    pub fn state(&self) -> NodeState {
        self.view.load().snapshot.state
    }

    /// The sentry: the member up longest, marked to run singleton work
    /// (cloister's sentry). Every member that agrees on the membership (equal
    /// [`Cloister::digest`]) agrees on it, with no extra message; two sides of
    /// a partition each have their own.
    pub fn sentry(&self) -> NodeName {
        self.view.load().snapshot.sentry.clone()
    }

    /// True when this node is the sentry.
    pub fn is_sentry(&self) -> bool {
        self.view.load().snapshot.sentry == self.me
    }

    /// The digest of the current ring.
    pub fn digest(&self) -> Digest {
        self.view.load().ring.digest()
    }

    /// The whole view: state, members, digest, whether members agree.
    pub fn snapshot(&self) -> Snapshot {
        self.view.load().snapshot.clone()
    }
}
