//! The basic scenarios: assemble, scale, kill and pause, a clean partition
//! without a quorum, a recreated container, consensus, one name on several
//! hosts.

use super::*;

/// (a) The seed's scenario: `--scale cloister_test=3` assembles one cluster.
#[test]
fn three_containers_assemble() {
    if !docker_ready("assemble") {
        return;
    }
    let project = Project::new("assemble", 0, 3);
    project.scale(3);
    let views = wait_all_started(&project, 3, "three containers ready on one ring, started");

    for v in &views {
        let ip = project.ip(v);
        assert!(
            ip.starts_with(&project.subnet),
            "{} has IP {ip}, outside the project's subnet",
            v.container
        );
        assert_eq!(v.node(), Some(name_of(&ip).as_str()), "{}", v.container);
        assert_eq!(v.members().len(), 3);
        let ready = v.became(0, "ready").expect("ready was seen");
        let started = v
            .after(0, "app_started")
            .next()
            .and_then(|e| e["ts"].as_i64());
        assert!(
            started.is_some_and(|s| s >= ready),
            "{}: app_started ({started:?}) must follow ready ({ready})",
            v.container
        );
    }
    let last_start = views.iter().filter_map(|v| v.started_ms).max();
    let all_ready = views.iter().filter_map(|v| v.became(0, "ready")).max();
    if let (Some(start), Some(ready)) = (last_start, all_ready) {
        measure(
            "3 containers: last container start -> all ready",
            ready - start,
        );
    }
}

/// (b) Scaling to 5 adds members everywhere; back to 3 removes them.
#[test]
fn scale_up_and_down() {
    if !docker_ready("scale") {
        return;
    }
    let project = Project::new("scale", 1, 3);
    project.scale(3);
    let three = wait_all_agree(&project, 3, "three containers ready on one ring");

    project.scale(5);
    let five = wait_all_agree(&project, 5, "five containers ready on one ring");
    let old: BTreeSet<&str> = three.iter().map(|v| v.id.as_str()).collect();
    for v in five.iter().filter(|v| old.contains(v.id.as_str())) {
        assert!(
            v.after(0, "state_changed").all(|e| e["to"] != "rehashing"),
            "{} left ready while the cluster grew",
            v.container
        );
    }

    project.scale(3);
    let after = wait_all_agree(&project, 3, "three containers left, on one ring of three");
    let kept: BTreeSet<&str> = after.iter().map(|v| v.id.as_str()).collect();
    let removed: Vec<String> = five
        .iter()
        .filter(|v| !kept.contains(v.id.as_str()))
        .map(|v| name_of(&project.ip(v)))
        .collect();
    assert_eq!(removed.len(), 2, "two containers were removed");
    for v in &after {
        for gone in &removed {
            assert!(
                !v.members().contains(gone),
                "{gone} still in {}'s ring",
                v.container
            );
        }
    }
}

/// (c) A killed container is seen as crashed; a paused one as unresponsive,
/// and it rejoins once unpaused.
#[test]
fn kill_then_pause() {
    if !docker_ready("kill") {
        return;
    }
    kill_then_pause_in(&Project::new("kill", 2, 2), "");
}

/// The body of [`kill_then_pause`] in `project` (consensus 2, not started),
/// its MEASURE lines prefixed with `label`; tls.rs runs it over TLS.
/// Returns the three containers, agreed again after the pause.
pub(super) fn kill_then_pause_in(project: &Project, label: &str) -> Vec<View> {
    project.scale(3);
    let views = wait_all_agree(project, 3, "three containers ready on one ring");

    // kill
    let victim = views[0].clone();
    let victim_name = name_of(&project.ip(&victim));
    let mark = marks(&views);
    docker(&["kill", &victim.id]);
    project.wait(&format!("the others see {victim_name} crash"), |views| {
        let others: Vec<&View> = views.iter().filter(|v| v.id != victim.id).collect();
        others
            .iter()
            .all(|v| {
                v.saw_down(mark_of(&mark, v), &victim_name, "crashed")
                    .is_some()
            })
            .then_some(())
    });
    project.wait("the two survivors ready on a ring of two", |views| {
        let nodes = live(views);
        let names = nodes
            .iter()
            .filter_map(|v| v.ip.as_deref())
            .map(name_of)
            .collect();
        (nodes.len() == 2).then(|| agreed(&nodes, &names)).flatten()
    });

    // bring it back (a new process, maybe a new IP)
    docker(&["start", &victim.id]);
    let views = wait_all_agree(project, 3, "the killed container back on a ring of three");

    // pause
    let frozen = views[1].clone();
    let frozen_name = name_of(&project.ip(&frozen));
    let mark = marks(&views);
    let paused_at = now_ms();
    docker(&["pause", &frozen.id]);
    let detected = project.wait(
        &format!("the others see {frozen_name} unresponsive"),
        |views| {
            let others: Vec<&View> = views.iter().filter(|v| v.id != frozen.id).collect();
            others
                .iter()
                .map(|v| v.saw_down(mark_of(&mark, v), &frozen_name, "unresponsive"))
                .collect::<Option<Vec<i64>>>()
        },
    );
    if let Some(last) = detected.iter().max() {
        measure(
            &format!("{label}docker pause -> node_down unresponsive on every other node"),
            last - paused_at,
        );
    }

    docker(&["unpause", &frozen.id]);
    let rejoined = wait_all_agree(project, 3, "the unpaused container rejoins, three agree");
    assert!(rejoined
        .iter()
        .any(|v| v.node() == Some(frozen_name.as_str())));
    rejoined
}

