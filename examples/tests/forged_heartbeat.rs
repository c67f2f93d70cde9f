//! A peer with the cookie that lies in another node's name (issue 10,
//! defect 4): real `cloister-node` processes on 127.0.0.1 and a
//! `rogue-heartbeat` process that casts node1's herald heartbeats saying
//! node2 is leaving. ractor_cluster hands a cast to the herald with no word
//! of the session it came over; the token handshake is what tells node1 that
//! these did not come from node2. And the same rogue sending a node's key
//! owner fields that do not decode (issue 13).

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use cloister_ractor::testing::{all_of, DEFAULT_TIMEOUT as DEADLINE};
mod common;
use common::{cluster, ok, serial};
use serde_json::Value;

/// How long node1 is watched for the lie to take effect. Many heartbeat
/// intervals (100 ms) and timeouts (500 ms) fit in it.
const QUIET_SPELL: Duration = Duration::from_secs(3);

/// What node1 logs for each dropped forgery.
const DROP_LINE: &str = "dropped a heartbeat that does not echo";

/// The rogue process, killed and reaped when dropped, also on a failure.
struct Rogue(Child);

impl Drop for Rogue {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `rogue-heartbeat` with `args`, and the lines of its stdout.
fn rogue(args: &[&str]) -> (Rogue, mpsc::Receiver<String>) {
    let child = Command::new(env!("CARGO_BIN_EXE_rogue-heartbeat"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut rogue = Rogue(child);
    let stdout = rogue.0.stdout.take().unwrap();
    let (lines, receiver) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
    (rogue, receiver)
}

/// node1's stderr lines that report a dropped forgery in node2's name.
fn drop_lines(stderr: &str, victim: &str) -> usize {
    stderr
        .lines()
        .filter(|line| line.contains(DROP_LINE) && line.contains(victim))
        .count()
}

#[test]
fn a_forged_goodbye_from_another_peer_does_not_remove_the_victim() {
    let _serial = serial();
    let cluster = ok(cluster(2).consensus(2).start().map_err(|e| e.to_string()));
    ok(cluster.wait_ready(&[0, 1], DEADLINE));
    let victim = cluster.node_name(1).to_string();
    let stderr_path = cluster.log_dir().join("node1.stderr");
    let mark = cluster.event_count(0);

    // The rogue dials node1 with the cluster's cookie and casts three
    // "node2 is leaving" heartbeats to node1's herald.
    let target = format!("127.0.0.1:{}", cluster.port(0));
    let (rogue, forged) = rogue(&["--target", &target, "--victim", &victim, "--count", "3"]);
    let sent = forged.recv_timeout(DEADLINE).expect("the rogue never cast");
    assert!(sent.contains("\"forged\""), "{sent}");

    // node1 either believes it (node2 goes down as `left`) or drops it and
    // says so in its log: wait for one or the other.
    let believed = |events: &[Value]| {
        all_of(&events[mark.min(events.len())..], "node_down")
            .any(|event| event["peer"] == victim.as_str())
    };
    let logged = || {
        let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
        drop_lines(&stderr, &victim) > 0
    };
    let start = Instant::now();
    while !believed(&cluster.events(0)) && !logged() {
        assert!(
            start.elapsed() < DEADLINE,
            "node1 neither believed nor logged the lie"
        );
        thread::sleep(Duration::from_millis(20));
    }

    // Then for a quiet spell node2 stays a member of node1's ring, and node1
    // logged the drop once, not once per forged heartbeat.
    let start = Instant::now();
    while start.elapsed() < QUIET_SPELL {
        let events = cluster.events(0);
        assert!(!believed(&events), "node1 dropped {victim}: {events:#?}");
        let members = cluster.members(0).unwrap_or_default();
        assert!(members.contains(&victim), "{members:?}");
        thread::sleep(Duration::from_millis(50));
    }
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert_eq!(drop_lines(&stderr, &victim), 1, "{stderr}");
    // node2, lied to by nobody, found nothing to drop: honest heartbeats,
    // through formation and since, always passed the handshake.
    let node2 = std::fs::read_to_string(cluster.log_dir().join("node2.stderr")).unwrap();
    assert!(!node2.contains(DROP_LINE), "{node2}");
    let line = stderr.lines().find(|line| line.contains(DROP_LINE));
    println!("node1 logged: {}", line.unwrap_or_default());
    assert_eq!(cluster.state(0).as_deref(), Some("ready"));
    drop(rogue);
}

/// What Rust's panic hook prints, on stderr, for every panic, even one
/// that is caught (ractor catches its decoders').
const PANIC_LINE: &str = "panicked at";

/// What the key owner logs for messages whose fields do not parse.
const GARBLED_LINE: &str = "whose fields do not parse";

#[test]
fn fields_that_do_not_decode_neither_panic_nor_fill_the_log() {
    let _serial = serial();
    let cluster = ok(cluster(1).consensus(1).start().map_err(|e| e.to_string()));
    ok(cluster.wait_for(0, DEADLINE, |events| {
        all_of(events, "app_started").next().is_some()
    }));
    let stderr_path = cluster.log_dir().join("node1.stderr");
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();

    // 50 `Tick`s whose number is 3 bytes, and 50 `Owner` calls whose key is
    // not UTF-8, to node1's key owner.
    let target = format!("127.0.0.1:{}", cluster.port(0));
    let victim = cluster.node_name(0).to_string();
    let args = ["--garble", "--target", &target, "--victim", &victim];
    let (rogue, lines) = rogue(&[&args[..], &["--count", "50"]].concat());
    let sent = lines.recv_timeout(DEADLINE).expect("the rogue never sent");
    assert!(sent.contains("\"garbled\""), "{sent}");

    // The key owner drops the `Owner` calls and says so once; the `Tick`s
    // are counted (their number is not read).
    let start = Instant::now();
    while !stderr().contains(GARBLED_LINE) {
        assert!(
            start.elapsed() < DEADLINE,
            "node1 never logged the garbled calls:\n{}",
            stderr()
        );
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_millis(500));
    let log = stderr();
    assert!(!log.contains(PANIC_LINE), "a decoder panicked:\n{log}");
    assert_eq!(log.matches(GARBLED_LINE).count(), 1, "{log}");
    assert_eq!(cluster.state(0).as_deref(), Some("ready"));
    drop(rogue);
}
