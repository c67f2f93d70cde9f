//! A deterministic simulator: N membership machines on a virtual clock that
//! jumps to the next timer or message, over a network with delay, loss and
//! partitions. Compiled for tests and behind the `sim` feature.
//!
//! The network mimics ractor_cluster over TCP: a dial to a live, reachable node
//! opens one session per pair (a second dial finds the existing one), a killed
//! node's sessions close on both sides, and a partition does not close anything:
//! messages across it are simply lost, so heartbeats stop and the machines must
//! notice by themselves. Loss applies to heartbeats and dials, never to session
//! events. Heartbeats from one node to another arrive in the order they were
//! sent, as over one TCP stream.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use crate::config::{Config, Sentry};
use crate::events::{NodeState, TopologyEvent};
use crate::membership::{DropReason, Effect, Input, Membership, SessionId};
use crate::names::{Host, Incarnation, NodeAddr, NodeName, SentryNode};
use crate::timer::{Arm, Timer, TimerToken};

/// The simulated network's behaviour.
#[derive(Debug, Clone)]
pub struct Network {
    /// Shortest one-way delay.
    pub delay_min: Duration,
    /// Longest one-way delay.
    pub delay_max: Duration,
    /// Probability that a heartbeat or a dial is lost, 0.0 to 1.0.
    pub loss: f64,
    /// Seed of the network's randomness (delays, loss) and of each node's.
    pub seed: u64,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            delay_min: Duration::from_micros(200),
            delay_max: Duration::from_millis(2),
            loss: 0.0,
            seed: 7,
        }
    }
}

#[derive(Debug)]
struct Node {
    machine: Membership,
    entry: SentryNode,
    alive: bool,
    /// Stopped as by SIGSTOP: its steps wait in `held` until it resumes.
    paused: bool,
    held: Vec<Scheduled>,
    /// Bumped on kill and restart, so messages to an older process are dropped.
    generation: u32,
    /// The node's wake-ups, under the rule the runtime follows too.
    timer: Timer,
    /// Every event this node published, in order.
    events: Vec<TopologyEvent>,
    /// Every heartbeat drop this node reported, in order.
    dropped: Vec<(NodeName, DropReason)>,
}

#[derive(Debug)]
enum What {
    Input(Input),
    Timer(TimerToken),
    Connect { from: usize, generation: u32 },
}

/// A queued step.
#[derive(Debug)]
struct Scheduled {
    at: Duration,
    node: usize,
    generation: u32,
    what: What,
}

/// The steps to come, by time: one bucket per microsecond, in the order
/// they were queued. A million messages in flight (1,000 nodes dialling
/// each other) sit in a few thousand buckets, where a binary heap would
/// sift each push and pop through twenty levels.
#[derive(Debug, Default)]
struct Queue(BTreeMap<u128, VecDeque<Scheduled>>);

impl Queue {
    fn push(&mut self, step: Scheduled) {
        self.0
            .entry(step.at.as_micros())
            .or_default()
            .push_back(step);
    }

    fn pop(&mut self) -> Option<Scheduled> {
        let mut bucket = self.0.first_entry()?;
        let step = bucket.get_mut().pop_front();
        if bucket.get().is_empty() {
            bucket.remove();
        }
        step
    }

    fn next_at(&self) -> Option<Duration> {
        Some(self.0.first_key_value()?.1.front()?.at)
    }
}

/// N membership machines and the network between them.
#[derive(Debug)]
pub struct Sim {
    now: Duration,
    nodes: Vec<Node>,
    by_name: BTreeMap<NodeName, usize>,
    by_addr: BTreeMap<NodeAddr, usize>,
    queue: Queue,
    sessions: BTreeMap<(usize, usize), SessionId>,
    /// When the last heartbeat from one node to another arrives: a session
    /// is a TCP stream, so a later one never overtakes it.
    in_order: BTreeMap<(usize, usize), Duration>,
    next_session: u64,
    rng: fastrand::Rng,
    network: Network,
    /// The side of the partition each node is on; all 0 when healed.
    side: Vec<u8>,
    /// Links cut one way: what `.0` sends `.1` is lost.
    cut: BTreeSet<(usize, usize)>,
    /// Messages delivered so far.
    pub delivered: u64,
    /// Heartbeats sent so far (each counted once, when it leaves its node).
    pub heartbeats_sent: u64,
}

