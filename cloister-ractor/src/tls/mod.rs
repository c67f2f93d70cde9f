//! Mutual TLS between nodes: the rustls configurations built from the
//! node's PEM files, and why a peer's TLS handshake failed.
//!
//! Both directions present a certificate. The node port (and the
//! NodeServer's loopback side port) require a client certificate and
//! verify it with rustls's `WebPkiClientVerifier` against `tls_ca`; a dial
//! presents this node's certificate and verifies the peer's against the
//! same roots. Peers are dialled by IP, and in an orchestrator their
//! addresses change with every restart, so certificates cannot be expected
//! to name them: a dial checks the peer's chain to `tls_ca`, its validity
//! dates, its signature and its extended key usage (server auth, when the
//! extension is present), not the name or address it was dialled at, just
//! as the accepting side checks a client certificate. Whoever holds a key
//! certified under `tls_ca` is a node of the cluster; the cookie still
//! applies on top.
//!
//! With `tls_check_names` on, a certificate must also name the node it
//! speaks for ([`cloister_core::certified`]): a dial's verifier requires the
//! dialled node's name, and an accepted connection's certificate names are
//! checked against the name it gives once it authenticates ([`names`]).
//!
//! The files are read at start and again every `tls_reload_interval`
//! ([`reload`]): new connections use the newest settings that loaded.
//!
//! # Which cryptography
//!
//! The process's default rustls `CryptoProvider` if the application
//! installed one (`CryptoProvider::install_default` in `main`, before the
//! node starts), else aws-lc-rs, rustls's own default (post-quantum hybrid
//! key exchange first). Measured on a 2-core machine: aws-lc, as built by
//! default, seeds its random generator from CPU jitter at the first random
//! draw of the process, 30-100 ms of busy CPU once per process, which the
//! first TLS handshake waits for (the dial's key share); later handshakes
//! and new threads pay well under a millisecond. Built with
//! `AWS_LC_SYS_NO_JITTER_ENTROPY=1` (this repository's `.cargo/config.toml`)
//! it takes its seed from the operating system alone and starts as fast as
//! rustls's `ring` provider, which an application can also install instead
//! (no post-quantum key exchange). BENCHMARKS.md has all three, beside
//! plain TCP.

use std::path::Path;
use std::sync::Arc;

use cloister_core::certified::check_names;
use cloister_core::config::TlsFiles;
use cloister_core::names::Host;
use cloister_core::NodeName;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{CertificateError, DigitallySignedStruct, OtherError, RootCertStore, SignatureScheme};
use tokio_rustls::rustls;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::error::CloisterError;

pub(crate) mod names;
pub(crate) mod reload;

/// The node's TLS settings, as built from its files at start or at the
/// last reload that succeeded.
#[derive(Clone)]
pub(crate) struct Tls {
    /// For the node port (and, as built at start, the NodeServer's side
    /// port).
    pub(crate) acceptor: TlsAcceptor,
    /// For dials whose peer's name is not checked.
    client: Arc<rustls::ClientConfig>,
    /// What checks a dialled peer's chain: the base of a dial's verifier
    /// that checks its name too.
    peers: ChainOnly,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls { .. }")
    }
}

