//! Reading what the nodes printed, and waiting for it.

use std::collections::BTreeSet;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{lock, LocalCluster, POLL};
use crate::testing::{last_digest, last_members, last_state};

impl LocalCluster {
    /// A copy of the events node `i`'s current (or last) process printed.
    ///
    /// # Examples
    ///
    /// Check node1's lines: it printed its own `app_started`, and lost no member.
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{all_of, last_of, LocalCluster};
    /// # fn demo(cluster: LocalCluster) -> Result<(), Box<dyn std::error::Error>> {
    /// let events = cluster.events(0);
    /// assert!(last_of(&events, "app_started").is_some(), "{events:?}");
    /// assert_eq!(all_of(&events, "node_down").count(), 0);
    /// # Ok(()) }
    /// ```
    pub fn events(&self, i: usize) -> Vec<Value> {
        lock(&self.nodes[i].log).clone()
    }

    /// How many events node `i`'s current process printed so far: a mark to
    /// look only at what comes after it (`&events[mark..]`).
    ///
    /// # Examples
    ///
    /// Mark node1's log, send it a command, and wait for an answer after the mark.
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{last_of, LocalCluster, DEFAULT_TIMEOUT};
    /// # fn demo(cluster: LocalCluster) -> Result<(), Box<dyn std::error::Error>> {
    /// let mark = cluster.event_count(0);
    /// cluster.send_line(0, "count")?;
    /// cluster.wait_for(0, DEFAULT_TIMEOUT, |events| last_of(&events[mark..], "count").is_some())?;
    /// # Ok(()) }
    /// ```
    pub fn event_count(&self, i: usize) -> usize {
        lock(&self.nodes[i].log).len()
    }

    /// Node `i`'s last state (`"ready"`, ...), from `snapshot` or `state_changed`.
    ///
    /// # Examples
    ///
    /// With consensus 3, two started nodes of three must not become ready.
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{LocalCluster};
    /// # fn demo(mut cluster: LocalCluster) -> Result<(), Box<dyn std::error::Error>> {
    /// cluster.start_node(0)?;
    /// cluster.start_node(1)?;
    /// std::thread::sleep(std::time::Duration::from_secs(2));
    /// assert_ne!(cluster.state(0).as_deref(), Some("ready"));
    /// # Ok(()) }
    /// ```
    pub fn state(&self, i: usize) -> Option<String> {
        last_state(&lock(&self.nodes[i].log))
    }

    /// Node `i`'s members at its last membership change, sorted.
    ///
    /// # Examples
    ///
    /// With consensus 2, once node3 is killed node1's members are node1 and node2.
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{LocalCluster, DEFAULT_TIMEOUT};
    /// # fn demo(mut cluster: LocalCluster) -> Result<(), Box<dyn std::error::Error>> {
    /// cluster.kill(2)?;
    /// cluster.wait_ready(&[0, 1], DEFAULT_TIMEOUT)?;
    /// assert_eq!(cluster.members(0).unwrap(), ["node1@127.0.0.1", "node2@127.0.0.1"]);
    /// # Ok(()) }
    /// ```
    pub fn members(&self, i: usize) -> Option<Vec<String>> {
        last_members(&lock(&self.nodes[i].log))
    }

    /// Node `i`'s ring digest at its last membership change.
    ///
    /// # Examples
    ///
    /// Accept node1's own `owners_digest` line only if it was printed for its current ring.
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{last_of, LocalCluster};
    /// # fn demo(cluster: LocalCluster) -> Result<(), Box<dyn std::error::Error>> {
    /// let events = cluster.events(0);
    /// let line = last_of(&events, "owners_digest").expect("printed");
    /// assert_eq!(line["ring_digest"].as_str(), cluster.digest(0).as_deref());
    /// # Ok(()) }
    /// ```
    pub fn digest(&self, i: usize) -> Option<String> {
        last_digest(&lock(&self.nodes[i].log))
    }

    /// Waits up to `timeout` for `condition` to hold on node `i`'s events.
    ///
    /// # Examples
    ///
    /// Wait until node2 prints the binary's own `kv_started` line.
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{last_of, LocalCluster, DEFAULT_TIMEOUT};
    /// # fn demo(cluster: LocalCluster) -> Result<(), Box<dyn std::error::Error>> {
    /// cluster.wait_for(1, DEFAULT_TIMEOUT, |events| {
    ///     last_of(events, "kv_started").is_some()
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn wait_for<F>(&self, i: usize, timeout: Duration, mut condition: F) -> Result<(), String>
    where
        F: FnMut(&[Value]) -> bool,
    {
        let what = format!("a condition on {}'s events", self.nodes[i].name);
        self.wait_until(&what, timeout, |cluster| {
            condition(&lock(&cluster.nodes[i].log))
        })
    }

