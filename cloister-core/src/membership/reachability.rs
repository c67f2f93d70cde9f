//! Partial partitions: who cannot reach whom, agreed on by every member, and
//! the nodes taken out of every ring so that the rest form one ring.
//!
//! Only with a quorum configured. A watcher that stops hearing a member
//! drops it and reports it (see `members`); a receiver that still hears the
//! member keeps it. That is right for a watcher's broken link, but under a
//! partial partition (a bridge node that sees both halves, a one-way cut)
//! it leaves several rings and several sentries for as long as the fault
//! lasts. So each node keeps an [`Observation`]: the members it watched or
//! probed (see `probes`) and cannot hear, and the nodes it hears although
//! another's observation says they cannot be heard. It is versioned and
//! passed on by every heartbeat while it is not empty. A node whose own
//! observation changed sends its heartbeat to every member in the next
//! round; one that learned a new version of another's sends it to
//! `2 * monitors` members drawn at random (every member in a smaller
//! cluster), which do the same, so every node learns the same observations
//! within a few rounds, the far side of a bridge through the bridge.
//!
//! A record `(observer, subject)` whose subject somebody else hears is
//! *contested*: the fault is a link, not the subject. Nobody hears a frozen
//! or crashed node, or the far side of a clean partition, so those are
//! left to the heartbeat timeout and the quorum rule. [`downed`], a pure
//! function, says which nodes the contested records take out: a fault
//! whose records all run between two sets of nodes loses the smaller set
//! whole. Once what it says has not changed for `stable_after` (more
//! records naming the same sides do not put it off), a node takes those
//! nodes out, so that nodes knowing the same records take out the same:
//! every member drops them from its ring (`NodeDown` with reason `downed`)
//! and admits them again only when no contested record names them any
//! more. A downed node learns it from its own records or from the
//! heartbeats of the peers that downed it, and leaves `Ready` as the
//! minority of a partition does; meanwhile it neither records nor reports
//! the members of its own ring that it stops hearing.
//!
//! An observation counts on a node while its observer is a member there,
//! or is itself named by a record (cut off, not crashed): one of a process
//! that crashed is forgotten with it.
//!
//! What is seen: a cut between a watcher and the node it watches (a
//! one-way cut, a node that hears nobody) at once; a bridge between two
//! halves of any size, since about half of each node's watched and probed
//! members are across, and the records then tie every node named to its
//! half; a cut between two members that do not watch each other once the
//! probes come round (one round per member not watched: 7.4 s at 20 nodes
//! with the default timers, most of it `stable_after`). A fault that is
//! not two-sided (three groups cut from each other pairwise) is cut down
//! node by node, most named first, until no two nodes kept are cut apart;
//! the nodes of smaller groups are named by more records, so in the
//! simulations (6 | 3 | 2 and 110 | 50 | 39, each with a bridge) the bridge
//! and the largest group stay, ready only if they are a majority. That is
//! not proven for every shape of records. What is not seen: a node that
//! no record names (its watched and probed members all on its side, and
//! nobody across records it) stays in the rings of the far side until a
//! probe of it or by it fails.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::downing::{downed, Who};
use super::probes::Probes;
use super::*;
use crate::config::Quorum;

/// Reachability records `(observer, subject)`.
type Records = BTreeSet<(Who, Who)>;

/// What heartbeats carry, and when an emptied observation stops being
/// carried.
type Outgoing = (Arc<[Observation]>, Option<Duration>);

/// What this node knows about who cannot reach whom.
#[derive(Debug, Default)]
pub(super) struct Reachability {
    /// The latest observation of each observer, this node's own included,
    /// with when it was learned.
    observations: BTreeMap<NodeName, (Observation, Duration)>,
    /// The contested records of the observations that count, as last
    /// computed.
    records: BTreeSet<(Who, Who)>,
    /// Every record of the observations that count, as last computed.
    counted: Records,
    /// What heartbeats carry: the observations that count and are not
    /// empty, and those emptied within `stable_after` (so that an older
    /// version elsewhere is replaced).
    outgoing: Arc<[Observation]>,
    /// When to count again after observations changed: within a sixteenth
    /// of a heartbeat interval of the first change, so that the changes a
    /// round of heartbeats brings are counted once, not once per heartbeat.
    recount_at: Option<Duration>,
    /// When to decide: `stable_after` after what [`downed`] makes of the
    /// records last changed.
    decide_at: Option<Duration>,
    /// What [`downed`] makes of the records now.
    pending: BTreeSet<Who>,
    /// When an emptied observation stops being carried.
    quiet_at: Option<Duration>,
    /// Observations of others learned since the last heartbeat round.
    fresh: bool,
    /// This node's own observation changed since the last heartbeat round.
    fresh_mine: bool,
    /// The nodes out of every ring, as last decided.
    downed: BTreeMap<NodeName, Incarnation>,
    /// The members this node probes, and those that did not answer.
    pub(super) probes: Probes,
}