fn tls_error(path: &Path, field: &'static str, reason: impl std::fmt::Display) -> CloisterError {
    CloisterError::Tls {
        field,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

impl Tls {
    /// Reads and parses the PEM files and builds both configurations, or
    /// says which file is wrong and how. Nothing is started either way.
    pub(crate) fn load(files: TlsFiles<'_>) -> Result<Tls, CloisterError> {
        let provider = crypto_provider();
        let chain = certificates(files.cert, "tls_cert")?;
        let key = PrivateKeyDer::from_pem_file(files.key)
            .map_err(|e| tls_error(files.key, "tls_key", format!("no PEM private key: {e}")))?;
        let mut roots = RootCertStore::empty();
        for ca in certificates(files.ca, "tls_ca")? {
            roots
                .add(ca)
                .map_err(|e| tls_error(files.ca, "tls_ca", format!("not a CA certificate: {e}")))?;
        }
        let roots = Arc::new(roots);

        let clients =
            WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), Arc::clone(&provider))
                .build()
                .map_err(|e| tls_error(files.ca, "tls_ca", e))?;
        let server = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(files.cert, "tls_cert", e))?
            .with_client_cert_verifier(clients)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(|e| key_error(files, e))?;

        let peers = ChainOnly {
            roots,
            algorithms: provider.signature_verification_algorithms,
            expected: None,
        };
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(files.cert, "tls_cert", e))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(peers.clone()))
            .with_client_auth_cert(chain, key)
            .map_err(|e| key_error(files, e))?;
        Ok(Tls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            client: Arc::new(client),
            peers,
        })
    }

    /// What a dial goes through; with `expected`, the peer's certificate
    /// must also name that node (`tls_check_names`). Such a dial resumes no
    /// earlier TLS session, whose certificate was checked for another name.
    pub(crate) fn connector(&self, expected: Option<&NodeName>) -> TlsConnector {
        let Some(expected) = expected else {
            return TlsConnector::from(Arc::clone(&self.client));
        };
        let mut config = (*self.client).clone();
        let verifier = ChainOnly {
            expected: Some(expected.clone()),
            ..self.peers.clone()
        };
        config
            .dangerous()
            .set_certificate_verifier(Arc::new(verifier));
        config.resumption = rustls::client::Resumption::disabled();
        TlsConnector::from(Arc::new(config))
    }
}

/// The transport as the start line gives it: plain TCP, or mutual TLS and
/// how its certificates are watched and checked.
pub(crate) fn transport(config: &cloister_core::Config) -> String {
    if config.tls().is_none() {
        return "plain TCP".to_string();
    }
    let reload = match config.tls_reload_every() {
        Some(every) => format!("files read again every {every:?}"),
        None => "files read at start only".to_string(),
    };
    let names = if config.tls_check_names {
        "peers' node names checked against their certificates"
    } else {
        "peers' certificates checked by chain, not name"
    };
    format!("mutual TLS ({reload}; {names})")
}

/// The installed process default, else aws-lc-rs: see the module docs.
fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// The certificates of a PEM file, at least one.
fn certificates(
    path: &Path,
    field: &'static str,
) -> Result<Vec<CertificateDer<'static>>, CloisterError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .and_then(Iterator::collect)
        .map_err(|e| tls_error(path, field, format!("cannot read PEM certificates: {e}")))?;
    if certs.is_empty() {
        return Err(tls_error(
            path,
            field,
            "holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)",
        ));
    }
    Ok(certs)
}

fn key_error(files: TlsFiles<'_>, error: rustls::Error) -> CloisterError {
    match error {
        rustls::Error::InconsistentKeys(_) => tls_error(
            files.key,
            "tls_key",
            format!(
                "is not the key of the certificate in {}",
                files.cert.display()
            ),
        ),
        other => tls_error(files.key, "tls_key", other),
    }
}

/// Verifies a dialled peer's certificate chain, not the name or address
/// it was dialled at (see the module docs); and with `expected`, that the
/// certificate names that node.
#[derive(Debug, Clone)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
    expected: Option<NodeName>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        if let Some(expected) = &self.expected {
            check_names(expected, &names::dns_names(end_entity)).map_err(|refusal| {
                rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
                    refusal,
                ))))
            })?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The name a dial gives the peer (SNI for a DNS name); [`ChainOnly`]
/// does not check it.
pub(crate) fn server_name(host: &Host) -> ServerName<'static> {
    match host {
        Host::Ip(ip) => ServerName::IpAddress((*ip).into()),
        Host::Dns(name) => ServerName::try_from(name.to_string()).unwrap_or(ServerName::IpAddress(
            std::net::Ipv4Addr::UNSPECIFIED.into(),
        )),
    }
}

