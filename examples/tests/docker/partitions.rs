//! The nemesis (faults put into containers' network namespaces from the
//! host), the split-brain invariants, and the scenarios with a quorum.

use super::*;

/// Firewall rules in containers' network namespaces (`nsenter -t PID -n
/// iptables`), each removed by [`Nemesis::heal`] and on drop, also when a
/// test panics. A container that is gone takes its rules with it.
pub(super) struct Nemesis {
    /// (the container's PID, the rule as `iptables -I` takes it).
    rules: Vec<(String, Vec<String>)>,
}

impl Nemesis {
    pub(super) fn new() -> Nemesis {
        Nemesis { rules: Vec::new() }
    }

    fn pid(view: &View) -> String {
        let pid = docker(&["inspect", "-f", "{{.State.Pid}}", &view.id]);
        let pid = pid.trim().to_string();
        assert!(pid != "0", "{} is not running", view.container);
        pid
    }

    fn iptables(pid: &str, action: &str, rule: &[String]) -> Result<String, String> {
        let mut args = vec!["-t", pid, "-n", "iptables", action];
        args.extend(rule.iter().map(String::as_str));
        run("nsenter", &args)
    }

    /// Adds `rule` in `view`'s namespace.
    fn add(&mut self, view: &View, rule: &[&str]) {
        let pid = Nemesis::pid(view);
        let rule: Vec<String> = rule.iter().map(|r| r.to_string()).collect();
        if let Err(err) = Nemesis::iptables(&pid, "-I", &rule) {
            panic!("cannot add a rule to {}: {err}", view.container);
        }
        self.rules.push((pid, rule));
    }

    /// `view` hears nothing from `ip` (a one-way cut: what it sends still
    /// arrives, but over TCP nothing gets through for long).
    pub(super) fn deafen(&mut self, view: &View, ip: &str) {
        self.add(view, &["INPUT", "-s", ip, "-j", "DROP"]);
    }

    /// Nothing passes between `view` and `ip`, either way.
    fn cut(&mut self, view: &View, ip: &str) {
        self.deafen(view, ip);
        self.add(view, &["OUTPUT", "-d", ip, "-j", "DROP"]);
    }

    /// Every node of `a` is cut from every node of `b`.
    pub(super) fn partition(&mut self, project: &Project, a: &[&View], b: &[&View]) {
        for x in a {
            for y in b {
                self.cut(x, &project.ip(y));
            }
        }
    }

    /// `view` loses `percent` of the packets it receives, at random.
    pub(super) fn lossy(&mut self, view: &View, percent: u32) {
        let p = format!("{:.2}", f64::from(percent) / 100.0);
        let rule = [
            "INPUT",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            &p,
            "-j",
            "DROP",
        ];
        self.add(view, &rule);
    }

    /// Packets the random-loss rules in `view`'s namespace dropped so far.
    fn lost(&self, view: &View) -> u64 {
        let pid = Nemesis::pid(view);
        let listing = ["INPUT", "-v", "-x", "-n"].map(String::from);
        let listed = Nemesis::iptables(&pid, "-L", &listing).unwrap_or_else(|e| panic!("{e}"));
        listed
            .lines()
            .filter(|line| line.contains("DROP") && line.contains("statistic"))
            .filter_map(|line| line.split_whitespace().next()?.parse::<u64>().ok())
            .sum()
    }

    /// Removes every rule.
    pub(super) fn heal(&mut self) {
        for (pid, rule) in self.rules.drain(..).rev() {
            // A container that died took its namespace, and the rule, along.
            let _ = Nemesis::iptables(&pid, "-D", &rule);
        }
    }
}

impl Drop for Nemesis {
    fn drop(&mut self) {
        self.heal();
    }
}

/// Whether `nsenter` and `iptables` can reach a container's network
/// namespace from here (root on the Docker host).
fn nemesis_available() -> Result<(), String> {
    run("nsenter", &["--version"])?;
    run("iptables", &["--version"])?;
    Ok(())
}

/// Five containers with `quorum = "majority"` ready on one ring, for the
/// scenario `scenario` on subnet number `k`; `None` when the scenario skips.
pub(super) fn five_with_majority(scenario: &str, k: u32) -> Option<(Project, Vec<View>)> {
    five_running(scenario, k, "")
}

