//! Mutual TLS between nodes: which files hold this node's certificate, its
//! private key and the certificate authority its peers must chain to.
//!
//! The three settings come together or not at all: with them every
//! connection between nodes, in both directions, is TLS, and both sides
//! present a certificate that must chain to `tls_ca`. Without them nodes
//! talk plain TCP and the cookie is the only authentication.
//!
//! The core checks only the shape (all three or none, no empty path); it
//! never reads a file. The runtime reads and parses them when the node
//! starts, and refuses to start with an error naming the file and what is
//! wrong with it; then again every `tls_reload_interval`, keeping what it
//! has when a changed file does not load. `tls_check_names` asks for more
//! than a chain: see [`crate::certified`].

use std::path::Path;

use super::{invalid, Config, ConfigError};

/// The TLS fields, in the order errors and docs name them.
pub(super) const TLS_FIELDS: [&str; 3] = ["tls_cert", "tls_key", "tls_ca"];

/// What a TLS field accepts, for load errors.
pub(super) const TLS_PATH: &str = "the path of a PEM file (`tls_cert`, `tls_key` and `tls_ca` \
     are set together or not at all)";

/// What `tls_reload_interval` accepts, for load errors.
pub(super) const RELOAD_INTERVAL: &str =
    "a duration such as \"30s\" or \"5m\", or \"0s\" to read the TLS files only at start";

/// This node's TLS files, once [`Config::validate`] has accepted them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsFiles<'a> {
    /// This node's certificate chain, leaf first (PEM).
    pub cert: &'a Path,
    /// The private key of the leaf certificate (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: &'a Path,
    /// The certificates peers must chain to (PEM, one or more).
    pub ca: &'a Path,
}

