//! Whether a peer's TLS certificate names the node it claims to be: the
//! rule of `tls_check_names`.
//!
//! A node name is `{node_name}@{host}`. The host part changes whenever an
//! orchestrator gives the node a new address, so certificates cannot be
//! expected to carry it; the node-name part is what a deployment chooses
//! and can certify. The rule: the node-name part must equal one of the
//! certificate's DNS names (subject alternative names of type `dNSName`),
//! compared as DNS compares names, without regard to ASCII case. The
//! common name is not looked at (as in browsers and RFC 6125, a
//! certificate names its holder in its SANs, and every usual tool, rcgen,
//! cert-manager, `openssl -addext subjectAltName`, writes them), and a
//! wildcard (`*.example`) matches nothing: a node-name part has no labels
//! to match it against.
//!
//! Nodes that share one node-name part (one image, told apart by host:
//! `shop@10.0.0.1`, `shop@10.0.0.2`) share one certificate name too, so the
//! check keeps out nodes of other names but cannot tell those apart.

use std::fmt;

use crate::names::NodeName;

/// A peer whose certificate does not name the node it claims (or is
/// expected) to be. Nothing changed: the caller refuses the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{claimed}` is not named in its certificate: `{}` must be one of its DNS names, and it has {} (tls_check_names)",
    claimed.node_name(),
    Listed(names)
)]
pub struct NotCertified {
    /// The node name the peer claims, or that this node dialled.
    pub claimed: NodeName,
    /// The DNS names of the peer's certificate, as it has them.
    pub names: Vec<String>,
}

/// The names of a certificate as a log line reads them.
struct Listed<'a>(&'a [String]);

impl fmt::Display for Listed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let quoted: Vec<String> = self.0.iter().map(|name| format!("`{name}`")).collect();
        write!(f, "[{}]", quoted.join(", "))
    }
}

/// Checks that a certificate whose DNS names are `names` may speak for
/// `claimed`: see the module docs for the rule.
///
/// ```
/// use cloister_core::certified::check_names;
/// let names = vec!["node-b".to_string(), "127.0.0.1".to_string()];
/// assert!(check_names(&"node-b@10.0.0.2".parse()?, &names).is_ok());
/// assert!(check_names(&"node-c@10.0.0.2".parse()?, &names).is_err());
/// # Ok::<(), cloister_core::NameError>(())
/// ```
pub fn check_names(claimed: &NodeName, names: &[String]) -> Result<(), NotCertified> {
    let part = claimed.node_name();
    if names.iter().any(|name| name.eq_ignore_ascii_case(part)) {
        return Ok(());
    }
    Err(NotCertified {
        claimed: claimed.clone(),
        names: names.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(text: &str) -> NodeName {
        text.parse().expect("a node name")
    }

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_node_name_part_must_be_one_of_the_dns_names() {
        let certified = names(&["node-b", "node-b.internal"]);
        assert_eq!(check_names(&name("node-b@10.0.0.2"), &certified), Ok(()));
        // Any host: the host part is not certified.
        assert_eq!(check_names(&name("node-b@10.9.9.9"), &certified), Ok(()));
        // DNS compares without regard to ASCII case.
        assert_eq!(check_names(&name("Node-B@10.0.0.2"), &certified), Ok(()));
        let error = check_names(&name("node-c@10.0.0.2"), &certified).expect_err("other name");
        assert_eq!(error.names, certified);
    }

    #[test]
    fn neither_a_prefix_nor_a_wildcard_nor_the_whole_name_matches() {
        let claimed = name("node@10.0.0.2");
        for list in [
            names(&["node-b"]),
            names(&["nod"]),
            names(&["*.node", "*"]),
            names(&["node@10.0.0.2"]),
            names(&[]),
        ] {
            assert!(check_names(&claimed, &list).is_err(), "{list:?} matched");
        }
    }

    #[test]
    fn the_refusal_says_what_was_claimed_and_what_the_certificate_has() {
        let error = check_names(&name("node-b@10.0.0.2"), &names(&["mallory", "127.0.0.1"]))
            .expect_err("mallory");
        assert_eq!(
            error.to_string(),
            "`node-b@10.0.0.2` is not named in its certificate: `node-b` must be one of its DNS \
             names, and it has [`mallory`, `127.0.0.1`] (tls_check_names)"
        );
        let error = check_names(&name("node-b@10.0.0.2"), &[]).expect_err("none");
        assert!(error.to_string().ends_with("it has none (tls_check_names)"));
    }
}
