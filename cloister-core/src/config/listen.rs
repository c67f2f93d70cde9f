//! Where a node listens, and who may reach it with which cookie.
//!
//! `listen_addr` is the IP the node port is bound to. The default, `::`,
//! binds every interface for IPv4 and IPv6 alike (what ractor_cluster's own
//! listener bound before cloister took the port over); `0.0.0.0` binds every
//! IPv4 interface; `127.0.0.1` keeps the node on this machine.
//!
//! The cookie rule: the built-in default cookie is public (it is in this
//! file), so a node that anyone off this machine can reach must not use it.
//! [`Config::check_cookie_exposure`] refuses a non-loopback `listen_addr`
//! with the default cookie; the runtime runs it before it binds the port.
//! It is not part of [`Config::validate`], so a config can still be built,
//! printed and checked anywhere with the default cookie; it is the start of
//! a node beyond loopback that it stops. TLS (`tls_cert`, `tls_key`,
//! `tls_ca`) lifts the rule: the certificates then authenticate the peers,
//! not the cookie.

use std::net::IpAddr;

use super::{invalid, Config, ConfigError};

/// The cookie a config has unless one is set: public, so only for nodes
/// that listen on loopback.
pub const DEFAULT_COOKIE: &str = "cloister";

/// What `listen_addr` accepts, for load errors.
pub(super) const LISTEN_ADDR: &str = "an IP address of this machine, `127.0.0.1` (this machine \
     only), `0.0.0.0` (every IPv4 interface) or `::` (every interface, IPv4 and IPv6)";

impl Config {
    /// The `listen_addr` rule of [`Config::validate`]: an address a socket
    /// can listen on, so neither multicast nor broadcast.
    pub(super) fn check_listen_addr(&self) -> Result<(), ConfigError> {
        let ip = self.listen_addr;
        let broadcast = matches!(ip, IpAddr::V4(v4) if v4.is_broadcast());
        if ip.is_multicast() || broadcast {
            let why = format!("cannot be listened on; must be {LISTEN_ADDR}");
            return Err(invalid("listen_addr", ip.to_string(), why));
        }
        Ok(())
    }

    /// Whether only this machine can reach the node port: `listen_addr` is
    /// a loopback address (`127.0.0.0/8`, `::1`, or an IPv4 one mapped into
    /// IPv6).
    pub fn listens_on_loopback_only(&self) -> bool {
        self.listen_addr.to_canonical().is_loopback()
    }

    /// Refuses the built-in default cookie on a node that listens beyond
    /// loopback (`listen_addr` other than `127.0.0.1` or `::1`; the default
    /// `::` is every interface): anyone who can reach its port would know
    /// the secret. The error says how to set one (`CLOISTER_COOKIE`) or to
    /// listen on loopback. With TLS on ([`Config::tls`]) any cookie is
    /// allowed: a peer must then present a certificate under `tls_ca`
    /// before the cookie is ever asked. Nothing changes either way; the
    /// runtime calls it before it binds the port.
    ///
    /// ```
    /// use cloister_core::Config;
    /// let config = Config::nodes("shop", ["shop@10.0.0.1:4000"])?;
    /// assert!(config.check_cookie_exposure().is_err());
    /// assert!(config.clone().with_cookie("3f9a7c61e2").check_cookie_exposure().is_ok());
    /// let local = config.with_listen_addr([127, 0, 0, 1].into());
    /// assert!(local.check_cookie_exposure().is_ok());
    /// # Ok::<(), cloister_core::ConfigError>(())
    /// ```
    pub fn check_cookie_exposure(&self) -> Result<(), ConfigError> {
        if self.cookie != DEFAULT_COOKIE || self.listens_on_loopback_only() || self.tls().is_some()
        {
            return Ok(());
        }
        let why = format!(
            "anyone can know it, and `listen_addr` = {} lets other machines reach this node: \
             set a secret of your own shared by every node (`CLOISTER_COOKIE`, \
             `cookie` in the config file, or `Config::with_cookie`), for example \
             CLOISTER_COOKIE=$(od -An -tx1 -N16 /dev/urandom | tr -d ' \\n'), or listen on \
             loopback only (`CLOISTER_LISTEN_ADDR=127.0.0.1`), or turn on TLS between nodes \
             (`CLOISTER_TLS_CERT`, `CLOISTER_TLS_KEY`, `CLOISTER_TLS_CA`)",
            self.listen_addr
        );
        Err(invalid("cookie", "the built-in default", why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_addr(ip: &str) -> Config {
        let ip: IpAddr = ip.parse().expect("an ip");
        Config::default().with_listen_addr(ip)
    }

    #[test]
    fn the_default_cookie_is_refused_beyond_loopback_only() {
        for exposed in ["::", "0.0.0.0", "10.0.0.1", "fd00::1"] {
            let error = with_addr(exposed)
                .check_cookie_exposure()
                .expect_err(exposed);
            let text = error.to_string();
            assert!(text.contains("`cookie`"), "{text}");
            assert!(text.contains("CLOISTER_COOKIE"), "{text}");
            assert!(text.contains(exposed), "{text}");
        }
        for local in ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"] {
            assert_eq!(with_addr(local).check_cookie_exposure(), Ok(()), "{local}");
        }
        let chosen = with_addr("0.0.0.0").with_cookie("a secret of our own");
        assert_eq!(chosen.check_cookie_exposure(), Ok(()));
    }

    #[test]
    fn multicast_and_broadcast_cannot_be_listened_on() {
        for bad in ["224.0.0.1", "255.255.255.255", "ff02::1"] {
            let error = with_addr(bad).check_listen_addr().expect_err(bad);
            let ConfigError::Invalid { field, value, .. } = error else {
                panic!("not an invalid field: {error}");
            };
            assert_eq!((field, value.as_str()), ("listen_addr", bad));
        }
        for good in ["::", "0.0.0.0", "127.0.0.1", "10.1.2.3", "fe80::1"] {
            assert_eq!(with_addr(good).check_listen_addr(), Ok(()), "{good}");
        }
    }
}