/// [`five_with_majority`] with more lines for the service (see
/// [`Project::layered`]).
pub(super) fn five_running(scenario: &str, k: u32, service: &str) -> Option<(Project, Vec<View>)> {
    if !docker_ready(scenario) {
        return None;
    }
    if let Err(why) = nemesis_available() {
        assert!(!required(), "the nemesis needs nsenter and iptables: {why}");
        eprintln!("SKIPPED docker scenario `{scenario}`: {why}");
        return None;
    }
    let project = Project::layered(scenario, k, 1, &["CLOISTER_QUORUM=majority"], service);
    project.scale(5);
    let views = wait_all_agree(&project, 5, "five containers ready on one ring");
    Some((project, views))
}

/// The majority of five.
pub(super) const QUORUM: usize = 3;

/// What must hold at every moment, with `quorum` members needed: no node is
/// ready, or names a sentry, while its own ring is below quorum.
pub(super) fn below_quorum_serves(views: &[View], quorum: usize) -> Option<String> {
    // The lines of one step (ring, then sentry, then state) are printed one
    // by one, milliseconds apart on a loaded machine, and a poll can read a
    // smaller ring before the state line that goes with it. A node is judged
    // once its latest ring line is a second old: one that stays ready or
    // names a sentry is still caught, at a later poll.
    let settled = |v: &View| {
        let ts = v.ring().and_then(|line| line["ts"].as_i64());
        ts.is_some_and(|ts| now_ms() - ts >= ONE_STEP_MS)
    };
    live(views)
        .into_iter()
        .filter(|v| settled(v))
        .find_map(|v| {
            let members = v.members().len();
            if members >= quorum {
                None
            } else if v.is_ready() {
                Some(format!("{} is ready with {members} member(s)", v.container))
            } else if v.sentry().flatten().is_some() {
                Some(format!(
                    "{} names a sentry with {members} member(s)",
                    v.container
                ))
            } else {
                None
            }
        })
}

/// Longer than the lines of one step take to be printed (see
/// [`below_quorum_serves`]).
const ONE_STEP_MS: i64 = 1_000;

/// What must hold once a fault or a heal has settled: the above, and the
/// ready nodes name one sentry. (While views change, a node that has not
/// noticed the fault yet may still name the old one.)
fn split_brain(views: &[View], quorum: usize) -> Option<String> {
    below_quorum_serves(views, quorum).or_else(|| {
        let nodes = live(views);
        let ready = nodes.iter().filter(|v| v.is_ready());
        let sentries: BTreeSet<&str> = ready.filter_map(|v| v.sentry().flatten()).collect();
        (sentries.len() > 1).then(|| format!("the ready nodes name {sentries:?}"))
    })
}

// ---------------------------------------------------------------------------
// Scenarios