/// Why a TLS handshake at the node port failed, in the words of the log.
pub(crate) fn refusal_reason(error: &std::io::Error) -> &'static str {
    let Some(tls) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return "TLS handshake cut off by the peer";
    };
    match tls {
        rustls::Error::InvalidCertificate(why) => match why {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "TLS: the peer's certificate is expired"
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "TLS: the peer's certificate is not valid yet"
            }
            CertificateError::UnknownIssuer => {
                "TLS: the peer's certificate does not chain to `tls_ca`"
            }
            CertificateError::BadSignature => "TLS: the peer's certificate has a bad signature",
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "TLS: the peer's certificate is not for client authentication"
            }
            _ => "TLS: the peer's certificate is invalid",
        },
        rustls::Error::NoCertificatesPresented => "TLS: the peer presented no certificate",
        rustls::Error::AlertReceived(_) => {
            "TLS: the peer aborted the handshake (it refused this node's certificate?)"
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "TLS: the peer does not speak TLS (a plain-TCP node?)"
        }
        _ => "TLS: the handshake failed",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A CA and a certificate under it whose DNS name is `dns`, as PEM:
    /// (ca, cert, key).
    pub(crate) fn issue(ca_name: &str, dns: &str) -> (String, String, String) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        (params.distinguished_name).push(rcgen::DnType::CommonName, ca_name);
        let ca = params.self_signed(&ca_key).expect("ca");
        let key = KeyPair::generate().expect("key");
        let leaf = CertificateParams::new(vec![dns.to_string(), "127.0.0.1".to_string()])
            .expect("params")
            .signed_by(&key, &ca, &ca_key)
            .expect("leaf");
        (ca.pem(), leaf.pem(), key.serialize_pem())
    }

    #[test]
    fn a_dial_that_checks_names_refuses_a_certificate_for_another_node_and_says_so() {
        let dir = std::env::temp_dir().join(format!("cloister-tls-names-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (ca, cert, key) = issue("names CA", "mallory");
        let path = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).expect("write");
            path
        };
        let (cert_path, key_path, ca_path) = (
            path("n.pem", &cert),
            path("n.key", &key),
            path("ca.pem", &ca),
        );
        let tls = Tls::load(files(&cert_path, &key_path, &ca_path)).expect("loads");
        let leaf = CertificateDer::from_pem_file(&cert_path).expect("leaf");
        let verify = |expected: Option<&str>| {
            let verifier = ChainOnly {
                expected: expected.map(|name| name.parse().expect("a node name")),
                ..tls.peers.clone()
            };
            let name = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
            verifier.verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
        };
        assert!(verify(None).is_ok());
        assert!(verify(Some("mallory@127.0.0.1")).is_ok());
        let error = verify(Some("node-b@127.0.0.1")).expect_err("names mallory");
        // As a dial sees it: inside the I/O error of the handshake.
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, error);
        let refusal = names::dial_refusal(&io).expect("a name refusal");
        assert_eq!(refusal.claimed.as_str(), "node-b@127.0.0.1");
        assert_eq!(refusal.names, ["mallory"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn files<'a>(cert: &'a Path, key: &'a Path, ca: &'a Path) -> TlsFiles<'a> {
        TlsFiles { cert, key, ca }
    }

    #[test]
    fn an_unusable_file_is_named_with_its_field_and_what_is_wrong() {
        let dir = std::env::temp_dir().join(format!("cloister-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let missing = dir.join("missing.pem");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").expect("write");

        let error = Tls::load(files(&missing, &missing, &missing)).expect_err("missing");
        let text = error.to_string();
        assert!(text.starts_with("cannot use `tls_cert` = "), "{text}");
        assert!(text.contains("missing.pem"), "{text}");

        let error = Tls::load(files(&empty, &empty, &empty)).expect_err("no PEM");
        let text = error.to_string();
        assert!(text.contains("`tls_cert`"), "{text}");
        assert!(text.contains("holds no PEM certificate"), "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
