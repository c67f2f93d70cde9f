//! The management endpoint (feature `management`): `/ready`, `/alive`,
//! `/members`, `/metrics` and a status page at `/`, over HTTP on
//! `management_addr`. Probes read the lock-free handle; `/members` and
//! `/metrics` ask the Manager for an [`Inspection`](crate::Inspection). The
//! status page is one self-contained HTML file (`status.html`, no external
//! assets) whose script polls `/members` and renders it.

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cloister_core::{NodeState, Snapshot};
use ractor::ActorRef;
use serde::Serialize;
use tokio::net::TcpListener;

use crate::{Cloister, CloisterError, CloisterMessage};

mod metrics;

/// The status page served at `/`: it renders `/members` in the browser.
const STATUS_PAGE: &str = include_str!("status.html");

/// How long `/members` and `/metrics` wait for the Manager.
const INSPECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Binds `addr`, before anything else starts, so a taken port leaves
/// nothing running.
pub(crate) async fn bind(addr: SocketAddr) -> Result<TcpListener, CloisterError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| CloisterError::Management {
            addr,
            reason: crate::error::plain(&error),
        })
}

/// The endpoint while it serves: dropping it stops it.
#[derive(Debug)]
pub(crate) struct Endpoint(tokio::task::JoinHandle<()>);

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(Clone)]
struct Node {
    cloister: Cloister,
    manager: ActorRef<CloisterMessage>,
}

/// Serves the endpoint on `listener` until the [`Endpoint`] is dropped.
pub(crate) fn serve(
    listener: TcpListener,
    cloister: Cloister,
    manager: ActorRef<CloisterMessage>,
) -> Endpoint {
    if let Ok(addr) = listener.local_addr() {
        cloister.set_management_addr(addr);
        tracing::info!(%addr, "management endpoint: / /ready /alive /members /metrics");
    }
    let app = Router::new()
        .route("/", get(status_page))
        .route("/alive", get(alive))
        .route("/ready", get(ready))
        .route("/members", get(members))
        .route("/metrics", get(metrics))
        .with_state(Node { cloister, manager });
    Endpoint(tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(%error, "the management endpoint stopped");
        }
    }))
}

/// The status page; it fetches its data itself, so it never goes stale in
/// a cache.
async fn status_page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        STATUS_PAGE,
    )
        .into_response()
}

/// What `/ready` and `/alive` answer.
#[derive(Serialize)]
struct Probe {
    ok: bool,
    node: String,
    state: NodeState,
    members: usize,
    why: String,
}

impl Probe {
    fn respond(self) -> Response {
        let status = if self.ok {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        (status, Json(self)).into_response()
    }
}

/// 200 while the Manager runs (any state but stopped).
async fn alive(State(node): State<Node>) -> Response {
    let snapshot = node.cloister.snapshot();
    let ok = snapshot.state != NodeState::Stopped;
    let why = if ok {
        "the cloister manager runs".to_string()
    } else {
        "the cloister manager stopped".to_string()
    };
    probe(&snapshot, ok, why).respond()
}

/// 200 only while `Ready`; otherwise 503 with the reason.
async fn ready(State(node): State<Node>) -> Response {
    let snapshot = node.cloister.snapshot();
    let ok = snapshot.state == NodeState::Ready;
    let why = readiness(&snapshot);
    probe(&snapshot, ok, why).respond()
}

fn probe(snapshot: &Snapshot, ok: bool, why: String) -> Probe {
    Probe {
        ok,
        node: snapshot.node.to_string(),
        state: snapshot.state,
        members: snapshot.members.len(),
        why,
    }
}

/// Why a node is or is not ready, in one sentence an operator can act on.
fn readiness(s: &Snapshot) -> String {
    let members = s.members.len();
    match s.state {
        NodeState::Ready => format!("ready with {members} member(s)"),
        NodeState::Down | NodeState::Assembling => format!(
            "assembling: {members} of {} member(s) needed (consensus{})",
            s.consensus.max(s.quorum.unwrap_or(0)),
            if s.quorum.is_some() {
                " and quorum"
            } else {
                ""
            }
        ),
        NodeState::Rehashing => format!(
            "rehashing: {members} member(s), fewer than consensus {}",
            s.consensus
        ),
        NodeState::NoQuorum => format!(
            "no quorum: sees {members} member(s), needs {} (a partition, or this node was \
             taken out of the ring to end a partial partition)",
            s.quorum.unwrap_or(0)
        ),
        NodeState::Stopping => "leaving the cluster".to_string(),
        NodeState::Stopped => "stopped".to_string(),
    }
}

async fn members(State(node): State<Node>) -> Response {
    match crate::inspect(&node.manager, INSPECT_TIMEOUT).await {
        Ok(inspection) => Json(inspection).into_response(),
        Err(error) => unavailable(error),
    }
}

async fn metrics(State(node): State<Node>) -> Response {
    match crate::inspect(&node.manager, INSPECT_TIMEOUT).await {
        Ok(inspection) => match metrics::encode(&inspection) {
            Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
            Err(error) => {
                let why = format!("cannot encode the metrics: {error}");
                (StatusCode::INTERNAL_SERVER_ERROR, why).into_response()
            }
        },
        Err(error) => unavailable(error),
    }
}

fn unavailable(error: CloisterError) -> Response {
    let why = format!("the cloister manager did not answer within {INSPECT_TIMEOUT:?}: {error}");
    (StatusCode::SERVICE_UNAVAILABLE, why).into_response()
}
