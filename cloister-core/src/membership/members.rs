//! Members: heartbeats in, silence and reports of it. What a change of
//! members does is in `topology`, what goes out in `sending`.

use std::time::Duration;

use super::peer::{SaidSilent, Suspicion};
use super::*;

impl Membership {
    pub(super) fn heartbeat(&mut self, now: Duration, heartbeat: Heartbeat) {
        if heartbeat.from == self.me || !self.is_running() {
            return;
        }
        let name = heartbeat.from.clone();
        let Some(peer) = self.peers.get_mut(&name) else {
            if heartbeat.app != self.config.app {
                return; // another cluster's, not ours to report
            }
            // Nobody is connected, or wanted, under this name: keep nothing.
            return self.drop_stranger(name);
        };
        let Some(session) = peer.session else {
            // A known peer, quicker than its session's ready event: keep the
            // latest in its one slot until the session is up.
            peer.early = Some(heartbeat);
            return;
        };
        let (counts, learned) = self.check_token(&name, &heartbeat);
        let answered = counts && self.heard(now, &name, session, heartbeat);
        if learned && !answered {
            // Echo its new token at once, so it can hear us too.
            self.send_heartbeat(&name, false);
        }
    }

    /// The token handshake (see `peer::Tokens`) for `heartbeat`, which names
    /// `name`, a peer with a session: whether it counts (it echoes our token
    /// for that session), and whether it taught us a new token of the peer.
    /// Reports the first suspicious drop of the session.
    pub(super) fn check_token(&mut self, name: &NodeName, heartbeat: &Heartbeat) -> (bool, bool) {
        let Some(peer) = self.peers.get_mut(name) else {
            return (false, false);
        };
        let tokens = &mut peer.tokens;
        let counts = tokens.mine != 0 && heartbeat.echo == tokens.mine;
        // Late heartbeats of the session this one replaced: not suspicious.
        let late = !counts && heartbeat.echo != 0 && heartbeat.echo == tokens.previous;
        // Before the first heartbeat that counts, the latest one's token is
        // the best guess (that is how the handshake starts); after it, only
        // heartbeats that count may change it.
        let learned = heartbeat.token != 0
            && heartbeat.token != tokens.theirs
            && (counts || (!tokens.verified && !late));
        if learned {
            tokens.theirs = heartbeat.token;
        }
        if counts {
            tokens.verified = true;
        } else {
            // A peer that has not heard our token yet says hello with 0.
            let hello = heartbeat.echo == 0 && !tokens.verified;
            // Its token, learned from a heartbeat that counted, is as secret
            // as ours: the peer itself, with an echo overtaken by events.
            let outdated = tokens.verified && heartbeat.token == tokens.theirs;
            if !hello && !late && !outdated && !tokens.reported {
                tokens.reported = true;
                self.effects.push_back(Effect::Dropped {
                    claimed: name.clone(),
                    why: DropReason::NotEchoed,
                });
            }
        }
        (counts, learned)
    }

    /// A heartbeat naming a peer this node knows nothing of: dropped, and
    /// reported once per name while fewer than `MAX_REPORTED_STRANGERS` were.
    fn drop_stranger(&mut self, name: NodeName) {
        if self.unknown_names.len() < MAX_REPORTED_STRANGERS
            && self.unknown_names.insert(name.clone())
        {
            self.effects.push_back(Effect::Dropped {
                claimed: name,
                why: DropReason::NoSession,
            });
        }
    }

    /// A heartbeat that counts, from `name` over `session`: admits, refreshes,
    /// restarts or lets go of the member. Returns whether it answered.
    fn heard(
        &mut self,
        now: Duration,
        name: &NodeName,
        session: SessionId,
        mut hb: Heartbeat,
    ) -> bool {
        let suspects = std::mem::take(&mut hb.unresponsive);
        let news = std::mem::take(&mut hb.news);
        let table = hb.table;
        if self.refuses(name, &hb) {
            return false;
        }
        self.observe_heard(now, name, &mut hb);
        let answered = self.admit(now, name, session, hb);
        if self.incarnation_of(name).is_some() {
            if !suspects.is_empty() {
                self.reported_unresponsive(now, name, suspects);
            }
            self.learn(now, &news);
            self.compare_tables(now, name, table);
        } else {
            // From a peer not admitted: only what it says of this node (it
            // holds this node down, see `Membership::may_admit`).
            let mine: Vec<Fact> = news.iter().filter(|f| f.node == self.me).cloned().collect();
            self.learn(now, &mine);
        }
        answered
    }