/// (h) With `quorum = "majority"`, faults injected with iptables into the
/// containers' network namespaces: a 3|2 split, then 1|4, then a node that
/// hears nobody (a one-way cut), then 30% packet loss on one node. After each fault has settled, the minority is not
/// ready and names no sentry while the majority keeps one ring and one
/// sentry; after each heal all five agree on one ring and one sentry. The
/// invariants are checked on every poll, not only at the end.
#[test]
fn quorum_under_partitions() {
    let Some((project, views)) = five_with_majority("quorum", 6) else {
        return;
    };
    let mut nemesis = Nemesis::new();
    let always = |views: &[View]| below_quorum_serves(views, QUORUM);
    let settled = |views: &[View]| split_brain(views, QUORUM);

    for minority in [&[3usize, 4][..], &[0][..]] {
        let cut: Vec<&View> = minority.iter().map(|&i| &views[i]).collect();
        let kept: Vec<&View> = (0..views.len())
            .filter(|i| !minority.contains(i))
            .map(|i| &views[i])
            .collect();
        let cut_ids: BTreeSet<&str> = cut.iter().map(|v| v.id.as_str()).collect();
        let majority: BTreeSet<String> = kept.iter().map(|v| name_of(&project.ip(v))).collect();
        let mark = marks(&project.views());
        let cut_at = now_ms();
        nemesis.partition(&project, &cut, &kept);
        let what = format!(
            "{} cut off: the rest ready with one sentry, the cut-off not ready",
            cut.len()
        );
        let split: Vec<View> = project.wait(&what, |views| {
            if let Some(broken) = always(views) {
                panic!("{broken}\n{}", project.report(views));
            }
            let (off, on): (Vec<&View>, Vec<&View>) = live(views)
                .into_iter()
                .partition(|v| cut_ids.contains(v.id.as_str()));
            let majority_ok = agreed(&on, &majority).is_some()
                && on
                    .iter()
                    .all(|v| v.sentry().flatten().is_some_and(|s| majority.contains(s)));
            let minority_ok = off
                .iter()
                .all(|v| v.state() == Some("no_quorum") && v.sentry() == Some(None));
            (majority_ok && minority_ok).then_some(off.iter().map(|v| (*v).clone()).collect())
        });
        let left_ready = split
            .iter()
            .filter_map(|v: &View| v.became(mark_of(&mark, v), "no_quorum"))
            .max();
        let n = cut.len();
        measure(
            &format!("{n} of 5 cut off -> the last of them no_quorum"),
            left_ready.unwrap_or(cut_at) - cut_at,
        );
        project.never(
            Duration::from_secs(2),
            "split brain during the partition",
            settled,
        );
        let heal_at = now_ms();
        nemesis.heal();
        let healed = wait_all_agree(&project, 5, "all five on one ring after healing");
        let last_ring = healed.iter().filter_map(|v| v.ring()?["ts"].as_i64()).max();
        measure(
            &format!("heal of {n} cut off -> one ring on all five"),
            last_ring.unwrap_or(heal_at) - heal_at,
        );
        project.never(Duration::from_secs(1), "split brain after healing", settled);
    }

    // One node hears nobody: every packet into it is dropped, a one-way cut.
    // It leaves every ring and goes no_quorum, and nobody else is evicted.
    // (Over TCP the cut soon blocks its sends too: its segments go
    // unacknowledged and only retransmissions leave. So its reports of
    // everyone as silent rarely arrive; the simulator, whose one-way cuts
    // stay one-way, is where that path is tested.)
    let views = project.views();
    let nodes = live(&views);
    let (deaf, others) = (nodes[4].clone(), &nodes[..4]);
    let deaf_name = name_of(&project.ip(&deaf));
    let mark = marks(&views);
    for other in others {
        nemesis.deafen(&deaf, &project.ip(other));
    }
    let rest: BTreeSet<String> = others.iter().map(|v| name_of(&project.ip(v))).collect();
    project.wait("the deaf node out of every ring and no_quorum", |views| {
        if let Some(broken) = always(views) {
            panic!("{broken}\n{}", project.report(views));
        }
        let on: Vec<&View> = live(views)
            .into_iter()
            .filter(|v| v.id != deaf.id)
            .collect();
        let off = views.iter().find(|v| v.id == deaf.id)?;
        (agreed(&on, &rest).is_some() && off.state() == Some("no_quorum")).then_some(())
    });
    for v in project.views().iter().filter(|v| v.id != deaf.id) {
        let evicted: Vec<&Value> = v
            .after(mark_of(&mark, v), "node_down")
            .filter(|e| e["peer"] != deaf_name.as_str())
            .collect();
        assert!(evicted.is_empty(), "{} dropped {evicted:?}", v.container);
    }
    nemesis.heal();
    wait_all_agree(
        &project,
        5,
        "all five on one ring after the deaf node hears again",
    );

    // 30% of what one node receives is lost: it may flap, but nothing
    // below quorum serves.
    let views = project.views();
    let lossy = live(&views)[2].clone();
    nemesis.lossy(&lossy, 30);
    project.never(
        Duration::from_secs(8),
        "a node below quorum serves under loss",
        always,
    );
    let lost = nemesis.lost(&lossy);
    assert!(
        lost > 0,
        "the loss rule on {} dropped nothing",
        lossy.container
    );
    println!("MEASURE packets lost by {} in 8 s: {lost}", lossy.container);
    nemesis.heal();
    let healed = wait_all_agree(&project, 5, "all five on one ring after the loss ends");
    let sentries: BTreeSet<Option<&str>> = healed.iter().map(|v| v.sentry().flatten()).collect();
    assert_eq!(sentries.len(), 1, "{sentries:?}");
}

