//! `sessions = "bounded"`: sessions with a few neighbours only, and the
//! members learned through them (see `gossip` for the table and its rules,
//! `monitors::neighbours` for who the neighbours are).
//!
//! Under a full mesh none of this runs: the table stays empty, heartbeats
//! carry no facts, and every listed peer is dialed.

use std::time::Duration;

use super::*;

impl Membership {
    pub(super) fn is_bounded(&self) -> bool {
        self.config.sessions == Sessions::Bounded
    }

    /// Which listed peers to dial: all of them under a full mesh; under
    /// bounded sessions, the neighbours among every node this node knows
    /// (listed or member), and, once the ring has held still for a
    /// heartbeat timeout, the members it watches in that ring, which
    /// differ when some listed nodes are down (those that watch it dial
    /// it). While a cluster forms, the ring changes by the millisecond;
    /// dialing each passing neighbour in it left nodes with sessions to a
    /// third of the cluster, and sessions are not closed yet once open.
    pub(super) fn update_wanted(&mut self, now: Duration) {
        if !self.is_bounded() {
            self.peers.values_mut().for_each(|p| p.wanted = p.listed);
            return;
        }
        let k = self.config.monitors;
        // Both halves are cached: computing neighbours hashes and sorts
        // every name, and rings change by the hundred while a cluster forms.
        let known = (self.peers.values())
            .filter(|p| p.listed || p.member.is_some())
            .count();
        let key = (known, self.plan.listings);
        if self.plan.known_key != Some(key) {
            let names: Vec<NodeName> = std::iter::once(self.me.clone())
                .chain(
                    (self.peers.iter())
                        .filter(|(_, p)| p.listed || p.member.is_some())
                        .map(|(n, _)| n.clone()),
                )
                .collect();
            let picked = monitors::neighbours(&names, &self.me, k);
            self.plan.known = picked.into_iter().cloned().collect();
            self.plan.known_key = Some(key);
        }
        let still = self.config.heartbeat_timeout;
        let settled = self.last_rebuild.is_some_and(|at| at + still <= now);
        let digest = self.ring.digest();
        if settled && self.plan.ring_digest != Some(digest) {
            let picked = monitors::monitors(self.ring.members(), &self.me, k);
            self.plan.ring = picked.into_iter().cloned().collect();
            self.plan.ring_digest = Some(digest);
        }
        let ring_counts = settled && self.plan.ring_digest == Some(digest);
        let plan = &self.plan;
        for (name, peer) in &mut self.peers {
            let neighbour = plan.known.contains(name) || (ring_counts && plan.ring.contains(name));
            peer.wanted = peer.listed && (neighbour || peer.on_demand);
        }
    }

    /// The application needs a session with `name` (see [`Input::Connect`]).
    pub(super) fn connect_on_demand(&mut self, now: Duration, name: &NodeName) {
        let Some(peer) = self.peers.get_mut(name) else {
            return;
        };
        if peer.session.is_some() || peer.addr.is_none() || peer.on_demand {
            return;
        }
        peer.on_demand = true;
        peer.wanted = true;
        self.run_dials(now);
    }

    /// This node's own fact, up, at `Start` and at each new life.
    pub(super) fn say_up(&mut self, now: Duration) {
        if !self.is_bounded() {
            return;
        }
        let fact = Fact::up(&self.me, self.incarnation, self.life);
        self.record(now, fact);
    }

    /// What this node saw itself over a session (`fact`): into the table,
    /// and on to the neighbours if it is news. The members were already
    /// changed by whoever saw it.
    pub(super) fn record(&mut self, now: Duration, fact: Fact) {
        if self.is_bounded() && self.facts.merge(now, &fact) {
            self.pass_on(now, fact);
        }
    }

    /// Facts a neighbour passed on, in a heartbeat that counts: what is news
    /// changes the members and goes on to the other neighbours.
    pub(super) fn learn(&mut self, now: Duration, news: &[Fact]) {
        if !self.is_bounded() {
            return;
        }
        for fact in news {
            if fact.node == self.me {
                self.about_me(now, fact);
            } else if self.facts.merge(now, fact) {
                self.apply(now, fact);
                self.pass_on(now, fact.clone());
            }
        }
    }

    /// A fact about this node: said down at its own incarnation and life
    /// while it is alive, it takes the next life and says up again.
    fn about_me(&mut self, now: Duration, fact: &Fact) {
        let current = fact.incarnation == self.incarnation && fact.life >= self.life;
        if fact.down.is_none() || !current || self.is_leaving() {
            return;
        }
        self.life = fact.life + 1;
        self.say_up(now);
    }

    /// A fact new to this node changes its members: a member up, restarted,
    /// or down for the reason a neighbour saw.
    fn apply(&mut self, now: Duration, fact: &Fact) {
        let peer = (self.peers)
            .entry(fact.node.clone())
            .or_insert_with(|| Peer::new(None, now));
        let node = fact.node.clone();
        match (&mut peer.member, fact.down) {
            (Some(member), None) if member.incarnation == fact.incarnation => {
                member.life = fact.life;
            }
            (Some(member), None) => {
                let old = member.incarnation;
                member.incarnation = fact.incarnation;
                member.life = fact.life;
                member.last_heard = now;
                self.restarted(&node, old, fact.incarnation);
            }
            (None, None) => {
                self.members += 1;
                peer.member = Some(Member {
                    incarnation: fact.incarnation,
                    last_heard: now,
                    digest: Default::default(),
                    life: fact.life,
                });
                self.publish(TopologyEvent::NodeUp {
                    node,
                    incarnation: fact.incarnation,
                });
                self.membership_changed(now);
            }
            (Some(member), Some(reason)) if member.incarnation <= fact.incarnation => {
                self.drop_member(now, &node, reason);
            }
            (_, Some(_)) => {}
        }
    }