    /// Whether `name`, whose heartbeat passed the token handshake, cannot
    /// be a member here: it belongs to another `app`, or places keys with
    /// another ring.
    fn refuses(&mut self, name: &NodeName, hb: &Heartbeat) -> bool {
        let vnodes = self.ring_vnodes();
        let why = if hb.app != self.config.app {
            Some(self.other_app(&hb.app))
        } else if hb.ring_vnodes != vnodes {
            Some(format!(
                "refused: it places keys with {}, this node with {} (every node needs the same \
                 `ring` and `ring_vnodes`)",
                describe_ring(hb.ring_vnodes),
                describe_ring(vnodes),
            ))
        } else {
            None
        };
        let refused = why.is_some();
        self.refuse(name, why);
        refused
    }

    /// Why a peer of app `theirs` is refused (at most its first 64
    /// characters, quoted).
    pub(super) fn other_app(&self, theirs: &str) -> String {
        let theirs: String = theirs.chars().take(64).collect();
        format!(
            "refused: it belongs to app {theirs:?}, this node to app {:?} (every node of one \
             cluster needs the same `app`; set `node_name` to name its nodes apart)",
            self.config.app,
        )
    }

    /// Records why peer `name` is refused (`None`: it is not), saying so
    /// once per reason (the report and the log show it), not for every
    /// heartbeat refused.
    pub(super) fn refuse(&mut self, name: &NodeName, why: Option<String>) {
        let Some(peer) = self.peers.get_mut(name) else {
            return;
        };
        if peer.refused != why {
            peer.refused = why.clone();
            if let Some(why) = why {
                let peer = name.clone();
                self.effects.push_back(Effect::Refused { peer, why });
            }
        }
    }

    /// The membership part of [`Membership::heard`]: admits, refreshes,
    /// restarts or lets go of the member. Returns whether it answered.
    fn admit(&mut self, now: Duration, name: &NodeName, session: SessionId, hb: Heartbeat) -> bool {
        // Taken out of every ring to end a partial partition: not again
        // while a record still names it.
        let downed = self.is_downed_peer(name, hb.incarnation);
        let said_down = !hb.leaving && !self.may_admit(now, name, hb.incarnation, hb.life);
        let Some(peer) = self.peers.get_mut(name) else {
            return false;
        };
        if peer.left == Some(session) {
            return false; // sent before the goodbye of this same session
        }
        peer.watches_me = hb.watching && !hb.leaving;
        peer.said_silent = None;
        if hb.leaving {
            peer.left = Some(session);
            if peer.member.is_some() {
                self.remove_member(now, name, DownReason::Left);
                self.note_left();
            }
            return false;
        }
        match &mut peer.member {
            Some(member) if member.incarnation == hb.incarnation => {
                if peer.watching {
                    let gap = now.saturating_sub(member.last_heard);
                    self.telemetry.heartbeat_gaps.observe(gap);
                }
                member.last_heard = now;
                member.digest = hb.digest;
                if hb.life > member.life {
                    // Said down and alive: it says so over its session.
                    member.life = hb.life;
                    self.record(now, Fact::up(name, hb.incarnation, hb.life));
                }
                // It has not admitted us: our answer was lost. Answer again,
                // unless an answer is on its way after the next rebuild.
                if !hb.admitted && !self.answer_after_rebuild.contains(name) {
                    self.send_heartbeat(name, false);
                    return true;
                }
                false
            }
            Some(member) => {
                // Another process under the same name, proven by its session:
                // whichever way the two wall clocks compare.
                let old = member.incarnation;
                *member = Member {
                    incarnation: hb.incarnation,
                    last_heard: now,
                    digest: hb.digest,
                    life: hb.life,
                };
                self.record(now, Fact::up(name, hb.incarnation, hb.life));
                self.restarted(name, old, hb.incarnation);
                self.send_heartbeat(name, false);
                true
            }
            None if downed || said_down => false,
            None => {
                peer.hold_until = None;
                self.members += 1;
                peer.member = Some(Member {
                    incarnation: hb.incarnation,
                    last_heard: now,
                    digest: hb.digest,
                    life: hb.life,
                });
                self.record(now, Fact::up(name, hb.incarnation, hb.life));
                self.send_table(name, hb.table);
                self.publish(TopologyEvent::NodeUp {
                    node: name.clone(),
                    incarnation: hb.incarnation,
                });
                // Watched, if it is, once the ring includes it; answered
                // then too, so the answer carries the new digest.
                self.membership_changed(now);
                self.answer_after_rebuild.insert(name.clone());
                true
            }
        }
    }