/// Whether the live nodes of `out` (ids) are `no_quorum` naming no sentry
/// while every other live node is ready on one ring of exactly the others,
/// with one sentry among them.
fn one_ring_without(project: &Project, views: &[View], out: &BTreeSet<&str>) -> bool {
    let (off, on): (Vec<&View>, Vec<&View>) = live(views)
        .into_iter()
        .partition(|v| out.contains(v.id.as_str()));
    let kept: BTreeSet<String> = on.iter().map(|v| name_of(&project.ip(v))).collect();
    let sentries: BTreeSet<Option<&str>> = on.iter().map(|v| v.sentry().flatten()).collect();
    agreed(&on, &kept).is_some()
        && sentries.len() == 1
        && sentries.iter().all(|s| s.is_some_and(|s| kept.contains(s)))
        && off
            .iter()
            .all(|v| v.state() == Some("no_quorum") && v.sentry() == Some(None))
}

/// Waits, checking on every poll that nothing below quorum serves, until
/// one of `candidates` (sets of indices into `views`) is out of every ring
/// as [`one_ring_without`] says; then checks for `hold` that it stays so.
/// Returns that candidate and the time the last kept node's ring changed.
fn wait_one_ring_without<'a>(
    project: &Project,
    views: &'a [View],
    candidates: &[&[usize]],
    what: &str,
    hold: Duration,
) -> (BTreeSet<&'a str>, Option<i64>) {
    let sets: Vec<BTreeSet<&str>> = candidates
        .iter()
        .map(|c| c.iter().map(|&i| views[i].id.as_str()).collect())
        .collect();
    let (out, last_ring) = project.wait(what, |now| {
        if let Some(broken) = below_quorum_serves(now, QUORUM) {
            panic!("{broken}\n{}", project.report(now));
        }
        let out = sets
            .iter()
            .find(|out| one_ring_without(project, now, out))?;
        let last_ring = live(now)
            .iter()
            .filter(|v| !out.contains(v.id.as_str()))
            .filter_map(|v| v.ring()?["ts"].as_i64())
            .max();
        Some((out.clone(), last_ring))
    });
    project.never(hold, &format!("{what}, held"), |now| {
        (!one_ring_without(project, now, &out)).then(|| format!("{out:?} not out any more"))
    });
    (out, last_ring)
}

/// The `node_down` lines with reason `downed` that any node printed after
/// `mark`, as `(container, peer)`.
fn downs_after(views: &[View], mark: &BTreeMap<String, usize>) -> Vec<(String, String)> {
    views
        .iter()
        .flat_map(|v| {
            v.after(mark_of(mark, v), "node_down")
                .filter(|e| e["reason"] == "downed")
                .map(|e| (v.container.clone(), e["peer"].to_string()))
        })
        .collect()
}