impl Membership {
    /// Whether this node keeps reachability records: only with a quorum.
    pub(super) fn resolves_partial_partitions(&self) -> bool {
        self.config.quorum != Quorum::Off
    }

    /// This node is out of the ring: its own decision, or a peer's.
    pub(super) fn is_downed(&self) -> bool {
        self.reach.downed.get(&self.me) == Some(&self.incarnation)
            || self
                .peers
                .values()
                .any(|p| p.downs_me && p.session.is_some())
    }

    /// Whether a heartbeat from `name` as `incarnation` may not admit it.
    pub(super) fn is_downed_peer(&self, name: &NodeName, incarnation: Incarnation) -> bool {
        self.reach.downed.get(name) == Some(&incarnation)
    }

    /// The incarnation of `to` this node downed, for its heartbeat to `to`.
    pub(super) fn downed_incarnation(&self, to: &NodeName) -> Option<Incarnation> {
        self.reach.downed.get(to).copied()
    }

    /// The observations a heartbeat carries now.
    pub(super) fn outgoing_observations(&self) -> Arc<[Observation]> {
        Arc::clone(&self.reach.outgoing)
    }

    /// The members the next heartbeat round also goes to because
    /// observations changed since the last one. This node's own new
    /// version goes to every connected member: within a round, as a member
    /// holding a watcher's report of silence needs to learn that another
    /// node hears the member (see `reported_unresponsive`). Others' new
    /// versions, learned from a heartbeat, go on to `2 * monitors` members
    /// drawn at random (every member in a smaller cluster), which do the
    /// same, so they reach nodes their observer cannot reach (the far side
    /// of a bridge, through the bridge) in a few rounds. Passing those on
    /// to every member made each change cost every node a heartbeat to
    /// every member: at 200 nodes 40,000 a round, each merged observation
    /// by observation, for as long as records changed. Clears the flags.
    pub(super) fn take_fresh_observations(&mut self) -> BTreeSet<NodeName> {
        let mine = std::mem::take(&mut self.reach.fresh_mine);
        let others = std::mem::take(&mut self.reach.fresh);
        if !mine && !others {
            return BTreeSet::new();
        }
        let mut members: Vec<NodeName> = (self.peers.iter())
            .filter(|(_, p)| p.member.is_some() && p.session.is_some())
            .map(|(name, _)| name.clone())
            .collect();
        let fanout = 2 * self.config.monitors.max(1);
        if !mine && members.len() > fanout {
            self.rng.shuffle(&mut members);
            members.truncate(fanout);
        }
        members.into_iter().collect()
    }

    /// The reachability timers: the decision, the end of carrying an
    /// emptied observation, a count of what heartbeats brought, and the
    /// first probe to run out.
    pub(super) fn reachability_timeout(&self) -> Option<Duration> {
        let probe = self.reach.probes.next_due();
        let reach = &self.reach;
        [reach.decide_at, reach.quiet_at, reach.recount_at, probe]
            .into_iter()
            .flatten()
            .min()
    }

    /// This node watched or probed `suspects` and stopped hearing them.
    /// Not while it is downed: out of every ring, it watches and probes the
    /// members left in its own, which it mostly cannot reach, and under a
    /// long bridge its records would grow towards one per member across.
    pub(super) fn observe_unreachable(&mut self, now: Duration, suspects: &[Suspect]) {
        if !self.resolves_partial_partitions() || self.is_downed() {
            return;
        }
        self.change_mine(now, |mine| {
            let before = mine.unreachable.len();
            mine.unreachable.extend(suspects.iter().cloned());
            mine.unreachable.sort();
            mine.unreachable.dedup();
            mine.unreachable.len() != before
        });
    }