    /// Queues `fact` for every neighbour: sent at once after a quiet spell,
    /// else together with what else arrives within [`news_spacing`].
    fn pass_on(&mut self, now: Duration, fact: Fact) {
        self.outbox.push(fact);
        let due = match self.last_news {
            Some(last) => now.max(last + news_spacing(&self.config)),
            None => now,
        };
        self.news_due = Some(self.news_due.map_or(due, |at| at.min(due)));
    }

    /// Sends the outbox, when due, to every member this node holds a
    /// session with.
    pub(super) fn send_news_if_due(&mut self, now: Duration) {
        if self.news_due.is_none_or(|due| due > now) {
            return;
        }
        self.news_due = None;
        self.last_news = Some(now);
        let news: Arc<[Fact]> = std::mem::take(&mut self.outbox).into();
        if news.is_empty() {
            return;
        }
        for name in self.neighbours_up() {
            self.send_facts(&name, Arc::clone(&news));
        }
    }

    /// Members this node holds a session with.
    fn neighbours_up(&self) -> Vec<NodeName> {
        (self.peers.iter())
            .filter(|(_, p)| p.session.is_some() && p.member.is_some())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// A heartbeat to `to` carrying `news`.
    pub(super) fn send_facts(&mut self, to: &NodeName, news: Arc<[Fact]>) {
        let mut heartbeat = self.heartbeat_for(to, false, Vec::new());
        heartbeat.news = news;
        self.effects.push_back(Effect::SendHeartbeat {
            to: to.clone(),
            heartbeat,
        });
    }

    /// The whole table, to a member just admitted over its session whose
    /// table's digest, `theirs`, differs from ours.
    pub(super) fn send_table(&mut self, to: &NodeName, theirs: u64) {
        if self.is_bounded() && theirs != self.facts.digest() {
            let all = self.facts.all();
            self.send_facts(to, all);
        }
    }

    /// A heartbeat that counts from `name` carried table digest `theirs`.
    pub(super) fn compare_tables(&mut self, now: Duration, name: &NodeName, theirs: u64) {
        let ours = self.facts.digest();
        let Some(peer) = self.peers.get_mut(name).filter(|_| theirs != 0) else {
            return;
        };
        if theirs == ours {
            peer.mismatch_since = None;
        } else if peer.mismatch_since.is_none() {
            peer.mismatch_since = Some(now);
        }
    }

    /// Once per heartbeat round: the whole table to each neighbour whose
    /// digest has differed for an interval (at most once an interval each),
    /// and down facts past their time forgotten. A table sent is stamped
    /// with the round's grid point, not the moment the round ran, so a
    /// round that runs a little later than the one before still sends.
    pub(super) fn table_round(&mut self, now: Duration, round: Duration) {
        if !self.is_bounded() {
            return;
        }
        let interval = self.config.heartbeat_interval;
        self.facts
            .forget_old_downs(now, interval * gossip::TOMBSTONE_INTERVALS);
        let behind: Vec<NodeName> = (self.peers.iter_mut())
            .filter(|(_, p)| p.session.is_some() && p.member.is_some())
            .filter(|(_, p)| p.mismatch_since.is_some_and(|at| at + interval <= now))
            .map(|(n, p)| {
                p.mismatch_since = Some(round);
                n.clone()
            })
            .collect();
        if behind.is_empty() {
            return;
        }
        let all = self.facts.all();
        for name in &behind {
            self.send_facts(name, Arc::clone(&all));
        }
    }

    /// Whether a first heartbeat from `name` at `incarnation` and `life`
    /// may admit it: not when the table says that very life is down. It is
    /// told so (it learns facts about itself from any peer whose heartbeat
    /// counts, see `Membership::heard`) and comes back at its next life;
    /// told at most once per heartbeat interval, so that two nodes that
    /// each hold the other down never answer each other's every heartbeat.
    pub(super) fn may_admit(
        &mut self,
        now: Duration,
        name: &NodeName,
        incarnation: Incarnation,
        life: u32,
    ) -> bool {
        if !self.is_bounded() {
            return true;
        }
        let Some(known) = self.facts.outranks_up(name, incarnation, life) else {
            return true;
        };
        let known = Arc::from([known.clone()]);
        let interval = self.config.heartbeat_interval;
        let Some(peer) = self.peers.get_mut(name) else {
            return false;
        };
        if peer.told_down.is_none_or(|at| at + interval <= now) {
            peer.told_down = Some(now);
            self.send_facts(name, known);
        }
        false
    }
}

/// The shortest time between two sendings of news: a sixty-fourth of the
/// heartbeat interval (4.7 ms by default), so a burst of changes (a cluster
/// forming) goes out in few messages, while a crash after a quiet spell
/// goes out at once.
fn news_spacing(config: &Config) -> Duration {
    config.heartbeat_interval / 64
}

/// The neighbours under bounded sessions, as last computed (see
/// `update_wanted`).
#[derive(Debug, Default)]
pub(super) struct Plan {
    /// Discovery answers so far: a new answer may list other names.
    pub(super) listings: u64,
    /// What `known` was computed for: how many nodes this node knew, and
    /// after which answer.
    known_key: Option<(usize, u64)>,
    /// The neighbours among the nodes this node knows.
    known: BTreeSet<NodeName>,
    /// The ring `ring` was computed for.
    ring_digest: Option<crate::ring::Digest>,
    /// The members this node watches in that ring.
    ring: BTreeSet<NodeName>,
}
