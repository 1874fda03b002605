//! Outgoing https (hooks, Prometheus, the CLI's `--server`) over rustls, so it needs no OpenSSL
//! and the static musl image can make it: which roots are trusted, and the ureq agents built on
//! them once per process. The roots are the system's bundle (or the Mozilla roots of
//! `webpki-roots` where there is none, as in the image's empty base) plus the operator's own CA
//! (`--ca-file`), so a Slack webhook and a Prometheus behind a private CA both work.

use std::io::Read;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use thiserror::Error;

/// Largest CA bundle read (Debian's holds about 150 roots in 220 KB): a wrong path pointing at a
/// huge file must not eat the controller's memory at start.
pub const MAX_BUNDLE_BYTES: u64 = 4 * 1024 * 1024;

/// Where the usual distributions keep their bundle of trusted roots, tried in this order when
/// `SSL_CERT_FILE` is not set: Debian, Ubuntu and Alpine (`ca-certificates`); RHEL and Fedora;
/// openSUSE; Alpine's and the BSDs' other name.
pub const SYSTEM_BUNDLES: [&str; 5] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

#[derive(Debug, Error)]
pub enum TlsError {
    /// The operator's CA file cannot be used; the process refuses to start.
    #[error("--ca-file {path}: {reason}")]
    CaFile { path: String, reason: String },
    /// `SSL_CERT_FILE` names a bundle that cannot be used: said rather than silently ignored, as
    /// the operator chose it.
    #[error("SSL_CERT_FILE {path}: {reason}")]
    SslCertFile { path: String, reason: String },
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The roots outgoing https trusts, and where they came from (for the start-up log).
pub struct Trust {
    pub roots: RootCertStore,
    pub described: String,
}

/// The system's roots (or Mozilla's) plus those of `ca_file`. A `ca_file` that is missing, not
/// PEM or holds no usable certificate is an error naming `--ca-file`.
pub fn trust(ca_file: Option<&Path>) -> Result<Trust, TlsError> {
    trust_with(system_bundle()?, ca_file)
}

/// `trust` with the system's bundle given (a path and its certificates), or none found.
fn trust_with(
    system: Option<(String, Vec<CertificateDer<'static>>)>,
    ca_file: Option<&Path>,
) -> Result<Trust, TlsError> {
    let mut roots = RootCertStore::empty();
    let mut described = String::new();
    if let Some((path, certs)) = system {
        let (added, _) = roots.add_parsable_certificates(certs);
        described = format!("{added} roots of {path}");
    }
    if roots.is_empty() {
        // The image's base has no bundle: public endpoints (Slack) still need roots.
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        described = format!(
            "the {} Mozilla roots built in (no system bundle found)",
            roots.len()
        );
    }
    if let Some(path) = ca_file {
        let shown = path.display().to_string();
        let bad = |reason: String| TlsError::CaFile {
            path: shown.clone(),
            reason,
        };
        let certs = read_pem_certs(path).map_err(bad)?;
        let count = certs.len();
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| bad(format!("a certificate cannot be used as a root: {e}")))?;
        }
        described.push_str(&format!(" and {count} of {shown}"));
    }
    Ok(Trust { roots, described })
}

/// The bundle of `SSL_CERT_FILE`, else the first of `SYSTEM_BUNDLES` that holds a certificate.
fn system_bundle() -> Result<Option<(String, Vec<CertificateDer<'static>>)>, TlsError> {
    if let Some(path) = std::env::var_os("SSL_CERT_FILE").filter(|p| !p.is_empty()) {
        let path = Path::new(&path);
        let shown = path.display().to_string();
        return match read_pem_certs(path) {
            Ok(certs) => Ok(Some((shown, certs))),
            Err(reason) => Err(TlsError::SslCertFile {
                path: shown,
                reason,
            }),
        };
    }
    Ok(SYSTEM_BUNDLES
        .iter()
        .find_map(|p| Some((p.to_string(), read_pem_certs(Path::new(p)).ok()?))))
}