    /// A heartbeat that counts came from `name`: it is reachable, and what
    /// it carries about reachability is merged.
    pub(super) fn observe_heard(&mut self, now: Duration, name: &NodeName, hb: &mut Heartbeat) {
        let observations = std::mem::take(&mut hb.observations);
        if !self.resolves_partial_partitions() {
            return;
        }
        if let Some(peer) = self.peers.get_mut(name) {
            peer.heard_at = Some(now);
        }
        self.reach.probes.answered(name);
        self.change_mine(now, |mine| {
            let before = mine.unreachable.len();
            mine.unreachable.retain(|suspect| suspect.node != *name);
            mine.unreachable.len() != before
        });
        let me = self.incarnation;
        let downs_me = hb.downed == Some(me) && !hb.leaving;
        if let Some(peer) = self.peers.get_mut(name) {
            if peer.downs_me != downs_me {
                peer.downs_me = downs_me;
                self.downed_changed();
            }
        }
        self.merge(now, observations);
    }

    /// A session with a peer closed or was replaced: what it said about
    /// downing this node no longer holds.
    pub(super) fn forget_downs_me(&mut self, name: &NodeName) {
        if let Some(peer) = self.peers.get_mut(name) {
            if std::mem::take(&mut peer.downs_me) {
                self.downed_changed();
            }
        }
    }

    /// Whether this node heard `name` since `since` (when `reporter`
    /// reported it silent and this node probed it), or an observation of
    /// another node than `reporter` says it hears it as `incarnation`.
    pub(super) fn heard_by_another(
        &self,
        since: Duration,
        name: &NodeName,
        incarnation: Incarnation,
        reporter: &NodeName,
    ) -> bool {
        let me = self.peers.get(name).and_then(|p| p.heard_at);
        me.is_some_and(|at| at >= since)
            || self.reach.observations.values().any(|(o, _)| {
                o.observer != *reporter
                    && (o.reachable.iter()).any(|s| s.node == *name && s.incarnation == incarnation)
            })
    }

    /// Peers forgotten (gone from the DNS answer): this node no longer
    /// observes them.
    pub(super) fn forget_unknown_subjects(&mut self, now: Duration) {
        if !self.reach.observations.contains_key(&self.me) {
            return;
        }
        let names: BTreeSet<NodeName> = self.peers.keys().cloned().collect();
        self.change_mine(now, |mine| {
            let before = mine.unreachable.len();
            mine.unreachable
                .retain(|suspect| names.contains(&suspect.node));
            mine.unreachable.len() != before
        });
    }

    /// Changes this node's own observation with `change`, which says
    /// whether it changed anything; a change is a new version, counted
    /// with whatever else changes within the batch (see
    /// [`Membership::recount_soon`]).
    fn change_mine(&mut self, now: Duration, change: impl FnOnce(&mut Observation) -> bool) {
        if self.update_mine(now, change) {
            self.recount_soon(now);
        }
    }

    /// Observations changed: count again within a sixteenth of a heartbeat
    /// interval, once for all that change meanwhile (as a node hears the
    /// members it recorded again after a heal, one by one).
    fn recount_soon(&mut self, now: Duration) {
        let batch = self.config.heartbeat_interval / 16;
        self.reach.recount_at.get_or_insert(now + batch);
    }

    /// [`Membership::change_mine`] without the recount: whether it changed.
    fn update_mine(
        &mut self,
        now: Duration,
        change: impl FnOnce(&mut Observation) -> bool,
    ) -> bool {
        let (observer, incarnation) = (self.me.clone(), self.incarnation);
        let empty = Observation {
            observer: observer.clone(),
            incarnation,
            version: 0,
            unreachable: Vec::new(),
            reachable: Vec::new(),
        };
        let (mine, learned) = self
            .reach
            .observations
            .entry(observer)
            .or_insert((empty, now));
        if !change(mine) {
            return false;
        }
        mine.version += 1;
        *learned = now;
        self.reach.fresh_mine = true;
        true
    }

    /// Keeps the newer of each observation `observations` carries.
    fn merge(&mut self, now: Duration, observations: Arc<[Observation]>) {
        let mut changed = false;
        for observation in observations.iter() {
            if observation.observer == self.me {
                continue; // only this node says what it observes
            }
            let newer = self
                .reach
                .observations
                .get(&observation.observer)
                .is_none_or(|(known, _)| {
                    (observation.incarnation, observation.version)
                        > (known.incarnation, known.version)
                });
            if newer {
                let observer = observation.observer.clone();
                let observation = observation.clone();
                self.reach.observations.insert(observer, (observation, now));
                changed = true;
            }
        }
        if changed {
            self.reach.fresh = true;
            self.recount_soon(now);
        }
    }

