//! Whether an environment's URL answers as its app: one GET, redirects never followed, judged by what came
//! back (a 2xx, or a 3xx that stays on the URL's own host) or by why nothing did (no such name, a TLS
//! failure, a refused connection, a timeout). Every answer describes itself in one line that says what to
//! do, with no secret and no raw outside text in it.
//!
//! `connect_to` works as curl's `--connect-to`: the connection goes to that address while the request,
//! the `Host` header and the TLS server name stay the URL's, so a wildcard certificate for the zone is
//! what is checked. hyper-util keeps a resolved address's port unless the URL names a port itself; when
//! it does, the request is sent to the pinned port with the URL's own authority kept in `Host`.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use previewd_domain::text;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::{Client, Url};
use tokio::sync::Semaphore;

/// A healthy app behind a load balancer answers well within this; a slower one is not ready for people.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A TCP handshake to a load balancer takes milliseconds; a silent drop (a security group) should not
/// use the whole request's time.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How the probe names itself, so an app's logs and a firewall rule can tell it from visitors.
pub const USER_AGENT: &str = "previewd-readiness";

/// What to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub url: String,
    /// `HOST:PORT` to connect to instead of resolving the URL's host (as curl's `--connect-to`).
    pub connect_to: Option<String>,
    /// A PEM file of certificates trusted in addition to the usual roots.
    pub ca_file: Option<PathBuf>,
}

/// What the URL answered, or why it answered nothing. Texts in the variants are as heard (a resolver's, a
/// TLS library's message); [`Answer::describe`] makes them safe to show, once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A 2xx, or a 3xx to a place on the URL's own host.
    Passed { status: u16 },
    /// A 3xx to another host: a login or a wake page stands in front of the app.
    OffHost { status: u16, location: String },
    /// Any other status.
    Status(u16),
    /// The name (the URL's host, or `connect_to`'s) does not resolve.
    NoName(String),
    /// The TLS handshake failed, the certificate included.
    Tls(String),
    /// The connection was refused, reset or closed without an answer.
    Refused(String),
    /// No answer within [`REQUEST_TIMEOUT`].
    TimedOut,
    /// The target itself cannot be probed (a bad URL, an unreadable CA file).
    Invalid(String),
}

impl Answer {
    pub fn passed(&self) -> bool {
        matches!(self, Answer::Passed { .. })
    }

    /// One line: what the URL answered and what to do about it.
    pub fn describe(&self) -> String {
        match self {
            Answer::Passed { status } => format!("the URL answered {status}: the app is up"),
            Answer::OffHost { status, location } => format!(
                "the URL answered {status} sending visitors to {}, another host (a login or a wake page, not the \
                 app); let the readiness probe reach the app without it",
                text::quote(location)
            ),
            Answer::Status(code) => describe_status(*code),
            Answer::NoName(m) => format!(
                "the name does not resolve ({}); check the environment's DNS record and wait for it to reach \
                 the resolvers",
                text::quote(m)
            ),
            Answer::Tls(m) => format!(
                "the TLS handshake failed ({}); check that the certificate covers the URL's host and comes from \
                 a trusted authority",
                text::quote(m)
            ),
            Answer::Refused(m) => format!(
                "the connection failed ({}); check the load balancer's listener and that its security group \
                 lets previewd in",
                text::quote(m)
            ),
            Answer::TimedOut => format!(
                "no answer within {} s; check the load balancer's security group and that the service's tasks \
                 are running",
                REQUEST_TIMEOUT.as_secs()
            ),
            Answer::Invalid(m) => format!("cannot probe: {}", text::quote(m)),
        }
    }
}

fn describe_status(code: u16) -> String {
    let what = match code {
        502 | 503 => "no healthy target; look at the service's tasks and its health check path",
        504 => "the app did not answer the load balancer in time; look at the service's tasks and logs",
        401 | 403 => "the probe was refused; let an unauthenticated GET of this path through",
        404 => "nothing serves this path; check the listener rule for the host and the app's routes",
        300..=399 => "a redirect without a usable Location; answer 2xx or redirect on the URL's own host",
        500..=599 => "the app failed on this request; look at its logs",
        _ => "not a success; make the app answer 2xx on this path",
    };
    let who = if matches!(code, 502..=504) { "the load balancer" } else { "the URL" };
    format!("{who} answered {code}: {what}")
}

/// Probes URLs, at most `max_concurrent` at once, with one HTTP client per (`connect_to` address, CA file).
#[derive(Debug)]
pub struct Prober {
    clients: Mutex<HashMap<ClientKey, Client>>,
    permits: Semaphore,
}

