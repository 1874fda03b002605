//! Real https for the controller's tests: a test CA made at test time (rcgen), a server
//! certificate it signs for `127.0.0.1` and `localhost`, and a rustls server on loopback that
//! answers each request with what a handler returns and keeps what it received. Nothing here is
//! trusted by the system: only a client given the CA file (`--ca-file`) can talk to it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA and one server certificate it signed, written as PEM files in a temporary folder.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    /// The CA's certificate: what `--ca-file` is given.
    pub ca_pem: PathBuf,
    /// The server's certificate and key (for a server outside this process, e.g. Prometheus).
    pub cert_pem: PathBuf,
    pub key_pem: PathBuf,
    server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    pub fn new() -> Self {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "Ramp test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca.self_signed(&ca_key).unwrap();

        let mut leaf =
            CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "ramp test server");
        leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_cert = leaf.signed_by(&leaf_key, &ca_cert, &ca_key).unwrap();

        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let ca_pem = write("ca.pem", ca_cert.pem());
        let cert_pem = write("server.pem", leaf_cert.pem());
        let key_pem = write("server.key", leaf_key.serialize_pem());
        #[allow(deprecated)] // ring's provider, as the controller uses
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(leaf_cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
            )
            .unwrap();
        Self {
            dir,
            ca_pem,
            cert_pem,
            key_pem,
            server: Arc::new(server),
        }
    }

    pub fn ca_file(&self) -> &str {
        self.ca_pem.to_str().unwrap()
    }
}

/// One request as the server read it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// The path with its query.
    pub target: String,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

type Handler = dyn Fn(&Request) -> (u16, String) + Send + Sync;

/// An https server on loopback with the test CA's server certificate. Stops with the test process.
pub struct HttpsServer {
    pub port: u16,
    /// Every request answered, in order.
    pub requests: Arc<Mutex<Vec<Request>>>,
    /// Connections whose TLS handshake failed (the client refused the certificate).
    pub refused_handshakes: Arc<AtomicU64>,
}

impl HttpsServer {
    /// Answers every request with `handler`'s status and body (JSON, or a metrics text).
    pub fn start(
        ca: &TestCa,
        handler: impl Fn(&Request) -> (u16, String) + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(AtomicU64::new(0));
        let handler: Arc<Handler> = Arc::new(handler);
        let (config, kept, failed) = (ca.server.clone(), requests.clone(), refused.clone());
        std::thread::spawn(move || {
            for tcp in listener.incoming().map_while(Result::ok) {
                let (config, kept, failed, handler) = (
                    config.clone(),
                    kept.clone(),
                    failed.clone(),
                    handler.clone(),
                );
                std::thread::spawn(move || {
                    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
                    let conn = rustls::ServerConnection::new(config).unwrap();
                    let mut tls = rustls::StreamOwned::new(conn, tcp);
                    let Some(req) = read_request(&mut tls) else {
                        if tls.conn.is_handshaking() {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        return;
                    };
                    let (code, body) = handler(&req);
                    kept.lock().unwrap().push(req);
                    // JSON for the API and hooks; anything else is a metrics exposition.
                    let kind = if body.starts_with('{') {
                        "application/json"
                    } else {
                        "text/plain; version=0.0.4"
                    };
                    let answer = format!(
                        "HTTP/1.1 {code} X\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = tls.write_all(answer.as_bytes());
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                });
            }
        });
        Self {
            port,
            requests,
            refused_handshakes: refused,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    pub fn bodies(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.body.clone())
            .collect()
    }
}

/// Reads one request (head and a `content-length` body); `None` when the handshake or the read
/// failed.
fn read_request(tls: &mut impl Read) -> Option<Request> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = tls.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        seen.extend_from_slice(&buf[..n]);
        let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&seen[..end]).into_owned();
        let mut lines = head.lines();
        let mut first = lines.next()?.split(' ');
        let (method, target) = (first.next()?.to_owned(), first.next()?.to_owned());
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_lowercase(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        if seen.len() >= end + 4 + len {
            let body = String::from_utf8_lossy(&seen[end + 4..end + 4 + len]).into_owned();
            return Some(Request {
                method,
                target,
                headers,
                body,
            });
        }
    }
}