impl Config {
    /// The TLS files, if TLS is on (all of `tls_cert`, `tls_key` and
    /// `tls_ca` set); `None` when it is off. A config with only some of them
    /// set fails [`Config::validate`], and this answers `None` for it.
    pub fn tls(&self) -> Option<TlsFiles<'_>> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (Some(cert), Some(key), Some(ca)) => Some(TlsFiles { cert, key, ca }),
            _ => None,
        }
    }

    /// How often the TLS files are read again; `None` when never
    /// (`tls_reload_interval` is zero, or TLS is off).
    pub fn tls_reload_every(&self) -> Option<std::time::Duration> {
        let every = self.tls_reload_interval;
        (self.tls().is_some() && !every.is_zero()).then_some(every)
    }

    /// The TLS rules of [`Config::validate`]: the three fields together or
    /// none of them, no empty path, and `tls_check_names` only with them.
    pub(super) fn check_tls(&self) -> Result<(), ConfigError> {
        self.check_tls_files()?;
        if self.tls_check_names && self.tls().is_none() {
            let why = "checks names in TLS certificates, and TLS is off: set `tls_cert`, \
                       `tls_key` and `tls_ca` (`CLOISTER_TLS_CERT`, `CLOISTER_TLS_KEY`, \
                       `CLOISTER_TLS_CA`), or leave `tls_check_names` off";
            return Err(invalid("tls_check_names", "true", why));
        }
        Ok(())
    }

    fn check_tls_files(&self) -> Result<(), ConfigError> {
        let fields = [
            ("tls_cert", &self.tls_cert),
            ("tls_key", &self.tls_key),
            ("tls_ca", &self.tls_ca),
        ];
        for (field, path) in fields {
            if path.as_ref().is_some_and(|p| p.as_os_str().is_empty()) {
                return Err(invalid(field, "\"\"", "must be the path of a PEM file"));
            }
        }
        let set: Vec<&str> = fields
            .iter()
            .filter(|(_, path)| path.is_some())
            .map(|(field, _)| *field)
            .collect();
        if set.is_empty() || set.len() == fields.len() {
            return Ok(());
        }
        let (field, path) = fields
            .iter()
            .find(|(_, path)| path.is_some())
            .map(|(field, path)| (*field, path.as_deref()))
            .unwrap_or(("tls_cert", None));
        let missing: Vec<String> = fields
            .iter()
            .filter(|(_, path)| path.is_none())
            .map(|(field, _)| format!("`{field}`"))
            .collect();
        let value = path.map_or_else(String::new, |p| format!("{:?}", p.display().to_string()));
        let why = format!(
            "TLS needs `tls_cert`, `tls_key` and `tls_ca` together, but {} {} not set: set \
             {} too (`CLOISTER_TLS_CERT`, `CLOISTER_TLS_KEY`, `CLOISTER_TLS_CA`), or unset \
             the others to run without TLS",
            missing.join(" and "),
            if missing.len() == 1 { "is" } else { "are" },
            if missing.len() == 1 { "it" } else { "them" },
        );
        Err(invalid(field, value, why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(cert: Option<&str>, key: Option<&str>, ca: Option<&str>) -> Config {
        Config {
            tls_cert: cert.map(Into::into),
            tls_key: key.map(Into::into),
            tls_ca: ca.map(Into::into),
            ..Config::default()
        }
    }

    #[test]
    fn all_three_or_none() {
        assert_eq!(with(None, None, None).check_tls(), Ok(()));
        assert_eq!(with(None, None, None).tls(), None);
        let on = with(Some("n.pem"), Some("n.key"), Some("ca.pem"));
        assert_eq!(on.check_tls(), Ok(()));
        assert_eq!(on.tls().map(|t| t.ca), Some(Path::new("ca.pem")));

        let error = with(Some("n.pem"), None, None)
            .check_tls()
            .expect_err("partial");
        let text = error.to_string();
        assert!(text.starts_with("invalid `tls_cert` = \"n.pem\""), "{text}");
        assert!(
            text.contains("`tls_key` and `tls_ca` are not set"),
            "{text}"
        );

        let error = with(Some("n.pem"), Some("n.key"), None)
            .check_tls()
            .expect_err("no ca");
        let text = error.to_string();
        assert!(text.contains("`tls_ca` is not set"), "{text}");
        assert!(text.contains("CLOISTER_TLS_CA"), "{text}");
        assert_eq!(with(None, None, Some("ca.pem")).tls(), None);
    }

    #[test]
    fn checking_names_needs_tls() {
        let off = Config {
            tls_check_names: true,
            ..with(None, None, None)
        };
        let error = off.check_tls().expect_err("no TLS");
        let text = error.to_string();
        assert!(
            text.starts_with("invalid `tls_check_names` = true"),
            "{text}"
        );
        assert!(text.contains("CLOISTER_TLS_CERT"), "{text}");
        let on = Config {
            tls_check_names: true,
            ..with(Some("n.pem"), Some("n.key"), Some("ca.pem"))
        };
        assert_eq!(on.check_tls(), Ok(()));
    }

    #[test]
    fn reloading_needs_tls_and_an_interval() {
        let on = with(Some("n.pem"), Some("n.key"), Some("ca.pem"));
        assert_eq!(
            on.tls_reload_every(),
            Some(std::time::Duration::from_secs(30))
        );
        let never = Config {
            tls_reload_interval: std::time::Duration::ZERO,
            ..on
        };
        assert_eq!(never.tls_reload_every(), None);
        assert_eq!(with(None, None, None).tls_reload_every(), None);
    }

    #[test]
    fn an_empty_path_is_refused_by_name() {
        let error = with(Some("n.pem"), Some(""), Some("ca.pem"))
            .check_tls()
            .expect_err("empty");
        let ConfigError::Invalid { field, .. } = error else {
            panic!("not an invalid field: {error}");
        };
        assert_eq!(field, "tls_key");
    }

    #[test]
    fn tls_lifts_the_default_cookie_rule() {
        let open = Config::default().with_listen_addr([0, 0, 0, 0].into());
        assert!(open.check_cookie_exposure().is_err());
        let tls = Config {
            tls_cert: Some("n.pem".into()),
            tls_key: Some("n.key".into()),
            tls_ca: Some("ca.pem".into()),
            ..open
        };
        assert_eq!(tls.check_cookie_exposure(), Ok(()));
    }
}
