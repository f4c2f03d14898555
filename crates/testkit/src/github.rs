//! A stateful fake of the GitHub REST API, for octocrab: branches with their heads, files at commits,
//! branch listings paginated as GitHub does (a `Link` header, a per-page cap), `ETag`s with conditional
//! requests, an account of every request, and faults injected at the wire (error documents, HTML pages
//! from a proxy, empty or broken pages, answers that never come) so the client's own parsing and retries
//! are exercised. It can sit under a path prefix, as GitHub Enterprise Server's `/api/v3` does. Paths are
//! decoded segment by segment, so a branch holding `/`, `#` or `%` reaches it intact.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::header::{CONTENT_TYPE, HOST, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use serde_json::json;
use sha2::{Digest as _, Sha256};

/// GitHub's page size when a listing names no `per_page`.
const DEFAULT_PER_PAGE: usize = 30;
/// GitHub serves at most 100 items a page whatever `per_page` asks.
const MAX_PER_PAGE: usize = 100;
/// How far ahead an injected 403 puts `x-ratelimit-reset`, so a client honouring it waits briefly.
const RATE_LIMIT_RESET_AFTER: Duration = Duration::from_secs(60);

/// A failure to answer with instead of the real thing; see [`FakeGitHub::inject`].
#[derive(Debug, Clone)]
pub enum Fault {
    /// HTTP status with GitHub's JSON error document ({"message": …, "documentation_url": …}).
    Status(u16),
    /// 200 with an HTML body (a proxy's or captive portal's error page), Content-Type text/html.
    Html,
    /// 200 with an empty JSON array `[]` (only meaningful for listings).
    EmptyList,
    /// No answer for this long (the client should time out first); then the real answer.
    Delay(Duration),
    /// The requested page answered normally but without any `Link` header, so a client that trusts it
    /// stops early although more pages exist: broken pagination.
    NoLink,
}

/// Which requests an injected [`Fault`] applies to. Matched on the path alone, whatever the method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `/repos/{o}/{r}/branches`, any page.
    BranchList,
    /// `/repos/{o}/{r}/branches` for this page only (a missing `page` is page 1).
    BranchListPage(usize),
    /// `/repos/{o}/{r}/branches/{name}`.
    Branch,
    /// `/repos/{o}/{r}`.
    Repo,
    /// `/repos/{o}/{r}/contents/{path}`.
    Contents,
    /// Every request.
    Any,
}

/// What a request asks for, as far as fault targets care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Repo,
    BranchList { page: usize },
    Branch,
    Contents,
    Other,
}

impl Endpoint {
    fn of(segs: &[&str], page: usize) -> Self {
        match segs {
            ["repos", _, _] => Self::Repo,
            ["repos", _, _, "branches"] => Self::BranchList { page },
            ["repos", _, _, "branches", _] => Self::Branch,
            ["repos", _, _, "contents", ..] => Self::Contents,
            _ => Self::Other,
        }
    }
}

impl Target {
    fn matches(self, endpoint: Endpoint) -> bool {
        match (self, endpoint) {
            (Self::Any, _) | (Self::BranchList, Endpoint::BranchList { .. }) => true,
            (Self::BranchListPage(want), Endpoint::BranchList { page }) => want == page,
            (Self::Branch, Endpoint::Branch) | (Self::Repo, Endpoint::Repo) => true,
            (Self::Contents, Endpoint::Contents) => true,
            _ => false,
        }
    }
}

#[derive(Debug)]
struct Injected {
    target: Target,
    fault: Fault,
    remaining: usize,
}

#[derive(Debug)]
struct GhState {
    /// (repo, branch) → head sha
    branches: BTreeMap<(String, String), String>,
    /// repositories GitHub shows (any that ever had a branch)
    repos: BTreeSet<String>,
    /// (repo, sha, path) → text
    files: BTreeMap<(String, String, String), String>,
    /// every request path under the prefix, decoded
    requests: Vec<String>,
    /// every request: (method, path and query as sent less the prefix, status answered)
    calls: Vec<(String, String, u16)>,
    /// answer this many requests with 502
    fail_next: usize,
    /// faults in the order injected; the first that matches a request answers it
    faults: Vec<Injected>,
    /// at most this many items a page, whatever `per_page` asks
    page_cap: usize,
    /// repositories answered with 404 throughout, as for a token that lost access
    hidden: BTreeSet<String>,
}