/// (d) Two of five cut off the network: the majority stays ready, the two
/// fall to rehashing; reconnected, all five converge.
#[test]
fn partition_heals() {
    if !docker_ready("partition") {
        return;
    }
    let project = Project::new("partition", 3, 3);
    project.scale(5);
    let views = wait_all_agree(&project, 5, "five containers ready on one ring");
    let network = project.network();
    let cut: Vec<(View, String)> = views[3..]
        .iter()
        .map(|v| (v.clone(), project.ip(v)))
        .collect();
    let cut_ids: BTreeSet<&str> = cut.iter().map(|(v, _)| v.id.as_str()).collect();
    let majority: BTreeSet<String> = views[..3].iter().map(|v| name_of(&project.ip(v))).collect();
    let mark = marks(&views);

    for (v, _) in &cut {
        docker(&["network", "disconnect", &network, &v.id]);
    }
    project.wait(
        "three ready on a ring of three, the two cut off rehashing",
        |views| {
            let (cut_off, kept): (Vec<&View>, Vec<&View>) =
                views.iter().partition(|v| cut_ids.contains(v.id.as_str()));
            let majority_ok = agreed(&kept, &majority).is_some();
            let minority_ok = cut_off
                .iter()
                .all(|v| v.became(mark_of(&mark, v), "rehashing").is_some() && !v.is_ready());
            (majority_ok && minority_ok).then_some(())
        },
    );

    for (v, ip) in &cut {
        docker(&[
            "network", "connect", "--ip", ip, "--alias", ALIAS, &network, &v.id,
        ]);
    }
    let healed = wait_all_agree(&project, 5, "all five converge on one ring again");
    for (v, ip) in &cut {
        let now = healed
            .iter()
            .find(|h| h.id == v.id)
            .expect("the cut containers are still there");
        assert_eq!(
            now.ip.as_deref(),
            Some(ip.as_str()),
            "{} came back with its IP",
            v.container
        );
    }
}

/// (e) A container removed and recreated comes back under a new name (its new
/// IP); the old name leaves every ring.
#[test]
fn recreated_with_new_ip() {
    if !docker_ready("recreate") {
        return;
    }
    let project = Project::new("recreate", 4, 3);
    project.scale(3);
    let views = wait_all_agree(&project, 3, "three containers ready on one ring");
    let victim = views[0].clone();
    let old_name = name_of(&project.ip(&victim));
    let mark = marks(&views);

    docker(&["rm", "-f", &victim.id]);
    // Docker hands out the lowest free address, so the old one would come
    // back: hold it (as a new pod's IP differs from the old one's).
    let holder = placeholder(&project, &project.ip(&victim));
    project.scale(3);
    let views = wait_all_agree(&project, 3, "the recreated container on a ring of three");
    let fresh = views
        .iter()
        .find(|v| !mark.contains_key(&v.id))
        .expect("a new container was created");
    let new_name = name_of(&project.ip(fresh));
    drop(holder);
    assert_ne!(
        new_name, old_name,
        "the recreated container got the old IP back: this scenario needs a new one"
    );
    for v in &views {
        assert!(
            !v.members().contains(&old_name),
            "{old_name} still in {}'s ring",
            v.container
        );
        assert!(v.members().contains(&new_name));
    }
    let joined = views
        .iter()
        .filter(|v| v.id != fresh.id)
        .map(|v| v.ring_with(mark_of(&mark, v), &new_name))
        .collect::<Option<Vec<i64>>>();
    if let (Some(start), Some(joined)) = (fresh.started_ms, joined) {
        let ready = fresh.became(0, "ready").unwrap_or(start);
        let everywhere = joined.into_iter().chain([ready]).max().unwrap_or(start);
        measure(
            "recreated container start -> in every ring and ready",
            everywhere - start,
        );
    }
}

/// (f) With consensus 3, two containers hold their application until a third
/// one starts.
#[test]
fn consensus_holds_two() {
    if !docker_ready("consensus") {
        return;
    }
    let project = Project::new("consensus", 5, 3);
    project.scale(2);
    project.wait("two containers see each other", |views| {
        let nodes = live(views);
        (nodes.len() == 2 && nodes.iter().all(|v| v.members().len() == 2)).then_some(())
    });
    project.never(HOLD, "a node started below consensus", |views| {
        views.iter().find_map(|v| {
            if v.is_ready() {
                Some(format!("{} is ready", v.container))
            } else if v.after(0, "app_started").next().is_some() {
                Some(format!("{} printed app_started", v.container))
            } else {
                None
            }
        })
    });

    project.scale(3);
    wait_all_started(
        &project,
        3,
        "three containers ready once the third starts, each started its application",
    );
}