    /// Whether this node did not run for a while: a timer more than a
    /// heartbeat interval overdue (an overloaded machine, a paused process).
    /// Checked before every input and timeout, since what waited in the
    /// mailbox may come before the overdue wake-up. The heartbeats its
    /// watched members sent meanwhile wait in its mailbox too, so their
    /// silence does not count against them: their deadlines move on by as
    /// much, and the operator is told. Noticed once per stall.
    pub(super) fn notice_stall(&mut self, now: Duration) {
        let Some(due) = self.poll_timeout() else {
            return;
        };
        let late = now.saturating_sub(due);
        if late <= self.config.heartbeat_interval || self.woke_at.is_some_and(|at| at >= due) {
            return;
        }
        self.woke_at = Some(now);
        for member in self.peers.values_mut().filter_map(|p| p.member.as_mut()) {
            member.last_heard = (member.last_heard + late).min(now);
        }
        self.effects.push_back(Effect::Stalled { late });
    }

    /// Whether this node woke from a stall less than a heartbeat timeout
    /// ago. The sessions it finds closed then were mostly closed by peers
    /// that dropped it meanwhile: it cannot tell those from crashes, so it
    /// does not tell the cluster they crashed (see `remove_member`).
    pub(super) fn waking(&self, now: Duration) -> bool {
        (self.woke_at).is_some_and(|at| now < at + self.config.heartbeat_timeout)
    }

    /// Drops every watched member silent for `heartbeat_timeout`, and its
    /// session, and tells every other member at once.
    ///
    /// Under bounded sessions, not a member that came back at a later life
    /// after this node said it down, unheard here since: every member
    /// learns facts from every other, so under a partial partition (a
    /// bridge that reaches both sides of a cut) the member would answer
    /// each word through the bridge and be said down again, and every ring
    /// would flap for as long as the cut lasts. It stays a member and the
    /// operator is told, once; a word of it from anyone else still counts.
    pub(super) fn expire_silent_members(&mut self, now: Duration) {
        let timeout = self.config.heartbeat_timeout;
        let bounded = self.is_bounded();
        let mut silent: Vec<Suspect> = Vec::new();
        for (name, peer) in self.peers.iter_mut().filter(|(_, p)| p.watching) {
            let Some(member) = peer.member.as_mut() else {
                continue;
            };
            if member.last_heard + timeout > now {
                continue;
            }
            if let Some(said) = (peer.said_silent.as_mut())
                .filter(|s| s.incarnation == member.incarnation && s.life < member.life)
            {
                member.last_heard = now;
                if !std::mem::replace(&mut said.told, true) {
                    let peer = name.clone();
                    self.effects.push_back(Effect::Unheard { peer });
                }
                continue;
            }
            let silence = now.saturating_sub(member.last_heard);
            self.telemetry.unresponsive_detection.observe(silence);
            if bounded {
                peer.said_silent = Some(SaidSilent {
                    incarnation: member.incarnation,
                    life: member.life,
                    told: false,
                });
            }
            silent.push(Suspect {
                node: name.clone(),
                incarnation: member.incarnation,
            });
        }
        if silent.is_empty() {
            return;
        }
        for suspect in &silent {
            let why = format!("no heartbeat for {timeout:?}");
            self.drop_unresponsive(now, &suspect.node, why);
        }
        self.observe_unreachable(now, &silent);
        if self.is_downed() || self.is_bounded() {
            // Under bounded sessions, the drops went out as facts.
            //
            // Out of every ring, it watches members it mostly cannot reach;
            // a member still counting it would drop them on its word, and
            // it records none of it (see `observe_unreachable`), so nobody
            // would say that they are heard.
            return;
        }
        // Once, to every member: their own deadlines may be far off, or they
        // do not watch these members at all.
        let members: Vec<NodeName> = self
            .peers
            .iter()
            .filter(|(_, p)| p.member.is_some() && p.session.is_some())
            .map(|(n, _)| n.clone())
            .collect();
        for name in &members {
            self.send_heartbeat_with(name, false, silent.clone());
        }
    }