impl Default for GhState {
    fn default() -> Self {
        Self {
            branches: BTreeMap::new(),
            repos: BTreeSet::new(),
            files: BTreeMap::new(),
            requests: Vec::new(),
            calls: Vec::new(),
            fail_next: 0,
            faults: Vec::new(),
            page_cap: MAX_PER_PAGE,
            hidden: BTreeSet::new(),
        }
    }
}

impl GhState {
    /// Consumes one use of the first injected fault that matches.
    fn take_fault(&mut self, endpoint: Endpoint) -> Option<Fault> {
        let i = self.faults.iter().position(|f| f.target.matches(endpoint))?;
        let injected = &mut self.faults[i];
        injected.remaining -= 1;
        let fault = injected.fault.clone();
        if injected.remaining == 0 {
            self.faults.remove(i);
        }
        Some(fault)
    }
}

#[derive(Debug, Clone)]
pub struct FakeGitHub {
    state: Arc<Mutex<GhState>>,
    addr: SocketAddr,
    prefix: String,
}

impl FakeGitHub {
    /// Serves on a free port; `prefix` is `""` for github.com or `"/api/v3"` for Enterprise.
    pub async fn start(prefix: &str) -> Self {
        Self::start_on("127.0.0.1:0", prefix).await
    }

    pub async fn start_on(addr: &str, prefix: &str) -> Self {
        let state = Arc::new(Mutex::new(GhState::default()));
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let fake = Self { state: state.clone(), addr, prefix: prefix.to_owned() };
        let app = Router::new().fallback(handle).with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        fake
    }

    /// The base URL to configure as `PREVIEWD_GITHUB_API_URL`.
    pub fn api_url(&self) -> String {
        format!("http://{}{}", self.addr, self.prefix)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GhState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_branch(&self, repo: &str, branch: &str, sha: &str) {
        let mut st = self.lock();
        st.repos.insert(repo.to_owned());
        st.branches.insert((repo.to_owned(), branch.to_owned()), sha.to_owned());
    }

    pub fn delete_branch(&self, repo: &str, branch: &str) {
        self.lock().branches.remove(&(repo.to_owned(), branch.to_owned()));
    }

    pub fn branch_count(&self, repo: &str) -> usize {
        self.lock().branches.keys().filter(|(r, _)| r == repo).count()
    }

    pub fn set_file(&self, repo: &str, sha: &str, path: &str, text: &str) {
        self.lock().files.insert((repo.to_owned(), sha.to_owned(), path.to_owned()), text.to_owned());
    }

    /// Answers 404 for the repository and everything in it (`false`: shows it again).
    pub fn hide_repo(&self, repo: &str, hidden: bool) {
        let mut st = self.lock();
        if hidden {
            st.hidden.insert(repo.to_owned());
        } else {
            st.hidden.remove(repo);
        }
    }

    /// Serves at most `n` items a page whatever `per_page` asks (GitHub's cap, and the default, is 100), so
    /// a test can make a client that assumes its `per_page` was honoured miss items.
    pub fn set_page_size_cap(&self, n: usize) {
        assert!(n > 0, "a page holds at least one item");
        self.lock().page_cap = n;
    }

    /// Answers the next `n` requests, whatever they ask, with 502.
    pub fn fail_next(&self, n: usize) {
        self.lock().fail_next = n;
    }

    /// Answers the next `times` requests matching `target` with `fault`. Faults apply after
    /// [`fail_next`](Self::fail_next) and before anything else; when several match, the first injected wins.
    pub fn inject(&self, target: Target, fault: Fault, times: usize) {
        if let Fault::Status(code) = fault {
            assert!(StatusCode::from_u16(code).is_ok(), "{code} is not an HTTP status");
        }
        if times > 0 {
            self.lock().faults.push(Injected { target, fault, remaining: times });
        }
    }

    /// Every request path under the prefix, decoded, without the query.
    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }

