//! The membership state machine, one protocol story per test.
//!
//! Every test drives a [`Membership`] on a virtual clock: it feeds inputs with
//! the time as a value, jumps to [`Membership::poll_timeout`] when it wants
//! timers to run, and asserts on the exact effects drained from
//! [`Membership::poll`]. The node under test is `ME`; its peers are `A` and `B`.
//! `A` sorts before `ME` and `B` after it, so ring events show their sorting.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use cloister_core::membership::{AssemblyReport, MissingPeer, GOODBYE_LINGER};
use cloister_core::DownReason::{Crashed, Left, Restarted, Unresponsive};
use cloister_core::NodeState::{Assembling, Down, Ready, Rehashing, Stopped, Stopping};
use cloister_core::{
    Config, Digest, DownReason, DropReason, Effect, Heartbeat, Incarnation, Input, Membership,
    NodeName, NodeState, Sentry, SentryNode, SessionId, Snapshot, TopologyEvent,
};

const ME: &str = "cloister@10.0.0.2";
const A: &str = "cloister@10.0.0.1";
const B: &str = "cloister@10.0.0.3";
const C: &str = "cloister@10.0.0.4";
/// Older than every peer's in these tests, so `ME` stays the sentry unless a
/// test says otherwise.
const MY_INCARNATION: u64 = 1;
const SEED: u64 = 42;

// ---- Building inputs -------------------------------------------------------

fn n(name: &str) -> NodeName {
    name.parse().unwrap()
}

fn names(members: &[&str]) -> Vec<NodeName> {
    members.iter().map(|name| n(name)).collect()
}

