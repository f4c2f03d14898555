//! A stand-in for an environment's app behind its load balancer: HTTPS on a loopback port with a wildcard
//! certificate for the zone, issued by a CA of its own written to a PEM file, so the readiness probe is
//! tested the way it runs (pinned with `connect_to`, the URL's host in SNI and `Host`, the CA trusted by
//! file). It answers every request with the status and `Location` a test sets, and records the `Host`
//! each request asked for.

use std::io::{self, Write as _};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::http::StatusCode;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::PrivateKeyDer;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// A client that connects and sends nothing is dropped after this, so a demo running for hours keeps no
/// dead connections.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Request heads are a few hundred bytes; past this the client is not an HTTP client.
const HEAD_MAX: usize = 16 * 1024;
/// After a failed accept (out of file descriptors, say) the loop waits this long rather than spinning.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// What the app answers and what it saw.
#[derive(Debug)]
struct Shared {
    status: u16,
    location: Option<String>,
    hosts: Vec<String>,
}

/// The running app; stops when dropped.
#[derive(Debug)]
pub struct StandInApp {
    addr: SocketAddr,
    ca_file: tempfile::NamedTempFile,
    shared: Arc<Mutex<Shared>>,
    accept: JoinHandle<()>,
}

impl StandInApp {
    /// Serves `*.{zone}` and `{zone}` on a free loopback port, answering 200.
    pub async fn start(zone: &str) -> io::Result<Self> {
        Self::start_on(zone, "127.0.0.1:0").await
    }

    /// As [`start`](Self::start), on `listen`.
    pub async fn start_on(zone: &str, listen: &str) -> io::Result<Self> {
        let (ca_pem, acceptor) = certificates(zone)?;
        let mut ca_file = tempfile::Builder::new().prefix("standin-ca-").suffix(".pem").tempfile()?;
        ca_file.write_all(ca_pem.as_bytes())?;
        ca_file.flush()?;
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Mutex::new(Shared { status: 200, location: None, hosts: Vec::new() }));
        let accept = tokio::spawn(accept_loop(listener, acceptor, shared.clone()));
        Ok(Self { addr, ca_file, shared, accept })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address to give the probe as `connect_to`.
    pub fn connect_to(&self) -> String {
        format!("127.0.0.1:{}", self.addr.port())
    }

    /// The CA that issued the app's certificate, as PEM.
    pub fn ca_file(&self) -> &Path {
        self.ca_file.path()
    }

    pub fn set_status(&self, status: u16) {
        self.lock().status = status;
    }

    pub fn set_location(&self, location: Option<String>) {
        self.lock().location = location;
    }

    /// Requests answered (a connection whose TLS handshake failed sent none).
    pub fn requests(&self) -> usize {
        self.lock().hosts.len()
    }

    /// The `Host` of every request, in order.
    pub fn hosts(&self) -> Vec<String> {
        self.lock().hosts.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for StandInApp {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// A CA's PEM, and an acceptor presenting a certificate for `*.{zone}` and `{zone}` that the CA issued.
fn certificates(zone: &str) -> io::Result<(String, TlsAcceptor)> {
    let ca = authority().map_err(io::Error::other)?;
    let key = KeyPair::generate().map_err(io::Error::other)?;
    let cert = leaf(zone).and_then(|params| params.signed_by(&key, &ca)).map_err(io::Error::other)?;
    Ok((ca.pem(), acceptor(&cert, key)?))
}

fn authority() -> Result<CertifiedIssuer<'static, KeyPair>, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "previewd stand-in CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    CertifiedIssuer::self_signed(params, KeyPair::generate()?)
}

fn leaf(zone: &str) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(vec![format!("*.{zone}"), zone.to_owned()])?;
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, zone);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

/// rustls is built with two crypto providers in this workspace, so the one to use is named.
fn acceptor(cert: &Certificate, key: KeyPair) -> io::Result<TlsAcceptor> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(io::Error::other)?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], PrivateKeyDer::from(key))
        .map_err(io::Error::other)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Accepts until aborted; the connections in flight are held in a set, so they end with it.
async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, shared: Arc<Mutex<Shared>>) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        match listener.accept().await {
            Ok((stream, _)) => {
                connections.spawn(answer(stream, acceptor.clone(), shared.clone()));
            }
            Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
        }
    }
}

/// One connection: the handshake, one request head, one answer, closed.
async fn answer(stream: TcpStream, acceptor: TlsAcceptor, shared: Arc<Mutex<Shared>>) -> io::Result<()> {
    let mut tls = tokio::time::timeout(HEAD_TIMEOUT, acceptor.accept(stream)).await??;
    let head = tokio::time::timeout(HEAD_TIMEOUT, read_head(&mut tls)).await??;
    let host = host_of(&head).unwrap_or_default();
    let (status, location) = {
        let mut s = shared.lock().unwrap_or_else(PoisonError::into_inner);
        s.hosts.push(host.clone());
        (s.status, s.location.clone())
    };
    tls.write_all(reply(status, location.as_deref(), &host).as_bytes()).await?;
    tls.shutdown().await
}

/// The bytes up to the blank line that ends a request head.
async fn read_head(stream: &mut (impl AsyncRead + Unpin)) -> io::Result<String> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > HEAD_MAX {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request head too long"));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        head.extend_from_slice(&chunk[..n]);
    }
    Ok(String::from_utf8_lossy(&head).into_owned())
}

fn host_of(head: &str) -> Option<String> {
    head.lines()
        .skip(1)
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("host"))
        .map(|(_, value)| value.trim().to_owned())
}

fn reply(status: u16, location: Option<&str>, host: &str) -> String {
    let reason = StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("Stand-in");
    let body = format!(
        "<!doctype html>\n<title>previewd demo app</title>\n<h1>previewd demo app — {}</h1>\n",
        escape_html(host)
    );
    let location = location.map(|l| format!("Location: {l}\r\n")).unwrap_or_default();
    format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\
         Connection: close\r\n{location}\r\n{body}",
        body.len()
    )
}

fn escape_html(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_is_read_from_the_head_and_shown_escaped() {
        let head = "GET / HTTP/1.1\r\nuser-agent: x\r\nHOST: shop.preview.test:8443\r\n\r\n";
        assert_eq!(host_of(head).as_deref(), Some("shop.preview.test:8443"));
        assert_eq!(host_of("GET / HTTP/1.1\r\n\r\n"), None);
        let answer = reply(302, Some("/login"), "<b>");
        assert!(answer.starts_with("HTTP/1.1 302 Found\r\n"));
        assert!(answer.contains("\r\nLocation: /login\r\n"));
        assert!(answer.contains("previewd demo app — &lt;b&gt;"));
    }
}