    /// Every request as `(method, path and query as sent less the prefix, status)`; a delayed request is
    /// listed when it arrives, with the status it would get.
    pub fn calls(&self) -> Vec<(String, String, u16)> {
        self.lock().calls.clone()
    }

    pub fn request_count(&self) -> usize {
        self.lock().calls.len()
    }

    /// Requests answered `304 Not Modified` since the last [`reset_requests`](Self::reset_requests).
    pub fn not_modified_count(&self) -> usize {
        self.lock().calls.iter().filter(|(_, _, status)| *status == 304).count()
    }

    /// Forgets every request seen so far (both [`requests`](Self::requests) and [`calls`](Self::calls)).
    pub fn reset_requests(&self) {
        let mut st = self.lock();
        st.requests.clear();
        st.calls.clear();
    }
}

/// An answer built under the lock and sent after it is released, so a delay never blocks other requests.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(status: StatusCode, value: &serde_json::Value) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
        Self { status, headers, body: serde_json::to_vec(value).expect("JSON serialises") }
    }

    fn ok(value: &serde_json::Value) -> Self {
        Self::json(StatusCode::OK, value)
    }

    /// GitHub's error document, with the headers its clients look at for the statuses that have them.
    fn error(status: StatusCode) -> Self {
        let message = match status.as_u16() {
            401 => "Bad credentials",
            403 => "API rate limit exceeded",
            404 => "Not Found",
            500 | 502 => "Server Error",
            _ => status.canonical_reason().unwrap_or("Unexpected error"),
        };
        let mut reply = Self::json(
            status,
            &json!({
                "message": message,
                "documentation_url": "https://docs.github.com/rest",
                "status": status.as_str(),
            }),
        );
        if status == StatusCode::FORBIDDEN {
            let reset = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .saturating_add(RATE_LIMIT_RESET_AFTER)
                .as_secs();
            reply.header("x-ratelimit-limit", "5000");
            reply.header("x-ratelimit-remaining", "0");
            reply.header("x-ratelimit-used", "5000");
            reply.header("x-ratelimit-resource", "core");
            reply.header("x-ratelimit-reset", &reset.to_string());
        }
        reply
    }

    fn not_found() -> Self {
        Self::error(StatusCode::NOT_FOUND)
    }

    /// What a captive portal or a misconfigured proxy serves in place of the API.
    fn html() -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        let body = b"<!DOCTYPE html>\n<html><head><title>Sign in to continue</title></head>\n\
            <body><h1>Network access requires sign-in</h1><p>Please log in to continue.</p></body></html>\n";
        Self { status: StatusCode::OK, headers, body: body.to_vec() }
    }

    fn header(&mut self, name: &'static str, value: &str) {
        let value = HeaderValue::from_str(value).expect("a valid header value");
        self.headers.insert(HeaderName::from_static(name), value);
    }

    /// A strong validator over the exact bytes, so it changes whenever the body does.
    fn etag(&self) -> String {
        format!("\"{}\"", hex::encode(Sha256::digest(&self.body)))
    }

    /// Adds the `ETag` to a 200 and turns it into a 304 if the client already holds that version.
    fn conditional(mut self, method: &Method, if_none_match: Option<&str>) -> Self {
        if *method != Method::GET || self.status != StatusCode::OK || self.headers.contains_key("x-fake-fault") {
            return self;
        }
        let etag = self.etag();
        // If-None-Match compares weakly and may list several tags.
        let held = if_none_match.is_some_and(|v| {
            v.split(',').map(str::trim).any(|t| t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag)
        });
        if held {
            self = Self { status: StatusCode::NOT_MODIFIED, headers: HeaderMap::new(), body: Vec::new() };
        }
        self.header("etag", &etag);
        self
    }

    fn into_response(self) -> Response {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
    }
}

