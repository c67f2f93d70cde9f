//! One Manager in this process (pg and the registry are process-wide, so
//! multi-node behaviour is tested over real processes in `tests/`): what a
//! subscriber, a listener and a caller see.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloister_core::{Config, Host, NodeState, TopologyEvent};
use cloister_ractor::{CloisterManager, CloisterMessage, Group, Listener};
use ractor::{Actor, ActorProcessingErr, ActorRef};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn alone(port: u16) -> Config {
    alone_as("solo", port)
}

/// A lone node of `app`. Names are process-wide (the registry, pg): tests
/// that may overlap in time use different apps.
fn alone_as(app: &str, port: u16) -> Config {
    let mut config = Config::nodes(app, [format!("{app}@127.0.0.1:{port}")])
        .unwrap()
        .with_listen_port(port)
        .with_listen_addr([127, 0, 0, 1].into());
    config.advertised_host = Some(Host::Ip([127, 0, 0, 1].into()));
    config
}

/// Collects what it is sent.
struct Collector;

impl Actor for Collector {
    type Msg = Got;
    type State = Arc<Mutex<Vec<TopologyEvent>>>;
    type Arguments = Arc<Mutex<Vec<TopologyEvent>>>;

    async fn pre_start(
        &self,
        _: ActorRef<Got>,
        seen: Self::Arguments,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(seen)
    }

    async fn handle(
        &self,
        _: ActorRef<Got>,
        Got(event): Got,
        seen: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        seen.lock().unwrap().push(event);
        Ok(())
    }
}

struct Got(TopologyEvent);
impl ractor::Message for Got {}

struct Transitions(Arc<Mutex<Vec<(NodeState, NodeState)>>>);

impl Listener for Transitions {
    fn on_state_change(&self, from: NodeState, to: NodeState, _: &cloister_core::Snapshot) {
        self.0.lock().unwrap().push((from, to));
    }
}

async fn wait(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..200 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    done()
}

#[tokio::test]
async fn a_lone_node_with_consensus_one_is_ready_and_tells_everyone() {
    let port = free_port();
    // Consensus 1: spawn returns as soon as the node sees itself.
    let (manager, join, cloister) = CloisterManager::spawn(None, alone(port)).await.unwrap();
    assert_eq!(cloister.state(), NodeState::Ready);
    assert_eq!(cloister.members(), vec![cloister.me().clone()]);
    assert!(cloister.is_mine("any key"));
    let asked = ractor::call!(manager, CloisterMessage::NodeFor, "user:42".to_string()).unwrap();
    assert_eq!(asked.as_ref(), Some(cloister.me()));

    // A subscriber's first event is the current view.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (collector, _) = Actor::spawn(None, Collector, Arc::clone(&seen))
        .await
        .unwrap();
    cloister_ractor::subscribe(&manager, collector, |event| Some(Got(event))).unwrap();
    assert!(wait(|| !seen.lock().unwrap().is_empty()).await);
    match &seen.lock().unwrap()[0] {
        TopologyEvent::Snapshot { snapshot } => assert_eq!(snapshot.state, NodeState::Ready),
        other => panic!("first event was {other:?}"),
    }

    // Leaving: the listener and the subscriber see Ready -> Stopping -> Stopped.
    let transitions = Arc::new(Mutex::new(Vec::new()));
    cloister_ractor::add_listener(&manager, Transitions(Arc::clone(&transitions))).unwrap();
    manager.cast(CloisterMessage::Leave(None)).unwrap();
    tokio::time::timeout(Duration::from_secs(10), join)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        *transitions.lock().unwrap(),
        vec![
            (NodeState::Ready, NodeState::Stopping),
            (NodeState::Stopping, NodeState::Stopped)
        ]
    );
    assert!(
        wait(|| seen.lock().unwrap().iter().any(|e| matches!(
            e,
            TopologyEvent::StateChanged {
                to: NodeState::Stopped,
                ..
            }
        )))
        .await
    );
    // Before it stopped, the application was told to drain.
    assert!(seen
        .lock()
        .unwrap()
        .iter()
        .any(|e| matches!(e, TopologyEvent::Leaving { .. })));
}

#[tokio::test]
async fn a_taken_port_is_an_error_not_a_panic() {
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let error = CloisterManager::spawn(None, alone(port)).await.unwrap_err();
    let text = error.to_string();
    assert!(text.contains(&port.to_string()), "{text}");
    assert!(!text.contains("panicked"), "{text}");
}

