//! What the machine remembers about each peer, and when to dial it again.

use std::hash::Hasher;
use std::time::Duration;

use siphasher::sip::SipHasher13;

use crate::config::Config;
use crate::names::{Incarnation, NodeAddr};
use crate::ring::Digest;

use super::{Heartbeat, SessionId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dial {
    /// Dial when the time comes.
    Idle { at: Duration },
    /// A dial is out; it counts as failed if no session is ready by `deadline`.
    Pending { deadline: Duration },
}

#[derive(Debug, Clone)]
pub(super) struct Member {
    pub(super) incarnation: Incarnation,
    pub(super) last_heard: Duration,
    pub(super) digest: Digest,
    /// Its life (see `gossip::Fact::life`), under bounded sessions.
    pub(super) life: u32,
}

/// The time a member whose session closed keeps its place, in case a
/// replacing session is on its way (see `Config::session_grace`).
#[derive(Debug, Clone)]
pub(super) struct Grace {
    /// The cap: it crashed if no replacement is up by then.
    pub(super) until: Duration,
    /// The connections that were in their handshake when its session
    /// closed: the replacement can only be one of them, so the grace ends
    /// once none is left in its handshake (empty: a replacement is known,
    /// and only the cap ends the grace).
    pub(super) waits: Vec<SessionId>,
}

#[derive(Debug, Clone)]
pub(super) struct Peer {
    /// Where to dial it; `None` for a peer that only dialed us.
    pub(super) addr: Option<NodeAddr>,
    /// In the sentry list or the last DNS answer.
    pub(super) listed: bool,
    /// Listed, and under bounded sessions one of this node's neighbours:
    /// keep dialing it.
    pub(super) wanted: bool,
    pub(super) session: Option<SessionId>,
    pub(super) dial: Dial,
    pub(super) failed_dials: u32,
    pub(super) last_error: Option<String>,
    /// Why its heartbeats are refused (another `app`, or it places keys
    /// differently).
    pub(super) refused: Option<String>,
    pub(super) member: Option<Member>,
    /// A heartbeat that arrived before its session's ready event.
    pub(super) early: Option<Heartbeat>,
    /// The session that said goodbye: its late heartbeats are ignored. A
    /// new session (a new process) is heard again.
    pub(super) left: Option<SessionId>,
    /// Who is speaking on the current session: see [`Tokens`].
    pub(super) tokens: Tokens,
    /// A member whose session closed stays in the ring while a replacing
    /// session may be on its way: see [`Grace`].
    pub(super) grace: Option<Grace>,
    /// Under bounded sessions, when it was last told that the table holds
    /// it down (see `Membership::may_admit`).
    pub(super) told_down: Option<Duration>,
    /// Connections naming this peer that closed in their handshake, and
    /// until when a session with the peer may still prove them duplicates
    /// (ractor_cluster closes the loser when both sides dial). Those left
    /// unproven at that time count as strangers.
    pub(super) unproven: Option<(u64, Duration)>,
    /// Until then, a connected peer that is not a member yet is sent our
    /// heartbeat again every `introduce_every`: a first heartbeat can be lost
    /// when ractor_cluster replaces a duplicate session under it.
    pub(super) introduce_until: Option<Duration>,
    /// This node watches it (see `monitors`): its silence for
    /// `heartbeat_timeout` drops it, and our heartbeats say so.
    pub(super) watching: bool,
    /// It watches this node, as its last heartbeat on the current session
    /// said: it gets our heartbeat every interval.
    pub(super) watches_me: bool,
    /// Dropped as unresponsive, its session stays open until then: a peer
    /// that was only slow (an overloaded machine) heartbeats again over it
    /// and is back at once, without a reconnect. Still silent then, its
    /// session closes and a redial follows after a backoff, so a frozen
    /// process is not sent heartbeats without end.
    pub(super) hold_until: Option<Duration>,
    /// Its last heartbeat on the current session said it took this node
    /// out of its ring (see `reachability`): this node is not `Ready`.
    pub(super) downs_me: bool,
    /// When a heartbeat of it that counts last arrived, member or not.
    pub(super) heard_at: Option<Duration>,
    /// A watcher reported this incarnation silent: dropped then, unless
    /// another node says by then that it hears it (see
    /// `reported_unresponsive`).
    pub(super) suspected: Option<Suspicion>,
    /// Under bounded sessions: since when its heartbeats carry a table
    /// digest other than ours (see `gossip`).
    pub(super) mismatch_since: Option<Duration>,
    /// The application asked for a session with it ([`Input::Connect`](super::Input::Connect)):
    /// dialed like a neighbour.
    pub(super) on_demand: bool,
    /// Under bounded sessions: this node said it down as unresponsive, and
    /// has not heard it since (see `expire_silent_members`).
    pub(super) said_silent: Option<SaidSilent>,
}

/// This node said a watched member down as unresponsive, at this
/// incarnation and life. Back at a later life of that incarnation, the
/// member answered the word, so it is alive and others reach it: what
/// fails is this node's link to it.
#[derive(Clone, Copy, Debug)]
pub(super) struct SaidSilent {
    pub(super) incarnation: Incarnation,
    pub(super) life: u32,
    /// The operator was told that it is alive but unheard here.
    pub(super) told: bool,
}

/// A report that a member is silent, held for three heartbeat intervals:
/// enough for the member to answer this node's probe, and for the watchers
/// that still hear it to say so.
#[derive(Clone, Debug)]
pub(super) struct Suspicion {
    /// When the report came: this node probed the member then, and one
    /// heard since is alive.
    pub(super) since: Duration,
    pub(super) until: Duration,
    pub(super) incarnation: Incarnation,
    pub(super) reporter: crate::NodeName,
}

impl Peer {
    pub(super) fn new(addr: Option<NodeAddr>, now: Duration) -> Self {
        Peer {
            addr,
            listed: false,
            wanted: false,
            session: None,
            dial: Dial::Idle { at: now },
            failed_dials: 0,
            last_error: None,
            refused: None,
            member: None,
            early: None,
            left: None,
            tokens: Tokens::default(),
            grace: None,
            told_down: None,
            unproven: None,
            introduce_until: None,
            watching: false,
            watches_me: false,
            hold_until: None,
            downs_me: false,
            heard_at: None,
            suspected: None,
            mismatch_since: None,
            on_demand: false,
            said_silent: None,
        }
    }
}

/// The token handshake of one peer's current session. Heartbeats say only
/// whom they claim to come from, and the runtime cannot tell which session
/// one arrived on; but ours to a peer travel over that peer's session only,
/// so a heartbeat that echoes the token we sent there comes from that peer.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Tokens {
    /// Ours for the current session, drawn when it came up; 0 without one.
    pub(super) mine: u64,
    /// Ours for the session before: heartbeats still echoing it are late
    /// ones of a replaced session, ignored without a word.
    pub(super) previous: u64,
    /// The peer's, echoed in every heartbeat we send it; 0 until heard.
    pub(super) theirs: u64,
    /// A heartbeat of this session echoed `mine`: from now on only such
    /// heartbeats may change `theirs`, so another peer cannot.
    pub(super) verified: bool,
    /// A dropped heartbeat naming this peer was reported this session.
    pub(super) reported: bool,
}