/// The certificates of a PEM file: at most `MAX_BUNDLE_BYTES`, at least one certificate, every
/// PEM section well formed (other sections, such as a key, are skipped).
fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    // Checked before opening: opening a FIFO would wait for a writer.
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot be read: {e}"))?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot be read: {e}"))?;
    let mut bytes = Vec::new();
    file.take(MAX_BUNDLE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot be read: {e}"))?;
    if bytes.len() as u64 > MAX_BUNDLE_BYTES {
        return Err(format!(
            "is larger than {} MiB",
            MAX_BUNDLE_BYTES / 1024 / 1024
        ));
    }
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, pem::Error>>()
        .map_err(|e| format!("is not PEM: {e}"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    Ok(certs)
}

/// A ureq agent for https with these roots (TLS 1.2 and 1.3, ring's algorithms).
fn agent(trust: &Trust) -> Result<ureq::AgentBuilder, TlsError> {
    // rustls 0.23.48 deprecates ring's provider for lacking post-quantum key exchange. ring is
    // what ureq 2's `tls` brings and builds for static musl with a C compiler alone; aws-lc-rs
    // would add a second, much larger C build to the image for a key exchange that webhooks and
    // Prometheus do not need yet. Given explicitly, not as a process default: only one is built.
    #[allow(deprecated)]
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(trust.roots.clone())
    .with_no_client_auth();
    Ok(ureq::AgentBuilder::new().tls_config(Arc::new(config)))
}

/// The agents `rampctl serve` calls out with, built once at start (a clone shares the agent and
/// its connection pool). Each call still sets its own timeout.
#[derive(Clone)]
pub struct Outgoing {
    /// Hooks: no redirects, a gate answers for itself (a followed 302 became a GET elsewhere whose
    /// 200 passed the gate). No kept connections: on a pooled connection the server has closed
    /// meanwhile, ureq retries a POST only when its head cannot be sent, not when the answer never
    /// comes, so a gate could fail on a hook server's keep-alive timeout; hooks are rare enough
    /// to pay a handshake each.
    pub hooks: ureq::Agent,
    /// Prometheus: its queries are GETs, which ureq retries on a closed pooled connection, so the
    /// four queries of a check share one connection.
    pub prometheus: ureq::Agent,
    /// Where the trusted roots came from.
    pub trusted: String,
}

impl Outgoing {
    pub fn new(ca_file: Option<&Path>) -> Result<Self, TlsError> {
        let trust = trust(ca_file)?;
        Ok(Self {
            hooks: agent(&trust)?.redirects(0).max_idle_connections(0).build(),
            prometheus: agent(&trust)?.build(),
            trusted: trust.described,
        })
    }
}

/// The CLI's agent for the controller's API at an https `--server`.
pub fn api_agent(ca_file: Option<&Path>) -> Result<ureq::Agent, TlsError> {
    Ok(agent(&trust(ca_file)?)?.build())
}

/// A ureq error as text, and when the server's certificate was refused, why in words and what to
/// do. The text holds the URL: redact it (`redact::redact_text`) before it goes anywhere.
pub fn explain(e: &ureq::Error) -> String {
    let text = e.to_string();
    let Some(rustls::Error::InvalidCertificate(why)) = rustls_error(e) else {
        return text;
    };
    let hint = match why {
        rustls::CertificateError::UnknownIssuer => {
            "the server's certificate is not trusted: no trusted root signed it; add its CA with --ca-file"
        }
        rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. } => {
            "the server's certificate is not trusted: it has expired"
        }
        rustls::CertificateError::NotValidForName
        | rustls::CertificateError::NotValidForNameContext { .. } => {
            "the server's certificate is not trusted: it does not name this host"
        }
        _ => "the server's certificate is not trusted",
    };
    format!("{text} ({hint})")
}

/// The rustls error behind a ureq error: ureq wraps it in an `io::Error`, whose `source()` skips
/// the error it wraps, so each `io::Error` is opened by hand.
fn rustls_error(e: &ureq::Error) -> Option<&rustls::Error> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        let wrapped = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        if wrapped.is_some() {
            return wrapped;
        }
        next = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// Issue 20, item 9: a bad `--ca-file` must stop the start with the flag and the reason, not
    /// leave every https hook failing later.
    #[test]
    fn a_bad_ca_file_is_refused_naming_the_flag_and_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let ca = rcgen::generate_simple_self_signed(vec!["ca.test".into()]).unwrap();
        let cases = [
            (dir.path().join("missing.pem"), "cannot be read"),
            (
                write(dir.path(), "not.pem", b"hello\n"),
                "holds no PEM certificate",
            ),
            (
                write(
                    dir.path(),
                    "key.pem",
                    ca.key_pair.serialize_pem().as_bytes(),
                ),
                "holds no PEM certificate",
            ),
            (
                write(
                    dir.path(),
                    "broken.pem",
                    b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
                ),
                "is not PEM",
            ),
            (dir.path().to_path_buf(), "not a regular file"),
        ];
        for (path, reason) in cases {
            let e = Outgoing::new(Some(&path)).err().unwrap().to_string();
            assert!(
                e.starts_with(&format!("--ca-file {}: ", path.display())) && e.contains(reason),
                "{e}"
            );
        }
        let good = write(dir.path(), "ca.pem", ca.cert.pem().as_bytes());
        let out = Outgoing::new(Some(&good)).unwrap();
        assert!(out
            .trusted
            .ends_with(&format!(" and 1 of {}", good.display())));
    }

    /// The image's base has no bundle at all: Slack's certificate must still be trusted.
    #[test]
    fn without_a_system_bundle_the_mozilla_roots_are_trusted() {
        let t = trust_with(None, None).unwrap();
        assert_eq!(t.roots.len(), webpki_roots::TLS_SERVER_ROOTS.len());
        assert!(t.roots.len() > 100, "{}", t.roots.len());
        assert!(t.described.contains("Mozilla roots"), "{}", t.described);
        let system = Some(("/nowhere".to_owned(), Vec::new()));
        assert!(trust_with(system, None)
            .unwrap()
            .described
            .contains("no system bundle"));
    }

    #[test]
    fn a_file_past_the_size_limit_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let big = write(
            dir.path(),
            "big.pem",
            &vec![b'\n'; MAX_BUNDLE_BYTES as usize + 1],
        );
        let e = read_pem_certs(&big).unwrap_err();
        assert_eq!(e, "is larger than 4 MiB");
    }
}