type ClientKey = (Option<SocketAddr>, Option<PathBuf>);

/// Clients kept at most; the cache starts over when full.
const CLIENTS_MAX: usize = 64;

impl Prober {
    pub fn new(max_concurrent: usize) -> Self {
        Self { clients: Mutex::new(HashMap::new()), permits: Semaphore::new(max_concurrent.max(1)) }
    }

    /// One GET of the target's URL, judged. A CA file is read when its client is first built.
    pub async fn probe(&self, t: &Target) -> Answer {
        match self.attempt(t).await {
            Ok(answer) | Err(answer) => answer,
        }
    }

    async fn attempt(&self, t: &Target) -> Result<Answer, Answer> {
        let _permit = self.permits.acquire().await.map_err(|_| Answer::Invalid("the prober is closed".into()))?;
        let url = parse_url(&t.url)?;
        let pinned = match &t.connect_to {
            Some(connect_to) => Some(pin(connect_to, &url).await?),
            None => None,
        };
        let client = self.client(pinned, t.ca_file.as_deref())?;
        let response = request(&client, &url, pinned).send().await.map_err(|e| classify(&e))?;
        let location = response.headers().get(reqwest::header::LOCATION).and_then(|v| v.to_str().ok());
        Ok(judge(&url, response.status().as_u16(), location))
    }

    fn client(&self, pinned: Option<SocketAddr>, ca_file: Option<&Path>) -> Result<Client, Answer> {
        let key = (pinned, ca_file.map(Path::to_path_buf));
        let cached = self.clients().get(&key).cloned();
        if let Some(client) = cached {
            return Ok(client);
        }
        let roots = match ca_file {
            Some(path) => read_roots(path)?,
            None => Vec::new(),
        };
        let client = build_client(pinned, roots)
            .map_err(|e| Answer::Invalid(format!("cannot build an HTTP client: {}", deepest(&e))))?;
        let mut clients = self.clients();
        // Bounded: a `connect_to` name whose addresses rotate makes a client per address.
        if clients.len() >= CLIENTS_MAX {
            clients.clear();
        }
        clients.insert(key, client.clone());
        Ok(client)
    }

    fn clients(&self) -> MutexGuard<'_, HashMap<ClientKey, Client>> {
        self.clients.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn parse_url(raw: &str) -> Result<Url, Answer> {
    // The URL itself is not quoted back: it could carry credentials.
    let url = Url::parse(raw).map_err(|e| Answer::Invalid(format!("the URL does not parse: {e}")))?;
    match url.scheme() {
        "http" | "https" => Ok(url),
        _ => Err(Answer::Invalid("the URL is not http or https".into())),
    }
}

/// `connect_to` resolved to one address. hyper-util connects straight to an IP literal in the URL, never
/// asking the resolver, so pinning needs a URL with a host name.
async fn pin(connect_to: &str, url: &Url) -> Result<SocketAddr, Answer> {
    if url.domain().is_none() {
        return Err(Answer::Invalid("connect_to needs a URL with a host name, not an IP address".into()));
    }
    let shown = connect_to;
    let found = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::lookup_host(connect_to))
        .await
        .map_err(|_| Answer::TimedOut)?;
    match found {
        Ok(mut addrs) => addrs.next().ok_or_else(|| Answer::NoName(format!("{shown} has no address"))),
        Err(e) if e.kind() == io::ErrorKind::InvalidInput => {
            Err(Answer::Invalid(format!("connect_to {shown} is not HOST:PORT")))
        }
        Err(e) => Err(Answer::NoName(format!("{connect_to}: {e}"))),
    }
}

/// The certificates of a PEM file. Read with blocking I/O: it happens once per client, for a few KB.
fn read_roots(path: &Path) -> Result<Vec<reqwest::Certificate>, Answer> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| Answer::Invalid(format!("cannot read the CA file {shown}: {e}")))?;
    let roots = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|_| Answer::Invalid(format!("the CA file {shown} is not a PEM bundle")))?;
    if roots.is_empty() {
        return Err(Answer::Invalid(format!("the CA file {shown} holds no certificate")));
    }
    Ok(roots)
}

/// Idle connections are not kept: each probe opens its own, so a fixed listener or a moved DNS record is
/// seen at once and a dead load balancer is not hidden behind a pooled connection.
fn build_client(pinned: Option<SocketAddr>, roots: Vec<reqwest::Certificate>) -> reqwest::Result<Client> {
    let mut builder = Client::builder()
        .use_rustls_tls()
        .user_agent(USER_AGENT)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_max_idle_per_host(0)
        .no_proxy()
        .dns_resolver(Arc::new(Resolver { pinned }));
    for root in roots {
        builder = builder.add_root_certificate(root);
    }
    builder.build()
}

