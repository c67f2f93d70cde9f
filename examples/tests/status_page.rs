//! The status page at `/` of the management endpoint, rendered by a real
//! headless Chromium over real `cloister-node` processes on 127.0.0.1: the
//! page must show the same node, state, members and sentry as `/members`,
//! and follow the cluster when a member dies.
//!
//! Chromium is Debian's `chromium` package. Without it the test is skipped
//! with a message, unless `CLOISTER_BROWSER_TESTS=required` (CI sets it, and
//! installs the package): then a missing browser fails the test.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cloister_ractor::testing::DEFAULT_TIMEOUT as DEADLINE;
use serde_json::Value;

mod common;
use common::{cluster, free_addr, get, ok, serial};

/// How long one browser run may take before it is killed: a render takes
/// about a second here; this only bounds a browser that hangs.
const BROWSER_DEADLINE: Duration = Duration::from_secs(90);

/// Virtual time the page gets before its DOM is dumped: the page polls
/// `/members` every second, so this is a few polls (virtual time does not
/// pass while a fetch is pending).
const VIRTUAL_TIME_MS: u32 = 5000;

/// The browser to drive, or `None` (with a message) when it is missing and
/// not required.
fn chromium() -> Option<PathBuf> {
    let required = std::env::var("CLOISTER_BROWSER_TESTS").as_deref() == Ok("required");
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file());
    if found.is_none() {
        assert!(
            !required,
            "CLOISTER_BROWSER_TESTS=required, but no chromium on PATH \
             (apt-get install chromium)"
        );
        eprintln!("skipping the status page test: no chromium on PATH (apt-get install chromium)");
    }
    found
}

/// One headless Chromium run. Dropping it kills the browser's whole process
/// group (it forks helpers) and removes its profile directory, also when
/// the test fails.
struct Browser {
    child: Child,
    profile: PathBuf,
}