impl Tokens {
    /// The handshake of a new session, with our fresh token `mine`.
    pub(super) fn renew(&mut self, mine: u64) {
        *self = Tokens {
            mine,
            previous: self.mine,
            ..Tokens::default()
        };
    }
}

/// Where session tokens come from: SipHash-1-3 of a counter under a secret
/// 128-bit key. SipHash is a keyed pseudo-random function, so a peer that
/// sees every token this node gives it learns nothing about the tokens
/// other peers get (the dial jitter's RNG would give its state away). The
/// runtime draws the key from the operating system
/// ([`Membership::with_token_key`](super::Membership::with_token_key)); a
/// simulation keeps the key derived from its seed, so it replays.
#[derive(Clone)]
pub(super) struct TokenSource {
    key: (u64, u64),
    drawn: u64,
}

impl TokenSource {
    pub(super) fn new(key: [u8; 16]) -> TokenSource {
        let (k0, k1) = key.split_at(8);
        let word = |bytes: &[u8]| u64::from_le_bytes(bytes.try_into().unwrap_or_default());
        TokenSource {
            key: (word(k0), word(k1)),
            drawn: 0,
        }
    }

    /// The next token, never 0 (0 means "none yet" on the wire).
    pub(super) fn next(&mut self) -> u64 {
        loop {
            self.drawn += 1;
            let mut hasher = SipHasher13::new_with_keys(self.key.0, self.key.1);
            hasher.write_u64(self.drawn);
            let token = hasher.finish();
            if token != 0 {
                return token;
            }
        }
    }
}

impl std::fmt::Debug for TokenSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSource")
            .field("key", &"<secret>")
            .field("drawn", &self.drawn)
            .finish()
    }
}

pub(super) fn earliest(a: Option<Duration>, b: Duration) -> Option<Duration> {
    Some(a.map_or(b, |a| a.min(b)))
}

/// The delay before redial number `failures + 1`: `dial_backoff_min` doubled per
/// failure, capped at `dial_backoff_max`, spread by `±dial_backoff_jitter`.
///
/// Hand-written rather than taken from a retry crate: it has to take its
/// randomness from the machine's seeded RNG and return a duration, not sleep.
pub(super) fn backoff(config: &Config, rng: &mut fastrand::Rng, failures: u32) -> Duration {
    let base = config
        .dial_backoff_min
        .saturating_mul(1u32 << failures.min(20))
        .min(config.dial_backoff_max);
    let spread = config.dial_backoff_jitter * (2.0 * rng.f64() - 1.0);
    base.mul_f64((1.0 + spread).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::TokenSource;

    #[test]
    fn tokens_are_nonzero_replay_under_one_key_and_differ_under_another() {
        let draw = |key: [u8; 16]| {
            let mut source = TokenSource::new(key);
            (0..1_000).map(|_| source.next()).collect::<Vec<u64>>()
        };
        let a = draw([1; 16]);
        assert!(a.iter().all(|t| *t != 0));
        assert_eq!(a, draw([1; 16]));
        let b = draw([2; 16]);
        assert!(a.iter().zip(&b).all(|(x, y)| x != y));
        let distinct: std::collections::BTreeSet<&u64> = a.iter().collect();
        assert_eq!(distinct.len(), a.len());
    }
}
