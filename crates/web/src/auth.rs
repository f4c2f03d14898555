//! Who may see and act. `PREVIEWD_METRICS_TOKEN`, when set, lets a scraper read `/metrics` and nothing
//! else. With `PREVIEWD_DASHBOARD_TOKEN` set, the dashboard, the API and the metrics need it: `Authorization: Bearer <token>` for programs, and for browsers a login form that sets a session
//! cookie. The cookie is not the token: it is an expiry signed with a key derived from the token
//! (HMAC-SHA256), so it works on every replica, dies with a changed token, and never reveals the token.
//! Actions (POST) refuse requests from another site (their `Origin` names another host) with 403.
//! Without a token the dashboard and API are read-only, and served only when previewd listens on
//! loopback and is asked by a loopback name (a DNS-rebinding page gets nothing). Webhooks carry their own signature and `/healthz` stays open for load balancers.

use std::time::Duration;

use axum::extract::{Form, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use hmac::{Hmac, Mac};
use previewd_domain::Secret;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::AppState;

const COOKIE: &str = "previewd_session";
/// A browser session lasts a working day.
const SESSION: Duration = Duration::from_secs(12 * 3600);
/// A wrong token is answered this late: guessing by the thousand is slowed to a crawl.
const FAILED_LOGIN_DELAY: Duration = Duration::from_secs(1);

const NO_TOKEN_PUBLIC: &str = "previewd listens beyond loopback without PREVIEWD_DASHBOARD_TOKEN: the dashboard \
     and API are refused; set PREVIEWD_DASHBOARD_TOKEN (or dashboard_token) to serve them here";
const NO_TOKEN_ACTIONS: &str = "actions need PREVIEWD_DASHBOARD_TOKEN: without it the dashboard and API are read-only";

/// Equal digests, compared in full: the time taken says nothing about where a guess went wrong.
fn matches(given: &str, token: &Secret) -> bool {
    let (a, b) = (Sha256::digest(given.as_bytes()), Sha256::digest(token.expose().as_bytes()));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn session_mac(token: &Secret, expires_ms: i64) -> Hmac<Sha256> {
    // The key is derived from the token, so a cookie is useless once the token changes.
    let key = Sha256::digest([b"previewd-session-key:".as_slice(), token.expose().as_bytes()].concat());
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(format!("previewd-session:{expires_ms}").as_bytes());
    mac
}

/// A session value: `<expiry ms>.<hex HMAC>`.
fn new_session(token: &Secret) -> String {
    let expires = previewd_store::now_ms() + SESSION.as_millis() as i64;
    format!("{expires}.{}", hex::encode(session_mac(token, expires).finalize().into_bytes()))
}

fn valid_session(value: &str, token: &Secret) -> bool {
    let Some((expires, sig)) = value.split_once('.') else { return false };
    let (Ok(expires), Ok(sig)) = (expires.parse::<i64>(), hex::decode(sig)) else { return false };
    expires > previewd_store::now_ms() && session_mac(token, expires).verify_slice(&sig).is_ok()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

/// Every session cookie the request carries (a site under the same zone can plant a junk one beside ours).
fn sessions(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
}

fn host(headers: &HeaderMap) -> &str {
    headers.get(header::HOST).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// `localhost`, `127.x.y.z` or `[::1]`, on any port: a browser that reached us by another name came
/// through DNS someone else controls (a rebinding attack), and gets nothing without a token.
fn loopback_host(headers: &HeaderMap) -> bool {
    let h = host(headers).to_ascii_lowercase();
    let name = match h.strip_prefix('[') {
        Some(rest) => format!("[{}]", rest.split(']').next().unwrap_or("")),
        None => h.split(':').next().unwrap_or("").to_owned(),
    };
    name == "localhost" || name == "[::1]" || name.parse::<std::net::Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// A POST from another site: the browser says so (`Sec-Fetch-Site`), or its `Origin` names another host
/// than the one it was sent to. Programs send neither and pass.
fn cross_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return !matches!(site, "same-origin" | "none");
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else { return false };
    let origin_host = origin.split_once("://").map_or(origin, |(_, rest)| rest);
    origin == "null" || !origin_host.eq_ignore_ascii_case(host(headers))
}

/// Failures wait here one at a time: guesses in parallel are slowed to one a second in all.
static FAILURES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn slow_down() {
    let _one_at_a_time = FAILURES.lock().await;
    tokio::time::sleep(FAILED_LOGIN_DELAY).await;
}

/// `/metrics`: the metrics token (a read-only credential for Prometheus) lets in there and nowhere else;
/// otherwise as [`require`].
pub(crate) async fn require_for_metrics(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.metrics_token
        && bearer(req.headers()).is_some_and(|t| matches(t, token))
    {
        return next.run(req).await;
    }
    require(State(state), req, next).await
}

pub(crate) async fn require(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let action = req.method() == Method::POST;
    let Some(token) = &state.dashboard_token else {
        if state.public || !loopback_host(req.headers()) {
            return (StatusCode::FORBIDDEN, NO_TOKEN_PUBLIC).into_response();
        }
        if action {
            return (StatusCode::FORBIDDEN, NO_TOKEN_ACTIONS).into_response();
        }
        return next.run(req).await;
    };
    let headers = req.headers();
    let presented = bearer(headers);
    let authorized = presented.is_some_and(|t| matches(t, token)) || sessions(headers).any(|s| valid_session(s, token));
    if !authorized {
        if presented.is_some() {
            slow_down().await; // a wrong bearer token is a guess too
        }
        if req.uri().path() == "/" {
            return login_page(false, StatusCode::UNAUTHORIZED);
        }
        return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "a dashboard token is required")
            .into_response();
    }
    if action && cross_site(headers) {
        return (StatusCode::FORBIDDEN, "a cross-site request: refused").into_response();
    }
    next.run(req).await
}

fn login_page(failed: bool, status: StatusCode) -> Response {
    let note = if failed { "<p class=\"error\" style=\"color:#b00020\">That token is not right.</p>" } else { "" };
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>previewd: sign in</title></head>\
<body style=\"font:15px system-ui,sans-serif;margin:1rem\"><main><h1>previewd</h1>{note}<form method=\"post\" action=\"/login\">\
<label>Dashboard token <input type=\"password\" name=\"token\" autofocus></label> <button>Sign in</button></form></main></body></html>"
    );
    (status, Html(page)).into_response()
}

#[derive(Deserialize)]
pub(crate) struct Login {
    token: String,
}

pub(crate) async fn login(State(state): State<AppState>, headers: HeaderMap, Form(login): Form<Login>) -> Response {
    match &state.dashboard_token {
        Some(token) if matches(&login.token, token) => {
            // Secure everywhere but on loopback (plain http://localhost has no TLS to demand).
            let https = !loopback_host(&headers);
            let cookie = format!(
                "{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
                new_session(token),
                SESSION.as_secs(),
                if https { "; Secure" } else { "" }
            );
            let mut r = Redirect::to("/").into_response();
            if let Ok(v) = cookie.parse() {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Some(_) => {
            slow_down().await;
            login_page(true, StatusCode::UNAUTHORIZED)
        }
        None => Redirect::to("/").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_signed_expiring_and_not_the_token() {
        let token = Secret::new("s3cret-dash");
        let s = new_session(&token);
        assert!(!s.contains("s3cret-dash"));
        assert!(valid_session(&s, &token));
        assert!(!valid_session(&s, &Secret::new("another-token")), "dies with a changed token");
        let (expires, sig) = s.split_once('.').expect("shape");
        let later = expires.parse::<i64>().expect("ms") + 1_000_000;
        assert!(!valid_session(&format!("{later}.{sig}"), &token), "the expiry is signed");
        let past = previewd_store::now_ms() - 1;
        let old = format!("{past}.{}", hex::encode(session_mac(&token, past).finalize().into_bytes()));
        assert!(!valid_session(&old, &token), "expired");
    }

    #[test]
    fn cross_site_posts_are_recognised() {
        let headers = |origin: Option<&str>| {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, "previewd.example.com".parse().expect("host"));
            if let Some(o) = origin {
                h.insert(header::ORIGIN, o.parse().expect("origin"));
            }
            h
        };
        assert!(!cross_site(&headers(None)), "programs send no Origin");
        assert!(!cross_site(&headers(Some("https://previewd.example.com"))));
        assert!(cross_site(&headers(Some("https://evil.example.net"))));
        assert!(cross_site(&headers(Some("null"))));
        let mut proxied = headers(Some("https://previewd.example.com:443"));
        proxied.insert("sec-fetch-site", "same-origin".parse().expect("value"));
        assert!(!cross_site(&proxied), "the browser's own word wins over a rewritten Host");
        let mut evil = headers(None);
        evil.insert("sec-fetch-site", "cross-site".parse().expect("value"));
        assert!(cross_site(&evil));
    }

    #[test]
    fn loopback_names_only() {
        let host = |h: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, h.parse().expect("host"));
            loopback_host(&m)
        };
        for h in ["localhost:8080", "127.0.0.1:8080", "127.0.0.1", "[::1]:8080", "LOCALHOST"] {
            assert!(host(h), "{h}");
        }
        for h in ["evil.example.com", "evil.example.com:8080", "10.0.0.1:8080", "localhost.evil.com"] {
            assert!(!host(h), "{h}");
        }
    }
}