impl Browser {
    /// Loads `url`, lets its script run for [`VIRTUAL_TIME_MS`] of virtual
    /// time, and returns the DOM as the page left it.
    fn dump_dom(binary: &Path, url: &str) -> Result<String, String> {
        let profile = std::env::temp_dir().join(format!(
            "cloister-status-page-{}-{:x}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&profile).unwrap();
        let dom_path = profile.join("dom.html");
        let log_path = profile.join("chromium.log");
        let child = Command::new(binary)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--disable-background-networking",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(format!("--virtual-time-budget={VIRTUAL_TIME_MS}"))
            .args(["--dump-dom", url])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&dom_path).unwrap())
            .stderr(std::fs::File::create(&log_path).unwrap())
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary.display()))?;
        let mut browser = Browser { child, profile };
        let start = Instant::now();
        let status = loop {
            if let Some(status) = browser.child.try_wait().unwrap() {
                break status;
            }
            if start.elapsed() > BROWSER_DEADLINE {
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!(
                    "chromium did not finish {url} within {BROWSER_DEADLINE:?}; its log:\n{log}"
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let dom = std::fs::read_to_string(&dom_path).unwrap_or_default();
        if !status.success() || dom.is_empty() {
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            return Err(format!(
                "chromium on {url} ended {status} with {} bytes of DOM; its log:\n{log}",
                dom.len()
            ));
        }
        Ok(dom)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The group is the browser's own (`process_group(0)`): its id is the
        // browser's pid. Helpers may outlive the main process, so the group
        // is killed even when the browser already exited.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill")
            .args(["-KILL", "--", &group])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// A per-run suffix for the profile directory.
fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now())
}

/// `/members` of `addr`, polled until `done` holds for it, or a panic at
/// the deadline with the last answer.
fn wait_members(addr: SocketAddr, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    let mut last = Err("not asked yet".to_string());
    while start.elapsed() < DEADLINE {
        last = get(addr, "/members");
        if let Ok((200, body)) = &last {
            let members: Value = serde_json::from_str(body).unwrap();
            if done(&members) {
                return members;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what}: http://{addr}/members after {DEADLINE:?}: {last:?}");
}

/// Every value of the attribute `name` in a serialized DOM, in document
/// order, with the entities a serializer writes in attributes decoded.
fn attribute_values(dom: &str, name: &str) -> Vec<String> {
    let needle = format!(" {name}=\"");
    dom.match_indices(&needle)
        .map(|(at, _)| {
            let rest = &dom[at + needle.len()..];
            let value = &rest[..rest.find('"').unwrap()];
            value
                .replace("&quot;", "\"")
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&nbsp;", "\u{a0}")
                .replace("&amp;", "&")
        })
        .collect()
}

/// What the rendered page shows, read from the data attributes it writes.
#[derive(Debug, PartialEq)]
struct Rendered {
    node: Vec<String>,
    state: Vec<String>,
    members: Vec<String>,
    sentry: Vec<String>,
    other_peers: BTreeSet<String>,
}

impl Rendered {
    fn of(dom: &str) -> Rendered {
        Rendered {
            node: attribute_values(dom, "data-node"),
            state: attribute_values(dom, "data-state"),
            members: attribute_values(dom, "data-member"),
            sentry: attribute_values(dom, "data-sentry"),
            other_peers: attribute_values(dom, "data-peer").into_iter().collect(),
        }
    }

    /// What the page should show for the `/members` answer `m`.
    fn expected(m: &Value) -> Rendered {
        let text = |v: &Value| v.as_str().unwrap().to_string();
        let s = &m["snapshot"];
        let members: Vec<String> = s["members"].as_array().unwrap().iter().map(text).collect();
        Rendered {
            node: vec![text(&s["node"])],
            state: vec![text(&s["state"])],
            sentry: vec![s["sentry"].as_str().unwrap_or("").to_string()],
            other_peers: (m["peers"].as_array().unwrap().iter())
                .map(|p| text(&p["name"]))
                .filter(|name| !members.contains(name))
                .collect(),
            members,
        }
    }
}

/// Renders the page of `addr` in `browser` and checks it against
/// `/members`, asked just before and just after the render (the page must
/// match one of them if the view changed in between).
fn page_matches_members(browser: &Path, addr: SocketAddr) -> Rendered {
    let url = format!("http://{addr}/");
    let before = Rendered::expected(&wait_members(addr, "members", |_| true));
    let dom = ok(Browser::dump_dom(browser, &url));
    let after = Rendered::expected(&wait_members(addr, "members", |_| true));
    assert!(
        dom.contains("data-rendered=\"true\""),
        "the page never rendered /members:\n{dom}"
    );
    let rendered = Rendered::of(&dom);
    assert!(
        rendered == before || rendered == after,
        "the page shows\n{rendered:#?}\nbut /members says\n{before:#?}\n(then {after:#?})\n{dom}"
    );
    rendered
}

#[test]
fn the_status_page_shows_in_a_browser_what_members_returns() {
    let Some(browser) = chromium() else { return };
    let _serial = serial();
    let mut nodes = cluster(3)
        .consensus(3)
        .env("CLOISTER_QUORUM", "majority")
        .build()
        .unwrap();
    let addrs: Vec<SocketAddr> = (0..3).map(|_| free_addr()).collect();
    for (i, addr) in addrs.iter().enumerate() {
        nodes
            .start_node_with(i, &["--management-addr", &addr.to_string()])
            .unwrap();
    }
    ok(nodes.wait_ready(&[0, 1, 2], DEADLINE));
    for addr in &addrs {
        wait_members(*addr, "every peer a member", |m| {
            m["peers"].as_array().is_some_and(|peers| {
                peers.len() == 2 && peers.iter().all(|p| p["status"] == "member")
            })
        });
    }

    // Formed: each node's page lists the three members, its own name and
    // state, and the sentry every node agrees on.
    let names: Vec<String> = (0..3).map(|i| nodes.node_name(i).to_string()).collect();
    let mut sentries = BTreeSet::new();
    for (i, addr) in addrs.iter().enumerate() {
        let rendered = page_matches_members(&browser, *addr);
        assert_eq!(rendered.members, names, "{rendered:#?}");
        assert_eq!(rendered.node, [names[i].clone()], "{rendered:#?}");
        assert_eq!(rendered.state, ["ready"], "{rendered:#?}");
        assert!(rendered.other_peers.is_empty(), "{rendered:#?}");
        sentries.insert(rendered.sentry[0].clone());
    }
    assert_eq!(
        sentries.len(),
        1,
        "the pages name different sentries: {sentries:?}"
    );
    assert!(
        names.contains(sentries.first().unwrap()),
        "the sentry is not a member: {sentries:?}"
    );

    // One member killed: the survivors' pages drop it from the members,
    // list it among the other peers, and say the node is rehashing.
    nodes.kill(2).unwrap();
    ok(nodes.wait_agree(&[0, 1], "rehashing", DEADLINE));
    wait_members(addrs[0], "the dead node out of the ring", |m| {
        m["snapshot"]["members"].as_array().map(Vec::len) == Some(2)
    });
    let rendered = page_matches_members(&browser, addrs[0]);
    assert_eq!(rendered.members, names[..2], "{rendered:#?}");
    assert_eq!(rendered.state, ["rehashing"], "{rendered:#?}");
    assert!(rendered.other_peers.contains(&names[2]), "{rendered:#?}");
}