/// The GET to send. hyper-util takes the URL's explicit port over the resolved one, so with `connect_to`
/// and an explicit port the request goes to the pinned port, and `Host` keeps the URL's authority.
fn request(client: &Client, url: &Url, pinned: Option<SocketAddr>) -> reqwest::RequestBuilder {
    let Some(addr) = pinned.filter(|addr| url.port().is_some_and(|port| port != addr.port())) else {
        return client.get(url.clone());
    };
    let authority = format!("{}:{}", url.host_str().unwrap_or_default(), url.port().unwrap_or_default());
    let mut sent = url.clone();
    // The URL has a port already, so it can take another: this cannot fail.
    let _ = sent.set_port(Some(addr.port()));
    client.get(sent).header(reqwest::header::HOST, authority)
}

/// What a response means: 2xx passes; a 3xx passes only when its `Location` stays on the URL's host.
fn judge(url: &Url, status: u16, location: Option<&str>) -> Answer {
    match status {
        200..=299 => Answer::Passed { status },
        300..=399 => match location.and_then(|l| url.join(l).ok()) {
            Some(target) if target.host_str().is_some() && target.host_str() == url.host_str() => {
                Answer::Passed { status }
            }
            Some(target) => Answer::OffHost { status, location: shown(&target) },
            None => Answer::Status(status),
        },
        _ => Answer::Status(status),
    }
}

/// A redirect's target as shown: no credentials, query or fragment (an OIDC request carries state there).
fn shown(target: &Url) -> String {
    let mut t = target.clone();
    t.set_query(None);
    t.set_fragment(None);
    let _ = t.set_username("");
    let _ = t.set_password(None);
    t.to_string()
}

/// Why a request got no response, from the first cause in its chain that says.
fn classify(error: &reqwest::Error) -> Answer {
    if error.is_timeout() {
        return Answer::TimedOut;
    }
    if error.is_builder() {
        return Answer::Invalid(format!("cannot build the request: {}", deepest(error)));
    }
    for link in chain(error) {
        if let Some(e) = link.downcast_ref::<NoSuchName>() {
            return Answer::NoName(e.0.clone());
        }
        if let Some(e) = link.downcast_ref::<rustls::Error>() {
            return Answer::Tls(e.to_string());
        }
        if let Some(e) = link.downcast_ref::<io::Error>().filter(|e| is_refusal(e.kind())) {
            return Answer::Refused(e.to_string());
        }
    }
    Answer::Refused(deepest(error))
}

fn is_refusal(kind: io::ErrorKind) -> bool {
    matches!(kind, io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted)
}

/// An error and its causes. An `io::Error`'s `source()` skips the error it wraps (it returns that
/// error's source), and TLS failures arrive as a rustls error inside an `io::Error` inside another, so the
/// wrapped error is taken from `get_ref()` instead.
fn chain<'a>(error: &'a (dyn StdError + 'static)) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |&e| cause(e))
}

fn cause<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a (dyn StdError + 'static)> {
    match error.downcast_ref::<io::Error>() {
        Some(io) => io.get_ref().map(|inner| inner as &(dyn StdError + 'static)),
        None => error.source(),
    }
}

/// The deepest cause's text: it says most, and unlike reqwest's own error it never names the URL.
fn deepest(error: &reqwest::Error) -> String {
    chain(error).skip(1).last().map_or_else(|| "no response".to_owned(), |e| e.to_string())
}

/// The name did not resolve; carried through reqwest and hyper-util as the resolver's own error, so it is
/// told apart by type rather than by message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NoSuchName(String);

type BoxError = Box<dyn StdError + Send + Sync>;

/// Resolves every name to the pinned address when there is one, else as the system does. Port 0 lets
/// hyper-util put the scheme's port (or the URL's) in.
#[derive(Debug)]
struct Resolver {
    pinned: Option<SocketAddr>,
}

impl Resolve for Resolver {
    fn resolve(&self, name: Name) -> Resolving {
        let pinned = self.pinned;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs = match pinned {
                Some(addr) => vec![addr],
                None => lookup(&host).await?,
            };
            Ok::<Addrs, BoxError>(Box::new(addrs.into_iter()))
        })
    }
}