    /// An observation changed, or whether one counts or what this node
    /// hears may have (members came or went, a heartbeat round): this
    /// node's own list of nodes it hears against others' records follows,
    /// then the contested records and what heartbeats carry. New contested
    /// records put the decision off to `stable_after` from now; a node no
    /// contested record names any more is let back at once.
    pub(super) fn reachability_changed(&mut self, now: Duration) {
        self.reach.recount_at = None;
        if self.reach.observations.is_empty() {
            return;
        }
        let (records, mut carried) = self.counted(now);
        let hears = self.hears_against(now, &records);
        let mine = self.reach.observations.get(&self.me);
        if mine.map_or(&[][..], |(o, _)| &o.reachable[..]) != hears.as_slice() {
            self.update_mine(now, |mine| {
                mine.reachable = hears;
                true
            });
            carried = self.counted(now).1; // what this node hears changed
        }
        let (outgoing, quiet_at) = carried;
        self.reach.outgoing = outgoing;
        self.reach.quiet_at = quiet_at;
        let contested = self.contested(&records);
        self.reach.counted = records;
        if contested == self.reach.records {
            return;
        }
        self.reach.records = contested;
        let pending = downed(&self.reach.records);
        if pending != self.reach.pending {
            self.reach.pending = pending;
            self.reach.decide_at = Some(now + self.config.stable_after);
        }
        let named: BTreeSet<&Who> = self
            .reach
            .records
            .iter()
            .flat_map(|(observer, subject)| [observer, subject])
            .collect();
        let before = self.reach.downed.len();
        self.reach
            .downed
            .retain(|name, incarnation| named.contains(&(name.clone(), *incarnation)));
        if self.reach.downed.len() != before {
            self.downed_changed();
        }
    }

    /// A heartbeat round: what this node hears against the records ages
    /// (it heard a member within two intervals, or no longer). Counts
    /// everything again only if that changed.
    pub(super) fn reachability_aged(&mut self, now: Duration) {
        if self.reach.observations.is_empty() {
            return;
        }
        let hears = self.hears_against(now, &self.reach.counted);
        let mine = self.reach.observations.get(&self.me);
        if mine.map_or(&[][..], |(o, _)| &o.reachable[..]) != hears.as_slice() {
            self.reachability_changed(now);
        }
    }

    /// The nodes this node watches, or downed and would watch among every
    /// node it knows, and heard within two intervals, that a record of
    /// another observer says cannot be heard, sorted. A downed node's
    /// watchers hear it before the decision and go on saying so after it,
    /// so its records stay contested and it stays out; every node that
    /// hears a downed node saying so would cost each a list as long as the
    /// cluster.
    fn hears_against(&self, now: Duration, records: &BTreeSet<(Who, Who)>) -> Vec<Suspect> {
        let lately = now.saturating_sub(2 * self.config.heartbeat_interval);
        let would_watch: BTreeSet<NodeName> = if self.reach.downed.is_empty() {
            BTreeSet::new()
        } else {
            let known: Vec<NodeName> = std::iter::once(&self.me)
                .chain(self.peers.keys())
                .cloned()
                .collect();
            monitors(&known, &self.me, self.config.monitors)
                .into_iter()
                .cloned()
                .collect()
        };
        let mut hears: Vec<Suspect> = records
            .iter()
            .filter(|(observer, _)| observer.0 != self.me)
            .map(|(_, (node, incarnation))| Suspect {
                node: node.clone(),
                incarnation: *incarnation,
            })
            .filter(|s| {
                // Only what this node knows first hand and steadily: members
                // it watches, and the downed, which answer its heartbeats.
                let downed =
                    self.is_downed_peer(&s.node, s.incarnation) && would_watch.contains(&s.node);
                self.peers.get(&s.node).is_some_and(|p| {
                    (p.watching || downed)
                        && p.session.is_some()
                        && p.heard_at.is_some_and(|at| at > lately)
                })
            })
            .collect();
        hears.sort();
        hears.dedup();
        hears
    }

    /// The records `(observer, subject)` of the observations that count,
    /// with what heartbeats carry and when the next emptied observation
    /// stops being carried.
    fn counted(&self, now: Duration) -> (Records, Outgoing) {
        let mut records = BTreeSet::new();
        let mut outgoing = Vec::new();
        let mut quiet_at: Option<Duration> = None;
        for (observation, learned, carried) in self.counting(now) {
            let observer = (observation.observer.clone(), observation.incarnation);
            for subject in &observation.unreachable {
                let subject = (subject.node.clone(), subject.incarnation);
                records.insert((observer.clone(), subject));
            }
            if carried {
                outgoing.push(observation.clone());
                let quiet = learned + self.config.stable_after;
                if observation.unreachable.is_empty() && observation.reachable.is_empty() {
                    quiet_at = Some(quiet_at.map_or(quiet, |at| at.min(quiet)));
                }
            }
        }
        (records, (outgoing.into(), quiet_at))
    }

