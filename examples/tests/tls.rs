//! Mutual TLS between nodes, over real processes: certificates made at test
//! time with rcgen, a cluster that assembles with them, and the nodes it
//! must keep out (a certificate from another CA, no TLS at all).
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use cloister_examples::certs::{Ca, CertDir};
use cloister_ractor::testing::{LocalCluster, DEFAULT_TIMEOUT};
mod common;
use common::{cluster, ok, serial};

/// How long a refused node is given to get in, if it could.
const QUIET_SPELL: Duration = Duration::from_secs(3);

/// Starts node `i` with these flags.
fn start(cluster: &mut LocalCluster, i: usize, flags: &[String]) {
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    cluster.start_node_with(i, &flags).unwrap();
}

/// Node `i`'s stderr, as the harness kept it.
fn stderr_of(cluster: &LocalCluster, i: usize) -> String {
    std::fs::read_to_string(cluster.stderr_path(i)).unwrap_or_default()
}

/// A TLS cluster of three (nodes 0-2) is ready; node 3, also in everyone's
/// sentry list, is left to the test.
fn tls_cluster(dir: &CertDir) -> (LocalCluster, Ca, PathBuf) {
    tls_cluster_with(dir, &[])
}

/// [`tls_cluster`], every node with these `CLOISTER_*` variables.
fn tls_cluster_with(dir: &CertDir, env: &[(&str, &str)]) -> (LocalCluster, Ca, PathBuf) {
    let ca = Ca::new("cloister test CA").unwrap();
    let ca_path = dir.write("ca.pem", &ca.pem()).unwrap();
    let mut builder = cluster(4).consensus(3);
    for (key, value) in env {
        builder = builder.env(*key, *value);
    }
    let mut cluster = builder.build().unwrap();
    for i in 0..3 {
        let name = cluster.node_name(i).to_string();
        let flags = ca.issue(dir, &format!("node{i}"), &name, &ca_path).unwrap();
        start(&mut cluster, i, &flags);
    }
    ok(cluster.wait_ready(&[0, 1, 2], DEFAULT_TIMEOUT));
    (cluster, ca, ca_path)
}

/// Node 3 runs and stays out: no member lists it, no member lost anyone,
/// and every member's log says why it was refused (`reason`).
fn assert_kept_out(cluster: &mut LocalCluster, reason: &str) {
    let stranger = cluster.node_name(3).to_string();
    // The refusals are logged at most every 10 s: wait for the line.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(0..3).all(|i| stderr_of(cluster, i).contains(reason)) {
        assert!(
            Instant::now() < deadline,
            "no member logged {reason:?} within 30 s; node 0's log:\n{}",
            stderr_of(cluster, 0)
        );
        thread::sleep(Duration::from_millis(200));
    }
    thread::sleep(QUIET_SPELL);
    for i in 0..3 {
        let members = cluster.members(i).unwrap_or_default();
        assert!(
            !members.contains(&stranger),
            "{} let {stranger} in: {members:?}",
            cluster.node_name(i)
        );
        assert_eq!(
            members.len(),
            3,
            "{} lost a member: {members:?}",
            cluster.node_name(i)
        );
    }
    assert!(cluster.agree(&[0, 1, 2], "ready"), "the cluster changed");
    assert!(cluster.is_running(3), "node 3 exited");
    assert_ne!(
        cluster.state(3).as_deref(),
        Some("ready"),
        "node 3 became ready"
    );
    let log = stderr_of(cluster, 0);
    assert!(
        log.contains("closed without authenticating"),
        "node 0 did not count the refusals: {log}"
    );
}