fn branch_json(name: &str, sha: &str) -> serde_json::Value {
    json!({
        "name": name,
        "commit": { "sha": sha, "url": format!("https://api.github.com/commits/{sha}") },
        "protected": false,
        "_links": { "self": "https://api.github.com/branches", "html": "https://github.com/branches" },
    })
}

/// The request as the answer needs it: everything is read before the lock is taken.
#[derive(Debug)]
struct Asked<'a> {
    /// The host the client addressed, for absolute URLs in `Link`.
    host: String,
    /// The path as sent, prefix included, still percent-encoded.
    raw_path: &'a str,
    /// Query pairs in the order sent.
    query: Vec<(String, String)>,
}

impl Asked<'_> {
    fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// This same request for another page, as GitHub writes it in `Link`: the query kept, `page` last.
    fn page_url(&self, page: usize) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (k, v) in self.query.iter().filter(|(k, _)| k != "page") {
            query.append_pair(k, v);
        }
        query.append_pair("page", &page.to_string());
        format!("http://{}{}?{}", self.host, self.raw_path, query.finish())
    }

    /// GitHub's `Link` header for `page` of `last`: prev, next, last, first, each only where it applies,
    /// and no header at all for a listing that fits on one page.
    fn link(&self, page: usize, last: usize) -> Option<String> {
        if last <= 1 && page <= 1 {
            return None;
        }
        let mut rels = Vec::new();
        if page > 1 {
            rels.push((page - 1, "prev"));
        }
        if page < last {
            rels.push((page + 1, "next"));
            rels.push((last, "last"));
        }
        if page > 1 {
            rels.push((1, "first"));
        }
        let parts: Vec<String> =
            rels.into_iter().map(|(p, rel)| format!("<{}>; rel=\"{rel}\"", self.page_url(p))).collect();
        Some(parts.join(", "))
    }
}

async fn handle(State(fake): State<FakeGitHub>, req: Request) -> Response {
    let method = req.method().clone();
    let headers = req.headers();
    let asked = Asked {
        host: headers.get(HOST).and_then(|h| h.to_str().ok()).map_or_else(|| fake.addr.to_string(), str::to_owned),
        raw_path: req.uri().path(),
        query: form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect(),
    };
    let if_none_match = headers.get(IF_NONE_MATCH).and_then(|v| v.to_str().ok());
    let sent = req.uri().path_and_query().map_or("/", |pq| pq.as_str());
    let sent = sent.strip_prefix(fake.prefix.as_str()).unwrap_or(sent).to_owned();

    let (reply, delay) = {
        let mut st = fake.lock();
        let (reply, delay) = answer(&fake, &mut st, &asked);
        let reply = reply.conditional(&method, if_none_match);
        st.calls.push((method.to_string(), sent, reply.status.as_u16()));
        (reply, delay)
    };
    if let Some(delay) = delay {
        tokio::time::sleep(delay).await;
    }
    reply.into_response()
}

/// The answer, and how long to hold it back.
fn answer(fake: &FakeGitHub, st: &mut GhState, asked: &Asked<'_>) -> (Reply, Option<Duration>) {
    let Some(path) = asked.raw_path.strip_prefix(&fake.prefix) else { return (Reply::not_found(), None) };
    let segs: Vec<String> = path
        .split('/')
        .skip(1)
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    st.requests.push(segs.join("/"));
    if st.fail_next > 0 {
        st.fail_next -= 1;
        return (Reply::error(StatusCode::BAD_GATEWAY), None);
    }
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    // GitHub treats a missing, unparsable or zero page as the first.
    let page = asked.param("page").and_then(|p| p.parse().ok()).unwrap_or(1).max(1);
    let mut delay = None;
    match st.take_fault(Endpoint::of(&segs, page)) {
        Some(Fault::Status(code)) => {
            return (Reply::error(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)), None);
        }
        Some(Fault::Html) => return (Reply::html(), None),
        Some(Fault::EmptyList) => return (Reply::ok(&json!([])), None),
        Some(Fault::Delay(d)) => delay = Some(d),
        // The fault's answer must reach the client as it is, not as a 304 for the healthy page it resembles.
        Some(Fault::NoLink) => {
            let mut reply = route(st, asked, &segs, page, false);
            reply.header("x-fake-fault", "no-link");
            return (reply, None);
        }
        None => {}
    }
    (route(st, asked, &segs, page, true), delay)
}