async fn lookup(host: &str) -> Result<Vec<SocketAddr>, NoSuchName> {
    match tokio::net::lookup_host((host, 0)).await {
        Ok(addrs) => {
            let addrs: Vec<SocketAddr> = addrs.collect();
            if addrs.is_empty() { Err(NoSuchName(format!("{host} has no address"))) } else { Ok(addrs) }
        }
        Err(e) => Err(NoSuchName(format!("{host}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url() -> Url {
        Url::parse("https://shop-main.preview.example.com/health").expect("url")
    }

    #[test]
    fn success_passes_and_errors_do_not() {
        assert_eq!(judge(&url(), 200, None), Answer::Passed { status: 200 });
        assert_eq!(judge(&url(), 204, Some("https://elsewhere.example.com/")), Answer::Passed { status: 204 });
        assert_eq!(judge(&url(), 503, None), Answer::Status(503));
        assert_eq!(judge(&url(), 404, None), Answer::Status(404));
        assert_eq!(judge(&url(), 101, None), Answer::Status(101));
        assert!(judge(&url(), 200, None).passed());
        assert!(!judge(&url(), 503, None).passed());
    }

    #[test]
    fn a_redirect_passes_only_on_the_urls_own_host() {
        let on_host =
            ["/login", "login", "https://shop-main.preview.example.com/app", "//SHOP-MAIN.preview.example.com/x"];
        for location in on_host {
            assert_eq!(judge(&url(), 302, Some(location)), Answer::Passed { status: 302 }, "{location}");
        }
        assert_eq!(
            judge(&url(), 302, Some("https://login.example.com/oauth2/authorize?client_id=abc&state=xyz#f")),
            Answer::OffHost { status: 302, location: "https://login.example.com/oauth2/authorize".into() }
        );
        assert_eq!(
            judge(&url(), 307, Some("https://user:pw@wake.example.com/")),
            Answer::OffHost { status: 307, location: "https://wake.example.com/".into() }
        );
        assert!(matches!(judge(&url(), 301, Some("javascript:alert(1)")), Answer::OffHost { .. }));
        assert_eq!(judge(&url(), 302, None), Answer::Status(302));
        assert_eq!(judge(&url(), 302, Some("http://[::1")), Answer::Status(302));
    }

    #[test]
    fn descriptions_say_what_to_do() {
        assert_eq!(
            Answer::Status(503).describe(),
            "the load balancer answered 503: no healthy target; look at the service's tasks and its health check path"
        );
        assert!(Answer::Status(502).describe().contains("no healthy target"));
        assert!(Answer::Status(404).describe().starts_with("the URL answered 404: nothing serves this path"));
        assert!(Answer::Status(500).describe().contains("look at its logs"));
        assert!(Answer::TimedOut.describe().contains("within 5 s"));
        assert!(Answer::NoName("x.invalid: not known".into()).describe().contains("DNS record"));
        assert!(Answer::Tls("invalid peer certificate: UnknownIssuer".into()).describe().contains("certificate"));
        let off = Answer::OffHost { status: 302, location: "https://login.example.com/".into() };
        assert!(off.describe().contains("https://login.example.com/, another host"));
    }

    #[test]
    fn descriptions_are_one_printable_line() {
        let hostile = "evil\r\nForged: yes\u{1b}[2J";
        let answers = [
            Answer::OffHost { status: 302, location: hostile.into() },
            Answer::NoName(hostile.into()),
            Answer::Tls(hostile.into()),
            Answer::Refused(hostile.into()),
            Answer::Invalid(hostile.into()),
            Answer::Status(418),
            Answer::Passed { status: 200 },
        ];
        for answer in answers {
            let line = answer.describe();
            assert!(!line.chars().any(text::is_unsafe), "{line}");
        }
    }

    #[test]
    fn an_explicit_port_is_sent_to_the_pinned_one_with_the_urls_authority() {
        let client = Client::new();
        let pinned = Some(SocketAddr::from(([127, 0, 0, 1], 4443)));
        let explicit = Url::parse("https://shop.preview.example.com:8443/").expect("url");
        let sent = request(&client, &explicit, pinned).build().expect("request");
        assert_eq!(sent.url().as_str(), "https://shop.preview.example.com:4443/");
        assert_eq!(sent.headers()[reqwest::header::HOST], "shop.preview.example.com:8443");
        let plain = request(&client, &url(), pinned).build().expect("request");
        assert_eq!(plain.url(), &url());
        assert!(plain.headers().get(reqwest::header::HOST).is_none());
    }

    #[test]
    fn urls_that_cannot_be_probed_are_invalid() {
        assert!(matches!(parse_url("not a url"), Err(Answer::Invalid(_))));
        assert!(matches!(parse_url("ftp://files.example.com/"), Err(Answer::Invalid(_))));
        assert!(parse_url("https://shop.preview.example.com/").is_ok());
    }
}