    /// A member's heartbeat reported members it watched and dropped as
    /// unresponsive: drop them too, unless this node knows another
    /// incarnation of them (a restart it has proven itself), or watches
    /// them itself and heard them within the last two intervals: then they
    /// are alive, and what failed is the reporter's link to them (a node
    /// that hears nobody would otherwise evict every member everywhere).
    ///
    /// With a quorum, a node that does not watch the member holds the
    /// report for three intervals, probes the member at once, and drops it
    /// only if it did not answer and no other node said meanwhile that it
    /// hears it (see `reachability`): a watcher that hears nobody would
    /// otherwise evict the members it watches from every non-watcher's
    /// ring, again and again. The probe answers first hand: the member's
    /// own watchers may not count the reporter's observation at all (a
    /// node that hears nobody drops its watched members, closes their
    /// sessions, and they take it for crashed).
    ///
    /// A member it watched and drops so is its own observation too (see
    /// `reachability`): it would have timed out on it a moment later.
    fn reported_unresponsive(&mut self, now: Duration, from: &NodeName, suspects: Vec<Suspect>) {
        let lately = self.config.heartbeat_interval * 2;
        let hold = self.resolves_partial_partitions();
        let mut observed = Vec::new();
        for Suspect { node, incarnation } in suspects {
            if node == self.me || node == *from {
                continue; // our own session, or its own, tells us more
            }
            let heard_lately = self.peers.get(&node).is_some_and(|p| {
                p.watching
                    && p.member
                        .as_ref()
                        .is_some_and(|m| now.saturating_sub(m.last_heard) < lately)
            });
            if heard_lately {
                continue;
            }
            if self.incarnation_of(&node) == Some(incarnation) {
                let Some(peer) = self.peers.get_mut(&node) else {
                    continue;
                };
                let watching = peer.watching;
                if hold && !watching {
                    if peer.suspected.is_none() {
                        let until = now + 3 * self.config.heartbeat_interval;
                        let probe = peer.session.is_some();
                        peer.suspected = Some(Suspicion {
                            since: now,
                            until,
                            incarnation,
                            reporter: from.clone(),
                        });
                        self.next_peer_timer = earliest(self.next_peer_timer, until);
                        if probe {
                            // Alive, it answers at once (see `probes`).
                            self.send_probe(&node);
                        }
                    }
                    continue;
                }
                let why = self.reported_why(from);
                if watching {
                    observed.push(Suspect {
                        node: node.clone(),
                        incarnation,
                    });
                }
                self.drop_unresponsive(now, &node, why);
            }
        }
        if !observed.is_empty() {
            self.observe_unreachable(now, &observed);
        }
    }

    /// Suspicions held for their three intervals: the member is dropped
    /// unless this node heard it since the report (its probe answered), a
    /// node other than the reporter says it hears it, or the reporter is no
    /// longer a member.
    pub(super) fn expire_suspicions(&mut self, now: Duration) {
        let due: Vec<(NodeName, Suspicion)> = (self.peers.iter_mut())
            .filter(|(_, p)| p.suspected.as_ref().is_some_and(|s| s.until <= now))
            .filter_map(|(n, p)| Some((n.clone(), p.suspected.take()?)))
            .collect();
        for (name, suspicion) in due {
            let Suspicion {
                since,
                incarnation,
                reporter,
                ..
            } = suspicion;
            // A reporter no longer a member (downed, dropped) speaks for
            // nobody: a deaf node is downed while its reports are held.
            if self.incarnation_of(&name) != Some(incarnation)
                || self.incarnation_of(&reporter).is_none()
                || self.heard_by_another(since, &name, incarnation, &reporter)
            {
                continue;
            }
            let why = self.reported_why(&reporter);
            self.drop_unresponsive(now, &name, why);
        }
    }

    /// Why a member `reporter` reported silent was dropped.
    fn reported_why(&self, reporter: &NodeName) -> String {
        let timeout = self.config.heartbeat_timeout;
        format!("{reporter}, which watches it, heard no heartbeat from it for {timeout:?}")
    }

    /// Drops member `name` as unresponsive. Its session is held for one
    /// more `heartbeat_timeout` (see `Peer::hold_until`), and it keeps
    /// getting our heartbeats, which say it is not admitted: alive, it
    /// answers and is back. Without a session, a redial comes after a
    /// backoff, so a frozen peer is not hammered.
    fn drop_unresponsive(&mut self, now: Duration, name: &NodeName, why: String) {
        let Some(peer) = self.peers.get_mut(name) else {
            return;
        };
        peer.grace = None;
        if peer.session.is_some() {
            let until = now + self.config.heartbeat_timeout;
            peer.hold_until = Some(until);
            self.next_peer_timer = earliest(self.next_peer_timer, until);
        } else {
            let delay = backoff(&self.config, &mut self.rng, 0);
            peer.dial = Dial::Idle { at: now + delay };
        }
        peer.last_error = Some(why);
        self.remove_member(now, name, DownReason::Unresponsive);
    }
}

/// A ring configuration as the config spells it.
fn describe_ring(vnodes: u32) -> String {
    match vnodes {
        0 => "`ring = \"external\"`".to_string(),
        n => format!("`ring_vnodes = {n}`"),
    }
}
