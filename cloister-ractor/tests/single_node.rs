//! One Manager in this process (pg and the registry are process-wide, so
//! multi-node behaviour is tested over real processes in `tests/`): what a
//! subscriber, a listener and a caller see.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloister_core::{Config, Host, NodeState, TopologyEvent};
use cloister_ractor::{CloisterManager, CloisterMessage, Listener};
use ractor::{Actor, ActorProcessingErr, ActorRef};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn alone(port: u16) -> Config {
    let mut config = Config::nodes("solo", [format!("solo@127.0.0.1:{port}")])
        .unwrap()
        .with_listen_port(port);
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
    let (manager, cloister, join) = CloisterManager::spawn(None, alone(port)).await.unwrap();
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
    manager.cast(CloisterMessage::Leave).unwrap();
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
}

#[tokio::test]
async fn a_taken_port_is_an_error_not_a_panic() {
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let error = CloisterManager::spawn(None, alone(port)).await.unwrap_err();
    let text = error.to_string();
    assert!(text.contains(&port.to_string()), "{text}");
}

#[tokio::test]
async fn a_bad_config_is_refused_before_anything_starts() {
    let mut config = alone(free_port());
    config.consensus = 0;
    let error = CloisterManager::spawn(None, config).await.unwrap_err();
    assert!(error.to_string().contains("consensus"), "{error}");
}