#[tokio::test]
async fn the_default_cookie_beyond_loopback_is_refused_before_the_port_is_bound() {
    let port = free_port();
    let config = alone(port).with_listen_addr([0, 0, 0, 0].into());
    let error = CloisterManager::spawn(None, config.clone())
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        matches!(error, cloister_ractor::CloisterError::Config(_)),
        "{text}"
    );
    assert!(
        text.contains("`cookie`") && text.contains("CLOISTER_COOKIE"),
        "{text}"
    );
    // Nothing kept the port.
    std::net::TcpListener::bind(("0.0.0.0", port)).expect("the port is free");
    // A cookie of its own, and the same node starts.
    let (manager, join, _) = CloisterManager::spawn(None, config.with_cookie("our own secret"))
        .await
        .unwrap();
    manager.stop(None);
    join.await.unwrap();
}

#[tokio::test]
async fn a_bad_config_is_refused_before_anything_starts() {
    let mut config = alone(free_port());
    config.consensus = 0;
    let error = CloisterManager::spawn(None, config).await.unwrap_err();
    assert!(error.to_string().contains("consensus"), "{error}");
}

/// Takes every request and drops its reply port.
struct Silent;

enum Ask {
    Ping(ractor::RpcReplyPort<u32>),
}
impl ractor::Message for Ask {}

const SILENT: Group<Ask> = Group::new("silent");
const NOBODY: Group<Ask> = Group::new("nobody");
const NUMBERED: Group<Ask> = Group::new("numbered");

impl Actor for Silent {
    type Msg = Ask;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, myself: ActorRef<Ask>, _: ()) -> Result<(), ActorProcessingErr> {
        SILENT.join(&myself);
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<Ask>,
        Ask::Ping(reply): Ask,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        drop(reply);
        Ok(())
    }
}

#[tokio::test]
async fn a_routing_error_says_what_went_wrong() {
    use cloister_ractor::RouteError;
    let (manager, join, cloister) = CloisterManager::spawn(None, alone_as("routing", free_port()))
        .await
        .unwrap();
    let (silent, silent_join) = Actor::spawn(None, Silent, ()).await.unwrap();
    let timeout = Duration::from_secs(5);

    let dropped = cloister
        .call_owner(SILENT, "user:42", Ask::Ping, timeout)
        .await;
    assert_eq!(
        dropped.unwrap_err(),
        RouteError::NoReply(cloister.me().clone())
    );
    let missing = cloister
        .call_owner(NOBODY, "user:42", Ask::Ping, timeout)
        .await;
    assert_eq!(
        missing.unwrap_err(),
        RouteError::NoSuchActor {
            group: "nobody".into(),
            node: cloister.me().clone()
        }
    );

    // Waiting for a group: at once when every member has an actor in it,
    // an error naming those without one otherwise.
    assert_eq!(cloister.await_group(SILENT, timeout).await, Ok(()));
    let waited = Duration::from_millis(50);
    assert_eq!(
        cloister.await_group(NOBODY, waited).await,
        Err(RouteError::GroupIncomplete {
            group: "nobody".into(),
            missing: vec![cloister.me().clone()],
            waited
        })
    );

    silent.stop(None);
    silent_join.await.unwrap();
    manager.stop(None);
    join.await.unwrap();
}

#[tokio::test]
async fn under_an_external_ring_routing_refuses_and_says_why() {
    use cloister_core::config::RingMode;
    use cloister_ractor::RouteError;
    let config = Config {
        ring: RingMode::External,
        ..alone_as("external", free_port())
    };
    let (manager, join, cloister) = CloisterManager::spawn(None, config).await.unwrap();
    assert_eq!(cloister.members(), vec![cloister.me().clone()]);
    assert_eq!(cloister.node_for("user:42"), None);
    let refused = cloister.route(
        Group::new("anything"),
        "user:42",
        Ask::Ping(ractor::concurrency::oneshot().0.into()),
    );
    let error = refused.unwrap_err();
    assert_eq!(error, RouteError::ExternalRing);
    assert!(error.to_string().contains("actor_on"), "{error}");
    manager.stop(None);
    join.await.unwrap();
}

