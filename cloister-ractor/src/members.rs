//! Which member of a `pg` group runs on a given node.
//!
//! A remote actor's `ActorId` carries the id of the ractor_cluster session it
//! came through; the Manager keeps which node each ready session is with.
//! While ractor_cluster replaces a duplicate session, a group can hold a
//! peer's actor twice, once per session, and a message to the copy on the
//! closing session is lost: the copy on the newest session wins.

use std::collections::BTreeMap;

use cloister_core::NodeName;
use ractor::{ActorCell, ActorStatus};

/// The member of pg `group` on `node`: the local one when `node` is this
/// node, else the one on `node`'s newest ready session (or an older one if
/// that is all there is). `sessions` maps ready session ids to nodes.
pub(crate) fn member_on(
    group: &str,
    node: &NodeName,
    me: &NodeName,
    sessions: &BTreeMap<u64, NodeName>,
) -> Option<ActorCell> {
    let members = ractor::pg::get_members(&group.to_string());
    if node == me {
        return members.into_iter().find(|cell| cell.get_id().is_local());
    }
    // Session ids only grow, so the last one with this node is the newest.
    let newest = sessions
        .iter()
        .rev()
        .find(|(_, n)| *n == node)
        .map(|(id, _)| *id);
    let mut older = None;
    for cell in members {
        let id = cell.get_id();
        if id.is_local() || sessions.get(&id.node()) != Some(node) {
            continue;
        }
        if Some(id.node()) == newest {
            return Some(cell);
        }
        older.get_or_insert(cell);
    }
    older
}

/// Whether `actor` is on its way out (draining, stopping or stopped): a
/// session whose close is not reported yet, or a remote actor's proxy that a
/// dying session took down with it.
pub(crate) fn is_closing(actor: &ActorCell) -> bool {
    matches!(
        actor.get_status(),
        ActorStatus::Draining | ActorStatus::Stopping | ActorStatus::Stopped
    )
}
