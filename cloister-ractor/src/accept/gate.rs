//! What a plain-TCP connection may cost before it authenticates.
//!
//! ractor_cluster reads a connection's frames as they come (up to 16 MiB
//! each, its `DEFAULT_MAX_INBOUND_FRAME_SIZE`) from the first byte on, so
//! a stranger that streams large frames makes the node hold them until the
//! Manager closes the session at its handshake timeout: 32 such
//! connections took a node from 19 MiB to 419 MiB. So the accept loop hands
//! a plain stream to the NodeServer as an external transport whose reader
//! passes on at most [`BEFORE_AUTH`] bytes until the session has
//! authenticated (the cookie check: the NodeServer's
//! `node_session_authenticated` event, see [`crate::sessions`]). Past the
//! budget the reader waits: an honest peer's handshake is a few hundred
//! bytes, so it never waits on it, and what it sends after its own side of
//! the handshake is read once this side has seen it too. A stranger's
//! connection stops being read and is closed at the handshake timeout, as
//! before, having cost at most the budget.
//!
//! The accept loop keeps the connection in its caps until then (see
//! [`super`]), and closes it through the gate when it evicts it.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use ractor_cluster::{BoxRead, BoxWrite, ClusterBidiStream};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;

/// The bytes a plain-TCP connection may send before it authenticates.
pub const BEFORE_AUTH: usize = 64 * 1024;

/// One connection's gate: shared by its reader, the accept loop and (by its
/// peer address) the session events.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    /// Set once the session authenticated: the reader passes everything.
    open: AtomicBool,
    state: Mutex<State>,
    /// Woken when the gate opens or its reader is gone.
    settled: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// Bytes read so far before authentication.
    read: usize,
    /// The accept loop closed the connection (evicted, or too long).
    closed: bool,
    /// The reader was dropped: the session ended.
    gone: bool,
    /// The reader's task, waiting for data, the budget or the gate.
    waker: Option<Waker>,
}

/// How a gated connection left the accept loop's care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settled {
    /// The session authenticated.
    Authenticated,
    /// The session ended first (the Manager closed it, or the peer did).
    Gone,
}

impl Gate {
    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while the lock was held left plain counters: still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session authenticated: everything passes from now on.
    pub(crate) fn authenticate(&self) {
        self.open.store(true, Ordering::SeqCst);
        let waker = self.state().waker.take();
        self.settled.notify_one();
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Closes the connection: its next read fails, and the session ends.
    pub(crate) fn close(&self) {
        let waker = {
            let mut state = self.state();
            state.closed = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }

    /// Waits until the session authenticated or ended.
    pub(crate) async fn settled(&self) -> Settled {
        loop {
            let notified = self.settled.notified();
            if self.open.load(Ordering::SeqCst) {
                return Settled::Authenticated;
            }
            if self.state().gone {
                return Settled::Gone;
            }
            notified.await;
        }
    }
}

/// The open gates, by the peer address the NodeServer reports for their
/// sessions.
#[derive(Debug, Default)]
pub(crate) struct Gates {
    open: Mutex<HashMap<String, Arc<Gate>>>,
}

impl Gates {
    fn map(&self) -> MutexGuard<'_, HashMap<String, Arc<Gate>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session from `peer_addr` authenticated: its gate opens.
    pub(crate) fn authenticated(&self, peer_addr: &str) {
        if let Some(gate) = self.map().remove(peer_addr) {
            gate.authenticate();
        }
    }

    /// Puts `stream`, from `peer`, behind `gate`: what the NodeServer takes
    /// as an external transport. The gate is known by `peer` until
    /// [`Gates::forget`].
    pub(crate) fn guard(
        &self,
        stream: TcpStream,
        peer: std::net::SocketAddr,
        gate: Arc<Gate>,
    ) -> Box<dyn ClusterBidiStream> {
        let label = peer.to_string();
        self.map().insert(label.clone(), Arc::clone(&gate));
        let local = stream.local_addr().ok().map(|a| a.to_string());
        Box::new(Guarded {
            stream,
            gate,
            label,
            local,
        })
    }

    /// The connection from `peer` behind `gate` left the accept loop's
    /// care. Only that gate is forgotten: once its connection closed, a new
    /// one from the same address and port may hold the name already.
    pub(crate) fn forget(&self, peer: std::net::SocketAddr, gate: &Arc<Gate>) {
        let label = peer.to_string();
        let mut open = self.map();
        if open
            .get(&label)
            .is_some_and(|known| Arc::ptr_eq(known, gate))
        {
            open.remove(&label);
        }
    }
}

/// A plain TCP stream behind its gate, before the NodeServer splits it.
struct Guarded {
    stream: TcpStream,
    gate: Arc<Gate>,
    label: String,
    local: Option<String>,
}

impl ClusterBidiStream for Guarded {
    fn split(self: Box<Self>) -> (BoxRead, BoxWrite) {
        let (read, write) = self.stream.into_split();
        let reader = Budgeted {
            inner: read,
            gate: self.gate,
        };
        (Box::new(reader), Box::new(write))
    }

    fn peer_label(&self) -> Option<String> {
        Some(self.label.clone())
    }

    fn local_label(&self) -> Option<String> {
        self.local.clone()
    }
}

/// The read half: at most [`BEFORE_AUTH`] bytes until the gate opens.
struct Budgeted<R> {
    inner: R,
    gate: Arc<Gate>,
}

impl<R: AsyncRead + Unpin> AsyncRead for Budgeted<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.gate.open.load(Ordering::SeqCst) {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let left = {
            let mut state = this.gate.state();
            if state.closed {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "closed by the node port before authenticating",
                )));
            }
            // Checked again under the lock: `authenticate` sets the flag
            // before it takes the waker, so a wake-up cannot be lost.
            if this.gate.open.load(Ordering::SeqCst) {
                drop(state);
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            state.waker = Some(cx.waker().clone());
            BEFORE_AUTH - state.read
        };
        if left == 0 {
            return Poll::Pending; // until the gate opens or closes
        }
        let room = buf.initialize_unfilled_to(left.min(buf.remaining()));
        let mut limited = ReadBuf::new(room);
        let polled = Pin::new(&mut this.inner).poll_read(cx, &mut limited);
        let n = limited.filled().len();
        buf.advance(n);
        this.gate.state().read += n;
        polled
    }
}

