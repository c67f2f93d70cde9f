//! The node port: cloister's own accept loop, in front of ractor_cluster's
//! NodeServer.
//!
//! The node binds `listen_addr:listen_port` itself and runs every accepted
//! connection through an upgrade step under a handshake deadline before it
//! hands the stream to the NodeServer (`NodeServerMessage::ConnectionOpened`
//! with `is_server: true`, the message ractor_cluster's own listener sends,
//! or for plain TCP `ConnectionOpenedExternal` behind a gate, below).
//! For plain TCP the upgrade waits for the peer's first byte without reading
//! it: in ractor_cluster's protocol the dialing side speaks first (its
//! `NodeSession` sends its name as it starts), so a connection that says
//! nothing within the deadline is no cluster node, and it is closed before
//! it costs a `NodeSession`. With TLS ([`Upgrade::Tls`]) the upgrade is
//! the whole handshake of a `TlsAcceptor`, the peer's certificate verified
//! against `tls_ca` (see [`crate::tls`]), under the same deadline, and the
//! NodeServer gets a `NetworkStream::TlsServer`: a peer that fails it is
//! closed before any cluster message, counted as a stranger, and the
//! periodic log line names the reason (no certificate, not under
//! `tls_ca`, expired, not yet valid, no TLS at all).
//!
//! A plain stream goes to the NodeServer behind a gate
//! (`NodeServerMessage::ConnectionOpenedExternal`, see [`gate`]): until its
//! session authenticates, ractor_cluster reads at most
//! [`gate::BEFORE_AUTH`] bytes of it, so a stranger streaming large frames
//! costs no more memory than one that says nothing.
//!
//! Connections still in their upgrade, and plain ones until they
//! authenticate, are capped: at most [`MAX_PER_SOURCE`] from one source (an
//! IPv4 address, or an IPv6 /64; loopback counts in the total only), the
//! newest refused beyond it, and at most [`MAX_HANDSHAKES`] in all, the
//! oldest closed to make room. A client that connects and says nothing
//! therefore costs at most one deadline of one slot, and a legitimate peer,
//! which speaks within milliseconds, is only kept out by a flood from its
//! own address, or by more than [`MAX_HANDSHAKES`] new connections within
//! its first milliseconds. Every closed connection counts as a stranger
//! ([`Stats::strangers`](crate::Stats::strangers)); the log says how many
//! and why at most every 10 s, as the Manager does for the handshakes that
//! fail later, never a line per connection.
//!
//! # Why ractor_cluster's own listener still runs, on loopback
//!
//! Read on ractor_cluster 0.16.5 (`node.rs`, `net/listener.rs`):
//!
//! - `NodeServer::pre_start` always spawns its `Listener` child on the
//!   NodeServer's port (every interface, `[::]` dual stack, unless
//!   `with_listen_addr`), and fails to start if it cannot bind.
//! - Its `handle_supervisor_evt` respawns the listener whenever it stops
//!   or fails, on the same port; if that respawn cannot bind, the error
//!   ends the NodeServer. So the listener cannot be stopped, nor kept out
//!   by taking its port, without losing the NodeServer.
//! - Its TLS accept runs inline in the listener, without a timeout: one
//!   silent client stalls every accept after it. Plain TCP is handed over
//!   at once.
//!
//! So cloister gives the NodeServer `127.0.0.1` and port 0: its listener
//! takes an ephemeral port that only this machine can reach, and the
//! listener tells its NodeServer that port (`PortChanged`), which cloister
//! then overwrites with the real one (the name it gives peers carries it).
//! That extra loopback port stays open: a process on this machine can
//! connect to it in plain TCP, past this loop's caps and deadline (the
//! Manager still closes a connection that does not authenticate within
//! `handshake_timeout`, and the cookie still applies). With TLS on, the
//! NodeServer gets the `TlsAcceptor` of the node's start
//! (`IncomingEncryptionMode::Tls`), so that side port demands a certificate
//! under `tls_ca` too (as loaded at start: a reload cannot reach it, see
//! [`crate::tls::reload`]); only its handshake runs inline, without
//! deadline or log line, so a silent local process can stall that port
//! (never the node port). With `tls_check_names` a session through it is
//! refused, as no certificate names are recorded for it.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cloister_core::tally::{Tally, REPORT_EVERY};
use cloister_core::Config;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef};
use ractor_cluster::node::NodeConnectionMode;
use ractor_cluster::{
    ClusterBidiStream, IncomingEncryptionMode, NetworkStream, NodeServer, NodeServerMessage,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

use arc_swap::ArcSwap;

use crate::error::CloisterError;
use crate::manager::{CloisterMessage, Internal};
use crate::stats::Counters;
use crate::tls::Tls;

mod admission;
pub(crate) mod gate;

pub(crate) use admission::sources;
use admission::{source_of, Admission, Refusal, Refused};
use gate::{Gate, Gates, Settled};

/// Connections in their handshake (for plain TCP: until they
/// authenticate) at once, in all; the oldest is closed to admit a new one
/// beyond it.
pub const MAX_HANDSHAKES: usize = 512;

/// Connections in their handshake (for plain TCP: until they
/// authenticate) at once from one source (an IPv4 address, or an IPv6
/// /64; loopback counts in the total only); a new one beyond it is closed
/// at once.
pub const MAX_PER_SOURCE: usize = 64;

/// The listen queue of the node port.
const BACKLOG: i32 = 1024;

/// How long the loop waits after the operating system refused an accept
/// (out of file descriptors), instead of retrying in a hot loop.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// Binds the node port, `listen_addr:listen_port`, then starts the
/// NodeServer on its loopback side port (see the module docs) and tells it
/// the node port; with `tls`, the side port takes TLS with the same
/// acceptor. The built-in cookie beyond loopback is refused first
/// ([`Config::check_cookie_exposure`]); a taken port is
/// [`CloisterError::Listen`]. Either leaves nothing running.
pub(crate) async fn open(
    config: &Config,
    host: &str,
    tls: Option<&Tls>,
    supervisor: ActorCell,
) -> Result<(TcpListener, ActorRef<NodeServerMessage>), CloisterError> {
    config.check_cookie_exposure()?;
    let wanted = SocketAddr::new(config.listen_addr, config.listen_port);
    let listener = bind(wanted).map_err(|error| CloisterError::Listen {
        addr: wanted,
        error,
    })?;
    let port = listener
        .local_addr()
        .map_err(|error| CloisterError::Listen {
            addr: wanted,
            error,
        })?
        .port();
    let side = SocketAddr::new(Ipv4Addr::LOCALHOST.into(), 0);
    let server = NodeServer::new(
        side.port(),
        config.cookie.clone(),
        config.effective_node_name().to_string(),
        host.to_string(),
        tls.map(|tls| IncomingEncryptionMode::Tls(tls.acceptor.clone())),
        Some(NodeConnectionMode::Isolated),
    )
    .with_listen_addr(side.ip());
    let (node_server, _) = Actor::spawn_linked(None, server, (), supervisor)
        .await
        .map_err(|e| CloisterError::listen(side, e))?;
    // After the side listener's own `PortChanged`, which it sent while the
    // NodeServer started: this one is handled last.
    node_server
        .cast(NodeServerMessage::PortChanged { port })
        .map_err(|e| CloisterError::Listen {
            addr: wanted,
            error: io::Error::other(format!("the node server stopped at once: {e}")),
        })?;
    Ok((listener, node_server))
}

/// A listening socket on `addr`, address reuse on (a restarted node takes
/// its port back at once), both IP versions on `::`.
fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// What turns an accepted TCP connection into the stream the NodeServer
/// takes. It runs under the handshake deadline.
pub(crate) enum Upgrade {
    /// Plain TCP: the stream as it is, once the peer has sent its first
    /// byte (left unread for the NodeServer).
    Plain,
    /// A TLS handshake, the peer's certificate verified against `tls_ca`,
    /// with the settings of the moment (see [`crate::tls::reload`]).
    Tls {
        current: Arc<ArcSwap<Tls>>,
        /// With `tls_check_names`, who gets each peer's certificate names,
        /// before the NodeServer gets its stream ([`crate::tls::names`]).
        names_to: Option<ActorRef<CloisterMessage>>,
    },
}

impl Upgrade {
    /// TLS with the node's settings as they stand, else plain TCP;
    /// `names_to` as in [`Upgrade::Tls`].
    pub(crate) fn new(
        tls: Option<&crate::tls::reload::Watched>,
        names_to: Option<ActorRef<CloisterMessage>>,
    ) -> Upgrade {
        match tls {
            Some(tls) => Upgrade::Tls {
                current: Arc::clone(&tls.current),
                names_to,
            },
            None => Upgrade::Plain,
        }
    }

    async fn run(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        gated: (&Gates, Arc<Gate>),
    ) -> Result<Upgraded, Refusal> {
        match self {
            Upgrade::Plain => {
                let mut first = [0u8; 1];
                match stream.peek(&mut first).await {
                    Ok(0) | Err(_) => Err(Refusal::Closed),
                    Ok(_) => {
                        let _ = stream.set_nodelay(true);
                        let (gates, gate) = gated;
                        Ok(Upgraded::Gated(gates.guard(stream, peer, gate)))
                    }
                }
            }
            Upgrade::Tls { current, names_to } => {
                let local_addr = stream.local_addr().map_err(|_| Refusal::Closed)?;
                let _ = stream.set_nodelay(true);
                let acceptor = current.load().acceptor.clone();
                match acceptor.accept(stream).await {
                    Ok(stream) => {
                        if let Some(manager) = names_to {
                            let names = crate::tls::names::peer_names(stream.get_ref().1);
                            let addr = peer.to_string();
                            let certified = Internal::Certified { addr, names };
                            manager
                                .cast(CloisterMessage::Internal(certified))
                                .map_err(|_| Refusal::Closed)?;
                        }
                        Ok(Upgraded::Tls(Box::new(NetworkStream::TlsServer {
                            peer_addr: peer,
                            local_addr,
                            stream,
                        })))
                    }
                    Err(error) => Err(Refusal::Tls(crate::tls::refusal_reason(&error))),
                }
            }
        }
    }
}

/// A connection past its upgrade, for the NodeServer.
enum Upgraded {
    /// A TLS stream: its peer holds a certificate under `tls_ca`.
    Tls(Box<NetworkStream>),
    /// A plain stream behind its gate ([`gate`]): it stays in the caps
    /// until it authenticates.
    Gated(Box<dyn ClusterBidiStream>),
}

/// The accept loop's arguments: the bound node port and where streams go.
pub(crate) struct AcceptLoop {
    pub(crate) listener: TcpListener,
    pub(crate) node_server: ActorRef<NodeServerMessage>,
    pub(crate) upgrade: Upgrade,
    /// How long a connection may take to finish its upgrade.
    pub(crate) deadline: Duration,
    /// How long a plain connection may stay in the caps after its upgrade,
    /// waiting to authenticate: the Manager closes it sooner
    /// ([`Config::longest_handshake`]), so this only backs that up.
    pub(crate) longest: Duration,
    /// The gates of the plain connections handed over and not yet
    /// authenticated, which the session events open ([`gate`]).
    pub(crate) gates: Arc<Gates>,
    pub(crate) counters: Arc<Counters>,
    /// The node's span: the loop's log lines name the node.
    pub(crate) span: tracing::Span,
}

/// What the loop holds of a connection in its caps, to close it.
struct Held {
    task: AbortHandle,
    gate: Arc<Gate>,
    peer: SocketAddr,
}

impl AcceptLoop {
    async fn run(self) {
        let AcceptLoop {
            listener,
            node_server,
            upgrade,
            deadline,
            longest,
            gates,
            counters,
            span: _,
        } = self;
        let upgrade = Arc::new(upgrade);
        let epoch = Instant::now();
        let mut admission = Admission::<Held>::new(MAX_HANDSHAKES, MAX_PER_SOURCE);
        // Dropped with the loop, which aborts every handshake in flight.
        let mut handshakes: JoinSet<(u64, Result<(), Refusal>)> = JoinSet::new();
        let mut refused = Refused::default();
        let mut accept_errors = Tally::new();
        loop {
            let due = refused.tally.due();
            let wake = tokio::time::Instant::from_std(epoch + due.unwrap_or(REPORT_EVERY));
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let gate = Arc::new(Gate::default());
                        let connection = Connection {
                            stream,
                            peer,
                            upgrade: Arc::clone(&upgrade),
                            gate: Arc::clone(&gate),
                            gates: Arc::clone(&gates),
                            node_server: node_server.clone(),
                        };
                        let start = |seq| Held {
                            task: handshakes.spawn(connection.handshake(seq, deadline, longest)),
                            gate,
                            peer,
                        };
                        let now = epoch.elapsed();
                        match admission.admit(source_of(peer.ip()), start) {
                            Err(()) => {
                                let refusal = (Refusal::OverCap, peer.ip());
                                refused.note(now, refusal, deadline, &counters);
                            }
                            Ok(Some(oldest)) => {
                                oldest.task.abort();
                                oldest.gate.close();
                                gates.forget(oldest.peer, &oldest.gate);
                                let refusal = (Refusal::Evicted, oldest.peer.ip());
                                refused.note(now, refusal, deadline, &counters);
                            }
                            Ok(None) => {}
                        }
                    }
                    Err(error) => {
                        if let Some(count) = accept_errors.note(epoch.elapsed()) {
                            tracing::warn!(
                                count, %error,
                                "the node port could not accept {count} connection(s) \
                                 (logged at most every {REPORT_EVERY:?})"
                            );
                        }
                        tokio::time::sleep(ACCEPT_PAUSE).await;
                    }
                },
                Some(done) = handshakes.join_next(), if !handshakes.is_empty() => {
                    // An evicted handshake ends cancelled, already released.
                    if let Ok((seq, outcome)) = done {
                        let held = admission.release(seq);
                        if let (Err(refusal), Some(held)) = (outcome, held) {
                            let refusal = (refusal, held.peer.ip());
                            refused.note(epoch.elapsed(), refusal, deadline, &counters);
                        }
                    }
                }
                () = tokio::time::sleep_until(wake), if due.is_some() => {
                    refused.flush(epoch.elapsed(), deadline);
                }
            }
        }
    }
}

