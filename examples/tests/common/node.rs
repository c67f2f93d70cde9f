//! One `cloister-node` run by hand, for the tests of how a node starts and
//! logs: only the `CLOISTER_*` variables the test gives (those of the calling
//! shell and `RUST_LOG` removed), its output in files, killed and cleaned up
//! when the test ends, every wait bounded.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use super::node_binary;

/// How long a node may take to start, or to stop once asked.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A running node; killed, and its output removed, when the test ends.
pub struct Node {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.out);
        let _ = std::fs::remove_file(&self.err);
    }
}

impl Node {
    /// Starts `cloister-node` with `vars` as its only `CLOISTER_*` variables.
    pub fn start(test: &str, vars: &[(&str, String)]) -> Node {
        let file = |stream: &str| {
            let name = format!("cloister-{test}-{}.{stream}", std::process::id());
            std::env::temp_dir().join(name)
        };
        let (out, err) = (file("stdout"), file("stderr"));
        let mut command = Command::new(node_binary());
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("CLOISTER_") {
                command.env_remove(key);
            }
        }
        command
            .env_remove("RUST_LOG")
            .envs(vars.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(File::create(&out).unwrap())
            .stderr(File::create(&err).unwrap());
        Node {
            child: command.spawn().unwrap(),
            out,
            err,
        }
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap()
    }

    /// Waits until `done` holds for the stdout written so far; fails if the
    /// node exits first or the deadline passes.
    pub fn wait_stdout(&mut self, what: &str, done: impl Fn(&str) -> bool) {
        let start = Instant::now();
        while !done(&self.stdout()) {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "{what}: the node exited ({status}) first:\n{}",
                    self.shown()
                );
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{what}: not after {DEADLINE:?}:\n{}",
                self.shown()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits for the node to exit; its exit status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "still running after {DEADLINE:?}:\n{}",
                self.shown()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn shown(&self) -> String {
        format!("stdout:\n{}\nstderr:\n{}", self.stdout(), self.stderr())
    }
}