/// (g) The Elixir original's usual static list: one name on several hosts
/// (`shop@IP1:4000,shop@IP2:4000,shop@IP3:4000`), the same environment in
/// every container and no node name. Each of the three containers at those
/// fixed IPs must find its own entry by its own address and the three form
/// one ring. A fourth container, at an IP the list does not name, must
/// refuse to start (exit 2) and say which entries it saw and what to set.
/// A fifth, not listed either but with `CLOISTER_ADVERTISED_HOST` set to
/// its IP, joins the listed nodes as a seed list.
#[test]
fn one_name_on_several_hosts() {
    if !docker_ready("one_name") {
        return;
    }
    let subnet = format!("172.29.{}", std::process::id() % 250);
    let ip = |host: u8| format!("{subnet}.{host}");
    let listed = [ip(11), ip(12), ip(13)];
    let sentry = listed
        .iter()
        .map(|ip| format!("shop@{ip}:4000"))
        .collect::<Vec<_>>()
        .join(",");
    let service = |name: &str, ip: &str, extra: &str| {
        format!(
            "  {name}:\n    image: {IMAGE}\n    networks:\n      local:\n        ipv4_address: {ip}\n\
             \x20   environment:\n\
             \x20     - CLOISTER_APP=shop\n\
             \x20     - CLOISTER_COOKIE=cdock-shop-{}\n\
             \x20     - CLOISTER_SENTRY={sentry}\n\
             \x20     - CLOISTER_CONSENSUS=3\n\
             \x20     - CLOISTER_HEARTBEAT_INTERVAL=100ms\n\
             \x20     - CLOISTER_HEARTBEAT_TIMEOUT=600ms\n\
             \x20     - CLOISTER_DIAL_TIMEOUT=500ms\n\
             \x20     - CLOISTER_DIAL_BACKOFF_MAX=500ms\n\
             {extra}",
            std::process::id()
        )
    };
    let seed_ip = ip(21);
    let seed_env = format!("      - CLOISTER_ADVERTISED_HOST={seed_ip}\n");
    let compose = format!(
        "# generated by examples/tests/docker/scenarios.rs: one name on several hosts\n\
         version: \"3.8\"\n\
         services:\n{}{}{}{}{}\
         networks:\n  local:\n    driver: bridge\n    ipam:\n      config:\n        - subnet: {subnet}.0/24\n",
        service("n1", &listed[0], ""),
        service("n2", &listed[1], ""),
        service("n3", &listed[2], ""),
        service("stray", &ip(20), ""),
        service("seed", &seed_ip, &seed_env),
    );
    let project = Project::standalone("one_name", subnet.clone(), &compose);
    if let Err(err) = project.compose(&["up", "-d", "n1", "n2", "n3", "stray"]) {
        panic!("{err}\n{}", project.report(&project.views()));
    }

    // The three listed containers: each named after its own entry, one ring.
    let three: BTreeSet<String> = listed.iter().map(|ip| format!("shop@{ip}")).collect();
    let views = project.wait("the three listed containers ready on one ring", |views| {
        let nodes: Vec<&View> = views
            .iter()
            .filter(|v| v.service.starts_with('n') && v.running)
            .collect();
        (nodes.len() == 3 && agreed(&nodes, &three).is_some()).then(|| views.to_vec())
    });
    for v in views.iter().filter(|v| v.service.starts_with('n')) {
        let ip = project.ip(v);
        assert_eq!(
            v.node(),
            Some(format!("shop@{ip}").as_str()),
            "{}",
            v.container
        );
    }

    // The stray container: refused at start, with the entries and the fix.
    let stray = project.wait("the stray container exits", |views| {
        views
            .iter()
            .find(|v| v.service == "stray" && !v.running && v.exit_code.is_some())
            .cloned()
    });
    let said = stray.stderr.join("\n");
    assert_eq!(
        stray.exit_code,
        Some(2),
        "stray's exit code; it said:\n{said}"
    );
    for entry in sentry.split(',') {
        assert!(said.contains(entry), "stray does not name {entry}:\n{said}");
    }
    assert!(
        said.contains("CLOISTER_ADVERTISED_HOST"),
        "stray does not say what to set:\n{said}"
    );
    assert!(
        !stray.events.iter().any(|e| e["node"].is_string()),
        "stray started a node: {:?}",
        stray.events
    );

    // The seed container: not listed, its host set, it joins the three.
    if let Err(err) = project.compose(&["up", "-d", "--no-recreate", "seed"]) {
        panic!("{err}\n{}", project.report(&project.views()));
    }
    let mut four = three.clone();
    four.insert(format!("shop@{seed_ip}"));
    project.wait("the seed joins the three on one ring of four", |views| {
        let nodes: Vec<&View> = views
            .iter()
            .filter(|v| v.service != "stray" && v.running)
            .collect();
        (nodes.len() == 4 && agreed(&nodes, &four).is_some()).then_some(())
    });
}