impl Sim {
    /// `n` nodes named `sim@10.0.x.y`, each configured from `config` with a
    /// static sentry list of all of them, not yet started.
    pub fn new(n: usize, config: &Config, network: Network) -> Self {
        let entries: Vec<SentryNode> = (0..n).map(entry).collect();
        let mut config = config.clone();
        config.app = "sim".into();
        config.sentry = Sentry::Nodes(entries.clone());
        let mut sim = Sim {
            now: Duration::ZERO,
            nodes: Vec::with_capacity(n),
            by_name: BTreeMap::new(),
            by_addr: BTreeMap::new(),
            queue: Queue::default(),
            sessions: BTreeMap::new(),
            in_order: BTreeMap::new(),
            next_session: 1,
            rng: fastrand::Rng::with_seed(network.seed),
            network,
            side: vec![0; n],
            cut: BTreeSet::new(),
            delivered: 0,
            heartbeats_sent: 0,
        };
        for (i, entry) in entries.into_iter().enumerate() {
            sim.by_name.insert(entry.name.clone(), i);
            sim.by_addr.insert(entry.addr.clone(), i);
            let machine = sim.machine(&config, &entry, 1);
            sim.nodes.push(Node {
                machine,
                entry,
                alive: false,
                paused: false,
                held: Vec::new(),
                generation: 0,
                timer: Timer::new(),
                events: Vec::new(),
                dropped: Vec::new(),
            });
        }
        sim
    }

    fn machine(&self, config: &Config, entry: &SentryNode, incarnation: u64) -> Membership {
        let seed = self.network.seed ^ (self.by_name[&entry.name] as u64).wrapping_mul(0x9E37_79B9);
        Membership::new(
            config.clone(),
            entry.name.clone(),
            Incarnation(incarnation),
            seed,
        )
    }

    /// The virtual time now.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Node `i`'s machine.
    pub fn node(&self, i: usize) -> &Membership {
        &self.nodes[i].machine
    }

    /// Every event node `i` published.
    pub fn events(&self, i: usize) -> &[TopologyEvent] {
        &self.nodes[i].events
    }

    /// Every heartbeat drop node `i` reported ([`Effect::Dropped`]).
    pub fn dropped(&self, i: usize) -> &[(NodeName, DropReason)] {
        &self.nodes[i].dropped
    }

    /// How many sessions node `i` holds now.
    pub fn sessions_of(&self, i: usize) -> usize {
        self.sessions
            .keys()
            .filter(|(a, b)| *a == i || *b == i)
            .count()
    }

    /// Node `i`'s name.
    pub fn name(&self, i: usize) -> &NodeName {
        &self.nodes[i].entry.name
    }

    /// Starts node `i` now.
    pub fn start(&mut self, i: usize) {
        self.nodes[i].alive = true;
        self.nodes[i].generation += 1;
        let at = self.now;
        self.schedule(at, i, What::Input(Input::Start));
    }

    /// Starts every node now.
    pub fn start_all(&mut self) {
        (0..self.nodes.len()).for_each(|i| self.start(i));
    }