#[test]
fn a_tls_cluster_of_three_assembles() {
    let _serial = serial();
    let dir = CertDir::new("assembles").unwrap();
    let (cluster, _, _) = tls_cluster(&dir);
    for i in 0..3 {
        assert_eq!(cluster.members(i).map(|m| m.len()), Some(3));
        let log = stderr_of(&cluster, i);
        assert!(
            !log.contains("TLS:"),
            "a TLS refusal in a healthy cluster: {log}"
        );
        // An operator reads from the start line that the node runs TLS.
        assert!(
            log.contains("transport=mutual TLS (files read again every"),
            "the start line does not say TLS is on: {log}"
        );
    }
}

#[test]
fn a_node_with_a_certificate_from_another_ca_is_refused() {
    let _serial = serial();
    let dir = CertDir::new("other-ca").unwrap();
    let (mut cluster, _, ca_path) = tls_cluster(&dir);
    // A certificate from a rogue CA. The rogue trusts the cluster's CA (a
    // CA certificate is no secret), so it accepts the members' certificates
    // and the refusal is theirs: at their ports (its client certificate)
    // and on their dials (its server certificate).
    let rogue = Ca::new("rogue CA").unwrap();
    let name = cluster.node_name(3).to_string();
    let flags = rogue.issue(&dir, "rogue", &name, &ca_path).unwrap();
    start(&mut cluster, 3, &flags);
    assert_kept_out(
        &mut cluster,
        "the peer's certificate does not chain to `tls_ca`",
    );
}

#[test]
fn a_plain_tcp_node_cannot_join_a_tls_cluster() {
    let _serial = serial();
    let dir = CertDir::new("plain").unwrap();
    let (mut cluster, _, _) = tls_cluster(&dir);
    start(&mut cluster, 3, &[]);
    assert_kept_out(&mut cluster, "the peer does not speak TLS");
}

/// A fourth node whose certificate, from the cluster's own CA, is valid
/// only from `from` to `until` (years) is kept out for `reason`.
fn refused_for_its_validity(label: &str, from: i32, until: i32, reason: &str) {
    let _serial = serial();
    let dir = CertDir::new(label).unwrap();
    let (mut cluster, ca, ca_path) = tls_cluster(&dir);
    let name = cluster.node_name(3).to_string();
    let flags = ca
        .issue_with(&dir, label, &name, &ca_path, |params| {
            params.not_before = rcgen::date_time_ymd(from, 1, 1);
            params.not_after = rcgen::date_time_ymd(until, 12, 31);
        })
        .unwrap();
    start(&mut cluster, 3, &flags);
    assert_kept_out(&mut cluster, reason);
}

#[test]
fn a_node_with_an_expired_certificate_is_refused() {
    refused_for_its_validity("expired", 2020, 2020, "the peer's certificate is expired");
}

#[test]
fn a_node_with_a_certificate_not_valid_yet_is_refused() {
    refused_for_its_validity(
        "not-yet",
        2099,
        2100,
        "the peer's certificate is not valid yet",
    );
}

/// Waits until node `i`'s log holds `text`.
fn wait_logged(cluster: &LocalCluster, i: usize, text: &str) {
    let what = format!("{} logs {text:?}", cluster.node_name(i));
    ok(cluster.wait_until(&what, DEFAULT_TIMEOUT, |c| stderr_of(c, i).contains(text)));
}

/// Waits until node `i` lists node `j` among its members.
fn wait_member(cluster: &LocalCluster, i: usize, j: usize) {
    let (who, whom) = (cluster.node_name(i), cluster.node_name(j));
    let what = format!("{who} lists {whom} as a member");
    ok(cluster.wait_until(&what, DEFAULT_TIMEOUT, |c| {
        c.members(i).unwrap_or_default().iter().any(|m| m == whom)
    }));
}

