//! Typed groups: one actor per node under a name, all taking one message
//! type, so routing a message of another type does not compile.
//!
//! A group is a ractor `pg` group, so ractor_cluster shows each node's
//! member to its peers. Joining is asynchronous across nodes: a peer sees a
//! new member a moment after it joined (a few milliseconds on a LAN), so a
//! node that just came up may have no actor in the group yet.
//! [`Cloister::await_group`] waits for that.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use cloister_core::NodeName;
use ractor::{ActorRef, Message};

use crate::{Cloister, RouteError};

/// A named group whose actors take messages of type `M`: what [`Cloister::route`],
/// [`Cloister::call_owner`], [`Cloister::multicast`], [`Cloister::multicall`],
/// [`Cloister::owner_of`] and [`Cloister::actor_on`] address. Make it once, as
/// a constant every node shares; the name is what crosses the network, the
/// type is checked where you write the call.
///
/// # Examples
///
/// One counter actor per node, joined at start, reached by key:
///
/// ```no_run
/// use cloister_ractor::Group;
/// use ractor::{Actor, ActorProcessingErr, ActorRef};
///
/// #[derive(ractor_cluster::RactorClusterMessage)]
/// enum CounterMsg {
///     Add(u64),
/// }
///
/// const COUNTER: Group<CounterMsg> = Group::new("counter");
///
/// struct Counter;
/// impl Actor for Counter {
///     type Msg = CounterMsg;
///     type State = u64;
///     type Arguments = ();
///     async fn pre_start(&self, myself: ActorRef<CounterMsg>, _: ()) -> Result<u64, ActorProcessingErr> {
///         COUNTER.join(&myself);
///         Ok(0)
///     }
///     async fn handle(&self, _: ActorRef<CounterMsg>, CounterMsg::Add(n): CounterMsg, total: &mut u64)
///         -> Result<(), ActorProcessingErr> {
///         *total += n;
///         Ok(())
///     }
/// }
///
/// # fn demo(cloister: cloister_ractor::Cloister) -> Result<(), cloister_ractor::RouteError> {
/// let owner = cloister.route(COUNTER, "user:42", CounterMsg::Add(1))?;
/// # let _ = owner; Ok(()) }
/// ```
///
/// A message of another type is refused by the compiler, not at run time:
///
/// ```compile_fail
/// # use cloister_ractor::Group;
/// # #[derive(ractor_cluster::RactorClusterMessage)]
/// # enum CounterMsg { Add(u64) }
/// # #[derive(ractor_cluster::RactorClusterMessage)]
/// # enum ChatMsg { Say(String) }
/// const COUNTER: Group<CounterMsg> = Group::new("counter");
/// # fn demo(cloister: cloister_ractor::Cloister) -> Result<(), cloister_ractor::RouteError> {
/// cloister.route(COUNTER, "user:42", ChatMsg::Say("hi".into()))?; // error: expected `CounterMsg`
/// # Ok(()) }
/// ```
///
/// So is an actor of another type joining the group:
///
/// ```compile_fail
/// # use cloister_ractor::Group;
/// # #[derive(ractor_cluster::RactorClusterMessage)]
/// # enum CounterMsg { Add(u64) }
/// # #[derive(ractor_cluster::RactorClusterMessage)]
/// # enum ChatMsg { Say(String) }
/// const COUNTER: Group<CounterMsg> = Group::new("counter");
/// # fn demo(chat: ractor::ActorRef<ChatMsg>) {
/// COUNTER.join(&chat); // error: expected `ActorRef<CounterMsg>`
/// # }
/// ```
pub struct Group<M> {
    name: &'static str,
    /// The message type, without owning one (and `Send`/`Sync` whatever it is).
    messages: PhantomData<fn(M)>,
}

impl<M> Group<M> {
    /// The group `name`, whose actors take `M`. Every node must use the
    /// same name with the same type: the name is all that crosses nodes.
    pub const fn new(name: &'static str) -> Self {
        Group {
            name,
            messages: PhantomData,
        }
    }

    /// The group's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The ractor `pg` group behind it.
    pub(crate) fn pg(&self) -> String {
        format!("cloister:group:{}", self.name)
    }
}

impl<M: Message> Group<M> {
    /// Makes `actor` this node's actor in the group. One actor per node per
    /// group: routing addresses the group's actor on a node. It stays this
    /// node's actor until it stops; to replace it, stop it and join the new
    /// one. Peers see it a moment later (see [`Cloister::await_group`]).
    pub fn join(&self, actor: &ActorRef<M>) {
        ractor::pg::join(self.pg(), vec![actor.get_cell()]);
    }
}

// By hand: derived impls would ask `M` for them too.
impl<M> Clone for Group<M> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<M> Copy for Group<M> {}
impl<M> fmt::Debug for Group<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Group({:?})", self.name)
    }
}
impl<M> PartialEq for Group<M> {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
    }
}
impl<M> Eq for Group<M> {}

/// How often [`Cloister::await_group`] looks again.
const AWAIT_POLL: Duration = Duration::from_millis(5);

impl Cloister {
    /// Waits until every member has an actor in `group`, or fails after
    /// `timeout` with [`RouteError::GroupIncomplete`] naming the members
    /// still without one. A node that just came up (a `NodeUp` a moment
    /// ago) joins its groups a few milliseconds later as its peers see it;
    /// routing meanwhile fails with [`RouteError::NoSuchActor`].
    ///
    /// Spawn your group actors after the Manager, in the same supervisor:
    /// with `spawn_linked` (held until consensus) they start in an assembled
    /// cluster, and the members that started before them wait here.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # #[derive(ractor_cluster::RactorClusterMessage, Clone)]
    /// # enum CounterMsg { Add(u64) }
    /// # const COUNTER: cloister_ractor::Group<CounterMsg> = cloister_ractor::Group::new("counter");
    /// # async fn demo(cloister: cloister_ractor::Cloister) -> Result<(), cloister_ractor::RouteError> {
    /// cloister.await_group(COUNTER, Duration::from_secs(5)).await?;
    /// cloister.multicast(COUNTER, CounterMsg::Add(1)); // every member has a counter
    /// # Ok(()) }
    /// ```
    pub async fn await_group<M: Message>(
        &self,
        group: Group<M>,
        timeout: Duration,
    ) -> Result<(), RouteError> {
        self.await_members(group, None, timeout).await
    }

    /// [`Cloister::await_group`] for one node: waits until `node` has an
    /// actor in `group` (for instance after its `NodeUp`).
    pub async fn await_group_on<M: Message>(
        &self,
        group: Group<M>,
        node: &NodeName,
        timeout: Duration,
    ) -> Result<(), RouteError> {
        self.await_members(group, Some(node), timeout).await
    }

    async fn await_members<M: Message>(
        &self,
        group: Group<M>,
        node: Option<&NodeName>,
        timeout: Duration,
    ) -> Result<(), RouteError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let missing: Vec<NodeName> = {
                let view = self.view();
                if let Some(cause) = &view.stopped {
                    return Err(RouteError::Stopped(cause.clone()));
                }
                let nodes = match node {
                    Some(node) => vec![node.clone()],
                    None => view.ring.members().to_vec(),
                };
                (nodes.into_iter())
                    .filter(|n| self.find(&view, group, n).is_err())
                    .collect()
            };
            if missing.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RouteError::GroupIncomplete {
                    group: group.name().to_string(),
                    missing,
                    waited: timeout,
                });
            }
            tokio::time::sleep(AWAIT_POLL).await;
        }
    }
}