    /// The observations that count, with when each was learned and whether
    /// heartbeats carry it (it is not empty, or emptied within
    /// `stable_after`).
    fn counting(&self, now: Duration) -> impl Iterator<Item = (&Observation, Duration, bool)> {
        let named: BTreeSet<(&NodeName, Incarnation)> = (self.reach.observations.values())
            .flat_map(|(o, _)| o.unreachable.iter())
            .map(|s| (&s.node, s.incarnation))
            .collect();
        let counts = move |o: &Observation| {
            o.observer == self.me
                || self.incarnation_of(&o.observer) == Some(o.incarnation)
                || named.contains(&(&o.observer, o.incarnation))
                || self.is_downed_peer(&o.observer, o.incarnation)
        };
        let stable_after = self.config.stable_after;
        (self.reach.observations.values())
            .filter(move |(o, _)| counts(o))
            .map(move |(o, learned)| {
                let empty = o.unreachable.is_empty() && o.reachable.is_empty();
                (o, *learned, !empty || *learned + stable_after > now)
            })
    }

    /// The members changed: whose observations count may have, and what
    /// this node hears. Counts everything again only if what heartbeats
    /// carry changes (at 200 nodes a ring rebuild comes every few
    /// milliseconds while members join).
    pub(super) fn reachability_members_changed(&mut self, now: Duration) {
        let same = {
            let carried = self.counting(now).filter(|(_, _, carried)| *carried);
            let versions = carried.map(|(o, _, _)| (&o.observer, o.incarnation, o.version));
            let outgoing = self.reach.outgoing.iter();
            versions.eq(outgoing.map(|o| (&o.observer, o.incarnation, o.version)))
        };
        if same {
            self.reachability_aged(now);
        } else {
            self.reachability_changed(now);
        }
    }

    /// The records whose subject a node other than their observer hears,
    /// as the observations that count say.
    fn contested(&self, records: &BTreeSet<(Who, Who)>) -> BTreeSet<(Who, Who)> {
        let mut hearers: BTreeMap<Who, BTreeSet<Who>> = BTreeMap::new();
        for o in self.reach.outgoing.iter() {
            for s in &o.reachable {
                let hearer = (o.observer.clone(), o.incarnation);
                let heard = (s.node.clone(), s.incarnation);
                hearers.entry(heard).or_default().insert(hearer);
            }
        }
        records
            .iter()
            .filter(|(observer, subject)| {
                (hearers.get(subject)).is_some_and(|h| h.iter().any(|hearer| hearer != observer))
            })
            .cloned()
            .collect()
    }

    /// Runs the reachability timers due at `now`: records the members
    /// whose probes ran out, counts what heartbeats brought, stops carrying
    /// emptied observations, and decides once what the records say held
    /// still for `stable_after`.
    pub(super) fn reachability_timers(&mut self, now: Duration) {
        self.expire_probes(now);
        if self.reach.recount_at.is_some_and(|at| at <= now) {
            self.reachability_changed(now);
        }
        if self.reach.quiet_at.is_some_and(|at| at <= now) {
            self.reachability_changed(now);
        }
        if self.reach.decide_at.is_none_or(|at| at > now) {
            return;
        }
        self.reach.decide_at = None;
        let decided: BTreeMap<NodeName, Incarnation> = self.reach.pending.iter().cloned().collect();
        if decided == self.reach.downed {
            return;
        }
        self.reach.downed = decided;
        self.effects.push_back(Effect::Downing {
            downed: self.reach.downed.keys().cloned().collect(),
            records: (self.reach.records.iter())
                .map(|((observer, _), (subject, _))| (observer.clone(), subject.clone()))
                .collect(),
        });
        let members: Vec<NodeName> = self
            .peers
            .iter()
            .filter_map(|(name, p)| Some((name, p.member.as_ref()?.incarnation)))
            .filter(|(name, incarnation)| self.is_downed_peer(name, *incarnation))
            .map(|(name, _)| name.clone())
            .collect();
        for name in &members {
            self.remove_member(now, name, DownReason::Downed);
        }
        self.downed_changed();
    }

    /// Whether this node is downed may have changed: the sentry and the
    /// state follow.
    fn downed_changed(&mut self) {
        if self.is_running() {
            self.elect_sentry();
            self.evaluate();
        }
    }
}