    /// Waits up to `timeout` for `condition` to hold on the whole cluster;
    /// `what` names the condition in the error.
    ///
    /// # Examples
    ///
    /// Wait until every node has printed its own `app_started` line.
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{last_of, LocalCluster, DEFAULT_TIMEOUT};
    /// # fn demo(cluster: LocalCluster) -> Result<(), Box<dyn std::error::Error>> {
    /// cluster.wait_until("every node started its application", DEFAULT_TIMEOUT, |c| {
    ///     (0..c.size()).all(|i| last_of(&c.events(i), "app_started").is_some())
    /// })?;
    /// # Ok(()) }
    /// ```
    pub fn wait_until<F>(
        &self,
        what: &str,
        timeout: Duration,
        mut condition: F,
    ) -> Result<(), String>
    where
        F: FnMut(&LocalCluster) -> bool,
    {
        let deadline = Instant::now() + timeout;
        while !condition(self) {
            if Instant::now() >= deadline {
                return Err(self.timed_out(what, timeout));
            }
            thread::sleep(POLL);
        }
        Ok(())
    }

    /// Whether the `nodes` all are in `state` right now, with exactly
    /// themselves as members and one ring digest.
    ///
    /// # Examples
    ///
    /// Send garbage to node1's port, and check a while later that the cluster did not change.
    ///
    /// ```no_run
    /// # use std::io::Write;
    /// # use cloister_ractor::testing::{LocalCluster};
    /// # fn demo(cluster: LocalCluster) -> Result<(), Box<dyn std::error::Error>> {
    /// std::net::TcpStream::connect(("127.0.0.1", cluster.port(0)))?.write_all(b"garbage")?;
    /// std::thread::sleep(std::time::Duration::from_secs(3));
    /// assert!(cluster.agree(&[0, 1, 2], "ready"), "the cluster changed");
    /// # Ok(()) }
    /// ```
    pub fn agree(&self, nodes: &[usize], state: &str) -> bool {
        let expected: BTreeSet<&str> = nodes.iter().map(|&i| self.node_name(i)).collect();
        let digests: BTreeSet<_> = nodes.iter().map(|&i| self.digest(i)).collect();
        digests.len() == 1
            && digests.first().is_some_and(Option::is_some)
            && nodes.iter().all(|&i| {
                let members = self.members(i).unwrap_or_default();
                self.state(i).as_deref() == Some(state)
                    && members.len() == nodes.len()
                    && members.iter().map(String::as_str).collect::<BTreeSet<_>>() == expected
            })
    }

    /// Waits until [`agree`](Self::agree) holds.
    ///
    /// # Examples
    ///
    /// With consensus 3, the two nodes left when node1 freezes agree that they are rehashing.
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{LocalCluster, DEFAULT_TIMEOUT};
    /// # fn demo(cluster: LocalCluster) -> Result<(), Box<dyn std::error::Error>> {
    /// cluster.pause(0)?;
    /// cluster.wait_agree(&[1, 2], "rehashing", DEFAULT_TIMEOUT)?;
    /// # Ok(()) }
    /// ```
    pub fn wait_agree(
        &self,
        nodes: &[usize],
        state: &str,
        timeout: Duration,
    ) -> Result<(), String> {
        let names: Vec<&str> = nodes.iter().map(|&i| self.node_name(i)).collect();
        let what = format!("{names:?} all {state} with one ring of exactly themselves");
        self.wait_until(&what, timeout, |cluster| cluster.agree(nodes, state))
    }

    /// [`wait_agree`](Self::wait_agree) on `"ready"`.
    ///
    /// # Examples
    ///
    /// Wait until all three nodes are ready on one ring, and fail the test with the report if not.
    ///
    /// ```no_run
    /// # use cloister_ractor::testing::{LocalCluster, DEFAULT_TIMEOUT};
    /// # fn demo(cluster: LocalCluster) -> Result<(), Box<dyn std::error::Error>> {
    /// if let Err(report) = cluster.wait_ready(&[0, 1, 2], DEFAULT_TIMEOUT) {
    ///     panic!("the cluster never formed: {report}");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn wait_ready(&self, nodes: &[usize], timeout: Duration) -> Result<(), String> {
        self.wait_agree(nodes, "ready", timeout)
    }

    /// The error of a wait that ran out: each node's status and last events.
    pub(super) fn timed_out(&self, what: &str, timeout: Duration) -> String {
        *lock(&self.keep_logs) = true;
        let mut report = format!("timed out after {timeout:?} waiting for {what}");
        for node in &self.nodes {
            let status = match (&node.process, node.exit) {
                (Some(running), _) => format!("pid {}", running.child.id()),
                (None, Some(status)) => format!("exited, {status}"),
                (None, None) => "not running".to_string(),
            };
            report.push_str(&format!("\n  {} ({status}), last events:", node.name));
            let log = lock(&node.log);
            for event in &log[log.len().saturating_sub(6)..] {
                report.push_str(&format!("\n    {}", brief(event)));
            }
        }
        report.push_str(&format!("\n  stderr logs: {}", self.log_dir.display()));
        report
    }
}

/// An event on one line without the fields every line has.
fn brief(event: &Value) -> String {
    let mut event = event.clone();
    if let Some(fields) = event.as_object_mut() {
        fields.remove("node");
        fields.remove("ts");
    }
    event.to_string()
}
