//! Replaced certificates, picked up without a restart.
//!
//! Every `tls_reload_interval` a task reads `tls_cert`, `tls_key` and
//! `tls_ca`; when the bytes of any changed since the last look, it builds
//! the settings anew with [`Tls::load`] and swaps them in. The node port's
//! accept loop takes the acceptor anew for each connection and every dial
//! takes the connector anew, so new handshakes use the new files; sessions
//! already up keep the keys they agreed on. A change that does not load (a
//! file written halfway, a new certificate whose key is not written yet)
//! keeps the settings in use and logs one warning naming the file; the
//! next change is tried again, so a certificate and key replaced one after
//! the other load once both are in place. Comparing bytes, not times, also
//! catches a Kubernetes Secret's symlink swap.
//!
//! One thing does not follow: the NodeServer's loopback side port (see
//! [`crate::accept`]). ractor_cluster takes its acceptor once, in
//! `NodeServer::new`, keeps it in the NodeServer and hands that same one to
//! every listener it (re)spawns; no message replaces it. So that port,
//! reachable from this machine only, keeps the certificate and CA of the
//! node's start until a restart.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use cloister_core::config::TlsFiles;
use cloister_core::{Config, NodeName};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use super::Tls;
use crate::error::CloisterError;

/// The node's TLS settings as they stand, and the task that keeps them.
pub(crate) struct Watched {
    /// The settings of the last load that succeeded.
    pub(crate) current: Arc<ArcSwap<Tls>>,
    /// Reloads them; aborted when this is dropped (with the Manager).
    reloader: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Watched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Watched { .. }")
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        if let Some(task) = &self.reloader {
            task.abort();
        }
    }
}

impl Watched {
    /// Loads the TLS files, if TLS is on, and starts reloading them every
    /// `tls_reload_interval` (unless that is zero), logging in `span` (the
    /// node's). Fails as [`Tls::load`] does, with nothing started.
    pub(crate) fn start(
        config: &Config,
        span: tracing::Span,
    ) -> Result<Option<Watched>, CloisterError> {
        let Some(files) = config.tls() else {
            return Ok(None);
        };
        let paths = Paths::of(files);
        // Read before the load: a change in between is seen at the next look.
        let seen = paths.read();
        let current = Arc::new(ArcSwap::from_pointee(Tls::load(files)?));
        let reloader = config.tls_reload_every().map(|every| {
            let reload = reload_every(every, paths, seen, Arc::clone(&current));
            tokio::spawn(tracing::Instrument::instrument(reload, span))
        });
        Ok(Some(Watched { current, reloader }))
    }

    /// What a dial goes through now: see [`Tls::connector`].
    pub(crate) fn connector(&self, expected: Option<&NodeName>) -> TlsConnector {
        self.current.load().connector(expected)
    }
}

/// The three files, owned.
#[derive(Debug, Clone)]
struct Paths {
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
}

/// The bytes of the three files, `None` for one that cannot be read.
type Contents = [Option<Vec<u8>>; 3];

impl Paths {
    fn of(files: TlsFiles<'_>) -> Paths {
        Paths {
            cert: files.cert.to_path_buf(),
            key: files.key.to_path_buf(),
            ca: files.ca.to_path_buf(),
        }
    }

    fn files(&self) -> TlsFiles<'_> {
        TlsFiles {
            cert: &self.cert,
            key: &self.key,
            ca: &self.ca,
        }
    }

    fn read(&self) -> Contents {
        [&self.cert, &self.key, &self.ca].map(|path| std::fs::read(path).ok())
    }
}

/// The fields whose files differ between `before` and `now`.
fn changed(before: &Contents, now: &Contents) -> Vec<&'static str> {
    let fields = ["tls_cert", "tls_key", "tls_ca"];
    (fields.iter().zip(before.iter().zip(now)))
        .filter(|(_, (a, b))| a != b)
        .map(|(field, _)| *field)
        .collect()
}