/// (i) With `quorum = "majority"`, partial faults and the lifecycle:
/// a bridge (0, 1 | 3, 4 with node 2 reaching all), a one-way cut (node 0
/// stops hearing node 3), a link flapping faster than `stable_after`, then
/// three of five paused, then two of five killed and started again. A
/// partial partition ends with the same nodes out of every ring (`node_down`
/// reason `downed`, they go `no_quorum`) and one ring and one sentry on the
/// rest, and stays so while it lasts; the flapping link downs nobody; after
/// each heal all five agree again. Nothing below quorum serves, on every
/// poll.
#[test]
fn partial_partitions_and_lifecycle() {
    let Some((project, views)) = five_with_majority("partial", 7) else {
        return;
    };
    let mut nemesis = Nemesis::new();
    let hold = Duration::from_secs(3);

    // A bridge: node 2 sees both pairs, the pairs do not see each other.
    let mark = marks(&views);
    let cut_at = now_ms();
    nemesis.partition(&project, &[&views[0], &views[1]], &[&views[3], &views[4]]);
    let (out, last_ring) = wait_one_ring_without(
        &project,
        &views,
        &[&[0, 1], &[3, 4]],
        "a bridge: one pair out of every ring, one ring of three",
        hold,
    );
    measure(
        "bridge 0,1|3,4 (2 sees all) -> one ring of three on the rest",
        last_ring.unwrap_or(cut_at) - cut_at,
    );
    let now = project.views();
    let bridge = now
        .iter()
        .find(|v| v.id == views[2].id)
        .expect("the bridge");
    for id in &out {
        let peer = name_of(&project.ip(views.iter().find(|v| v.id == *id).expect("a view")));
        assert!(
            bridge
                .saw_down(mark_of(&mark, bridge), &peer, "downed")
                .is_some(),
            "the bridge did not down {peer}\n{}",
            project.report(&now)
        );
    }
    let heal_at = now_ms();
    nemesis.heal();
    let healed = wait_all_agree(&project, 5, "all five on one ring after the bridge heals");
    let last_ring = healed.iter().filter_map(|v| v.ring()?["ts"].as_i64()).max();
    measure(
        "heal of the bridge -> one ring on all five",
        last_ring.unwrap_or(heal_at) - heal_at,
    );

    // A one-way cut: node 0 stops hearing node 3 (over TCP node 3 soon
    // stops hearing node 0 too: its acknowledgements are lost).
    let views = healed;
    let cut_at = now_ms();
    nemesis.deafen(&views[0], &project.ip(&views[3]));
    let (_, last_ring) = wait_one_ring_without(
        &project,
        &views,
        &[&[0], &[3]],
        "a one-way cut: one end out of every ring, one ring of four",
        hold,
    );
    measure(
        "one-way cut 0<-3 -> one ring of four on the rest",
        last_ring.unwrap_or(cut_at) - cut_at,
    );
    nemesis.heal();
    let views = wait_all_agree(&project, 5, "all five on one ring after the one-way cut");

    // A flapping link: 0 and 3 cut for 2 s (longer than the heartbeat
    // timeout, shorter than `stable_after`), then joined for 3 s, four
    // times. Each cut may drop the pair from each other's ring; nobody is
    // downed.
    let mark = marks(&views);
    for _ in 0..4 {
        nemesis.cut(&views[0], &project.ip(&views[3]));
        project.never(Duration::from_secs(2), "a flapping link, cut", |v| {
            below_quorum_serves(v, QUORUM)
        });
        nemesis.heal();
        project.never(Duration::from_secs(3), "a flapping link, joined", |v| {
            below_quorum_serves(v, QUORUM)
        });
    }
    let views = wait_all_agree(&project, 5, "all five on one ring after the flapping");
    let downed = downs_after(&views, &mark);
    assert!(downed.is_empty(), "a flapping link downed {downed:?}");

    // Three of five paused: the two left go no_quorum; unpaused, all five.
    let paused = &views[2..];
    for v in paused {
        docker(&["pause", &v.id]);
    }
    project.wait("two of five left unpaused: both no_quorum", |now| {
        let left = live(now);
        (left.len() == 2
            && left
                .iter()
                .all(|v| v.state() == Some("no_quorum") && v.sentry() == Some(None)))
        .then_some(())
    });
    for v in paused {
        docker(&["unpause", &v.id]);
    }
    let views = wait_all_agree(&project, 5, "all five on one ring after unpausing");

    // Two of five killed: the three left keep one ring; started again, five.
    let killed = &views[3..];
    for v in killed {
        docker(&["kill", &v.id]);
    }
    project.wait(
        "three of five left after a kill: one ring of three",
        |now| {
            if let Some(broken) = below_quorum_serves(now, QUORUM) {
                panic!("{broken}\n{}", project.report(now));
            }
            let left = live(now);
            let names: BTreeSet<String> = left.iter().map(|v| name_of(&project.ip(v))).collect();
            (left.len() == 3 && agreed(&left, &names).is_some()).then_some(())
        },
    );
    for v in killed {
        docker(&["start", &v.id]);
    }
    let healed = wait_all_agree(&project, 5, "the killed two back: five on one ring");
    if let Some(broken) = split_brain(&healed, QUORUM) {
        panic!("{broken}\n{}", project.report(&healed));
    }
}