    /// Kills node `i`: its sessions close, its peers see `SessionDown`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].alive = false;
        self.nodes[i].paused = false; // a killed process is not stopped
        self.nodes[i].held.clear();
        self.nodes[i].generation += 1;
        self.nodes[i].timer.clear();
        let closed: Vec<((usize, usize), SessionId)> = self
            .sessions
            .iter()
            .filter(|((a, b), _)| *a == i || *b == i)
            .map(|(k, s)| (*k, *s))
            .collect();
        for ((a, b), session) in closed {
            self.sessions.remove(&(a, b));
            let other = if a == i { b } else { a };
            let peer = self.nodes[i].entry.name.clone();
            let at = self.now + self.delay();
            self.schedule(at, other, What::Input(Input::SessionDown { peer, session }));
        }
    }

    /// Restarts node `i` as a new process: same name, another incarnation.
    pub fn restart(&mut self, i: usize, config: &Config) {
        if self.nodes[i].alive {
            self.kill(i);
        }
        let mut config = config.clone();
        config.app = "sim".into();
        config.sentry = Sentry::Nodes(self.nodes.iter().map(|n| n.entry.clone()).collect());
        let incarnation = self.nodes[i].machine.incarnation().0 + 1;
        let entry = self.nodes[i].entry.clone();
        self.nodes[i].machine = self.machine(&config, &entry, incarnation);
        self.start(i);
    }

    /// Node `i`'s application asks it to leave ([`Input::Leave`]): it says
    /// goodbye, drains, and its process ends at [`Effect::Left`].
    pub fn leave(&mut self, i: usize) {
        let at = self.now;
        self.schedule(at, i, What::Input(Input::Leave));
    }

    /// Node `i`'s application needs a session with node `j`
    /// ([`Input::Connect`]).
    pub fn connect_on_demand(&mut self, i: usize, j: usize) {
        let peer = self.nodes[j].entry.name.clone();
        let at = self.now;
        self.schedule(at, i, What::Input(Input::Connect { peer }));
    }

    /// Whether nodes `i` and `j` hold a session.
    pub fn has_session(&self, i: usize, j: usize) -> bool {
        self.sessions.contains_key(&(i.min(j), i.max(j)))
    }

    /// Node `i`'s application has handed off what it owned
    /// ([`Input::Drained`]).
    pub fn drained(&mut self, i: usize) {
        let at = self.now;
        self.schedule(at, i, What::Input(Input::Drained));
    }

    /// Freezes node `i` as SIGSTOP does: it neither acts nor answers, its
    /// sessions stay open, and what reaches it waits until
    /// [`Sim::resume`].
    pub fn pause(&mut self, i: usize) {
        self.nodes[i].paused = true;
    }

    /// Lets a paused node `i` go on: what waited for it arrives now, in
    /// order, and its overdue timers fire.
    pub fn resume(&mut self, i: usize) {
        self.nodes[i].paused = false;
        let now = self.now;
        for mut step in std::mem::take(&mut self.nodes[i].held) {
            step.at = now;
            self.queue.push(step);
        }
    }

    /// Cuts the network in two: nodes in `side_b` on one side, the rest on the
    /// other. Nothing closes; messages across are lost.
    pub fn partition(&mut self, side_b: &[usize]) {
        self.side.iter_mut().for_each(|s| *s = 0);
        side_b.iter().for_each(|&i| self.side[i] = 1);
    }

    /// Cuts the link from `from` to `to` one way: what `from` sends `to` is
    /// lost, what `to` sends `from` arrives. A dial needs both ways (a TCP
    /// handshake), so neither can connect to the other; a session already
    /// up stays up.
    pub fn cut(&mut self, from: usize, to: usize) {
        self.cut.insert((from, to));
    }

    /// Cuts the link between `a` and `b` both ways, leaving every other
    /// link alone: with [`Sim::cut`], partial partitions (a bridge node
    /// that sees both sides) and one-way ones.
    pub fn cut_between(&mut self, a: usize, b: usize) {
        self.cut(a, b);
        self.cut(b, a);
    }

    /// Heals every partition and every cut link.
    pub fn heal(&mut self) {
        self.cut.clear();
        self.side.iter_mut().for_each(|s| *s = 0);
    }

    /// Runs until `done` holds or until virtual time `limit` has passed;
    /// returns whether `done` held. `done` is checked before each step that
    /// moves the clock on by at least [`Sim::CHECK_EVERY`], so a reported time
    /// is late by at most that much.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
        let end = self.now + limit;
        let mut checked = self.now;
        if done(self) {
            return true;
        }
        while let Some(at) = self.queue.next_at() {
            if at > end {
                self.now = end;
                return done(self);
            }
            if at >= checked + Self::CHECK_EVERY {
                checked = at;
                if done(self) {
                    return true;
                }
            }
            let Some(next) = self.queue.pop() else { break };
            self.now = self.now.max(next.at);
            self.step(next);
        }
        done(self)
    }

    /// How often [`Sim::run_until`] checks its condition, in virtual time.
    pub const CHECK_EVERY: Duration = Duration::from_micros(500);

    /// Runs for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        self.run_until(duration, |_| false);
    }

    /// True when every live node is Ready with the same ring, whose members
    /// are exactly the live nodes, and every node knows the others agree.
    pub fn converged(&self) -> bool {
        let mut live: Vec<&NodeName> = self
            .nodes
            .iter()
            .filter(|n| n.alive)
            .map(|n| &n.entry.name)
            .collect();
        live.sort();
        self.nodes.iter().filter(|n| n.alive).all(|n| {
            n.machine.state() == NodeState::Ready
                && n.machine.converged()
                && n.machine.ring().members().iter().eq(live.iter().copied())
        })
    }

    fn step(&mut self, next: Scheduled) {
        let i = next.node;
        if !self.nodes[i].alive || self.nodes[i].generation != next.generation {
            return;
        }
        if self.nodes[i].paused {
            return self.nodes[i].held.push(next);
        }
        match next.what {
            What::Input(input) => {
                self.delivered += 1;
                self.nodes[i].machine.handle(self.now, input);
            }
            What::Timer(token) => {
                if !self.nodes[i].timer.fire(token) {
                    return; // replaced by an earlier wake-up
                }
                self.nodes[i].machine.handle_timeout(self.now);
            }
            What::Connect { from, generation } => self.connect(from, generation, i),
        }
        self.drain(i);
    }

    fn drain(&mut self, i: usize) {
        while let Some(effect) = self.nodes[i].machine.poll() {
            self.carry_out(i, effect);
        }
        let due = self.nodes[i].machine.poll_timeout();
        if let Some(Arm { token, at }) = self.nodes[i].timer.arm(self.now, due) {
            self.schedule(at, i, What::Timer(token));
        }
    }

    fn carry_out(&mut self, i: usize, effect: Effect) {
        match effect {
            Effect::Dial { peer, addr, .. } => {
                let at = self.now + self.delay();
                let Some(&j) = self.by_addr.get(&addr) else {
                    return self.answer_dial_failed(i, peer, "no such host", at);
                };
                if self.lost() || !self.reachable(i, j) || !self.reachable(j, i) {
                    return; // no answer: the dial times out
                }
                if !self.nodes[j].alive {
                    return self.answer_dial_failed(i, peer, "connection refused", at);
                }
                let generation = self.nodes[i].generation;
                self.schedule(
                    at,
                    j,
                    What::Connect {
                        from: i,
                        generation,
                    },
                );
            }
            Effect::Disconnect { peer, session } => {
                let Some(&j) = self.by_name.get(&peer) else {
                    return;
                };
                let key = (i.min(j), i.max(j));
                if self.sessions.get(&key) == Some(&session) {
                    self.sessions.remove(&key);
                    if self.reachable(i, j) {
                        let me = self.nodes[i].entry.name.clone();
                        let at = self.now + self.delay();
                        self.schedule(at, j, What::Input(Input::SessionDown { peer: me, session }));
                    }
                }
            }
            Effect::Resolve => {
                let live: Vec<SentryNode> = self
                    .nodes
                    .iter()
                    .filter(|n| n.alive)
                    .map(|n| n.entry.clone())
                    .collect();
                let at = self.now + self.delay();
                self.schedule(at, i, What::Input(Input::Discovered(live)));
            }
            Effect::SendHeartbeat { to, heartbeat } => {
                let Some(&j) = self.by_name.get(&to) else {
                    return;
                };
                self.heartbeats_sent += 1;
                let key = (i.min(j), i.max(j));
                if self.sessions.contains_key(&key) && self.reachable(i, j) && !self.lost() {
                    let at = self.now + self.delay();
                    let last = self.in_order.entry((i, j)).or_default();
                    let at = at.max(*last);
                    *last = at;
                    self.schedule(at, j, What::Input(Input::Heartbeat(heartbeat)));
                }
            }
            Effect::Publish(event) => self.nodes[i].events.push(event),
            // The leave is over: the process exits, its sessions close.
            Effect::Left { .. } => self.kill(i),
            // Simulated sessions open authenticated and up at once: no
            // handshake to expire, no duplicate election to adopt from.
            Effect::Refused { .. }
            | Effect::CloseSession { .. }
            | Effect::Strangers { .. }
            | Effect::Unheard { .. }
            | Effect::Stalled { .. }
            | Effect::Slow { .. }
            | Effect::Downing { .. }
            | Effect::Adopt { .. } => {}
            Effect::Dropped { claimed, why } => self.nodes[i].dropped.push((claimed, why)),
        }
    }

    /// The dial from `from` reached `to`: one session per pair, both told.
    fn connect(&mut self, from: usize, generation: u32, to: usize) {
        if !self.nodes[from].alive || self.nodes[from].generation != generation {
            return; // the dialer died meanwhile
        }
        let key = (from.min(to), from.max(to));
        let session = match self.sessions.get(&key) {
            Some(session) => *session,
            None => {
                let session = SessionId(self.next_session);
                self.next_session += 1;
                self.sessions.insert(key, session);
                let peer = self.nodes[from].entry.name.clone();
                self.nodes[to]
                    .machine
                    .handle(self.now, Input::SessionUp { peer, session });
                session
            }
        };
        let peer = self.nodes[to].entry.name.clone();
        let at = self.now + self.delay();
        self.schedule(at, from, What::Input(Input::SessionUp { peer, session }));
    }

    fn answer_dial_failed(&mut self, i: usize, peer: NodeName, error: &str, at: Duration) {
        let error = error.to_string();
        self.schedule(at, i, What::Input(Input::DialFailed { peer, error }));
    }

    /// Whether what `a` sends `b` arrives.
    fn reachable(&self, a: usize, b: usize) -> bool {
        self.side[a] == self.side[b] && !self.cut.contains(&(a, b))
    }

    fn lost(&mut self) -> bool {
        self.network.loss > 0.0 && self.rng.f64() < self.network.loss
    }

    fn delay(&mut self) -> Duration {
        let (lo, hi) = (self.network.delay_min, self.network.delay_max);
        lo + (hi.saturating_sub(lo)).mul_f64(self.rng.f64())
    }

    fn schedule(&mut self, at: Duration, node: usize, what: What) {
        let generation = self.nodes[node].generation;
        self.queue.push(Scheduled {
            at,
            node,
            generation,
            what,
        });
    }
}

fn entry(i: usize) -> SentryNode {
    let ip = std::net::Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250 + 1) as u8);
    let host = Host::Ip(ip.into());
    SentryNode {
        name: NodeName::new("sim", &host).unwrap_or_else(|e| unreachable!("{e}")),
        addr: NodeAddr::new(host, 4000),
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod watching;

#[cfg(test)]
mod quorum;

#[cfg(test)]
mod partial;

#[cfg(test)]
mod bounded;