/// An accepted connection, on its way to the NodeServer.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    upgrade: Arc<Upgrade>,
    gate: Arc<Gate>,
    gates: Arc<Gates>,
    node_server: ActorRef<NodeServerMessage>,
}

impl Connection {
    /// The upgrade under `deadline`, then the hand-over; a plain stream
    /// then stays in the caps until it authenticates or ends, `longest` at
    /// most.
    async fn handshake(
        self,
        seq: u64,
        deadline: Duration,
        longest: Duration,
    ) -> (u64, Result<(), Refusal>) {
        let Connection {
            stream,
            peer,
            upgrade,
            gate,
            gates,
            node_server,
        } = self;
        let gated = (&*gates, Arc::clone(&gate));
        let upgraded = match tokio::time::timeout(deadline, upgrade.run(stream, peer, gated)).await
        {
            Err(_) => return (seq, Err(Refusal::Silent)),
            Ok(Err(refusal)) => return (seq, Err(refusal)),
            Ok(Ok(upgraded)) => upgraded,
        };
        // A stopped NodeServer stops the Manager, and this loop with it.
        let outcome = match upgraded {
            Upgraded::Tls(stream) => {
                let _ = node_server.cast(NodeServerMessage::ConnectionOpened {
                    stream,
                    is_server: true,
                });
                Ok(())
            }
            Upgraded::Gated(stream) => {
                let _ = node_server.cast(NodeServerMessage::ConnectionOpenedExternal {
                    stream,
                    is_server: true,
                });
                let settled = tokio::time::timeout(longest, gate.settled()).await;
                gates.forget(peer, &gate);
                match settled {
                    // One the Manager closed is counted there.
                    Ok(Settled::Authenticated | Settled::Gone) => Ok(()),
                    Err(_) => {
                        gate.close();
                        Err(Refusal::Unauthenticated)
                    }
                }
            }
        };
        (seq, outcome)
    }
}

/// The actor that owns the accept loop, a linked child of the Manager: the
/// loop ends when it stops, and the Manager stops if it ends.
pub(crate) struct Acceptor;

/// The acceptor takes no messages.
pub(crate) enum AcceptorMessage {}

impl ractor::Message for AcceptorMessage {}

impl Actor for Acceptor {
    type Msg = AcceptorMessage;
    type State = JoinHandle<()>;
    type Arguments = AcceptLoop;

    async fn pre_start(
        &self,
        _: ActorRef<Self::Msg>,
        accept: AcceptLoop,
    ) -> Result<Self::State, ActorProcessingErr> {
        let span = accept.span.clone();
        Ok(tokio::spawn(tracing::Instrument::instrument(
            accept.run(),
            span,
        )))
    }

    async fn post_stop(
        &self,
        _: ActorRef<Self::Msg>,
        task: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        task.abort();
        Ok(())
    }
}
