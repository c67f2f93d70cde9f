//! Certificates for mutual TLS between nodes, made with rcgen: a CA and
//! node certificates, in a throwaway directory removed on drop (the TLS
//! tests, the container tests and the benchmarks' `--tls`) or in a
//! directory of the user's (`make-certs`, for the Docker walkthrough).

use std::io;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

/// A directory of PEM files under the temp dir, removed on drop.
pub struct CertDir(PathBuf);

impl CertDir {
    /// A fresh, empty `cloister-tls-{label}-{pid}` in the temp dir.
    pub fn new(label: &str) -> io::Result<CertDir> {
        let dir = std::env::temp_dir().join(format!("cloister-tls-{label}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(CertDir(dir))
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `pem` as `name` in the directory and returns its path.
    pub fn write(&self, name: &str, pem: &str) -> io::Result<PathBuf> {
        write(&self.0, name, pem)
    }
}

impl AsRef<Path> for CertDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

/// Writes `pem` as `name` in `dir` and returns its path; a `.key` file is
/// readable by its owner only.
fn write(dir: &Path, name: &str, pem: &str) -> io::Result<PathBuf> {
    use std::io::Write;
    let path = dir.join(name);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if name.ends_with(".key") {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    options
        .open(&path)
        .and_then(|mut file| file.write_all(pem.as_bytes()))
        .map_err(|e| io::Error::new(e.kind(), format!("cannot write {}: {e}", path.display())))?;
    Ok(path)
}

/// The files of a compose service whose replicas share one certificate,
/// as `docker/docker-compose.tls.yml` mounts them at `/certs`: the CA that
/// peers must chain to, and the node certificate and its key.
pub const SERVICE_FILES: [&str; 3] = ["ca.pem", "node.pem", "node.key"];

/// Writes [`SERVICE_FILES`] into `dir`: `trusted`'s certificate as the CA
/// the node checks its peers against, and a node certificate for `name`
/// issued by `issuer` (the same CA for a cluster's nodes; another one for
/// a node the cluster must refuse). Returns the paths written.
pub fn write_service_certs(
    dir: &Path,
    issuer: &Ca,
    trusted: &Ca,
    name: &str,
) -> io::Result<[PathBuf; 3]> {
    let [ca_file, node_pem, _] = SERVICE_FILES;
    let node = node_pem.trim_end_matches(".pem");
    let ca = write(dir, ca_file, &trusted.pem())?;
    let (cert, key) = issuer.issue_files(dir, node, name, |_| {})?;
    Ok([ca, cert, key])
}

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn rcgen_error(error: rcgen::Error) -> io::Error {
    io::Error::other(format!("rcgen: {error}"))
}

/// A certificate authority: its certificate and key.
pub struct Ca {
    cert: Certificate,
    key: KeyPair,
}

impl Ca {
    /// A self-signed CA with common name `name`.
    pub fn new(name: &str) -> io::Result<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(rcgen_error)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let cert = params.self_signed(&key).map_err(rcgen_error)?;
        Ok(Ca { cert, key })
    }

    /// The CA's certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A node certificate for node `name` (`node@host`) on 127.0.0.1, for
    /// both ends of a connection: its DNS name is the node-name part, as
    /// `tls_check_names` wants it; written as `{file}.pem` and `{file}.key`
    /// in `dir`. Returns the flags that give them and `ca` to cloister-node.
    pub fn issue(
        &self,
        dir: impl AsRef<Path>,
        file: &str,
        name: &str,
        ca: &Path,
    ) -> io::Result<Vec<String>> {
        self.issue_with(dir, file, name, ca, |_| {})
    }

    /// [`Ca::issue`], with `adjust` applied to the certificate first.
    pub fn issue_with(
        &self,
        dir: impl AsRef<Path>,
        file: &str,
        name: &str,
        ca: &Path,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> io::Result<Vec<String>> {
        let (cert, key) = self.issue_files(dir.as_ref(), file, name, adjust)?;
        Ok(tls_flags(&cert, &key, ca))
    }

    /// Writes a node certificate for `name` (its DNS names: the node-name
    /// part, before any `@`, and 127.0.0.1), for both ends of a connection,
    /// as `{file}.pem` and its key as `{file}.key` in `dir`; returns their
    /// paths. Peers check its chain to this CA and, with `tls_check_names`,
    /// that it names the node-name part: one certificate can serve every
    /// replica of a service, whose nodes share one node-name part.
    pub fn issue_files(
        &self,
        dir: &Path,
        file: &str,
        name: &str,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> io::Result<(PathBuf, PathBuf)> {
        // The node-name part, as `tls_check_names` wants it.
        let part = name.split('@').next().unwrap_or(name);
        let mut params = CertificateParams::new(vec![part.to_string(), "127.0.0.1".to_string()])
            .map_err(rcgen_error)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        adjust(&mut params);
        let key = KeyPair::generate().map_err(rcgen_error)?;
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .map_err(rcgen_error)?;
        let cert_path = write(dir, &format!("{file}.pem"), &cert.pem())?;
        let key_path = write(dir, &format!("{file}.key"), &key.serialize_pem())?;
        Ok((cert_path, key_path))
    }
}

/// The cloister-node flags for a certificate, its key and the CA.
fn tls_flags(cert: &Path, key: &Path, ca: &Path) -> Vec<String> {
    let flag = |name: &str, path: &Path| [name.to_string(), path.display().to_string()];
    [
        flag("--tls-cert", cert),
        flag("--tls-key", key),
        flag("--tls-ca", ca),
    ]
    .concat()
}

/// A throwaway CA and its directory, for a benchmark's `--tls`: each node
/// gets its own certificate from [`ClusterCerts::flags`].
pub struct ClusterCerts {
    ca: Ca,
    ca_path: PathBuf,
    // Last: the files go when the rest is dropped.
    dir: CertDir,
}

impl ClusterCerts {
    /// A new CA in a new `cloister-tls-{label}-{pid}` directory.
    pub fn new(label: &str) -> io::Result<ClusterCerts> {
        let dir = CertDir::new(label)?;
        let ca = Ca::new("cloister benchmark CA")?;
        let ca_path = dir.write("ca.pem", &ca.pem())?;
        Ok(ClusterCerts { ca, ca_path, dir })
    }

    /// The cloister-node flags for node `name`: a certificate issued for it
    /// (written once, then reused), its key and the CA.
    pub fn flags(&self, name: &str) -> io::Result<Vec<String>> {
        let file = name.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        let cert = self.dir.0.join(format!("{file}.pem"));
        let key = self.dir.0.join(format!("{file}.key"));
        if cert.exists() && key.exists() {
            return Ok(tls_flags(&cert, &key, &self.ca_path));
        }
        self.ca.issue(&self.dir, &file, name, &self.ca_path)
    }
}

/// Which transports a benchmark's runs use (its `--tls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Tls {
    /// Plain TCP only.
    Off,
    /// Mutual TLS only.
    On,
    /// Both, alternating.
    Both,
}

impl Tls {
    /// The transports of round `i`, `true` for TLS; `both` swaps the order
    /// every round.
    pub fn round(self, i: usize) -> Vec<bool> {
        match self {
            Tls::Off => vec![false],
            Tls::On => vec![true],
            Tls::Both if i.is_multiple_of(2) => vec![false, true],
            Tls::Both => vec![true, false],
        }
    }

    /// `what`, marked with its transport when TLS is involved.
    pub fn label(self, what: &str, tls: bool) -> String {
        match (self, tls) {
            (Tls::Off, _) => what.to_string(),
            (_, true) => format!("{what}, TLS"),
            (_, false) => format!("{what}, plain TCP"),
        }
    }
}

/// The cryptography of a node's TLS (cloister-node's `--tls-crypto`, which
/// the benchmarks pass on): the provider rustls uses in the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize)]
pub enum Crypto {
    /// aws-lc-rs, rustls's default and cloister's when none is installed.
    #[default]
    AwsLcRs,
    /// ring, installed as the process default before the node starts.
    Ring,
}

impl Crypto {
    /// Installs this provider as the process default (aws-lc-rs needs
    /// nothing: cloister takes it when none is installed).
    pub fn install(self) {
        if self == Crypto::Ring {
            // Fails only if a provider is already installed; the first wins.
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
    }

    /// The flags that give a cloister-node this provider.
    pub fn flags(self) -> Vec<String> {
        match self {
            Crypto::AwsLcRs => Vec::new(),
            Crypto::Ring => vec!["--tls-crypto".into(), "ring".into()],
        }
    }
}