#[test]
fn a_replaced_ca_bundle_is_picked_up_without_a_restart() {
    let _serial = serial();
    let dir = CertDir::new("reload").unwrap();
    let (first, second) = (Ca::new("first CA").unwrap(), Ca::new("second CA").unwrap());
    let first_only = dir.write("first.pem", &first.pem()).unwrap();
    let both = format!("{}{}", first.pem(), second.pem());
    let both_path = dir.write("both.pem", &both).unwrap();
    // X's bundle, the file replaced while X runs.
    let x_bundle = dir.write("x-ca.pem", &first.pem()).unwrap();
    let mut cluster = cluster(3)
        .consensus(1)
        .env("CLOISTER_TLS_RELOAD_INTERVAL", "200ms")
        .build()
        .unwrap();
    let (x, z, y) = (0, 1, 2);
    let names: Vec<String> = (0..3).map(|i| cluster.node_name(i).to_string()).collect();
    let name = |i: usize| names[i].clone();
    let x_flags = first.issue(&dir, "x", &name(x), &x_bundle).unwrap();
    let z_flags = first.issue(&dir, "z", &name(z), &first_only).unwrap();
    // Y's certificate is from the second CA; Y trusts both.
    let y_flags = second.issue(&dir, "y", &name(y), &both_path).unwrap();
    start(&mut cluster, x, &x_flags);
    ok(cluster.wait_ready(&[x], DEFAULT_TIMEOUT));
    let pid = cluster.pid(x);

    // A replacement that does not load (written halfway): X says so once
    // and keeps what it has, so a node of the first CA still gets in.
    dir.write("x-ca.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n")
        .unwrap();
    wait_logged(&cluster, x, "but cannot be used: cannot use `tls_ca`");
    start(&mut cluster, z, &z_flags);
    wait_member(&cluster, x, z);
    wait_member(&cluster, z, x);

    // Y, of the second CA, is refused by X.
    start(&mut cluster, y, &y_flags);
    wait_logged(
        &cluster,
        x,
        "the peer's certificate does not chain to `tls_ca`",
    );
    thread::sleep(QUIET_SPELL);
    let members = cluster.members(x).unwrap_or_default();
    assert!(!members.contains(&name(y)), "X let Y in: {members:?}");

    // X's bundle now holds both CAs: Y gets in, and X never restarted.
    dir.write("x-ca.pem", &both).unwrap();
    wait_logged(&cluster, x, "TLS settings reloaded: tls_ca changed on disk");
    wait_member(&cluster, x, y);
    wait_member(&cluster, y, x);
    assert_eq!(cluster.pid(x), pid, "X restarted");
    let log = stderr_of(&cluster, x);
    assert_eq!(
        log.matches("but cannot be used").count(),
        1,
        "one warning per broken replacement: {log}"
    );
}

#[test]
fn with_names_checked_a_node_cannot_claim_a_name_its_certificate_lacks() {
    let _serial = serial();
    let dir = CertDir::new("names").unwrap();
    let checked = [("CLOISTER_TLS_CHECK_NAMES", "true")];
    let (mut cluster, ca, ca_path) = tls_cluster_with(&dir, &checked);
    // Node 3 (`node4`, in every sentry list) runs with a certificate of the
    // cluster's own CA that names `mallory`: its dials claim `node4`, and
    // the members dialling `node4` meet `mallory`'s certificate.
    let claimed = cluster.node_name(3).to_string();
    let mallory = ca
        .issue(&dir, "mallory", "mallory@127.0.0.1", &ca_path)
        .unwrap();
    start(&mut cluster, 3, &mallory);
    assert_kept_out(
        &mut cluster,
        &format!("`{claimed}` is not named in its certificate"),
    );
    for i in 0..3 {
        let log = stderr_of(&cluster, i);
        assert!(
            log.contains("[`mallory`]"),
            "no certificate names logged: {log}"
        );
    }

    // The same node with a certificate that names it gets in.
    cluster.kill(3).unwrap();
    let named = ca.issue(&dir, "node4", &claimed, &ca_path).unwrap();
    start(&mut cluster, 3, &named);
    ok(cluster.wait_ready(&[0, 1, 2, 3], DEFAULT_TIMEOUT));
}
