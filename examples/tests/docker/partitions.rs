//! The nemesis (faults put into containers' network namespaces from the
//! host), the split-brain invariants, and the scenarios with a quorum.

use super::*;

/// Firewall rules in containers' network namespaces (`nsenter -t PID -n
/// iptables`), each removed by [`Nemesis::heal`] and on drop, also when a
/// test panics. A container that is gone takes its rules with it.
struct Nemesis {
    /// (the container's PID, the rule as `iptables -I` takes it).
    rules: Vec<(String, Vec<String>)>,
}

impl Nemesis {
    fn new() -> Nemesis {
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
    fn deafen(&mut self, view: &View, ip: &str) {
        self.add(view, &["INPUT", "-s", ip, "-j", "DROP"]);
    }

    /// Nothing passes between `view` and `ip`, either way.
    fn cut(&mut self, view: &View, ip: &str) {
        self.deafen(view, ip);
        self.add(view, &["OUTPUT", "-d", ip, "-j", "DROP"]);
    }

    /// Every node of `a` is cut from every node of `b`.
    fn partition(&mut self, project: &Project, a: &[&View], b: &[&View]) {
        for x in a {
            for y in b {
                self.cut(x, &project.ip(y));
            }
        }
    }

    /// `view` loses `percent` of the packets it receives, at random.
    fn lossy(&mut self, view: &View, percent: u32) {
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
    fn heal(&mut self) {
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

/// What must hold at every moment, with `quorum` members needed: no node is
/// ready, or names a sentry, while its own ring is below quorum.
fn below_quorum_serves(views: &[View], quorum: usize) -> Option<String> {
    live(views).iter().find_map(|v| {
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
    if !docker_ready("quorum") {
        return;
    }
    if let Err(why) = nemesis_available() {
        assert!(!required(), "the nemesis needs nsenter and iptables: {why}");
        eprintln!("SKIPPED docker scenario `quorum`: {why}");
        return;
    }
    const QUORUM: usize = 3;
    let project = Project::with_env("quorum", 6, 1, &["CLOISTER_QUORUM=majority"]);
    project.scale(5);
    let views = wait_all_agree(&project, 5, "five containers ready on one ring");
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