impl<R> Drop for Budgeted<R> {
    fn drop(&mut self) {
        self.gate.state().gone = true;
        self.gate.settled.notify_one();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn budgeted(inner: tokio::io::DuplexStream) -> (Budgeted<tokio::io::DuplexStream>, Arc<Gate>) {
        let gate = Arc::new(Gate::default());
        let reader = Budgeted {
            inner,
            gate: Arc::clone(&gate),
        };
        (reader, gate)
    }

    #[tokio::test]
    async fn before_authentication_only_the_budget_is_read_then_everything() {
        let (mut peer, ours) = tokio::io::duplex(4 * BEFORE_AUTH);
        let (mut reader, gate) = budgeted(ours);
        let sent = vec![7u8; 3 * BEFORE_AUTH];
        peer.write_all(&sent).await.unwrap();

        let mut got = vec![0u8; 3 * BEFORE_AUTH];
        let mut filled = 0;
        while filled < BEFORE_AUTH {
            filled += reader.read(&mut got[filled..]).await.unwrap();
        }
        assert_eq!(filled, BEFORE_AUTH, "read past the budget");
        // The budget is spent: the next read waits for the gate.
        let more = reader.read(&mut got[filled..]);
        let waited = tokio::time::timeout(std::time::Duration::from_millis(50), more).await;
        assert!(
            waited.is_err(),
            "read past the budget before authenticating"
        );

        gate.authenticate();
        reader.read_exact(&mut got[filled..]).await.unwrap();
        assert_eq!(got, sent);
    }

    #[tokio::test]
    async fn a_reader_waiting_on_its_budget_wakes_when_the_gate_opens() {
        let (mut peer, ours) = tokio::io::duplex(4 * BEFORE_AUTH);
        let (mut reader, gate) = budgeted(ours);
        peer.write_all(&vec![1u8; BEFORE_AUTH + 10]).await.unwrap();
        let mut got = vec![0u8; BEFORE_AUTH + 10];
        let read =
            tokio::spawn(async move { reader.read_exact(&mut got).await.map(|_| got.len()) });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!read.is_finished());
        gate.authenticate();
        let len = tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .expect("the reader was not woken")
            .unwrap()
            .unwrap();
        assert_eq!(len, BEFORE_AUTH + 10);
    }

    #[tokio::test]
    async fn a_closed_gate_fails_the_waiting_read_and_a_dropped_reader_settles_it() {
        let (_peer, ours) = tokio::io::duplex(1024);
        let (mut reader, gate) = budgeted(ours);
        let read = tokio::spawn(async move {
            let mut byte = [0u8; 1];
            let result = reader.read(&mut byte).await;
            (result.map_err(|e| e.kind()), reader)
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        gate.close();
        let (result, reader) = tokio::time::timeout(std::time::Duration::from_secs(10), read)
            .await
            .expect("the closed gate did not wake the reader")
            .unwrap();
        assert_eq!(result.unwrap_err(), io::ErrorKind::ConnectionAborted);

        drop(reader);
        let settled = tokio::time::timeout(std::time::Duration::from_secs(10), gate.settled());
        assert_eq!(settled.await.unwrap(), Settled::Gone);
    }

    #[test]
    fn the_gate_of_an_authenticated_session_opens_by_its_peer_address() {
        let gates = Gates::default();
        let gate = Arc::new(Gate::default());
        gates
            .map()
            .insert("10.0.0.5:4000".into(), Arc::clone(&gate));
        gates.authenticated("10.0.0.9:4000");
        assert!(!gate.open.load(Ordering::SeqCst));
        gates.authenticated("10.0.0.5:4000");
        assert!(gate.open.load(Ordering::SeqCst));
        assert!(gates.map().is_empty());
    }

    #[test]
    fn a_closed_connection_does_not_forget_the_gate_of_a_new_one_from_the_same_port() {
        let gates = Gates::default();
        let peer: std::net::SocketAddr = "10.0.0.5:4000".parse().unwrap();
        let (old, new) = (Arc::new(Gate::default()), Arc::new(Gate::default()));
        gates.map().insert(peer.to_string(), Arc::clone(&new));
        gates.forget(peer, &old);
        gates.authenticated("10.0.0.5:4000");
        assert!(
            new.open.load(Ordering::SeqCst),
            "the new gate was forgotten"
        );
        gates.forget(peer, &new);
        assert!(gates.map().is_empty());
    }
}