/// The sentry entry of `name`: every node listens on port 4000.
fn entry(name: &str) -> SentryNode {
    format!("{name}:4000").parse().unwrap()
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// The digest of a ring of `members`.
fn digest(members: &[&str]) -> Digest {
    Digest::of(&names(members))
}

/// The token peer `name` draws for its sessions with `ME` in these tests
/// (`ME`'s own tokens are random and read from its effects).
fn peer_token(name: &str) -> u64 {
    match name {
        A => 0xA1,
        B => 0xB1,
        _ => 0xF0,
    }
}

/// A heartbeat from `from`'s Manager, of the same app as `ME`, over its
/// session with `ME`: it carries `from`'s token and echoes the last token `ME`
/// sent it (0 if none yet, as in a first hello).
fn hb(m: &Me, from: &str, incarnation: u64, digest: Digest) -> Heartbeat {
    Heartbeat {
        echo: m.sent.get(&n(from)).copied().unwrap_or(0),
        watching: true,
        admitted: true,
        ring_vnodes: m.ring().vnodes(),
        ..hello(from, incarnation, digest)
    }
}

/// `from`'s first heartbeat on a new session: it has not heard `ME`'s token.
fn hello(from: &str, incarnation: u64, digest: Digest) -> Heartbeat {
    Heartbeat {
        from: n(from),
        app: "cloister".into(),
        incarnation: Incarnation(incarnation),
        digest,
        ring_vnodes: Config::default().ring_vnodes,
        leaving: false,
        token: peer_token(from),
        echo: 0,
        watching: false,
        admitted: false,
        unresponsive: Vec::new(),
        observations: Vec::new().into(),
        downed: None,
        life: 0,
        news: Vec::new().into(),
        table: 0,
    }
}

fn session_up(peer: &str, session: u64) -> Input {
    Input::SessionUp {
        peer: n(peer),
        session: SessionId(session),
    }
}

fn session_down(peer: &str, session: u64) -> Input {
    Input::SessionDown {
        peer: n(peer),
        session: SessionId(session),
    }
}

fn dial_failed(peer: &str) -> Input {
    Input::DialFailed {
        peer: n(peer),
        error: "connection refused".into(),
    }
}

// ---- Building machines -----------------------------------------------------

/// The short test timers (heartbeat every 100ms, down after 500ms, session
/// grace 20ms, dial backoff 10ms..500ms, dial timeout 500ms, discovery every
/// 100ms) with no jitter, and a static sentry listing `ME` itself and `peers`.
fn config(peers: &[&str], consensus: usize) -> Config {
    let sentry = std::iter::once(ME).chain(peers.iter().copied());
    Config {
        sentry: Sentry::Nodes(sentry.map(entry).collect()),
        consensus,
        dial_backoff_jitter: 0.0,
        session_grace: ms(20),
        ..Config::for_tests()
    }
}

/// The machine under test, and the last token it sent each peer: what an
/// honest peer echoes (tests read it back from `ME`'s heartbeats, as the peer
/// would). Reads go to the machine; `handle` and `handle_timeout` are
/// forwarded so that an input can be built from `m` in the same call.
struct Me {
    m: Membership,
    sent: BTreeMap<NodeName, u64>,
}

impl Me {
    /// Feeds `input` at `now`, then runs what that made due at once (the
    /// ring after a change of members), as the runtime does when nothing
    /// else is queued: its wake-up comes right after the input. A test of
    /// batching calls `m.m.handle` instead.
    fn handle(&mut self, now: Duration, input: Input) {
        self.m.handle(now, input);
        if self.m.poll_timeout().is_some_and(|at| at <= now) {
            self.m.handle_timeout(now);
        }
    }

    fn handle_timeout(&mut self, now: Duration) {
        self.m.handle_timeout(now);
    }
}

impl std::ops::Deref for Me {
    type Target = Membership;
    fn deref(&self) -> &Membership {
        &self.m
    }
}

impl std::ops::DerefMut for Me {
    fn deref_mut(&mut self) -> &mut Membership {
        &mut self.m
    }
}

fn machine(config: Config, seed: u64) -> Me {
    Me {
        m: Membership::new(config, n(ME), Incarnation(MY_INCARNATION), seed),
        sent: BTreeMap::new(),
    }
}

/// A node started at 0ms, its start-up effects (state change, dials) drained.
fn started(peers: &[&str], consensus: usize) -> Me {
    let mut m = machine(config(peers, consensus), SEED);
    m.handle(ms(0), Input::Start);
    drain(&mut m);
    m
}

/// `peer` connects over `session` at `at` and its Manager heartbeats with
/// `incarnation`, already knowing `ME`: after the token handshake (its hello,
/// `ME`'s answer echoing it, its heartbeat echoing `ME`'s token) it is a member.
fn admit(m: &mut Me, at: Duration, peer: &str, session: u64, incarnation: u64) {
    m.handle(at, session_up(peer, session));
    let hello = Heartbeat {
        ring_vnodes: m.ring().vnodes(),
        ..hello(peer, incarnation, digest(&[peer]))
    };
    m.handle(at, Input::Heartbeat(hello));
    drain(m);
    m.handle(
        at,
        Input::Heartbeat(hb(m, peer, incarnation, digest(&[peer, ME]))),
    );
    let admitted = drain(m);
    assert!(admitted.contains(&up(peer, incarnation)), "{admitted:#?}");
}

// ---- Reading effects -------------------------------------------------------

/// The effects `ME` queued, in order. `ME`'s own token in each heartbeat is
/// random: it is recorded in `m.sent` (and checked to be nonzero) and shown
/// as 0, so tests can compare heartbeats exactly.
fn drain(m: &mut Me) -> Vec<Effect> {
    let mut effects = Vec::new();
    while let Some(mut effect) = m.m.poll() {
        if let Effect::SendHeartbeat { to, heartbeat } = &mut effect {
            assert_ne!(heartbeat.token, 0, "a heartbeat without a token");
            m.sent.insert(to.clone(), heartbeat.token);
            heartbeat.token = 0;
        }
        effects.push(effect);
    }
    effects
}

/// Jumps from timeout to timeout up to `until`, with the effects of each.
fn run_until(m: &mut Me, until: Duration) -> Vec<(Duration, Effect)> {
    let mut effects = Vec::new();
    while let Some(at) = m.poll_timeout().filter(|at| *at <= until) {
        m.handle_timeout(at);
        effects.extend(drain(m).into_iter().map(|effect| (at, effect)));
        assert!(effects.len() < 10_000, "the machine does not settle");
    }
    effects
}

/// Jumps from timeout to timeout until one has effects: when, and which.
fn next_effects(m: &mut Me) -> (Duration, Vec<Effect>) {
    for _ in 0..1_000 {
        let at = m.poll_timeout().expect("a running machine has a timer");
        m.handle_timeout(at);
        let effects = drain(m);
        if !effects.is_empty() {
            return (at, effects);
        }
    }
    panic!("no effect within 1000 timeouts");
}

// ---- Expected effects ------------------------------------------------------

fn dial(peer: &str) -> Effect {
    Effect::Dial {
        peer: n(peer),
        addr: entry(peer).addr,
        timeout: Config::for_tests().dial_timeout,
    }
}

/// `ME`'s heartbeat to `to`, carrying the digest of `ME`'s `ring` and
/// echoing `to`'s token (its own token shows as 0: see [`drain`]).
fn beat(to: &str, ring: &[&str]) -> Effect {
    send(to, ring, false, peer_token(to))
}

/// `ME`'s first heartbeat on a new session with `to`, before it has heard
/// `to`'s token: it echoes 0.
fn greet(to: &str, ring: &[&str]) -> Effect {
    send(to, ring, false, 0)
}

/// `ME`'s goodbye to `to`.
fn goodbye(to: &str, ring: &[&str]) -> Effect {
    send(to, ring, true, peer_token(to))
}

fn send(to: &str, ring: &[&str], leaving: bool, echo: u64) -> Effect {
    Effect::SendHeartbeat {
        to: n(to),
        heartbeat: Heartbeat {
            from: n(ME),
            app: "cloister".into(),
            incarnation: Incarnation(MY_INCARNATION),
            digest: digest(ring),
            ring_vnodes: Config::default().ring_vnodes,
            leaving,
            token: 0,
            echo,
            // A small cluster is a full mesh: `ME` watches every member.
            watching: ring.contains(&to),
            admitted: ring.contains(&to),
            unresponsive: Vec::new(),
            observations: Vec::new().into(),
            downed: None,
            life: 0,
            news: Vec::new().into(),
            table: 0,
        },
    }
}

fn up(node: &str, incarnation: u64) -> Effect {
    Effect::Publish(TopologyEvent::NodeUp {
        node: n(node),
        incarnation: Incarnation(incarnation),
    })
}

fn down(node: &str, incarnation: u64, reason: DownReason) -> Effect {
    Effect::Publish(TopologyEvent::NodeDown {
        node: n(node),
        incarnation: Incarnation(incarnation),
        reason,
    })
}

/// A `RingChanged` with `members` exactly in the order given.
fn ring(members: &[&str]) -> Effect {
    Effect::Publish(TopologyEvent::RingChanged {
        members: names(members),
        digest: digest(members),
    })
}

/// `ME`'s state change, with the snapshot right after it.
fn changed(
    from: NodeState,
    to: NodeState,
    consensus: usize,
    members: &[&str],
    converged: bool,
) -> Effect {
    Effect::Publish(TopologyEvent::StateChanged {
        from,
        to,
        snapshot: Snapshot {
            node: n(ME),
            incarnation: Incarnation(MY_INCARNATION),
            state: to,
            consensus,
            quorum: None,
            members: names(members),
            digest: digest(members),
            converged,
            sentry: Some(n(ME)),
        },
    })
}

// ---- 1. Consensus 1 ----------------------------------------------------------

#[test]
fn with_consensus_one_a_node_is_ready_alone_and_never_dials_itself() {
    // The sentry lists ME itself and A; consensus 1 counts ME alone.
    let mut m = machine(config(&[A], 1), SEED);

    // Start: ME assembles, dials A (its own entry is skipped), and since it is
    // one member of the one needed, it is ready at once, without waiting for A.
    m.handle(ms(0), Input::Start);
    assert_eq!(
        drain(&mut m),
        [
            changed(Down, Assembling, 1, &[ME], true),
            dial(A),
            changed(Assembling, Ready, 1, &[ME], true),
        ]
    );

    // A never answers. For two seconds of redials, ME only ever dials A.
    let later = run_until(&mut m, ms(2_000));
    assert!(later.iter().any(|(_, effect)| *effect == dial(A)));
    assert!(
        later.iter().all(|(_, effect)| *effect == dial(A)),
        "{later:#?}"
    );
    assert_eq!(m.state(), Ready);
}

// ---- 2. A session is not membership -----------------------------------------

#[test]
fn a_peer_joins_on_its_first_heartbeat_not_on_its_session() {
    let mut m = started(&[A], 2);

    // A's session is ready: ME heartbeats at once, with a token drawn for
    // this session and an echo of 0 (it has not heard A's token yet). A is
    // not a member yet: it might be a ractor node without a cloister Manager.
    m.handle(ms(1), session_up(A, 1));
    assert_eq!(drain(&mut m), [greet(A, &[ME])]);
    assert_eq!(m.state(), Assembling);
    let why = &m.report().missing[0].why;
    assert_eq!(why, "connected, but no cloister heartbeat from it yet");

    // A's Manager heartbeats (its ring is still just A), echoing the token
    // ME sent over this session: it is A speaking. A joins, the ring grows
    // (sorted: A before ME), ME answers with its new digest, echoing A's
    // token, so A can admit it in the same round trip, and with two members
    // ME is ready.
    // A's last digest differs from ME's ring: not converged yet.
    m.handle(ms(2), Input::Heartbeat(hb(&m, A, 7, digest(&[A]))));
    assert_eq!(
        drain(&mut m),
        [
            up(A, 7),
            ring(&[A, ME]),
            beat(A, &[A, ME]),
            changed(Assembling, Ready, 2, &[A, ME], false),
        ]
    );

    // A's next heartbeat, same incarnation, now with ME in its ring: nothing
    // to tell anyone, and the two rings agree.
    m.handle(ms(3), Input::Heartbeat(hb(&m, A, 7, digest(&[A, ME]))));
    assert_eq!(drain(&mut m), []);
    assert!(m.converged());
}

#[test]
fn joins_that_arrive_together_share_one_ring_rebuild() {
    let mut m = started(&[A, B], 3);
    // A and B connect and say hello; their answers echoing ME's tokens are
    // queued in the runtime's mailbox together, so ME takes them one after
    // the other with no wake-up in between (`m.m.handle`, not `m.handle`).
    for (peer, session) in [(A, 1), (B, 2)] {
        m.handle(ms(1), session_up(peer, session));
        m.handle(ms(1), Input::Heartbeat(hello(peer, 7, digest(&[peer]))));
    }
    drain(&mut m);
    for peer in [A, B] {
        let heartbeat = hb(&m, peer, 7, digest(&[peer]));
        m.m.handle(ms(2), Input::Heartbeat(heartbeat));
    }
    // Both are up at once, but the ring waits for the wake-up, due now.
    assert_eq!(drain(&mut m), [up(A, 7), up(B, 7)]);
    assert_eq!(m.poll_timeout(), Some(ms(2)));
    assert_eq!(m.ring().members(), names(&[ME]));
    // One rebuild for both, then each is answered with the new digest, and
    // the node is ready.
    m.handle_timeout(ms(2));
    assert_eq!(
        drain(&mut m),
        [
            ring(&[A, ME, B]),
            beat(A, &[A, ME, B]),
            beat(B, &[A, ME, B]),
            changed(Assembling, Ready, 3, &[A, ME, B], false),
        ]
    );
}

#[test]
fn changes_soon_after_a_rebuild_wait_for_the_batch_and_share_the_next_one() {
    // Rebuilds are spaced by 100ns per ring point (at most 6.25ms under the
    // test timers): with B admitted, 3 members of 4096 points, 1.2288ms.
    let config = Config {
        ring_vnodes: 4096,
        ..config(&[A, B, C], 4)
    };
    let mut m = machine(config, SEED);
    m.handle(ms(0), Input::Start);
    drain(&mut m);
    admit(&mut m, ms(10), A, 1, 7); // after a quiet spell: rebuilt at once
    assert_eq!(m.ring().members(), names(&[A, ME]));

    // B joins 0.1ms later and C 0.2ms later: both wait for the spell's end.
    let after = |micros| ms(10) + Duration::from_micros(micros);
    admit(&mut m, after(100), B, 2, 7);
    admit(&mut m, after(200), C, 3, 7);
    assert_eq!(m.ring().members(), names(&[A, ME]));
    let due = ms(10) + Duration::from_nanos(100 * 3 * 4096);
    assert_eq!(m.poll_timeout(), Some(due));
    m.handle_timeout(due);
    let effects = drain(&mut m);
    let rings: Vec<&Effect> = effects
        .iter()
        .filter(|e| matches!(e, Effect::Publish(TopologyEvent::RingChanged { .. })))
        .collect();
    assert_eq!(rings, [&ring(&[A, ME, B, C])]);
    assert_eq!(m.state(), Ready);

    // A crash after another quiet spell leaves the ring at once.
    m.handle(ms(40), session_down(C, 3));
    assert!(drain(&mut m).contains(&ring(&[A, ME, B])));
}

#[test]
fn a_small_ring_is_rebuilt_for_each_change_without_waiting() {
    // 3 members of 256 vnodes build in microseconds: the second join, 1ms
    // after the first, is in the ring at once, and so is `ready`.
    let mut m = started(&[A, B], 3);
    admit(&mut m, ms(10), A, 1, 7);
    assert_eq!(m.ring().members(), names(&[A, ME]));
    admit(&mut m, ms(11), B, 2, 7);
    assert_eq!(m.ring().members(), names(&[A, ME, B]));
    assert_eq!(m.state(), Ready);
}

// ---- 3. What is ignored, and what is kept --------------------------------------

#[test]
fn events_carrying_this_nodes_own_name_are_ignored() {
    let mut m = started(&[A], 2);

    // A loopback session, or a heartbeat echoed back to ME, must not make ME
    // its own peer.
    m.handle(ms(1), session_up(ME, 9));
    m.handle(
        ms(2),
        Input::Heartbeat(hb(&m, ME, MY_INCARNATION, digest(&[ME]))),
    );
    m.handle(ms(3), session_down(ME, 9));
    assert_eq!(drain(&mut m), []);
    assert_eq!(m.connected(), Vec::<NodeName>::new());
    assert_eq!(m.ring().members(), names(&[ME]));
    assert_eq!(m.state(), Assembling);
}

/// A peer of another `app` that ME has a session with (the same cookie, a
/// misconfigured list or `app` set where `node_name` was meant) is refused,
/// and the report says why instead of waiting for a heartbeat that came.
#[test]
fn a_heartbeat_from_another_app_is_refused_and_the_report_says_why() {
    let mut m = started(&[A], 2);
    m.handle(ms(1), session_up(A, 1));
    assert_eq!(drain(&mut m), [greet(A, &[ME])]);

    // A runs a cloister Manager, but for another app: it never joins.
    let other = Heartbeat {
        app: "other_app".into(),
        ..hb(&m, A, 7, digest(&[A]))
    };
    m.handle(ms(2), Input::Heartbeat(other.clone()));
    let refused = drain(&mut m);
    assert!(
        matches!(&refused[..], [Effect::Refused { peer, .. }, echo] if *peer == n(A) && *echo == beat(A, &[ME])),
        "{refused:#?}"
    );
    // Said once, not for every heartbeat.
    m.handle(ms(3), Input::Heartbeat(other));
    assert_eq!(drain(&mut m), []);
    assert_eq!(m.state(), Assembling);
    let report = m.report();
    assert_eq!(report.missing[0].name, n(A));
    let why = &report.missing[0].why;
    assert!(why.contains("app \"other_app\""), "{why}");
    assert!(why.contains("`node_name`"), "{why}");
}

/// What the runtime tells when a connected peer runs a herald of another
/// app only (heartbeats never cross apps): refused once, the report says
/// why; ignored for a peer without a session.
#[test]
fn a_connected_peer_running_another_app_is_refused_once() {
    let mut m = started(&[A, B], 2);
    let other = |peer: &str| Input::OtherApp {
        peer: n(peer),
        app: "other_app".into(),
    };
    m.handle(ms(1), other(B));
    assert_eq!(drain(&mut m), []);
    m.handle(ms(2), session_up(A, 1));
    drain(&mut m);
    m.handle(ms(3), other(A));
    let refused = drain(&mut m);
    assert!(
        matches!(&refused[..], [Effect::Refused { peer, why }] if *peer == n(A) && why.contains("app \"other_app\"")),
        "{refused:#?}"
    );
    m.handle(ms(4), other(A));
    assert_eq!(drain(&mut m), []);
    let report = m.report();
    let a = report.missing.iter().find(|p| p.name == n(A)).unwrap();
    assert!(a.why.contains("app \"other_app\""), "{}", a.why);
}

#[test]
fn a_peer_that_places_keys_differently_is_refused_and_the_report_says_why() {
    let mut m = started(&[A, B], 2);
    m.handle(ms(1), session_up(A, 1));
    assert_eq!(drain(&mut m), [greet(A, &[ME])]);

    // A was started with another ring_vnodes: it would own other keys. Its
    // heartbeat passes the token handshake (it is A) and is refused; ME still
    // echoes A's new token, so that A can tell it is ME that it refuses.
    let misfit = Heartbeat {
        ring_vnodes: 128,
        ..hb(&m, A, 7, digest(&[A]))
    };
    m.handle(ms(2), Input::Heartbeat(misfit.clone()));
    let refused = drain(&mut m);
    assert!(
        matches!(&refused[..], [Effect::Refused { peer, .. }, echo] if *peer == n(A) && *echo == beat(A, &[ME])),
        "{refused:#?}"
    );
    // Said once, not for every heartbeat.
    m.handle(ms(3), Input::Heartbeat(misfit));
    assert_eq!(drain(&mut m), []);
    assert_eq!(m.state(), Assembling);
    let report = m.report();
    let a = report.missing.iter().find(|p| p.name == n(A)).unwrap();
    assert!(a.why.contains("`ring_vnodes = 128`"), "{}", a.why);
    assert!(a.why.contains("`ring_vnodes = 256`"), "{}", a.why);

    // B keeps its own ring (`ring = "external"`): refused too.
    m.handle(ms(3), session_up(B, 2));
    drain(&mut m);
    let own_ring = Heartbeat {
        ring_vnodes: 0,
        ..hb(&m, B, 9, digest(&[B]))
    };
    m.handle(ms(4), Input::Heartbeat(own_ring));
    let refused = drain(&mut m);
    assert!(
        matches!(&refused[..], [Effect::Refused { peer, .. }, _echo] if *peer == n(B)),
        "one Refused for B: {refused:#?}"
    );
    let report = m.report();
    let b = report.missing.iter().find(|p| p.name == n(B)).unwrap();
    assert!(b.why.contains("`ring = \"external\"`"), "{}", b.why);

    // Once A runs the same ring, it is admitted.
    m.handle(ms(5), Input::Heartbeat(hb(&m, A, 8, digest(&[A, ME]))));
    assert!(drain(&mut m).contains(&up(A, 8)));
    assert_eq!(m.state(), Ready);
}

#[test]
fn a_heartbeat_before_its_session_is_kept_until_the_session_is_ready() {
    let mut m = started(&[A], 2);

    // A's Manager is quicker than ractor_cluster's ready event: its hello
    // arrives first. A is in ME's sentry list, so ME keeps it in A's one
    // slot and says nothing yet.
    m.handle(ms(1), Input::Heartbeat(hello(A, 7, digest(&[A]))));
    assert_eq!(drain(&mut m), []);
    assert_eq!(m.state(), Assembling);

    // The session is ready: ME greets A as on any new session, then reads
    // the kept hello. It cannot echo a token ME had not drawn yet, so it
    // does not count, but it starts the handshake: ME learns A's token and
    // answers at once, echoing it.
    m.handle(ms(2), session_up(A, 1));
    assert_eq!(drain(&mut m), [greet(A, &[ME]), beat(A, &[ME])]);
    assert_eq!(m.state(), Assembling);

    // A's next heartbeat echoes ME's token: A is admitted.
    m.handle(ms(3), Input::Heartbeat(hb(&m, A, 7, digest(&[A]))));
    assert_eq!(
        drain(&mut m),
        [
            up(A, 7),
            ring(&[A, ME]),
            beat(A, &[A, ME]),
            changed(Assembling, Ready, 2, &[A, ME], false),
        ]
    );
}

#[test]
fn a_connected_peer_that_has_not_answered_hears_from_us_again() {
    let mut m = started(&[A], 2);

    // A's session is ready at 1ms and ME says hello, but A's answer is lost
    // (ractor_cluster can replace a duplicate session under a message).
    m.handle(ms(1), session_up(A, 1));
    assert_eq!(drain(&mut m), [greet(A, &[ME])]);

    // ME says hello again every eighth of the heartbeat interval (12.5ms) ...
    let again = ms(1) + Duration::from_micros(12_500);
    assert_eq!(m.poll_timeout(), Some(again));
    m.handle_timeout(again);
    assert_eq!(drain(&mut m), [greet(A, &[ME])]);

    // ... until A answers: then the resends stop, and the next heartbeat
    // is the regular one at 100ms.
    m.handle(ms(20), Input::Heartbeat(hb(&m, A, 7, digest(&[A]))));
    drain(&mut m);
    assert_eq!(run_until(&mut m, ms(99)), []);
    assert_eq!(run_until(&mut m, ms(100)), [(ms(100), beat(A, &[A, ME]))]);
}

// ---- 4. Flaps and the session grace --------------------------------------------

#[test]
fn the_close_of_a_replaced_session_is_stale() {
    let mut m = started(&[A], 2);
    admit(&mut m, ms(1), A, 1, 7);

    // ME and A dialed each other at once: a second session comes up, and
    // ractor_cluster closes the first one. Only the current session counts.
    m.handle(ms(3), session_up(A, 2));
    assert_eq!(drain(&mut m), [greet(A, &[A, ME])]);
    m.handle(ms(4), session_down(A, 1));
    assert_eq!(drain(&mut m), []);

    assert_eq!(m.connected(), names(&[A]));
    assert_eq!(run_until(&mut m, ms(99)), []);
    assert_eq!(m.ring().members(), names(&[A, ME]));
}

#[test]
fn a_session_replaced_within_the_grace_hides_the_flap() {
    let mut m = started(&[A], 2);
    admit(&mut m, ms(1), A, 1, 7);

    // A second connection is in its handshake when A's session closes at
    // 10ms: it may replace the first. A stays a member for the 20ms grace,
    // and ME does not redial meanwhile: the grace is the next thing due.
    m.handle(ms(5), accepted(2));
    m.handle(ms(10), session_down(A, 1));
    assert_eq!(drain(&mut m), []);
    assert_eq!(run_until(&mut m, ms(19)), []);

    // The replacing session is ready at 20ms, within the grace.
    m.handle(ms(20), session_up(A, 2));
    assert_eq!(drain(&mut m), [greet(A, &[A, ME])]);

    // When the grace would have run out, nothing happens: no NodeDown.
    m.handle_timeout(ms(30));
    assert_eq!(drain(&mut m), []);
    assert_eq!(m.ring().members(), names(&[A, ME]));
    assert_eq!(m.state(), Ready);
}

#[test]
fn the_close_of_a_members_only_session_is_a_crash_at_once() {
    let mut m = started(&[A], 2);
    admit(&mut m, ms(1), A, 1, 7);
    // No connection is in its handshake: nothing can replace A's session,
    // so there is no grace to wait out (a killed process, say). ME redials
    // at once; the ring follows right after.
    m.handle(ms(10), session_down(A, 1));
    assert_eq!(
        drain(&mut m),
        [
            down(A, 7, Crashed),
            dial(A),
            ring(&[ME]),
            changed(Ready, Rehashing, 2, &[ME], true),
        ]
    );
}

#[test]
fn a_member_whose_session_closes_for_good_crashed_once_the_grace_runs_out() {
    let mut m = started(&[A], 2);
    admit(&mut m, ms(1), A, 1, 7);

    // A's session closes at 10ms while a connection is in its handshake;
    // it never becomes A's.
    m.handle(ms(5), accepted(2));
    m.handle(ms(10), session_down(A, 1));
    assert_eq!(drain(&mut m), []);
    assert_eq!(run_until(&mut m, ms(29)), []);

    // A timer that fires early changes nothing.
    m.handle_timeout(ms(29));
    assert_eq!(drain(&mut m), []);

    // At 30ms the grace is over: A crashed, the ring shrinks, ME falls below
    // consensus and rehashes, then dials A to get it back.
    m.handle_timeout(ms(30));
    assert_eq!(
        drain(&mut m),
        [
            down(A, 7, Crashed),
            ring(&[ME]),
            changed(Ready, Rehashing, 2, &[ME], true),
            dial(A),
        ]
    );
}

#[test]
fn a_grace_ends_once_no_connection_that_was_in_its_handshake_is_left() {
    for outcome in ["authenticated as another peer", "closed"] {
        let mut m = started(&[A, B], 3);
        admit(&mut m, ms(1), A, 1, 7);
        admit(&mut m, ms(1), B, 3, 8);
        // The ring of three, ready.
        run_until(&mut m, ms(4));
        // A's session closes while connection 2 is in its handshake.
        m.handle(ms(5), accepted(2));
        m.handle(ms(10), session_down(A, 1));
        assert_eq!(drain(&mut m), [], "{outcome}");
        // Connection 2 turns out not to be A: nothing can replace A's
        // session, so A crashed now, not at the end of the 20ms grace.
        let input = match outcome {
            "closed" => Input::ConnectionClosed {
                session: SessionId(2),
            },
            _ => authenticated(B, 2),
        };
        m.handle(ms(12), input);
        let effects = drain(&mut m);
        assert!(
            effects.contains(&down(A, 7, Crashed)),
            "{outcome}: {effects:#?}"
        );
    }
}

#[test]
fn a_replacement_that_authenticates_as_the_grace_runs_out_is_adopted_before_the_timer_ends_it() {
    // The runtime stamps an input with the clock when it handles it, and its
    // wake-up waits behind the inputs: an input stamped past the grace's cap
    // is handled before the timeout that would end the grace. The cap is
    // the timer's to apply; an input ends a grace only when no connection
    // it waits for is left.
    let mut m = started(&[A], 2);
    admit(&mut m, ms(1), A, 1, 7);
    run_until(&mut m, ms(4));
    m.handle(ms(5), accepted(2));
    m.handle(ms(10), session_down(A, 1));
    run_until(&mut m, ms(29));
    // The 20ms grace ends at 30ms: connection 2 authenticates as A then,
    // and its session is up before the wake-up runs.
    m.m.handle(ms(30), authenticated(A, 2));
    m.m.handle(ms(30), session_up(A, 2));
    m.handle_timeout(ms(30));
    let effects = drain(&mut m);
    assert!(!effects.contains(&down(A, 7, Crashed)), "{effects:#?}");
    assert_eq!(m.ring().members(), names(&[A, ME]));
    assert_eq!(m.state(), Ready);
}

#[test]
fn a_duplicate_whose_handshake_outlasts_a_short_grace_still_replaces_the_session() {
    // The default grace (250ms), not this file's 20ms: on a
    // loaded machine a handshake takes longer than 20ms, and a grace that
    // ran out first took a live peer for crashed (both sides did, and with
    // `sessions = "bounded"` told every node so).
    let config = Config {
        session_grace: Config::default().session_grace,
        ..config(&[A], 2)
    };
    let mut m = machine(config, SEED);
    m.handle(ms(0), Input::Start);
    drain(&mut m);
    admit(&mut m, ms(1), A, 1, 7);
    m.handle(ms(5), accepted(2));
    m.handle(ms(10), session_down(A, 1));
    assert_eq!(run_until(&mut m, ms(199)), []);
    m.handle(ms(200), authenticated(A, 2));
    assert_eq!(
        drain(&mut m),
        [Effect::Adopt {
            peer: n(A),
            session: SessionId(2)
        }]
    );
    m.handle(ms(201), session_up(A, 2));
    assert_eq!(drain(&mut m), [greet(A, &[A, ME])]);
    assert_eq!(m.ring().members(), names(&[A, ME]));
}

/// A connection accepted on `ME`'s port, in its handshake.
fn accepted(session: u64) -> Input {
    Input::SessionOpened {
        session: SessionId(session),
        inbound: true,
        from: None,
    }
}

fn authenticated(peer: &str, session: u64) -> Input {
    Input::SessionAuthenticated {
        session: SessionId(session),
        peer: Some(n(peer)),
    }
}

#[test]
fn a_member_whose_ready_session_loses_the_duplicate_election_is_adopted_not_crashed() {
    let mut m = started(&[A], 2);
    admit(&mut m, ms(1), A, 1, 7);

    // Both sides dialed: ractor_cluster authenticates A's second session and
    // elects it over the first, which was already ready, and closes that.
    m.handle(ms(5), accepted(2));
    m.handle(ms(6), authenticated(A, 2));
    assert_eq!(drain(&mut m), []);
    m.handle(ms(7), session_down(A, 1));
    // ME takes the elected session at once, rather than waiting for a
    // ready event ractor_cluster may never send.
    assert_eq!(
        drain(&mut m),
        [Effect::Adopt {
            peer: n(A),
            session: SessionId(2)
        }]
    );
    m.handle(ms(8), session_up(A, 2));
    assert_eq!(drain(&mut m), [greet(A, &[A, ME])]);

    // Past the grace (and short of the heartbeat timeout): A never went
    // down, and nobody was a stranger.
    let later = run_until(&mut m, ms(400));
    assert!(
        later
            .iter()
            .all(|(_, e)| matches!(e, Effect::SendHeartbeat { .. })),
        "{later:#?}"
    );
    assert_eq!(m.ring().members(), names(&[A, ME]));
}

#[test]
fn an_election_that_comes_after_the_close_adopts_the_winner_within_the_grace() {
    let mut m = started(&[A], 2);
    admit(&mut m, ms(1), A, 1, 7);
    m.handle(ms(5), accepted(2));
    m.handle(ms(7), session_down(A, 1));
    assert_eq!(drain(&mut m), []);
    // Within the 20 ms grace, another session of A authenticates.
    m.handle(ms(9), authenticated(A, 2));
    assert_eq!(
        drain(&mut m),
        [Effect::Adopt {
            peer: n(A),
            session: SessionId(2)
        }]
    );
}

#[test]
fn a_duplicate_connection_that_closes_unauthenticated_is_no_stranger() {
    let mut m = started(&[A, B], 3);
    admit(&mut m, ms(1), A, 1, 7);
    // A second connection of A, the loser of the election, closes before
    // it authenticates while A's session is up.
    m.handle(ms(5), accepted(2));
    m.handle(ms(6), session_down(A, 2));
    // B's losing connection closes before B's winning one is up, which
    // comes within the handshake timeout.
    m.handle(ms(7), accepted(3));
    m.handle(ms(8), session_down(B, 3));
    m.handle(ms(9), accepted(4));
    m.handle(ms(40), authenticated(B, 4));
    m.handle(ms(41), session_up(B, 4));
    let effects: Vec<Effect> = drain(&mut m)
        .into_iter()
        .chain(run_until(&mut m, ms(5_000)).into_iter().map(|(_, e)| e))
        .filter(|e| matches!(e, Effect::Strangers { .. } | Effect::CloseSession { .. }))
        .collect();
    assert_eq!(effects, []);
}

#[test]
fn a_known_peer_that_never_authenticates_is_a_stranger_after_the_handshake_timeout() {
    let mut m = started(&[A], 2);
    let timeout = Config::for_tests().handshake_timeout();
    // A listed peer with the wrong cookie: it names itself, then fails.
    m.handle(ms(5), accepted(1));
    m.handle(ms(6), session_down(A, 1));
    assert_eq!(drain(&mut m), []);
    let strangers: Vec<(Duration, Effect)> = run_until(&mut m, ms(6) + timeout)
        .into_iter()
        .filter(|(_, e)| matches!(e, Effect::Strangers { .. }))
        .collect();
    assert_eq!(
        strangers,
        [(
            ms(6) + timeout,
            Effect::Strangers {
                count: 1,
                from: vec![]
            }
        )]
    );
}

// ---- 5. Unresponsive members -----------------------------------------------------

#[test]
fn a_node_that_did_not_run_holds_its_own_stall_against_no_member() {
    let mut m = started(&[A], 2);
    m.handle(ms(0), session_up(A, 1));
    drain(&mut m);
    m.handle(ms(50), Input::Heartbeat(hb(&m, A, 7, digest(&[A, ME]))));
    drain(&mut m);
    assert_eq!(m.poll_timeout(), Some(ms(100)));

    // ME's wake-up due at 100ms comes at 1000ms: ME itself did not run (a
    // starved machine). A's heartbeats of the meantime wait in ME's mailbox;
    // its silence is not held against it.
    m.handle_timeout(ms(1000));
    let effects = drain(&mut m);
    assert!(
        effects.contains(&Effect::Stalled { late: ms(900) }),
        "{effects:#?}"
    );
    assert!(!effects.contains(&down(A, 7, Unresponsive)), "{effects:#?}");
    m.handle(ms(1000), Input::Heartbeat(hb(&m, A, 7, digest(&[A, ME]))));
    drain(&mut m);

    // Silence that ME was awake for still counts: A is dropped 500ms after
    // its last heartbeat.
    let quiet = run_until(&mut m, ms(1499));
    assert!(!quiet.iter().any(|(_, e)| *e == down(A, 7, Unresponsive)));
    assert_eq!(m.poll_timeout(), Some(ms(1500)));
    m.handle_timeout(ms(1500));
    assert!(drain(&mut m).contains(&down(A, 7, Unresponsive)));
}

/// Under bounded sessions, whether `effects` tell a neighbour that `node`
/// is down.
fn says_down(effects: &[Effect], node: &str) -> bool {
    effects.iter().any(|effect| {
        matches!(effect, Effect::SendHeartbeat { heartbeat, .. }
            if heartbeat.news.iter().any(|f| f.node == n(node) && f.down.is_some()))
    })
}

/// ME, with bounded sessions, and A and B admitted over sessions 1 and 2.
fn bounded_with_a_and_b() -> Me {
    let mut config = config(&[A, B], 3);
    config.sessions = cloister_core::config::Sessions::Bounded;
    let mut m = machine(config, SEED);
    m.handle(ms(0), Input::Start);
    drain(&mut m);
    admit(&mut m, ms(5), A, 1, 7);
    admit(&mut m, ms(5), B, 2, 8);
    run_until(&mut m, ms(50));
    m
}

/// A node that did not run for seconds (SIGSTOP) was dropped meanwhile by
/// the peers that watch it, and they let its sessions go. Waking, it finds
/// those sessions closed. That is no sign that the peers crashed, and it
/// must not tell the cluster they did: every ring would drop healthy
/// members until they said up again. It lets them go from its own ring
/// only, and redials. The closes may come before or after its overdue
/// wake-up; a close while it runs is still told to every neighbour.
#[test]
fn a_node_waking_from_a_stall_does_not_say_that_peers_that_closed_on_it_crashed() {
    // The close handled before the overdue wake-up, then after it.
    for close_first in [true, false] {
        let mut m = bounded_with_a_and_b();
        let woke = ms(3000);
        if !close_first {
            m.handle_timeout(woke);
        }
        m.handle(woke, session_down(A, 1));
        let mut effects = drain(&mut m);
        effects.extend(run_until(&mut m, woke + ms(50)).into_iter().map(|(_, e)| e));
        assert!(effects.contains(&down(A, 7, Crashed)), "{effects:#?}");
        assert!(effects.iter().any(|e| matches!(e, Effect::Stalled { .. })));
        assert!(
            !says_down(&effects, A),
            "close first: {close_first}: ME told B that A crashed: {effects:#?}"
        );
        assert!(effects.contains(&dial(A)), "A is redialed: {effects:#?}");
    }

    // Awake, the same close is a crash, and B hears of it.
    let mut m = bounded_with_a_and_b();
    m.handle(ms(60), session_down(A, 1));
    let mut effects = drain(&mut m);
    effects.extend(run_until(&mut m, ms(110)).into_iter().map(|(_, e)| e));
    assert!(says_down(&effects, A), "{effects:#?}");
}

#[test]
fn a_silent_member_is_dropped_then_its_session_after_another_timeout() {
    let mut m = started(&[A], 2);
    m.handle(ms(0), session_up(A, 1));
    drain(&mut m);
    m.handle(ms(50), Input::Heartbeat(hb(&m, A, 7, digest(&[A, ME]))));
    drain(&mut m);

    // A freezes after its heartbeat at 50ms. ME keeps heartbeating it every
    // 100ms, and hears nothing back.
    let quiet = run_until(&mut m, ms(549));
    let beats: Vec<(Duration, Effect)> = [100, 200, 300, 400, 500]
        .map(|t| (ms(t), beat(A, &[A, ME])))
        .into();
    assert_eq!(quiet, beats);

    // At 550ms A has been silent for heartbeat_timeout (500ms): it leaves
    // the ring as unresponsive and ME rehashes. The session stays open.
    assert_eq!(m.poll_timeout(), Some(ms(550)));
    m.handle_timeout(ms(550));
    assert_eq!(
        drain(&mut m),
        [
            down(A, 7, Unresponsive),
            ring(&[ME]),
            changed(Ready, Rehashing, 2, &[ME], true),
        ]
    );
    assert_eq!(m.connected(), names(&[A]));

    // For another heartbeat_timeout ME heartbeats it, saying it is not
    // admitted; then, A still silent, ME closes the session.
    let held = run_until(&mut m, ms(1_050));
    let mut expected: Vec<(Duration, Effect)> = [600, 700, 800, 900, 1_000]
        .map(|t| (ms(t), beat(A, &[ME])))
        .into();
    expected.push((
        ms(1_050),
        Effect::Disconnect {
            peer: n(A),
            session: SessionId(1),
        },
    ));
    assert_eq!(held, expected);

    // The runtime reports the session it closed: already handled.
    m.handle(ms(1_051), session_down(A, 1));
    assert_eq!(drain(&mut m), []);

    // A frozen peer gets dial_backoff_min (10ms) before ME dials it again.
    assert_eq!(next_effects(&mut m), (ms(1_060), vec![dial(A)]));

    // A thawed: the dial gives a new session, and its heartbeat (same
    // incarnation, its ring dropped ME too) makes it a member again.
    m.handle(ms(1_065), session_up(A, 2));
    assert_eq!(drain(&mut m), [greet(A, &[ME])]);
    m.handle(ms(1_066), Input::Heartbeat(hb(&m, A, 7, digest(&[A]))));
    assert_eq!(
        drain(&mut m),
        [
            up(A, 7),
            ring(&[A, ME]),
            beat(A, &[A, ME]),
            changed(Rehashing, Ready, 2, &[A, ME], false),
        ]
    );
}

#[test]
fn a_member_that_was_only_slow_is_back_over_its_session_without_a_reconnect() {
    let mut m = started(&[A], 2);
    m.handle(ms(0), session_up(A, 1));
    drain(&mut m);
    m.handle(ms(50), Input::Heartbeat(hb(&m, A, 7, digest(&[A, ME]))));
    drain(&mut m);

    // A's process does not run for 600ms (an overloaded machine): dropped.
    run_until(&mut m, ms(550));
    assert_eq!(m.ring().members(), names(&[ME]));
    let not_admitted = run_until(&mut m, ms(600));
    assert_eq!(not_admitted, [(ms(600), beat(A, &[ME]))]);

    // At 650ms it runs again and answers ME's heartbeat of 600ms, which
    // said it was not admitted: a member again, over the same session.
    m.handle(ms(650), Input::Heartbeat(hb(&m, A, 7, digest(&[A, ME]))));
    assert_eq!(
        drain(&mut m),
        [
            up(A, 7),
            ring(&[A, ME]),
            beat(A, &[A, ME]),
            changed(Rehashing, Ready, 2, &[A, ME], true)
        ]
    );

    // Past the end of the hold (1050ms), and before A's new deadline
    // (1150ms), nothing is closed or redialed.
    let later = run_until(&mut m, ms(1_100));
    assert!(
        !later
            .iter()
            .any(|(_, e)| matches!(e, Effect::Disconnect { .. } | Effect::Dial { .. })),
        "{later:#?}"
    );
    assert_eq!(m.ring().members(), names(&[A, ME]));
}

// ---- 6. Dial backoff ---------------------------------------------------------------

/// Fails every dial to A the moment it is made, `failures` times, and returns
/// the wait before each redial.
fn redial_delays(m: &mut Me, failures: usize) -> Vec<Duration> {
    let mut dialed_at = ms(0);
    let mut delays = Vec::new();
    for _ in 0..failures {
        m.handle(dialed_at, dial_failed(A));
        let (at, effects) = next_effects(m);
        assert_eq!(effects, [dial(A)]);
        delays.push(at - dialed_at);
        dialed_at = at;
    }
    delays
}

#[test]
fn failed_dials_back_off_exponentially_up_to_the_cap() {
    // No jitter: the waits are exact.
    let mut m = machine(config(&[A], 1), SEED);
    m.handle(ms(0), Input::Start);
    assert!(drain(&mut m).contains(&dial(A)));

    // A refuses every dial. The wait doubles from dial_backoff_min (10ms)
    // and stops growing at dial_backoff_max (500ms).
    let delays = redial_delays(&mut m, 8);
    assert_eq!(delays, [10, 20, 40, 80, 160, 320, 500, 500].map(ms));

    // The report says whom ME waits for and why.
    let missing = &m.report().missing;
    assert_eq!(missing.len(), 1);
    assert_eq!(missing[0].name, n(A));
    assert_eq!(missing[0].failed_dials, 8);
    assert_eq!(missing[0].why, "connection refused");
}

#[test]
fn jitter_spreads_each_wait_within_its_bounds() {
    // The default jitter, ±20%, over several seeds.
    let mut jittered = false;
    for seed in 0..16 {
        let config = Config {
            dial_backoff_jitter: 0.2,
            ..config(&[A], 1)
        };
        let mut m = machine(config, seed);
        m.handle(ms(0), Input::Start);
        drain(&mut m);

        let delays = redial_delays(&mut m, 9);
        for (failures, delay) in delays.into_iter().enumerate() {
            let base = ms(10 << failures).min(ms(500));
            let (low, high) = (base.mul_f64(0.8), base.mul_f64(1.2));
            assert!(
                (low..=high).contains(&delay),
                "seed {seed}, failure {failures}: {delay:?} not in {low:?}..={high:?}"
            );
            jittered |= delay != base;
        }
    }
    assert!(jittered, "jitter never moved a wait");
}

#[test]
fn a_dial_that_gets_no_session_within_the_dial_timeout_failed() {
    let mut m = started(&[A], 2);
    let report = m.report();
    assert_eq!(report.missing[0].why, "not connected yet");

    // A's port accepts, but no session ever becomes ready (a wrong cookie, a
    // frozen node). After dial_timeout (500ms) the dial counts as failed, and
    // after dial_backoff_min (10ms) more, ME dials again.
    assert_eq!(next_effects(&mut m), (ms(510), vec![dial(A)]));

    // The report names A, the failure, and why.
    let AssemblyReport {
        wanted,
        members,
        missing,
        discovery_error,
    } = m.report();
    assert_eq!((wanted, members, discovery_error), (2, names(&[ME]), None));
    let [MissingPeer {
        name,
        addr,
        failed_dials,
        why,
    }] = &missing[..]
    else {
        panic!("expected A alone: {missing:#?}");
    };
    assert_eq!(
        (name, addr, failed_dials),
        (&n(A), &Some(entry(A).addr), &1)
    );
    assert!(why.contains("no ready session within 500ms"), "{why}");
}

// ---- 7. Incarnations -----------------------------------------------------------------

#[test]
fn a_new_process_replaces_the_old_one_without_a_rehash_whatever_its_clock() {
    // Twice: A comes back with a newer incarnation, then with an older one (its
    // wall clock went backwards). What tells a new process is its new session,
    // not how the two clocks compare.
    for (old, new) in [(7, 9), (7, 5)] {
        let mut m = started(&[A], 1);
        admit(&mut m, ms(1), A, 1, old);
        let first_token = m.sent[&n(A)];

        // A restarted under the same name and its new session is ready before
        // the old one's close arrives: ME greets it with a new token.
        m.handle(ms(10), session_up(A, 2));
        assert_eq!(drain(&mut m), [greet(A, &[A, ME])]);
        assert_ne!(m.sent[&n(A)], first_token, "a new session, a new token");

        // The new process answers, echoing it, with incarnation `new`. The
        // old process is gone and the new one takes its place; the ring, a
        // set of names, is unchanged. ME greets the newcomer.
        m.handle(ms(11), Input::Heartbeat(hb(&m, A, new, digest(&[A, ME]))));
        assert_eq!(
            drain(&mut m),
            [down(A, old, Restarted), up(A, new), beat(A, &[A, ME])]
        );
        assert_eq!(m.incarnation_of(&n(A)), Some(Incarnation(new)));

        // A late heartbeat of the dead process, echoing the first session's
        // token, is ignored without a word: it is no forgery, just late.
        let late = Heartbeat {
            echo: first_token,
            ..hello(A, old, digest(&[A, ME]))
        };
        m.handle(ms(12), Input::Heartbeat(late));
        assert_eq!(drain(&mut m), []);
        assert_eq!(m.incarnation_of(&n(A)), Some(Incarnation(new)));
    }
}

// ---- 8. Leaving --------------------------------------------------------------------

/// `ME`'s `Leaving` event.
fn leaving(drain_timeout: Duration) -> Effect {
    Effect::Publish(TopologyEvent::Leaving { drain_timeout })
}

/// A leaving `ME` names the sentry of its peers' ring: not itself.
fn stopped_under(sentry: &str, members: &[&str]) -> Effect {
    let Effect::Publish(TopologyEvent::StateChanged {
        from,
        to,
        mut snapshot,
    }) = changed(Stopping, Stopped, 1, members, false)
    else {
        unreachable!("changed() is a StateChanged")
    };
    snapshot.sentry = Some(n(sentry));
    Effect::Publish(TopologyEvent::StateChanged { from, to, snapshot })
}

#[test]
fn leaving_says_goodbye_drains_then_stops_and_ignores_everything() {
    let mut m = started(&[A, B], 1);
    admit(&mut m, ms(1), A, 1, 7);
    // B is connected but not a member: it hears the goodbye too.
    m.handle(ms(2), session_up(B, 2));
    drain(&mut m);

    // The application leaves: not ready first, then a goodbye to each
    // connected peer, sorted; then ME takes itself out of its own ring (the
    // ring A keeps after the goodbye, so ME's lookups name A) and tells the
    // application to drain within `drain_timeout`.
    let drain_timeout = Config::default().drain_timeout;
    m.handle(ms(10), Input::Leave);
    assert_eq!(
        drain(&mut m),
        [
            changed(Ready, Stopping, 1, &[A, ME], true),
            goodbye(A, &[A, ME]),
            send(B, &[A, ME], true, 0), // B never said a word: echo 0
            ring(&[A]),
            Effect::Publish(TopologyEvent::SentryChanged { sentry: Some(n(A)) }),
            leaving(drain_timeout),
        ]
    );
    assert_eq!(m.ring().node_for("any key"), Some(&n(A)));
    // Nothing but the drain deadline is left to wake up for.
    assert_eq!(m.poll_timeout(), Some(ms(10) + drain_timeout));

    // A heartbeat, a closed session, a redial: a leaving node ignores them.
    m.handle(ms(20), Input::Heartbeat(hb(&m, A, 7, digest(&[A]))));
    m.handle(ms(21), session_down(B, 2));
    m.handle_timeout(ms(30));
    assert_eq!(drain(&mut m), []);
    assert_eq!(m.state(), Stopping);

    // The application drained at 30 ms: the node stops once the goodbyes
    // have had their linger, 50 ms after the leave, not before.
    m.handle(ms(30), Input::Drained);
    assert_eq!(drain(&mut m), []);
    assert_eq!(m.poll_timeout(), Some(ms(10) + GOODBYE_LINGER));
    m.handle_timeout(ms(10) + GOODBYE_LINGER);
    assert_eq!(
        drain(&mut m),
        [stopped_under(A, &[A]), Effect::Left { drained: true }]
    );

    // Stopped is final: every input and every timer is ignored.
    let inputs = [
        Input::Start,
        session_up(A, 3),
        Input::Heartbeat(hb(&m, A, 8, digest(&[A]))),
        session_down(A, 1),
        dial_failed(B),
        Input::Discovered(vec![entry(A), entry(B)]),
        Input::DiscoveryFailed("no such host".into()),
        Input::Leave,
        Input::Drained,
    ];
    for input in inputs {
        m.handle(ms(100), input);
        m.handle_timeout(ms(10_000));
        assert_eq!(drain(&mut m), []);
    }
    assert_eq!(m.poll_timeout(), None);
    assert_eq!(m.state(), Stopped);
}

#[test]
fn a_leave_that_is_not_drained_ends_at_drain_timeout() {
    let mut m = machine(
        Config {
            drain_timeout: ms(800),
            ..config(&[A], 1)
        },
        SEED,
    );
    m.handle(ms(0), Input::Start);
    admit(&mut m, ms(1), A, 1, 7);
    m.handle(ms(10), Input::Leave);
    assert_eq!(drain(&mut m).last(), Some(&leaving(ms(800))));

    // Nobody drains: just before the deadline the node is still leaving...
    m.handle_timeout(ms(809));
    assert_eq!(drain(&mut m), []);
    // ...and at the deadline it stops, saying it was not drained.
    assert_eq!(m.poll_timeout(), Some(ms(810)));
    m.handle_timeout(ms(810));
    assert_eq!(
        drain(&mut m),
        [stopped_under(A, &[A]), Effect::Left { drained: false }]
    );
    // A drain that comes too late changes nothing.
    m.handle(ms(900), Input::Drained);
    assert_eq!(drain(&mut m), []);
}

#[test]
fn a_drain_timeout_of_zero_stops_right_after_the_goodbyes() {
    let mut m = machine(
        Config {
            drain_timeout: Duration::ZERO,
            ..config(&[A], 1)
        },
        SEED,
    );
    m.handle(ms(0), Input::Start);
    admit(&mut m, ms(1), A, 1, 7);
    // Nothing to wait for but the goodbyes' linger.
    m.handle(ms(10), Input::Leave);
    let effects = drain(&mut m);
    assert!(effects.contains(&goodbye(A, &[A, ME])), "{effects:?}");
    assert_eq!(m.poll_timeout(), Some(ms(10) + GOODBYE_LINGER));
    m.handle_timeout(ms(10) + GOODBYE_LINGER);
    assert_eq!(drain(&mut m).last(), Some(&Effect::Left { drained: false }));
    assert_eq!(m.state(), Stopped);
}

#[test]
fn a_leaving_node_still_hears_a_goodbye_so_it_never_hands_off_to_a_leaver() {
    let mut m = started(&[A, B], 1);
    admit(&mut m, ms(1), A, 1, 7);
    admit(&mut m, ms(2), B, 2, 8);
    m.handle(ms(10), Input::Leave);
    drain(&mut m);
    assert_eq!(m.ring().members(), names(&[A, B]));

    // A leaves too, while ME drains: ME takes A out of its ring at once,
    // so its lookups (where it hands off) name B alone.
    let goodbye_of_a = Heartbeat {
        leaving: true,
        ..hb(&m, A, 7, digest(&[A, B, ME]))
    };
    m.handle(ms(20), Input::Heartbeat(goodbye_of_a));
    let effects = drain(&mut m);
    assert_eq!(effects[..2], [down(A, 7, Left), ring(&[B])], "{effects:?}");
    assert_eq!(m.state(), Stopping);

    // Anything else from a peer is still ignored, and no timer but the
    // drain deadline is wanted.
    m.handle(ms(21), Input::Heartbeat(hb(&m, B, 8, digest(&[B]))));
    m.handle(ms(22), session_down(B, 2));
    assert_eq!(drain(&mut m), []);
    assert_eq!(m.ring().members(), names(&[B]));
    assert_eq!(
        m.poll_timeout(),
        Some(ms(10) + Config::default().drain_timeout)
    );
}

#[test]
fn sessions_closed_while_leaving_are_not_redialed() {
    let mut m = started(&[A, B], 1);
    admit(&mut m, ms(1), A, 1, 7);
    m.handle(ms(2), session_up(B, 2));
    m.handle(ms(10), Input::Leave);
    drain(&mut m);

    // While it drains, its sessions may close (the peers stop). A leaving
    // node dials nobody and wants no timer but its drain deadline.
    m.handle(ms(11), session_down(A, 1));
    m.handle(ms(12), session_down(B, 2));
    assert_eq!(drain(&mut m), []);
    assert_eq!(
        m.poll_timeout(),
        Some(ms(10) + Config::default().drain_timeout)
    );
}

#[test]
fn a_member_that_says_goodbye_left_and_its_late_heartbeats_are_ignored() {
    let mut m = started(&[A], 2);
    admit(&mut m, ms(1), A, 1, 7);

    // A's goodbye: it left, and ME falls below consensus.
    let goodbye = Heartbeat {
        leaving: true,
        ..hb(&m, A, 7, digest(&[A, ME]))
    };
    m.handle(ms(10), Input::Heartbeat(goodbye));
    assert_eq!(
        drain(&mut m),
        [
            down(A, 7, Left),
            ring(&[ME]),
            changed(Ready, Rehashing, 2, &[ME], true),
        ]
    );

    // A heartbeat A sent before its goodbye arrives late: ignored.
    m.handle(ms(11), Input::Heartbeat(hb(&m, A, 7, digest(&[A, ME]))));
    assert_eq!(drain(&mut m), []);

    // A's session closes. A is still in the static sentry, so ME dials it, in
    // case it comes back.
    m.handle(ms(15), session_down(A, 1));
    assert_eq!(drain(&mut m), [dial(A)]);

    // It does, restarted: incarnation 8 joins.
    m.handle(ms(20), session_up(A, 2));
    assert_eq!(drain(&mut m), [greet(A, &[ME])]);
    m.handle(ms(21), Input::Heartbeat(hb(&m, A, 8, digest(&[A]))));
    assert_eq!(
        drain(&mut m),
        [
            up(A, 8),
            ring(&[A, ME]),
            beat(A, &[A, ME]),
            changed(Rehashing, Ready, 2, &[A, ME], false),
        ]
    );
}

// ---- 9. Service mode -------------------------------------------------------------

#[test]
fn a_service_is_resolved_every_tick_and_its_answer_is_what_gets_dialed() {
    let config = Config {
        sentry: Sentry::Service("cloister_test.local".into()),
        consensus: 2,
        dial_backoff_jitter: 0.0,
        ..Config::for_tests()
    };
    let mut m = machine(config, SEED);

    // Start: ME assembles and asks the runtime to resolve the service.
    m.handle(ms(0), Input::Start);
    assert_eq!(
        drain(&mut m),
        [changed(Down, Assembling, 2, &[ME], true), Effect::Resolve]
    );

    // No answer yet; a discovery_tick (100ms) later, ME asks again.
    assert_eq!(next_effects(&mut m), (ms(100), vec![Effect::Resolve]));

    // The answer lists ME itself among A and B: ME dials only the others.
    m.handle(
        ms(101),
        Input::Discovered(vec![entry(A), entry(ME), entry(B)]),
    );
    assert_eq!(drain(&mut m), [dial(A), dial(B)]);

    // The next answer lacks B (scaled down). B has no session: it is forgotten.
    assert_eq!(next_effects(&mut m), (ms(200), vec![Effect::Resolve]));
    m.handle(ms(201), Input::Discovered(vec![entry(ME), entry(A)]));
    assert_eq!(drain(&mut m), []);
    let missing: Vec<NodeName> = m.report().missing.into_iter().map(|p| p.name).collect();
    assert_eq!(missing, names(&[A]));

    // The dial to B that was out fails late: nothing to retry.
    m.handle(ms(202), dial_failed(B));
    assert_eq!(drain(&mut m), []);

    // For three seconds the service keeps answering A (and ME); A never
    // answers its dials. ME resolves every tick and redials A, never B.
    let mut dialed = Vec::new();
    let mut resolves = 0;
    while let Some(at) = m.poll_timeout().filter(|at| *at <= ms(3_000)) {
        m.handle_timeout(at);
        while let Some(effect) = m.poll() {
            match effect {
                Effect::Resolve => {
                    resolves += 1;
                    m.handle(at, Input::Discovered(vec![entry(ME), entry(A)]));
                }
                Effect::Dial { peer, .. } => dialed.push(peer),
                other => panic!("unexpected effect at {at:?}: {other:?}"),
            }
        }
    }
    assert_eq!(resolves, 28); // at 300ms, 400ms, ..., 3000ms
    assert!(!dialed.is_empty());
    assert!(dialed.iter().all(|peer| *peer == n(A)), "{dialed:?}");
}

// ---- 10. Determinism -------------------------------------------------------------

/// Three seconds of a cluster with jitter: B refuses every dial, A refuses the
/// first and then joins, and later freezes. Returns every effect with its time.
fn replay(seed: u64) -> Vec<(Duration, Effect)> {
    let config = Config {
        dial_backoff_jitter: 0.2,
        ..config(&[A, B], 2)
    };
    let mut m = machine(config, seed);
    let mut log = Vec::new();
    let mut dials_to_a = 0;
    let mut now = ms(0);
    m.handle(now, Input::Start);
    loop {
        let mut effects: VecDeque<Effect> = drain(&mut m).into();
        while let Some(effect) = effects.pop_front() {
            log.push((now, effect.clone()));
            let Effect::Dial { peer, .. } = effect else {
                continue;
            };
            if peer == n(A) {
                dials_to_a += 1;
            }
            if peer == n(A) && dials_to_a == 2 {
                m.handle(now, session_up(A, 1));
                effects.extend(drain(&mut m)); // ME's greeting, for A to echo
                m.handle(now, Input::Heartbeat(hb(&m, A, 7, digest(&[A]))));
            } else {
                m.handle(
                    now,
                    Input::DialFailed {
                        peer,
                        error: "refused".into(),
                    },
                );
            }
            effects.extend(drain(&mut m));
        }
        match m.poll_timeout().filter(|at| *at <= ms(3_000)) {
            Some(at) => now = at,
            None => return log,
        }
        m.handle_timeout(now);
    }
}

#[test]
fn the_same_seed_and_inputs_give_the_same_effects() {
    let first = replay(SEED);
    assert!(first.contains(&(ms(0), dial(A))));
    assert!(first.iter().any(|(_, effect)| *effect == up(A, 7)));
    assert_eq!(first, replay(SEED));

    // The seed is what drives the jitter: another seed spreads dials otherwise.
    assert_ne!(first, replay(SEED + 1));
}

// ---- 11. The sentry --------------------------------------------------------------

#[test]
fn the_sentry_is_the_member_up_longest_and_moves_when_it_goes() {
    // ME started at incarnation 100; A has been up since incarnation 7.
    let config = config(&[A], 2);
    let mut m = Me {
        m: Membership::new(config, n(ME), Incarnation(100), 1),
        sent: BTreeMap::new(),
    };
    m.handle(ms(0), Input::Start);
    drain(&mut m);
    assert_eq!(m.sentry(), Some(&n(ME)), "alone, a node is its own sentry");

    // A is admitted: it is older, so it becomes the sentry, right after the ring.
    m.handle(ms(1), session_up(A, 1));
    drain(&mut m);
    m.handle(ms(1), Input::Heartbeat(hb(&m, A, 7, digest(&[A]))));
    let effects = drain(&mut m);
    let ring_at = effects
        .iter()
        .position(|e| matches!(e, Effect::Publish(TopologyEvent::RingChanged { .. })));
    let sentry_at = effects.iter().position(|e| {
        matches!(e, Effect::Publish(TopologyEvent::SentryChanged { sentry }) if *sentry == Some(n(A)))
    });
    assert!(ring_at.is_some() && sentry_at > ring_at, "{effects:?}");
    assert_eq!(m.snapshot().sentry, Some(n(A)));

    // A's session closes for good: after the grace, ME is the sentry again.
    m.handle(ms(5), session_down(A, 1));
    m.handle_timeout(ms(30));
    let effects = drain(&mut m);
    assert!(
        effects.contains(&Effect::Publish(TopologyEvent::SentryChanged {
            sentry: Some(n(ME))
        })),
        "{effects:?}"
    );
}

#[test]
fn an_external_ring_keeps_members_digest_and_events_but_places_no_key() {
    use cloister_core::config::RingMode;
    let builtin = config(&[B], 2);
    let external = Config {
        ring: RingMode::External,
        ..builtin.clone()
    };
    let mut rings = Vec::new();
    for config in [builtin, external] {
        // B runs the same ring configuration as ME (0: external).
        let vnodes = match config.ring {
            RingMode::Builtin => config.ring_vnodes,
            RingMode::External => 0,
        };
        let mut m = machine(config, SEED);
        m.handle(ms(0), Input::Start);
        drain(&mut m);
        m.handle(ms(10), session_up(B, 1));
        drain(&mut m);
        let from_b = Heartbeat {
            ring_vnodes: vnodes,
            ..hb(&m, B, 7, digest(&[B, ME]))
        };
        m.handle(ms(10), Input::Heartbeat(from_b));
        // The same NodeUp, ring change and Ready either way.
        assert!(drain(&mut m).contains(&up(B, 7)));
        assert_eq!(m.state(), NodeState::Ready);
        rings.push(m.ring().clone());
    }
    let (builtin, external) = (&rings[0], &rings[1]);
    assert_eq!(external.members(), builtin.members());
    assert_eq!(external.digest(), builtin.digest());
    assert!(builtin.node_for("user:42").is_some());
    assert_eq!(external.node_for("user:42"), None);
    assert!(external.nodes_for("user:42", 2).is_empty());
}

// ---- 12. Who is speaking -----------------------------------------------------------

#[test]
fn a_forged_goodbye_from_another_session_is_dropped_reported_once_and_changes_nothing() {
    let mut m = started(&[A, B], 3);
    admit(&mut m, ms(1), A, 1, 7);
    admit(&mut m, ms(2), B, 2, 9);
    run_until(&mut m, ms(9)); // the ring's rebuild for B
    assert_eq!(m.state(), Ready);

    // B (or any peer with the cookie) sends a heartbeat naming A: A is
    // leaving. The runtime cannot tell it came over B's session, but it does
    // not echo the token ME gave A over A's session, which B never saw.
    let forged_goodbye = Heartbeat {
        leaving: true,
        token: 0xBAD,
        ..hello(A, 7, digest(&[A, ME, B]))
    };
    m.handle(ms(10), Input::Heartbeat(forged_goodbye.clone()));
    assert_eq!(
        drain(&mut m),
        [Effect::Dropped {
            claimed: n(A),
            why: DropReason::NotEchoed,
        }]
    );
    // Once per session: more forgeries (a guessed echo, a "restarted" A)
    // are dropped without another word.
    let guessed = Heartbeat {
        echo: 12_345,
        ..forged_goodbye
    };
    let restarted = Heartbeat {
        token: 0xBAD,
        ..hello(A, 8, digest(&[A]))
    };
    m.handle(ms(11), Input::Heartbeat(guessed));
    m.handle(ms(11), Input::Heartbeat(restarted));
    assert_eq!(drain(&mut m), []);
    assert_eq!(m.ring().members(), names(&[A, ME, B]));
    assert_eq!(m.incarnation_of(&n(A)), Some(Incarnation(7)));

    // The forger's token did not replace A's: ME's next heartbeat to A still
    // echoes A's own, so A keeps hearing ME.
    let (at, effects) = next_effects(&mut m);
    assert_eq!(at, ms(100));
    assert!(effects.contains(&beat(A, &[A, ME, B])), "{effects:#?}");

    // A's own heartbeats keep counting, and A's own goodbye is heard.
    let goodbye = Heartbeat {
        leaving: true,
        ..hb(&m, A, 7, digest(&[A, ME, B]))
    };
    m.handle(ms(101), Input::Heartbeat(goodbye));
    assert!(drain(&mut m).contains(&down(A, 7, Left)));
}

#[test]
fn a_heartbeat_naming_a_stranger_keeps_no_state() {
    let mut m = started(&[A], 2);

    // Heartbeats under a thousand invented names, twice over: no session
    // has any of those names, so none is kept. The first few names are
    // reported, once each; the memory of reported names stays bounded.
    let strangers: Vec<String> = (0..1_000)
        .map(|i| format!("cloister@10.9.{}.{}", i / 250, i % 250 + 1))
        .collect();
    let mut reported = Vec::new();
    for _ in 0..2 {
        for name in &strangers {
            m.handle(ms(1), Input::Heartbeat(hello(name, 1, digest(&[name]))));
            reported.extend(drain(&mut m));
        }
    }
    assert!(!reported.is_empty());
    assert!(reported.len() <= 32, "{} reports", reported.len());
    for effect in &reported {
        assert!(
            matches!(effect, Effect::Dropped { claimed, why: DropReason::NoSession }
                if strangers.contains(&claimed.to_string())),
            "{effect:?}"
        );
    }
    let mut claimed: Vec<&Effect> = reported.iter().collect();
    claimed.dedup();
    assert_eq!(claimed.len(), reported.len(), "a name reported twice");

    // Nothing about them is kept: the report knows A alone, nobody is
    // connected, and the next thing ME does is what it would have done anyway.
    let missing: Vec<NodeName> = m.report().missing.into_iter().map(|p| p.name).collect();
    assert_eq!(missing, names(&[A]));
    assert_eq!(m.connected(), Vec::<NodeName>::new());
    assert_eq!(m.ring().members(), names(&[ME]));
}

#[test]
fn a_node_that_left_comes_back_as_a_new_process_even_with_its_clock_behind() {
    let mut m = started(&[A], 2);
    admit(&mut m, ms(1), A, 1, 700);

    // A says goodbye over session 1, and a heartbeat it sent before arrives
    // late over the same session: ignored.
    let goodbye = Heartbeat {
        leaving: true,
        ..hb(&m, A, 700, digest(&[A, ME]))
    };
    m.handle(ms(10), Input::Heartbeat(goodbye));
    assert!(drain(&mut m).contains(&down(A, 700, Left)));
    m.handle(ms(11), Input::Heartbeat(hb(&m, A, 700, digest(&[A, ME]))));
    assert_eq!(drain(&mut m), []);
    m.handle(ms(15), session_down(A, 1));
    assert_eq!(drain(&mut m), [dial(A)]);

    // A starts again on a host whose wall clock is behind the old one's: its
    // incarnation, 500, is smaller than the one that left. Its new session
    // and a heartbeat echoing ME's new token are what count: it is admitted.
    m.handle(ms(20), session_up(A, 2));
    assert_eq!(drain(&mut m), [greet(A, &[ME])]);
    m.handle(ms(21), Input::Heartbeat(hb(&m, A, 500, digest(&[A]))));
    assert_eq!(
        drain(&mut m),
        [
            up(A, 500),
            ring(&[A, ME]),
            beat(A, &[A, ME]),
            changed(Rehashing, Ready, 2, &[A, ME], false),
        ]
    );
}

#[test]
fn two_machines_admit_each_other_through_the_token_handshake() {
    // ME and A, both real machines, each with the other in its sentry list.
    // Heartbeats go straight across; the session comes up on both sides.
    let mut me = machine(config(&[A], 2), SEED);
    let config_a = Config {
        sentry: Sentry::Nodes(vec![entry(ME), entry(A)]),
        consensus: 2,
        ..Config::for_tests()
    };
    let mut a = Membership::new(config_a, n(A), Incarnation(7), SEED + 1);
    me.handle(ms(0), Input::Start);
    a.handle(ms(0), Input::Start);
    me.handle(ms(1), session_up(A, 1));
    a.handle(ms(1), session_up(ME, 1));

    // Deliver every heartbeat each emits to the other, round by round; a
    // round is a one-way trip. Both are Ready after the hello, the echo and
    // one answer: three one-way trips.
    let mut rounds = 0;
    while (me.state(), a.state()) != (Ready, Ready) {
        rounds += 1;
        assert!(rounds <= 10, "no admission after 10 one-way trips");
        let to_a: Vec<Heartbeat> = std::iter::from_fn(|| me.m.poll())
            .filter_map(|e| match e {
                Effect::SendHeartbeat { heartbeat, .. } => Some(heartbeat),
                _ => None,
            })
            .collect();
        let to_me: Vec<Heartbeat> = std::iter::from_fn(|| a.poll())
            .filter_map(|e| match e {
                Effect::SendHeartbeat { heartbeat, .. } => Some(heartbeat),
                _ => None,
            })
            .collect();
        let now = ms(1 + rounds);
        for hb in to_a {
            a.handle(now, Input::Heartbeat(hb));
            if a.poll_timeout().is_some_and(|at| at <= now) {
                a.handle_timeout(now); // the ring, as A's runtime runs it
            }
        }
        to_me
            .into_iter()
            .for_each(|hb| me.handle(ms(1 + rounds), Input::Heartbeat(hb)));
    }
    assert!(rounds <= 3, "{rounds} one-way trips");
    assert_eq!(me.ring().members(), names(&[A, ME]));
    assert_eq!(a.ring().members(), names(&[A, ME]));
}

// ---- Quorum in service mode ----------------------------------------------------

/// In service mode no list says the cluster's size: a majority is of the
/// most members seen at once, and a member that says goodbye stops counting,
/// while one that vanishes still does (the far side of a partition looks
/// exactly like that).
#[test]
fn in_service_mode_a_graceful_leave_shrinks_the_majority_and_a_crash_does_not() {
    let cfg = Config {
        sentry: Sentry::Service("cloister.local".into()),
        quorum: cloister_core::config::Quorum::Majority,
        dial_backoff_jitter: 0.0,
        ..Config::for_tests()
    };
    for graceful in [true, false] {
        let mut m = machine(cfg.clone(), SEED);
        m.handle(ms(0), Input::Start);
        drain(&mut m);
        assert_eq!(m.state(), Ready, "alone is all it has seen");
        for (i, peer) in [A, B, C].into_iter().enumerate() {
            admit(&mut m, ms(1 + i as u64), peer, 1 + i as u64, 7 + i as u64);
            run_until(&mut m, ms(2 + i as u64));
        }
        assert_eq!((m.ring().len(), m.quorum_needed()), (4, Some(3)));

        for (i, peer) in [A, B].into_iter().enumerate() {
            let at = ms(10 + i as u64);
            if graceful {
                let goodbye = Heartbeat {
                    leaving: true,
                    ..hb(&m, peer, 7 + i as u64, digest(&[A, B, C, ME]))
                };
                m.handle(at, Input::Heartbeat(goodbye));
            } else {
                m.handle(at, session_down(peer, 1 + i as u64));
            }
            run_until(&mut m, at + ms(1));
        }
        assert_eq!(m.ring().len(), 2);
        if graceful {
            assert_eq!((m.state(), m.quorum_needed()), (Ready, Some(2)));
            assert_eq!(m.sentry().cloned(), Some(n(ME)));
        } else {
            assert_eq!(
                (m.state(), m.quorum_needed()),
                (NodeState::NoQuorum, Some(3))
            );
            assert_eq!(m.sentry(), None);
        }
    }
}

#[test]
fn the_assembly_report_waits_for_the_quorum_when_it_needs_more_than_consensus() {
    let cfg = Config {
        quorum: cloister_core::config::Quorum::Majority,
        ..config(&[A, B], 1)
    };
    let mut m = machine(cfg, SEED);
    m.handle(ms(0), Input::Start);
    drain(&mut m);
    // Consensus 1 is met alone, a majority of three is not: still held.
    assert_eq!(m.state(), Assembling);
    assert_eq!((m.report().wanted, m.report().members.len()), (2, 1));
    admit(&mut m, ms(1), A, 1, 7);
    run_until(&mut m, ms(2));
    assert_eq!(m.state(), Ready);
}

// ---- Hostile heartbeats ----------------------------------------------------
//
// Any peer with the cookie can cast the herald anything that parses as a
// heartbeat. Whatever the fields say, the machine must not panic, and a
// node becomes a member only as the protocol says: by a heartbeat that
// echoes the token `ME` gave it on its current session. `A` is a member
// (admitted the honest way); `B` has a session but has not echoed; `C` and
// the rest never connected.

mod hostile {
    use std::collections::BTreeSet;

    use cloister_core::config::Quorum;
    use cloister_core::membership::{Observation, Suspect};
    use proptest::prelude::*;

    use super::*;

    /// A name that parses: one of the cast, `ME` itself, or any other,
    /// the longest the rules allow included.
    fn name() -> impl Strategy<Value = NodeName> {
        prop_oneof![
            prop::sample::select(vec![A, B, C, ME]).prop_map(n),
            ("[a-z][a-z0-9_.-]{0,63}", any::<[u8; 2]>())
                .prop_map(|(node, [x, y])| n(&format!("{node}@10.9.{x}.{y}"))),
            "[a-z]{63}(\\.[a-z]{63}){2}\\.[a-z]{61}"
                .prop_map(|host| n(&format!("{}@{host}", "x".repeat(64)))),
        ]
    }

    fn incarnation() -> impl Strategy<Value = Incarnation> {
        prop_oneof![
            Just(Incarnation(0)),
            Just(Incarnation(u64::MAX)),
            Just(Incarnation(MY_INCARNATION)),
            Just(Incarnation(2)), // A's
            any::<u64>().prop_map(Incarnation),
        ]
    }

    fn big() -> impl Strategy<Value = u64> {
        prop_oneof![Just(0), Just(u64::MAX), any::<u64>()]
    }

    fn suspects() -> impl Strategy<Value = Vec<Suspect>> {
        // Duplicates included: nothing makes a sender list each once.
        prop::collection::vec(
            (name(), incarnation()).prop_map(|(node, incarnation)| Suspect { node, incarnation }),
            0..6,
        )
    }

    fn observation() -> impl Strategy<Value = Observation> {
        (name(), incarnation(), big(), suspects(), suspects()).prop_map(
            |(observer, incarnation, version, unreachable, reachable)| Observation {
                observer,
                incarnation,
                version,
                unreachable,
                reachable,
            },
        )
    }

    /// How the heartbeat's echo is chosen: anything, or the token `ME`
    /// really gave the named sender (then it is that sender speaking, over
    /// its own session, and the protocol lets it in).
    #[derive(Debug, Clone)]
    enum Echo {
        Any(u64),
        Genuine,
    }

    fn heartbeat() -> impl Strategy<Value = (Heartbeat, Echo)> {
        let identity = (
            name(),
            prop_oneof![Just("cloister".to_string()), ".{0,40}"],
            incarnation(),
            big().prop_map(Digest),
            prop_oneof![Just(Config::default().ring_vnodes), any::<u32>()],
        );
        let session = (
            any::<bool>(),
            big(),
            prop_oneof![big().prop_map(Echo::Any), Just(Echo::Genuine)],
            any::<bool>(),
            any::<bool>(),
        );
        let gossip = (
            suspects(),
            prop::collection::vec(observation(), 0..4),
            prop::option::of(incarnation()),
        );
        (identity, session, gossip).prop_map(
            |(
                (from, app, incarnation, digest, ring_vnodes),
                (leaving, token, echo, watching, admitted),
                (unresponsive, observations, downed),
            )| {
                let heartbeat = Heartbeat {
                    from,
                    app,
                    incarnation,
                    digest,
                    ring_vnodes,
                    leaving,
                    token,
                    echo: 0,
                    watching,
                    admitted,
                    unresponsive,
                    observations: observations.into(),
                    downed,
                    life: 0,
                    news: Vec::new().into(),
                    table: 0,
                };
                (heartbeat, echo)
            },
        )
    }

    /// A step of the attack: a heartbeat, or time passing (timers run).
    #[derive(Debug, Clone)]
    enum Step {
        Beat(Heartbeat, Echo),
        Wait(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => heartbeat().prop_map(|(heartbeat, echo)| Step::Beat(heartbeat, echo)),
            1 => (1u64..2_000).prop_map(Step::Wait),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn hostile_heartbeats_never_panic_nor_admit_a_node_that_did_not_echo(
            quorum in prop_oneof![Just(Quorum::Off), Just(Quorum::Majority)],
            steps in prop::collection::vec(step(), 1..40),
        ) {
            let mut m = machine(config(&[A, B], 1).with_quorum(quorum), SEED);
            m.handle(ms(0), Input::Start);
            drain(&mut m);
            admit(&mut m, ms(10), A, 1, 2);
            m.handle(ms(10), session_up(B, 2));
            drain(&mut m);
            // Who may be a member: `ME`, and whoever echoed its token.
            let mut echoed: BTreeSet<NodeName> = [n(ME), n(A)].into();
            let sessions: BTreeSet<NodeName> = [n(A), n(B)].into();

            let mut now = ms(10);
            for step in steps {
                match step {
                    Step::Beat(mut heartbeat, echo) => {
                        let genuine = m.sent.get(&heartbeat.from).copied();
                        heartbeat.echo = match echo {
                            Echo::Genuine => genuine.unwrap_or(0),
                            Echo::Any(echo) => echo,
                        };
                        if genuine.is_some_and(|token| token == heartbeat.echo)
                            && sessions.contains(&heartbeat.from)
                        {
                            echoed.insert(heartbeat.from.clone());
                        }
                        m.handle(now, Input::Heartbeat(heartbeat));
                    }
                    Step::Wait(millis) => {
                        now += ms(millis);
                        while let Some(at) = m.poll_timeout().filter(|at| *at <= now) {
                            m.handle_timeout(at);
                        }
                    }
                }
                drain(&mut m);
                for member in m.ring().members() {
                    prop_assert!(echoed.contains(member), "{member} is a member: {:?}", m.ring().members());
                }
                for member in &m.snapshot().members {
                    prop_assert!(echoed.contains(member), "{member} in the snapshot");
                }
                // No state for a name nobody listed or connected as.
                for peer in m.peer_statuses(now) {
                    prop_assert!(sessions.contains(&peer.name), "state kept for {}", peer.name);
                }
            }
        }
    }
}

// ---- Heartbeat rounds on the grid ------------------------------------------

/// Rounds fall on multiples of the interval (`cloister_core::timer`), so a
/// round may run a little later after its grid point than the round before
/// ran after its own. A neighbour whose table differs still gets the whole
/// table at every round: the once-an-interval limit counts from the round's
/// grid point, not from the moment it ran.
#[test]
fn a_neighbour_whose_table_differs_gets_it_every_round_however_late_rounds_run() {
    let mut config = config(&[A], 2);
    config.sessions = cloister_core::config::Sessions::Bounded;
    let every = config.heartbeat_interval;
    let mut m = machine(config, SEED);
    m.handle(ms(0), Input::Start);
    drain(&mut m);
    admit(&mut m, ms(5), A, 1, 2);
    // A's table differs from ours from now on.
    let behind = |m: &Me| Heartbeat {
        table: 0x7AB1E,
        ..hb(m, A, 2, m.ring().digest())
    };
    let mut tables = 0;
    // Rounds run 4, 2, 5, 3, 6, 1, 4, ... ms past their grid points: every
    // other one runs earlier past its grid point than the one before it.
    for k in 1..=12u32 {
        let late = ms([1, 4, 2, 5, 3, 6][k as usize % 6]);
        let round = every * k + late;
        m.handle(every * k - ms(1), Input::Heartbeat(behind(&m)));
        drain(&mut m);
        m.handle_timeout(round);
        let effects = drain(&mut m);
        let sent_table = effects.iter().any(|effect| {
            matches!(effect, Effect::SendHeartbeat { to, heartbeat }
                if *to == n(A) && !heartbeat.news.is_empty())
        });
        tables += usize::from(sent_table);
    }
    // The mismatch is first seen before round 1; a table is due an interval
    // later, then at every round.
    assert!(tables >= 11, "the table went out at {tables} of 12 rounds");
}
