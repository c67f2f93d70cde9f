//! What goes out: introductions to peers that have not answered yet,
//! heartbeat rounds, probes, and the heartbeat each peer is sent.

use std::time::Duration;

use super::*;

impl Membership {
    /// How often a connected peer that is not a member yet hears from us
    /// while we wait for its first heartbeat: an eighth of the interval.
    pub(super) fn introduce_every(&self) -> Duration {
        (self.config.heartbeat_interval / 8).max(Duration::from_millis(1))
    }

    /// Resends our heartbeat to connected peers that have not answered yet,
    /// for one `heartbeat_interval` after their session came up.
    pub(super) fn introduce(&mut self, now: Duration) {
        let waiting: Vec<NodeName> = self
            .peers
            .iter()
            .filter(|(_, p)| p.session.is_some() && p.member.is_none())
            .filter(|(_, p)| p.introduce_until.is_some_and(|until| until > now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in &waiting {
            self.send_heartbeat(name, false);
        }
        self.next_introduce = (!waiting.is_empty()).then(|| now + self.introduce_every());
    }

    pub(super) fn heartbeat_all(&mut self, leaving: bool) {
        let connected = self.connected();
        for name in &connected {
            self.send_heartbeat(name, leaving);
        }
    }

    /// The periodic heartbeat: to the members that watch this node, to
    /// connected peers that are not members yet (until they answer), and to
    /// watched members not heard for two intervals, in case they missed
    /// that we watch them (a heartbeat lost while a session was replaced).
    /// With a quorum, also to members a new observation goes to, and one
    /// probe (see `probes`).
    /// `round` is the grid point the round was due at (see
    /// [`crate::timer::next_round`]); `now` may be a little later.
    pub(super) fn heartbeat_round(&mut self, now: Duration, round: Duration) {
        let overdue = now.saturating_sub(2 * self.config.heartbeat_interval);
        // What this node hears against others' records ages.
        self.reachability_aged(now);
        // New observations go further than the watchers.
        let spread = self.take_fresh_observations();
        let due: Vec<NodeName> = self
            .peers
            .iter()
            .filter(|(_, p)| p.session.is_some())
            .filter(|(n, p)| match &p.member {
                None => true,
                Some(m) => {
                    spread.contains(n) || p.watches_me || (p.watching && m.last_heard <= overdue)
                }
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in &due {
            self.send_heartbeat(name, false);
        }
        self.probe_round(now);
        self.table_round(now, round);
        if self.is_bounded() {
            self.update_wanted(now); // the ring may have settled
        }
    }

    pub(super) fn send_heartbeat(&mut self, to: &NodeName, leaving: bool) {
        self.send_heartbeat_with(to, leaving, Vec::new());
    }

    pub(super) fn send_heartbeat_with(
        &mut self,
        to: &NodeName,
        leaving: bool,
        unresponsive: Vec<Suspect>,
    ) {
        let heartbeat = self.heartbeat_for(to, leaving, unresponsive);
        self.effects.push_back(Effect::SendHeartbeat {
            to: to.clone(),
            heartbeat,
        });
    }

    /// A probe of member `to` (see `probes`): a heartbeat that says `to` is
    /// not admitted, which a member answers at once.
    pub(super) fn send_probe(&mut self, to: &NodeName) {
        let mut heartbeat = self.heartbeat_for(to, false, Vec::new());
        heartbeat.admitted = false;
        self.effects.push_back(Effect::SendHeartbeat {
            to: to.clone(),
            heartbeat,
        });
    }

    pub(super) fn heartbeat_for(
        &self,
        to: &NodeName,
        leaving: bool,
        unresponsive: Vec<Suspect>,
    ) -> Heartbeat {
        let (tokens, watching, admitted) = self.peers.get(to).map_or_else(Default::default, |p| {
            (p.tokens, p.watching, p.member.is_some())
        });
        Heartbeat {
            from: self.me.clone(),
            app: self.config.app.clone(),
            incarnation: self.incarnation,
            digest: self.ring.digest(),
            ring_vnodes: self.ring_vnodes(),
            leaving,
            token: tokens.mine,
            echo: tokens.theirs,
            watching,
            admitted,
            unresponsive,
            observations: self.outgoing_observations(),
            downed: self.downed_incarnation(to),
            life: self.life,
            news: Arc::from([]),
            table: if self.is_bounded() {
                self.facts.digest()
            } else {
                0
            },
        }
    }
}
