//! `--probe-keys`, `--probe-multicall` and `--bench-routing`: rounds of
//! requests across the cluster, to show, test and time routing.

use std::time::Duration;

use cloister_ractor::{Cloister, Wire};
use ractor::ActorRef;
use serde_json::{json, Value};

use crate::emit;
use crate::key_owner::{KeyOwnerMsg, KEY_OWNER};

/// Rounds of requests across the cluster, to show (and test) routing.
pub(crate) struct Probe {
    pub(crate) keys: Option<u32>,
    pub(crate) multicall: bool,
    pub(crate) dropped: bool,
    pub(crate) bench: Option<u32>,
}

impl Probe {
    pub(crate) async fn run(self, cloister: Cloister) {
        let me = cloister.me().clone();
        let timeout = Duration::from_millis(500);
        loop {
            if let Some(n) = self.keys {
                let (mut reached, mut errors, mut first_error) = (0u32, 0u32, None);
                for i in 0..n {
                    let key = format!("key-{i}");
                    let expected = cloister.node_for(&key).map(|o| o.to_string());
                    let asked = cloister
                        .call_owner(KEY_OWNER, &key, KeyOwnerMsg::WhoAmI, timeout)
                        .await
                        .map_err(|error| error.to_string())
                        .and_then(|(owner, who)| match who.into_inner() {
                            Ok(who) => Ok((owner, who)),
                            Err(error) => Err(error.to_string()),
                        });
                    match asked {
                        Ok((owner, who))
                            if Some(&who) == expected.as_ref()
                                && Some(owner.to_string()) == expected =>
                        {
                            reached += 1
                        }
                        Ok((_, who)) => {
                            errors += 1;
                            first_error.get_or_insert(format!("{key}: answered by {who}"));
                        }
                        Err(error) => {
                            errors += 1;
                            first_error.get_or_insert(format!("{key}: {error}"));
                        }
                    }
                }
                emit(
                    &me,
                    "probe",
                    json!({
                        "keys": n, "reached_owner": reached, "errors": errors,
                        "first_error": first_error, "ring_digest": cloister.digest(),
                    }),
                );
            }
            if self.multicall {
                let answers = cloister
                    .multicall(KEY_OWNER, KeyOwnerMsg::WhoAmI, timeout)
                    .await;
                let mut replies: Vec<String> = Vec::new();
                let mut failures: Vec<Value> = answers
                    .failures
                    .iter()
                    .map(|(node, error)| json!({ "node": node, "error": error.to_string() }))
                    .collect();
                for (node, who) in answers.replies {
                    match who.into_inner() {
                        Ok(who) => replies.push(who),
                        Err(error) => {
                            failures.push(json!({ "node": node, "error": error.to_string() }))
                        }
                    }
                }
                emit(
                    &me,
                    "multicall",
                    json!({ "replies": replies, "failures": failures }),
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

/// One-way messages per round in the throughput part of `--bench-routing`.
const CASTS_PER_ROUND: u64 = 50_000;
/// Measured rounds of it (each sender once a round), after one warm-up round.
const CAST_ROUNDS: usize = 16;

/// Times `call_owner` against a raw remote call to the same actor, `route`
/// against raw casts to it (counted where they land), and `multicall`, then
/// prints one `bench_routing` line.
pub(crate) async fn bench_routing(cloister: Cloister, calls: u32) {
    let me = cloister.me().clone();
    let timeout = Duration::from_secs(2);
    // Wait until every member's key owner answers.
    for _ in 0..100 {
        let answers = cloister
            .multicall(KEY_OWNER, KeyOwnerMsg::WhoAmI, timeout)
            .await;
        if answers.failures.is_empty() && answers.replies.len() == cloister.members().len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Some(remote) = cloister.members().into_iter().find(|m| *m != me) else {
        return emit(&me, "bench_routing", json!({ "error": "no other member" }));
    };
    let keys: Vec<String> = (0..)
        .map(|i| format!("key-{i}"))
        .filter(|k| cloister.node_for(k).as_ref() == Some(&remote))
        .take(100)
        .collect();
    let Ok((_, actor)) = cloister.owner_of(KEY_OWNER, &keys[0]) else {
        return emit(
            &me,
            "bench_routing",
            json!({ "error": "no key owner on the remote" }),
        );
    };
    let key = |i: u64| &keys[i as usize % keys.len()];
    // Interleaved rounds, so load from elsewhere hits both alike.
    let (mut raw, mut ours) = (Vec::new(), Vec::new());
    let per_round = (calls / 10).max(1);
    for _ in 0..10 {
        let start = std::time::Instant::now();
        for _ in 0..per_round {
            let _ = actor.call(KeyOwnerMsg::WhoAmI, Some(timeout)).await;
        }
        raw.push(start.elapsed().as_secs_f64() * 1e6 / f64::from(per_round));
        let start = std::time::Instant::now();
        for i in 0..per_round {
            let _ = cloister
                .call_owner(KEY_OWNER, key(i.into()), KeyOwnerMsg::WhoAmI, timeout)
                .await;
        }
        ours.push(start.elapsed().as_secs_f64() * 1e6 / f64::from(per_round));
    }
    // One-way throughput, interleaved the same way (and which goes first
    // alternating): raw casts on the `ActorRef`, and `route` by key, to the
    // same remote actor.
    let (mut raw_cast, mut routed) = (Vec::new(), Vec::new());
    let (mut raw_send, mut route_send) = (Vec::new(), Vec::new());
    let mut cast_error = None;
    for round in 0..=CAST_ROUNDS {
        let raw_casts = || {
            cast_round(&actor, CASTS_PER_ROUND, |i| {
                actor.cast(KeyOwnerMsg::Tick(Wire::new(i))).is_ok()
            })
        };
        let routes = || {
            cast_round(&actor, CASTS_PER_ROUND, |i| {
                cloister
                    .route(KEY_OWNER, key(i), KeyOwnerMsg::Tick(Wire::new(i)))
                    .is_ok()
            })
        };
        let (raw_round, route_round) = if round % 2 == 0 {
            let raw_round = raw_casts().await;
            (raw_round, routes().await)
        } else {
            let route_round = routes().await;
            (raw_casts().await, route_round)
        };
        match (raw_round, route_round) {
            (Ok(_), Ok(_)) if round == 0 => {}
            (Ok(r), Ok(o)) => {
                raw_cast.push(r.per_s);
                raw_send.push(r.send_ns);
                routed.push(o.per_s);
                route_send.push(o.send_ns);
            }
            (Err(error), _) | (_, Err(error)) => {
                cast_error = Some(error);
                break;
            }
        }
    }
    // What `route` adds before the send: the ring alone, then ring and group.
    let lookups = 200_000u64;
    let start = std::time::Instant::now();
    for i in 0..lookups {
        std::hint::black_box(cloister.node_for(key(i)));
    }
    let node_for_ns = start.elapsed().as_secs_f64() * 1e9 / lookups as f64;
    let start = std::time::Instant::now();
    for i in 0..lookups {
        let _ = std::hint::black_box(cloister.owner_of(KEY_OWNER, key(i)));
    }
    let owner_of_ns = start.elapsed().as_secs_f64() * 1e9 / lookups as f64;
    let mut multicall = Vec::new();
    for _ in 0..200 {
        let start = std::time::Instant::now();
        let _ = cloister
            .multicall(KEY_OWNER, KeyOwnerMsg::WhoAmI, timeout)
            .await;
        multicall.push(start.elapsed().as_secs_f64() * 1e6);
    }
    let per_s_rounds = |v: &[f64]| v.iter().map(|x| x.round()).collect::<Vec<_>>();
    let (raw_cast_rounds, route_rounds) = (per_s_rounds(&raw_cast), per_s_rounds(&routed));
    // Each round's pair ran back to back: their ratio shrugs off slow drifts.
    let mut paired: Vec<f64> = routed.iter().zip(&raw_cast).map(|(o, r)| o / r).collect();
    emit(
        &me,
        "bench_routing",
        json!({
            "members": cloister.members().len(),
            "calls": per_round * 10,
            "raw_call_us": median(&mut raw),
            "call_owner_us": median(&mut ours),
            "multicall_us": median(&mut multicall),
            "casts_per_round": CASTS_PER_ROUND,
            "cast_rounds": raw_cast.len(),
            "raw_cast_per_s": median(&mut raw_cast),
            "route_per_s": median(&mut routed),
            "route_over_raw_paired": median(&mut paired),
            "raw_cast_send_ns": median(&mut raw_send),
            "route_send_ns": median(&mut route_send),
            "node_for_ns": node_for_ns,
            "owner_of_ns": owner_of_ns,
            "raw_cast_rounds": raw_cast_rounds,
            "route_rounds": route_rounds,
            "cast_error": cast_error,
        }),
    );
}

/// The median (NaN, printed as null, when there is nothing).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// One round's throughput, as received, and the sender's own cost.
struct CastRound {
    /// Messages per second, from the first send until the remote counted all.
    per_s: f64,
    /// Nanoseconds per message spent in `send` (enqueuing only).
    send_ns: f64,
}

/// Sends `n` one-way `Tick`s through `send`, then asks `actor` for its
/// count until all have arrived. The `Ticks` call travels behind the casts
/// on the same session, in order, so normally one suffices.
async fn cast_round(
    actor: &ActorRef<KeyOwnerMsg>,
    n: u64,
    mut send: impl FnMut(u64) -> bool,
) -> Result<CastRound, String> {
    let before = ticks(actor).await?;
    let start = std::time::Instant::now();
    for i in 0..n {
        if !send(i) {
            return Err(format!("send {i} of {n} failed"));
        }
    }
    let send_ns = start.elapsed().as_secs_f64() * 1e9 / n as f64;
    let deadline = start + Duration::from_secs(60);
    loop {
        let arrived = ticks(actor).await? - before;
        if arrived >= n {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("{arrived} of {n} arrived within 60 s"));
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(CastRound {
        per_s: n as f64 / start.elapsed().as_secs_f64(),
        send_ns,
    })
}

/// The remote key owner's `Tick` count.
async fn ticks(actor: &ActorRef<KeyOwnerMsg>) -> Result<u64, String> {
    match actor
        .call(KeyOwnerMsg::Ticks, Some(Duration::from_secs(60)))
        .await
    {
        Ok(ractor::rpc::CallResult::Success(count)) => count
            .into_inner()
            .map_err(|error| format!("Ticks: {error}")),
        Ok(ractor::rpc::CallResult::Timeout) => Err("Ticks timed out".into()),
        Ok(ractor::rpc::CallResult::SenderError) => Err("Ticks: the session closed".into()),
        Err(error) => Err(format!("Ticks: {error}")),
    }
}