fn route(st: &GhState, asked: &Asked<'_>, segs: &[&str], page: usize, link: bool) -> Reply {
    if let ["repos", owner, name, ..] = segs
        && st.hidden.contains(&format!("{owner}/{name}"))
    {
        return Reply::not_found();
    }
    match segs {
        ["repos", owner, name] => {
            let repo = format!("{owner}/{name}");
            if st.repos.contains(&repo) {
                Reply::ok(&json!({"full_name": repo, "private": true, "default_branch": "main"}))
            } else {
                Reply::not_found()
            }
        }
        ["repos", owner, name, "branches"] => {
            let repo = format!("{owner}/{name}");
            let asked_per_page = asked.param("per_page").and_then(|p| p.parse().ok()).unwrap_or(DEFAULT_PER_PAGE);
            let per_page = asked_per_page.clamp(1, st.page_cap);
            let all: Vec<_> = st.branches.iter().filter(|((r, _), _)| *r == repo).collect();
            let last = all.len().div_ceil(per_page).max(1);
            let items: Vec<_> = all
                .into_iter()
                .skip((page - 1).saturating_mul(per_page))
                .take(per_page)
                .map(|((_, b), sha)| branch_json(b, sha))
                .collect();
            let mut reply = Reply::ok(&serde_json::Value::Array(items));
            if link && let Some(link) = asked.link(page, last) {
                reply.header("link", &link);
            }
            reply
        }
        ["repos", owner, name, "branches", branch] => {
            match st.branches.get(&(format!("{owner}/{name}"), (*branch).to_owned())) {
                Some(sha) => Reply::ok(&branch_json(branch, sha)),
                None => Reply::not_found(),
            }
        }
        ["repos", owner, name, "contents", rest @ ..] => {
            let repo = format!("{owner}/{name}");
            let path = rest.join("/");
            let sha = asked.param("ref").unwrap_or_default().to_owned();
            match st.files.get(&(repo, sha.clone(), path.clone())) {
                Some(text) => Reply::ok(&json!({
                    "type": "file",
                    "encoding": "base64",
                    "size": text.len(),
                    "name": path.rsplit('/').next(),
                    "path": path,
                    "sha": sha,
                    "content": base64::engine::general_purpose::STANDARD.encode(text),
                })),
                None => Reply::not_found(),
            }
        }
        _ => Reply::not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPO: &str = "acme/shop";

    /// A fake under Enterprise's prefix, so every URL the tests see carries it.
    async fn fake_with_branches(n: usize) -> FakeGitHub {
        let fake = FakeGitHub::start("/api/v3").await;
        for i in 0..n {
            fake.set_branch(REPO, &format!("b{i:03}"), &format!("{i:040}"));
        }
        fake
    }

    fn branches_url(fake: &FakeGitHub, query: &str) -> String {
        format!("{}/repos/{REPO}/branches?{query}", fake.api_url())
    }

    fn link_of(response: &reqwest::Response) -> Option<String> {
        response.headers().get("link").map(|v| v.to_str().expect("ASCII").to_owned())
    }

    async fn names(response: reqwest::Response) -> Vec<String> {
        let items: Vec<serde_json::Value> = response.json().await.expect("a JSON list");
        items.iter().map(|b| b["name"].as_str().expect("a name").to_owned()).collect()
    }

    #[tokio::test]
    async fn link_header_walks_three_pages() {
        let fake = fake_with_branches(250).await;
        let http = reqwest::Client::new();
        let base = branches_url(&fake, "per_page=100");
        let at = |page: usize| format!("<{base}&page={page}>");

        let first = http.get(branches_url(&fake, "per_page=100")).send().await.expect("page 1");
        assert_eq!(
            link_of(&first).as_deref(),
            Some(format!(r#"{}; rel="next", {}; rel="last""#, at(2), at(3)).as_str())
        );
        let names1 = names(first).await;
        assert_eq!((names1.len(), names1[0].as_str()), (100, "b000"));

        let second = http.get(branches_url(&fake, "per_page=100&page=2")).send().await.expect("page 2");
        let expected =
            format!(r#"{}; rel="prev", {}; rel="next", {}; rel="last", {}; rel="first""#, at(1), at(3), at(3), at(1));
        assert_eq!(link_of(&second).as_deref(), Some(expected.as_str()));
        assert_eq!(names(second).await[0], "b100");

        let third = http.get(branches_url(&fake, "per_page=100&page=3")).send().await.expect("page 3");
        let link = link_of(&third).expect("a Link header");
        assert!(!link.contains(r#"rel="next""#), "{link}");
        assert!(link.contains(r#"rel="prev""#) && link.contains(r#"rel="first""#), "{link}");
        let names3 = names(third).await;
        assert_eq!((names3.len(), names3[49].as_str()), (50, "b249"));
        assert_eq!(fake.branch_count(REPO), 250);
    }

    #[tokio::test]
    async fn page_size_is_capped() {
        let fake = fake_with_branches(25).await;
        let http = reqwest::Client::new();
        let one = http.get(branches_url(&fake, "per_page=1000")).send().await.expect("listing");
        assert_eq!(link_of(&one), None, "25 branches fit on one page of 100");
        assert_eq!(names(one).await.len(), 25);

        fake.set_page_size_cap(10);
        let capped = http.get(branches_url(&fake, "per_page=100")).send().await.expect("listing");
        let link = link_of(&capped).expect("a Link header");
        assert!(link.ends_with(r#"per_page=100&page=3>; rel="last""#), "{link}");
        assert_eq!(names(capped).await.len(), 10);
    }

    #[tokio::test]
    async fn etag_and_if_none_match_give_304() {
        let fake = fake_with_branches(3).await;
        let http = reqwest::Client::new();
        let url = format!("{}/repos/{REPO}", fake.api_url());
        let first = http.get(&url).send().await.expect("repo");
        assert_eq!(first.status(), 200);
        let etag = first.headers().get("etag").expect("an ETag").to_str().expect("ASCII").to_owned();
        assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");

        let again = http.get(&url).header("if-none-match", &etag).send().await.expect("repo");
        assert_eq!(again.status(), 304);
        assert_eq!(again.headers().get("etag").map(|v| v.to_str().ok()), Some(Some(etag.as_str())));
        assert!(again.bytes().await.expect("body").is_empty());

        // A change to what the listing shows changes its ETag.
        let list = branches_url(&fake, "per_page=10");
        let listed = http.get(&list).send().await.expect("listing");
        let list_etag = listed.headers().get("etag").expect("an ETag").clone();
        fake.set_branch(REPO, "b000", &"f".repeat(40));
        let changed = http.get(&list).header("if-none-match", list_etag).send().await.expect("listing");
        assert_eq!(changed.status(), 200);
        assert_eq!(fake.not_modified_count(), 1);
    }

    #[tokio::test]
    async fn fault_on_second_page_fails_it_once() {
        let fake = fake_with_branches(250).await;
        fake.inject(Target::BranchListPage(2), Fault::Status(500), 1);
        let http = reqwest::Client::new();
        let get = |query: &'static str| http.get(branches_url(&fake, query)).send();
        assert_eq!(get("per_page=100").await.expect("page 1").status(), 200);
        let failed = get("per_page=100&page=2").await.expect("page 2");
        assert_eq!(failed.status(), 500);
        let doc: serde_json::Value = failed.json().await.expect("an error document");
        assert_eq!(doc["message"], "Server Error");
        assert!(doc["documentation_url"].is_string());
        assert_eq!(get("per_page=100&page=2").await.expect("page 2 again").status(), 200);
        assert_eq!(get("per_page=100&page=3").await.expect("page 3").status(), 200);
    }

    #[tokio::test]
    async fn html_empty_and_linkless_faults() {
        let fake = fake_with_branches(250).await;
        let http = reqwest::Client::new();
        fake.inject(Target::Branch, Fault::Html, 1);
        let branch = format!("{}/repos/{REPO}/branches/b001", fake.api_url());
        let html = http.get(&branch).send().await.expect("branch");
        assert_eq!(html.status(), 200);
        let content_type = html.headers().get("content-type").expect("a Content-Type").to_str().expect("ASCII");
        assert!(content_type.starts_with("text/html"), "{content_type}");
        assert!(html.text().await.expect("body").contains("<html>"));
        assert_eq!(http.get(&branch).send().await.expect("branch").status(), 200);

        fake.inject(Target::BranchList, Fault::EmptyList, 1);
        fake.inject(Target::BranchList, Fault::NoLink, 1);
        let empty = http.get(branches_url(&fake, "per_page=100")).send().await.expect("listing");
        assert_eq!(link_of(&empty), None);
        assert!(names(empty).await.is_empty());
        let linkless = http.get(branches_url(&fake, "per_page=100")).send().await.expect("listing");
        assert_eq!(link_of(&linkless), None);
        assert_eq!(names(linkless).await.len(), 100);

        fake.inject(Target::Repo, Fault::Status(401), 1);
        let denied = http.get(format!("{}/repos/{REPO}", fake.api_url())).send().await.expect("repo");
        assert_eq!(denied.status(), 401);
        assert_eq!(denied.json::<serde_json::Value>().await.expect("JSON")["message"], "Bad credentials");
    }

    #[tokio::test]
    async fn a_delay_holds_back_only_its_own_answer() {
        let fake = fake_with_branches(1).await;
        fake.inject(Target::Repo, Fault::Delay(Duration::from_secs(30)), 1);
        let http = reqwest::Client::new();
        let slow = http.get(format!("{}/repos/{REPO}", fake.api_url())).timeout(Duration::from_millis(300)).send();
        let slow = tokio::spawn(slow);
        // Wait until the delayed request has arrived, so the next one runs while it sleeps.
        while fake.request_count() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let quick = http.get(branches_url(&fake, "")).timeout(Duration::from_millis(250)).send().await;
        assert_eq!(quick.expect("not blocked by the delay").status(), 200);
        assert!(slow.await.expect("joined").expect_err("times out").is_timeout());
    }

    #[tokio::test]
    async fn requests_are_accounted() {
        let fake = fake_with_branches(2).await;
        let http = reqwest::Client::new();
        fake.fail_next(1);
        let url = branches_url(&fake, "per_page=1&page=2");
        assert_eq!(http.get(&url).send().await.expect("listing").status(), 502);
        let ok = http.get(&url).send().await.expect("listing");
        let etag = ok.headers().get("etag").expect("an ETag").clone();
        assert_eq!(http.get(&url).header("if-none-match", etag).send().await.expect("listing").status(), 304);
        let missing = format!("{}/repos/{REPO}/branches/feat%2Fx", fake.api_url());
        assert_eq!(http.get(&missing).send().await.expect("branch").status(), 404);

        assert_eq!(fake.request_count(), 4);
        assert_eq!(fake.not_modified_count(), 1);
        let listing = "/repos/acme/shop/branches?per_page=1&page=2";
        let call = |path: &str, status: u16| ("GET".to_owned(), path.to_owned(), status);
        assert_eq!(
            fake.calls(),
            [
                call(listing, 502),
                call(listing, 200),
                call(listing, 304),
                call("/repos/acme/shop/branches/feat%2Fx", 404),
            ]
        );
        assert_eq!(fake.requests().last().map(String::as_str), Some("repos/acme/shop/branches/feat/x"));

        fake.reset_requests();
        assert_eq!((fake.request_count(), fake.requests().len(), fake.not_modified_count()), (0, 0, 0));
    }
}