/// One look at the files: when they changed since `seen`, a reload. The
/// outcome says what happened, for the one log line; `None` when nothing
/// changed.
fn look(paths: &Paths, seen: &mut Contents, current: &ArcSwap<Tls>) -> Option<Reloaded> {
    let now = paths.read();
    let fields = changed(seen, &now);
    if fields.is_empty() {
        return None;
    }
    *seen = now;
    Some(match Tls::load(paths.files()) {
        Ok(tls) => {
            current.store(Arc::new(tls));
            Reloaded::Swapped(fields)
        }
        Err(error) => Reloaded::Kept(fields, error),
    })
}

/// What a look that saw a change did.
#[derive(Debug)]
enum Reloaded {
    /// The new settings are in use.
    Swapped(Vec<&'static str>),
    /// They did not load: the old ones stay.
    Kept(Vec<&'static str>, CloisterError),
}

async fn reload_every(
    every: Duration,
    paths: Paths,
    mut seen: Contents,
    current: Arc<ArcSwap<Tls>>,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match look(&paths, &mut seen, &current) {
            None => {}
            Some(Reloaded::Swapped(fields)) => tracing::info!(
                changed = %fields.join(", "),
                "TLS settings reloaded: {} changed on disk; new connections use them, sessions \
                 already up keep theirs",
                fields.join(", ")
            ),
            Some(Reloaded::Kept(fields, error)) => tracing::warn!(
                changed = %fields.join(", "),
                "TLS files changed ({}) but cannot be used: {error}; the node keeps the TLS \
                 settings it had, and loads the files again when they next change (looked at \
                 every {every:?})",
                fields.join(", ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::tests::issue;

    fn write(paths: &Paths, field: &str, text: &str) {
        let path = match field {
            "tls_cert" => &paths.cert,
            "tls_key" => &paths.key,
            _ => &paths.ca,
        };
        std::fs::write(path, text).expect("write");
    }

    #[test]
    fn a_change_that_does_not_load_keeps_the_settings_and_the_next_good_one_swaps() {
        let dir = std::env::temp_dir().join(format!("cloister-reload-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let paths = Paths {
            cert: dir.join("node.pem"),
            key: dir.join("node.key"),
            ca: dir.join("ca.pem"),
        };
        let (ca, cert, key) = issue("first CA", "node");
        write(&paths, "tls_ca", &ca);
        write(&paths, "tls_cert", &cert);
        write(&paths, "tls_key", &key);
        let mut seen = paths.read();
        let current = ArcSwap::from_pointee(Tls::load(paths.files()).expect("loads"));
        let first = current.load_full();
        // Nothing changed: nothing happens.
        assert!(look(&paths, &mut seen, &current).is_none());

        // A new certificate whose key is not written yet: kept, named.
        let (ca2, cert2, key2) = issue("second CA", "node");
        write(&paths, "tls_cert", &cert2);
        match look(&paths, &mut seen, &current) {
            Some(Reloaded::Kept(fields, error)) => {
                assert_eq!(fields, ["tls_cert"]);
                let text = error.to_string();
                assert!(text.contains("`tls_key`"), "{text}");
                assert!(text.contains("is not the key of the certificate"), "{text}");
            }
            other => panic!("not kept: {other:?}"),
        }
        assert!(
            Arc::ptr_eq(&first, &current.load_full()),
            "swapped a broken load"
        );
        // Not tried again until something changes.
        assert!(look(&paths, &mut seen, &current).is_none());

        // A half-written CA bundle: kept too.
        write(&paths, "tls_ca", "-----BEGIN CERTIFICATE-----\nMIIB");
        assert!(matches!(
            look(&paths, &mut seen, &current),
            Some(Reloaded::Kept(..))
        ));
        assert!(Arc::ptr_eq(&first, &current.load_full()));

        // The key and the CA land: swapped.
        write(&paths, "tls_key", &key2);
        write(&paths, "tls_ca", &format!("{ca}{ca2}"));
        match look(&paths, &mut seen, &current) {
            Some(Reloaded::Swapped(fields)) => assert_eq!(fields, ["tls_key", "tls_ca"]),
            other => panic!("not swapped: {other:?}"),
        }
        assert!(!Arc::ptr_eq(&first, &current.load_full()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