#[tokio::test]
async fn without_quorum_routing_by_key_refuses_and_no_sentry_is_named() {
    use cloister_core::config::Quorum;
    use cloister_ractor::RouteError;
    // Listed with two peers that do not run: one of three is no majority.
    let (port, absent) = (free_port(), [free_port(), free_port()]);
    let mut config = Config::nodes(
        "quorate",
        std::iter::once(format!("quorate@127.0.0.1:{port}"))
            .chain(absent.map(|p| format!("quorate{p}@127.0.0.1:{p}"))),
    )
    .unwrap()
    .with_listen_port(port)
    .with_listen_addr([127, 0, 0, 1].into())
    .with_quorum(Quorum::Majority);
    config.advertised_host = Some(Host::Ip([127, 0, 0, 1].into()));
    let (manager, join, cloister) = CloisterManager::spawn_unheld(None, config, None)
        .await
        .unwrap();
    let (silent, silent_join) = Actor::spawn(None, Silent, ()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_eq!(cloister.state(), NodeState::Assembling);
    assert_eq!(cloister.sentry(), None);
    assert!(!cloister.is_sentry());
    let refused = cloister
        .call_owner(SILENT, "user:42", Ask::Ping, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(
        refused,
        RouteError::NoQuorum {
            members: 1,
            needed: 2
        }
    );
    assert!(refused.to_string().contains("no quorum"), "{refused}");

    silent.stop(None);
    silent_join.await.unwrap();
    manager.stop(None);
    join.await.unwrap();
}

/// Hands each request to another thread, which lets it go `DROP_AFTER`
/// later without an answer: as ractor_cluster's generated remote call does
/// when its own timer, started after the caller's, fires.
struct LateDropper;

/// When [`LateDropper`] lets a request go, after it came.
const DROP_AFTER: Duration = Duration::from_millis(250);

impl Actor for LateDropper {
    type Msg = Ask;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, myself: ActorRef<Ask>, _: ()) -> Result<(), ActorProcessingErr> {
        LATE.join(&myself);
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<Ask>,
        Ask::Ping(reply): Ask,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        std::thread::spawn(move || {
            std::thread::sleep(DROP_AFTER);
            drop(reply);
        });
        Ok(())
    }
}

const LATE: Group<Ask> = Group::new("late");

#[tokio::test]
async fn a_request_dropped_after_the_timeout_is_a_timeout_not_a_dropped_request() {
    use cloister_ractor::RouteError;
    let (manager, join, cloister) = CloisterManager::spawn(None, alone_as("late", free_port()))
        .await
        .unwrap();
    let (late, late_join) = Actor::spawn(None, LateDropper, ()).await.unwrap();
    let timeout = Duration::from_millis(200);

    // This test's runtime has one thread: block it from before the timeout
    // until after the drop, so that when the caller runs again its port is
    // already closed and its timer has fired, the order a loaded machine
    // gives a remote call. (A remote call's port is always dropped at or
    // after the caller's timeout: its timer starts later.)
    let blocker = tokio::spawn(async {
        tokio::time::sleep(Duration::from_millis(150)).await;
        std::thread::sleep(Duration::from_millis(600));
    });
    let asked = cloister
        .call_owner(LATE, "user:42", Ask::Ping, timeout)
        .await;
    blocker.await.unwrap();
    assert_eq!(
        asked.unwrap_err(),
        RouteError::Timeout {
            node: cloister.me().clone(),
            timeout
        }
    );

    late.stop(None);
    late_join.await.unwrap();
    manager.stop(None);
    join.await.unwrap();
}

/// Answers every ping with its own number.
struct Numbered;

impl Actor for Numbered {
    type Msg = Ask;
    type State = u32;
    type Arguments = u32;

    async fn pre_start(&self, myself: ActorRef<Ask>, n: u32) -> Result<u32, ActorProcessingErr> {
        NUMBERED.join(&myself);
        Ok(n)
    }

    async fn handle(
        &self,
        _: ActorRef<Ask>,
        Ask::Ping(reply): Ask,
        n: &mut u32,
    ) -> Result<(), ActorProcessingErr> {
        let _ = reply.send(*n);
        Ok(())
    }
}

#[tokio::test]
async fn routing_reaches_the_actor_that_replaced_a_stopped_one() {
    let (manager, join, cloister) = CloisterManager::spawn(None, alone_as("replaced", free_port()))
        .await
        .unwrap();
    let timeout = Duration::from_secs(5);
    let (first, first_join) = Actor::spawn(None, Numbered, 1).await.unwrap();
    let asked = cloister.call_owner(NUMBERED, "k", Ask::Ping, timeout).await;
    assert_eq!(asked, Ok((cloister.me().clone(), 1)));

    // Routing remembered the first actor; a stopped one is looked up again.
    first.stop(None);
    first_join.await.unwrap();
    let (second, second_join) = Actor::spawn(None, Numbered, 2).await.unwrap();
    let asked = cloister.call_owner(NUMBERED, "k", Ask::Ping, timeout).await;
    assert_eq!(asked, Ok((cloister.me().clone(), 2)));

    second.stop(None);
    second_join.await.unwrap();
    manager.stop(None);
    join.await.unwrap();
}
