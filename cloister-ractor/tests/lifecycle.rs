//! A Manager over a long life and at its end: its wake-ups stay flat however
//! many sessions come and go, and once it is gone its handles say so.
//! One Manager per test, each of its own app (pg and the registry are
//! process-wide).
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cloister_core::{Config, Host, NodeState};
use cloister_ractor::{
    Cloister, CloisterError, CloisterManager, CloisterMessage, Group, LeaveOutcome, RouteError,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use ractor_cluster::node::NodeConnectionMode;
use ractor_cluster::{NodeServer, NodeServerMessage};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A lone node of `app` on 127.0.0.1, with the default timers.
fn alone_as(app: &str, port: u16) -> Config {
    let mut config = Config::nodes(app, [format!("{app}@127.0.0.1:{port}")])
        .unwrap()
        .with_listen_port(port)
        .with_cookie("lifecycle-cookie");
    config.advertised_host = Some(Host::Ip([127, 0, 0, 1].into()));
    config
}

/// Timer messages per second over `spell`, those that ran the machine and
/// those dropped as replaced, read from the handle's counters.
async fn wakeup_rate(cloister: &Cloister, spell: Duration) -> f64 {
    let ticks = || {
        let stats = cloister.stats();
        stats.wakeups + stats.stale_wakeups
    };
    let (start, before) = (Instant::now(), ticks());
    tokio::time::sleep(spell).await;
    let woke = ticks() - before;
    woke as f64 / start.elapsed().as_secs_f64()
}

/// How many sessions the churner opens and closes: each is four session
/// events on the node under test (opened, authenticated, ready, closed).
const CHURN_SESSIONS: u32 = 250;

#[tokio::test]
async fn wakeups_stay_flat_after_a_thousand_session_events() {
    let port = free_port();
    let (manager, join, cloister) = CloisterManager::spawn(None, alone_as("flat", port))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let at_start = wakeup_rate(&cloister, Duration::from_secs(3)).await;

    // Another process, a plain ractor_cluster node with the cookie, opens
    // and closes sessions with this node, one after another. Each session
    // coming up makes the machine want to run sooner (it introduces itself
    // to the newcomer), so each one arms an earlier wake-up than the one
    // already on its way.
    let churner = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "churner", "--ignored", "--nocapture"])
        .env("CHURN_TARGET_PORT", port.to_string())
        .env("CHURN_SESSIONS", CHURN_SESSIONS.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let output = tokio::task::spawn_blocking(move || churner.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the churner failed: {said}");
    assert!(
        said.contains(&format!("churned {CHURN_SESSIONS}")),
        "{said}"
    );
    let events = cloister.stats();
    assert!(
        events.wakeups > 0 && cloister.state() == NodeState::Ready,
        "{events:?}"
    );

    // Every replaced wake-up was dropped when it came: the node wakes as
    // often as it did at start, not once more per session it ever saw.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = wakeup_rate(&cloister, Duration::from_secs(3)).await;
    let stats = cloister.stats();
    assert!(
        after <= at_start * 2.0 + 5.0,
        "{after:.1} wake-ups/s after {CHURN_SESSIONS} sessions came and went, \
         {at_start:.1}/s at start ({stats:?})"
    );
    assert!(
        stats.stale_wakeups > 0,
        "no wake-up was ever replaced: {stats:?}"
    );

    manager.cast(CloisterMessage::Leave(None)).unwrap();
    tokio::time::timeout(Duration::from_secs(10), join)
        .await
        .unwrap()
        .unwrap();
}

/// Run by the test above in a process of its own (the test binary, started
/// again): opens and closes `CHURN_SESSIONS` sessions with the node at
/// `CHURN_TARGET_PORT`, one at a time. Does nothing when run by hand.
#[tokio::test]
#[ignore = "a helper process of wakeups_stay_flat_after_a_thousand_session_events"]
async fn churner() {
    let Ok(port) = std::env::var("CHURN_TARGET_PORT") else {
        return;
    };
    let sessions: u32 = std::env::var("CHURN_SESSIONS").unwrap().parse().unwrap();
    let server = NodeServer::new(
        free_port(),
        "lifecycle-cookie".into(),
        "churner".into(),
        "127.0.0.1".into(),
        None,
        Some(NodeConnectionMode::Isolated),
    );
    let (server, _) = Actor::spawn(None, server, ()).await.unwrap();
    let target = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(120);
    for i in 0..sessions {
        assert!(Instant::now() < deadline, "only {i} sessions in 120 s");
        ractor_cluster::client_connect(&server, target.as_str())
            .await
            .unwrap();
        // Wait for the session to authenticate, then close it and wait
        // until it is gone.
        let session = loop {
            let listed = ractor::call_t!(server, NodeServerMessage::GetSessions, 5_000).unwrap();
            if let Some(s) = listed.into_values().find(|s| s.peer_name.is_some()) {
                break s;
            }
            assert!(Instant::now() < deadline, "session {i} never came up");
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        session.actor.stop(None);
        loop {
            let listed = ractor::call_t!(server, NodeServerMessage::GetSessions, 5_000).unwrap();
            if listed.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "session {i} never closed");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    println!("churned {sessions}");
    server.stop(None);
}

#[tokio::test]
async fn a_manager_stopped_without_a_leave_is_reported_left_not_crashed() {
    use cloister_core::{DownReason, TopologyEvent};
    let (port, peer_port) = (free_port(), free_port());
    let app = "stopped";
    let nodes = [
        format!("a@127.0.0.1:{port}"),
        format!("b@127.0.0.1:{peer_port}"),
    ];
    let config = Config::nodes(app, nodes.clone())
        .unwrap()
        .with_node_name("a")
        .with_listen_port(port)
        .with_cookie("lifecycle-cookie")
        .with_consensus(2);
    let (manager, _, cloister) = CloisterManager::spawn_unheld(None, config, None)
        .await
        .unwrap();
    let downs = Arc::new(Mutex::new(Vec::new()));
    cloister_ractor::add_listener(&manager, Downs(Arc::clone(&downs))).unwrap();

    // Another process runs node b: it joins, then stops its Manager with
    // `stop`, not a leave.
    let peer = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "stopping_peer", "--ignored", "--nocapture"])
        .env("STOPPING_PEER_NODES", nodes.join(","))
        .env("STOPPING_PEER_PORT", peer_port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let output = tokio::task::spawn_blocking(move || peer.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the peer failed: {said}");
    assert!(said.contains("stopped its manager"), "{said}");

    let b = |e: &TopologyEvent| matches!(e, TopologyEvent::NodeDown { node, .. } if node.as_str().starts_with("b@"));
    for _ in 0..500 {
        if downs.lock().unwrap().iter().any(b) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seen: Vec<TopologyEvent> = downs
        .lock()
        .unwrap()
        .iter()
        .filter(|e| b(e))
        .cloned()
        .collect();
    assert!(
        matches!(
            seen.as_slice(),
            [TopologyEvent::NodeDown {
                reason: DownReason::Left,
                ..
            }]
        ),
        "{seen:?}"
    );
    manager.stop(None);
    let _ = cloister;
}

/// Keeps every `NodeDown`.
struct Downs(Arc<Mutex<Vec<cloister_core::TopologyEvent>>>);

impl cloister_ractor::Listener for Downs {
    fn on_state_change(&self, _: NodeState, _: NodeState, _: &cloister_core::Snapshot) {}

    fn on_event(&self, event: &cloister_core::TopologyEvent) {
        if matches!(event, cloister_core::TopologyEvent::NodeDown { .. }) {
            self.0.lock().unwrap().push(event.clone());
        }
    }
}

/// Run by the test above in a process of its own: node b joins node a,
/// then stops its Manager without a leave. Does nothing when run by hand.
#[tokio::test]
#[ignore = "a helper process of a_manager_stopped_without_a_leave_is_reported_left_not_crashed"]
async fn stopping_peer() {
    let Ok(nodes) = std::env::var("STOPPING_PEER_NODES") else {
        return;
    };
    let port: u16 = std::env::var("STOPPING_PEER_PORT")
        .unwrap()
        .parse()
        .unwrap();
    let config = Config::nodes("stopped", nodes.split(','))
        .unwrap()
        .with_node_name("b")
        .with_listen_port(port)
        .with_cookie("lifecycle-cookie")
        .with_consensus(2);
    let (manager, join, cloister) = CloisterManager::spawn(None, config).await.unwrap();
    // Node a has admitted b once a's heartbeats carry the ring of both.
    for _ in 0..1_000 {
        if cloister.snapshot().converged {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        cloister.snapshot().converged,
        "node a never admitted b: {:?}",
        cloister_ractor::inspect(&manager, Duration::from_secs(2))
            .await
            .map(|i| serde_json::to_string(&i).unwrap_or_default())
    );
    manager.stop(None);
    tokio::time::timeout(Duration::from_secs(10), join)
        .await
        .unwrap()
        .unwrap();
    println!("stopped its manager");
}

/// A group actor that does nothing, to route to.
struct Idle;

impl Actor for Idle {
    type Msg = Nudge;
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, myself: ActorRef<Nudge>, _: ()) -> Result<(), ActorProcessingErr> {
        IDLE.join(&myself);
        Ok(())
    }
}

#[derive(Clone)]
struct Nudge;
impl ractor::Message for Nudge {}

const IDLE: Group<Nudge> = Group::new("idle");

/// What every handle must say once its Manager is gone, `cause` in its errors.
fn assert_stopped(cloister: &Cloister, cause: &str) {
    assert_eq!(cloister.state(), NodeState::Stopped);
    assert!(
        !cloister.is_sentry(),
        "a stopped node says it is the sentry"
    );
    assert_eq!(cloister.sentry(), None, "a stopped node names a sentry");
    assert!(cloister.members().is_empty(), "{:?}", cloister.members());
    assert!(cloister.sessions().is_empty(), "{:?}", cloister.sessions());
    assert_eq!(cloister.node_for("user:42"), None);
    match cloister.route(IDLE, "user:42", Nudge) {
        Err(RouteError::Stopped(why)) => assert!(why.contains(cause), "{why}"),
        other => panic!("route after the Manager stopped: {other:?}"),
    }
    let sent = cloister.multicast(IDLE, Nudge);
    assert!(
        matches!(sent.as_slice(), [(node, Err(RouteError::Stopped(_)))] if node == cloister.me()),
        "{sent:?}"
    );
}

#[tokio::test]
async fn after_a_leave_every_handle_says_stopped() {
    let (manager, join, cloister) = CloisterManager::spawn(None, alone_as("left", free_port()))
        .await
        .unwrap();
    let (idle, _) = Actor::spawn(None, Idle, ()).await.unwrap();
    let copy = cloister.clone();
    assert!(cloister.is_sentry());
    assert!(cloister.route(IDLE, "user:42", Nudge).is_ok());

    let outcome = cloister_ractor::leave(&manager, Duration::from_secs(10)).await;
    assert!(
        matches!(outcome, Ok(LeaveOutcome::Drained { .. })),
        "{outcome:?}"
    );
    tokio::time::timeout(Duration::from_secs(10), join)
        .await
        .unwrap()
        .unwrap();
    assert_stopped(&cloister, "left the cluster");
    assert_stopped(&copy, "left the cluster");
    idle.stop(None);

    // Leaving again: the Manager is gone, and the caller is told so.
    let again = cloister_ractor::leave(&manager, Duration::from_secs(10)).await;
    assert!(
        matches!(again, Err(CloisterError::ManagerGone(_))),
        "{again:?}"
    );
}

/// Waits (bounded) until `cloister` is in `state`.
async fn wait_state(cloister: &Cloister, state: NodeState) -> bool {
    for _ in 0..500 {
        if cloister.state() == state {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[tokio::test]
async fn a_leave_waits_for_every_drain_hold_then_says_it_drained() {
    let (manager, join, cloister) = CloisterManager::spawn(None, alone_as("holds", free_port()))
        .await
        .unwrap();
    let (a, b) = (
        cloister.hold_drain("store a"),
        cloister.hold_drain("store b"),
    );
    let leaving = {
        let manager = manager.clone();
        tokio::spawn(async move { cloister_ractor::leave(&manager, Duration::from_secs(30)).await })
    };

    // Not ready while it drains, and it keeps draining while a hold is
    // taken: one released is not enough.
    assert!(wait_state(&cloister, NodeState::Stopping).await);
    a.release();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cloister.state(), NodeState::Stopping);
    assert!(!leaving.is_finished());

    // The last hold dropped (as an actor's state is when it stops): done.
    drop(b);
    let outcome = tokio::time::timeout(Duration::from_secs(10), leaving)
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(outcome, Ok(LeaveOutcome::Drained { .. })),
        "{outcome:?}"
    );
    tokio::time::timeout(Duration::from_secs(10), join)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(cloister.state(), NodeState::Stopped);
}

#[tokio::test]
async fn a_hold_never_released_ends_the_leave_at_drain_timeout_and_is_named() {
    let mut config = alone_as("stuck", free_port());
    config.drain_timeout = Duration::from_millis(400);
    let (manager, join, cloister) = CloisterManager::spawn(None, config).await.unwrap();
    let _stuck = cloister.hold_drain("a stuck handoff");
    let outcome = cloister_ractor::leave(&manager, Duration::from_secs(30)).await;
    match outcome {
        Ok(LeaveOutcome::DrainTimedOut { took, still_held }) => {
            assert_eq!(still_held, ["a stuck handoff"]);
            assert!(took >= Duration::from_millis(400), "{took:?}");
        }
        other => panic!("{other:?}"),
    }
    tokio::time::timeout(Duration::from_secs(10), join)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_caller_that_waits_less_than_the_drain_is_told_the_leave_goes_on() {
    let (manager, join, cloister) =
        CloisterManager::spawn(None, alone_as("impatient", free_port()))
            .await
            .unwrap();
    let hold = cloister.hold_drain("slow handoff");
    let outcome = cloister_ractor::leave(&manager, Duration::from_millis(100)).await;
    assert!(
        matches!(outcome, Err(CloisterError::LeaveTimeout { .. })),
        "{outcome:?}"
    );
    // The leave went on: releasing the hold ends it.
    assert_eq!(cloister.state(), NodeState::Stopping);
    drop(hold);
    tokio::time::timeout(Duration::from_secs(10), join)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn when_the_node_server_dies_every_handle_says_stopped_and_why() {
    let (manager, join, cloister) = CloisterManager::spawn(None, alone_as("failed", free_port()))
        .await
        .unwrap();
    let (idle, _) = Actor::spawn(None, Idle, ()).await.unwrap();
    assert_eq!(cloister.state(), NodeState::Ready);

    // The NodeServer is what this node is: it dies, the Manager stops.
    let children = manager.get_children();
    let node_server = children
        .iter()
        .find(|c| c.get_name().is_none_or(|n| !n.starts_with("cloister:")))
        .expect("the Manager has a NodeServer child");
    node_server.kill();
    tokio::time::timeout(Duration::from_secs(10), join)
        .await
        .unwrap()
        .unwrap();
    assert_stopped(&cloister, "child");
    idle.stop(None);
}
