//! Two membership machines wired to each other directly, one message at a
//! time, so a test can lose exactly the messages it means to.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cloister_core::{
    Config, Effect, Heartbeat, Incarnation, Input, Membership, NodeName, SentryNode,
};
use cloister_core::{Sentry, SessionId};

#[test]
fn a_lost_answer_does_not_leave_a_pair_admitted_on_one_side_only() {
    let a: NodeName = "sim@10.0.0.1".parse().unwrap();
    let x: NodeName = "sim@10.0.0.2".parse().unwrap();
    let entries: Vec<SentryNode> = ["sim@10.0.0.1:4000", "sim@10.0.0.2:4000"]
        .iter()
        .map(|e| e.parse().unwrap())
        .collect();
    let config = Config {
        app: "sim".into(),
        sentry: Sentry::Nodes(entries),
        ..Config::default()
    };
    let mut ma = Membership::new(config.clone(), a.clone(), Incarnation(1), 1);
    let mut mx = Membership::new(config, x.clone(), Incarnation(2), 2);
    let mut now = Duration::ZERO;
    for (m, peer) in [(&mut ma, &x), (&mut mx, &a)] {
        m.handle(now, Input::Start);
        let session = SessionId(7);
        m.handle(
            now,
            Input::SessionUp {
                peer: peer.clone(),
                session,
            },
        );
    }
    // Every millisecond for 20 s each side runs its timers and the other
    // gets what it sent. For the first 40 ms, X's heartbeats that echo A's
    // token are lost while A has not admitted X: X's answers, after X has
    // admitted A. Then the network is perfect.
    let sent = |m: &mut Membership| -> Vec<Heartbeat> {
        std::iter::from_fn(|| m.poll())
            .filter_map(|e| match e {
                Effect::SendHeartbeat { heartbeat, .. } => Some(heartbeat),
                _ => None,
            })
            .collect()
    };
    for _ in 0..20_000 {
        now += Duration::from_millis(1);
        for m in [&mut ma, &mut mx] {
            if m.poll_timeout().is_some_and(|t| t <= now) {
                m.handle_timeout(now);
            }
        }
        let (to_x, to_a) = (sent(&mut ma), sent(&mut mx));
        for heartbeat in to_a {
            let lost = heartbeat.echo != 0
                && ma.incarnation_of(&x).is_none()
                && now < Duration::from_millis(40);
            if !lost {
                ma.handle(now, Input::Heartbeat(heartbeat));
            }
        }
        for heartbeat in to_x {
            mx.handle(now, Input::Heartbeat(heartbeat));
        }
    }
    let both = vec![a.clone(), x.clone()];
    assert_eq!(mx.ring().members(), both, "X's ring");
    assert_eq!(
        ma.ring().members(),
        both,
        "A's ring: X's lost answer was never repeated"
    );
}
