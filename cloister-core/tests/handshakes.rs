//! Connections before they authenticate: a deadline each, and strangers
//! counted for the log rather than a line each. One protocol story per test,
//! on a virtual clock, asserting on the exact effects.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cloister_core::tally::REPORT_EVERY;
use cloister_core::{Config, Effect, Incarnation, Input, Membership, Sentry, SessionId};

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

/// A lone node (consensus 1) started at 0 ms, its start-up effects drained.
fn started() -> Membership {
    let config = Config {
        sentry: Sentry::Nodes(vec!["cloister@127.0.0.1:4000".parse().unwrap()]),
        ..Config::for_tests()
    };
    let me = "cloister@127.0.0.1".parse().unwrap();
    let mut m = Membership::new(config, me, Incarnation(1), 7);
    m.handle(ms(0), Input::Start);
    drain(&mut m);
    m
}

fn drain(m: &mut Membership) -> Vec<Effect> {
    std::iter::from_fn(|| m.poll()).collect()
}

/// Runs every timeout up to `until`; returns the effects that are not heartbeats.
fn run_until(m: &mut Membership, until: Duration) -> Vec<(Duration, Effect)> {
    let mut effects = Vec::new();
    while let Some(at) = m.poll_timeout().filter(|at| *at <= until) {
        m.handle_timeout(at);
        effects.extend(drain(m).into_iter().map(|e| (at, e)));
        assert!(effects.len() < 100_000, "the machine does not settle");
    }
    effects.retain(|(_, e)| !matches!(e, Effect::SendHeartbeat { .. }));
    effects
}

/// A connection accepted from 192.0.2.7 (an address for documentation).
fn opened(session: u64) -> Input {
    opened_from(session, [192, 0, 2, 7])
}

fn opened_from(session: u64, ip: [u8; 4]) -> Input {
    Input::SessionOpened {
        session: SessionId(session),
        inbound: true,
        from: Some(ip.into()),
    }
}

/// A report of `count` strangers from these addresses, in that order.
fn strangers(count: u64, from: &[[u8; 4]]) -> Effect {
    let from = from.iter().map(|&ip| ip.into()).collect();
    Effect::Strangers { count, from }
}

#[test]
fn a_connection_that_never_authenticates_is_closed_at_its_deadline() {
    let mut m = started();
    let deadline = Config::for_tests().handshake_timeout();
    // Someone connects at 5 ms and says nothing.
    m.handle(ms(5), opened(1));
    assert!(drain(&mut m).is_empty());
    // Nothing happens before the deadline...
    assert!(run_until(&mut m, ms(5) + deadline - ms(1)).is_empty());
    // ...then the connection is closed, and the first stranger is logged at once.
    let effects = run_until(&mut m, ms(5) + deadline);
    assert_eq!(
        effects,
        vec![
            (
                ms(5) + deadline,
                Effect::CloseSession {
                    session: SessionId(1)
                }
            ),
            (ms(5) + deadline, strangers(1, &[[192, 0, 2, 7]])),
        ]
    );
}

#[test]
fn an_authenticated_connection_is_left_alone() {
    let mut m = started();
    m.handle(ms(5), opened(1));
    m.handle(
        ms(6),
        Input::SessionAuthenticated {
            session: SessionId(1),
            peer: None,
        },
    );
    assert!(run_until(&mut m, ms(10_000)).is_empty());
}

#[test]
fn thousands_of_strangers_make_one_line_per_interval() {
    let mut m = started();
    // 6,000 connections in the first second from nine addresses, each
    // closed before it authenticates (a wrong cookie, garbage): the first
    // is reported at once.
    let mut reports = Vec::new();
    for i in 0..6_000u64 {
        let at = Duration::from_micros(i * 150);
        // Timers run when due, as the runtime runs them: a machine whose
        // timers are overdue by more than an interval did not run.
        reports.extend(run_until(&mut m, at).into_iter().map(|(_, e)| e));
        m.handle(at, opened_from(i, [192, 0, 2, (i % 9) as u8]));
        m.handle(
            at,
            Input::ConnectionClosed {
                session: SessionId(i),
            },
        );
        reports.extend(drain(&mut m));
    }
    assert_eq!(reports, vec![strangers(1, &[[192, 0, 2, 0]])]);
    // The other 5,999 come in one count when the interval is over, with
    // the first addresses they came from, not all nine.
    let later = run_until(&mut m, REPORT_EVERY * 3);
    let first_four = [
        [192, 0, 2, 1],
        [192, 0, 2, 2],
        [192, 0, 2, 3],
        [192, 0, 2, 4],
    ];
    assert_eq!(later, vec![(REPORT_EVERY, strangers(5_999, &first_four))]);
}

#[test]
fn a_named_session_that_closes_before_authenticating_is_a_stranger_too() {
    let mut m = started();
    // A wrong-cookie peer says its name before the cookie check fails.
    m.handle(ms(5), opened(3));
    m.handle(
        ms(6),
        Input::SessionDown {
            peer: "rogue@127.0.0.9".parse().unwrap(),
            session: SessionId(3),
        },
    );
    assert_eq!(drain(&mut m), vec![strangers(1, &[[192, 0, 2, 7]])]);
}

#[test]
fn a_dial_of_this_node_that_fails_its_handshake_is_no_stranger() {
    let mut m = started();
    // This node dialed; the other side closed before saying its name (it
    // refused a duplicate, or it is not a cloister node). The dial reports
    // that; the log of strangers on the port does not.
    m.handle(
        ms(5),
        Input::SessionOpened {
            session: SessionId(1),
            inbound: false,
            from: None,
        },
    );
    m.handle(
        ms(6),
        Input::ConnectionClosed {
            session: SessionId(1),
        },
    );
    // Another dial that never finishes its handshake is closed, silently.
    m.handle(
        ms(7),
        Input::SessionOpened {
            session: SessionId(2),
            inbound: false,
            from: None,
        },
    );
    let effects: Vec<Effect> = drain(&mut m)
        .into_iter()
        .chain(run_until(&mut m, ms(10_000)).into_iter().map(|(_, e)| e))
        .collect();
    // Its own slow handshake also tells this node its timeouts are too
    // short for the machine: they double.
    assert_eq!(
        effects,
        vec![
            Effect::CloseSession {
                session: SessionId(2)
            },
            Effect::Slow {
                dial_timeout: ms(1000),
                handshake_timeout: ms(2000),
            }
        ]
    );
}

#[test]
fn slow_own_handshakes_stretch_the_timeouts_and_fast_ones_shrink_them_back() {
    let mut m = started();
    let own = |session| Input::SessionOpened {
        session: SessionId(session),
        inbound: false,
        from: None,
    };
    // Base timeouts: dial 500 ms, handshake 1 s. Two dials of this node
    // never finish their handshake: each doubles both timeouts.
    m.handle(ms(0), own(1));
    let first = run_until(&mut m, ms(1000));
    assert!(first.contains(&(ms(1000), slow(1000, 2000))), "{first:?}");
    m.handle(ms(1000), own(2));
    let second = run_until(&mut m, ms(3000));
    assert!(second.contains(&(ms(3000), slow(2000, 4000))), "{second:?}");

    // A connection now gets 4 s to authenticate, where it had 1 s...
    m.handle(ms(3000), opened(3));
    assert!(run_until(&mut m, ms(6999)).is_empty());
    // ... and one that authenticates quickly halves the timeouts again.
    m.handle(ms(3000), opened(4));
    let quick = Input::SessionAuthenticated {
        session: SessionId(4),
        peer: None,
    };
    m.handle(ms(3100), quick);
    assert_eq!(drain(&mut m), [slow(1000, 2000)]);
    // Connection 3, opened while they were four times the base, takes
    // 2.4 s: slow, whatever the timeouts are by now. They stay.
    let late = Input::SessionAuthenticated {
        session: SessionId(3),
        peer: None,
    };
    m.handle(ms(5400), late);
    assert_eq!(drain(&mut m), []);
    m.handle(ms(5400), opened(5));

    // Strangers that say nothing never stretch them: only this node's own
    // dials do.
    let before = run_until(&mut m, ms(10_000));
    assert!(
        !before.iter().any(|(_, e)| matches!(e, Effect::Slow { .. })),
        "{before:?}"
    );
}

fn slow(dial_ms: u64, handshake_ms: u64) -> Effect {
    Effect::Slow {
        dial_timeout: ms(dial_ms),
        handshake_timeout: ms(handshake_ms),
    }
}
