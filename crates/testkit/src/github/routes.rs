//! The way in: every request is read whole, recorded, checked against the faults waiting, the app's
//! authentication and moved names, then routed to the resource it asks for.

use std::time::{Duration, SystemTime};

use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, HOST, IF_NONE_MATCH};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::FakeGitHub;
use super::app_auth::{access_token, installation, refuse_unauthenticated};
use super::checks::commit_checks;
use super::comments::issues;
use super::contents::contents;
use super::deployments::deployments;
use super::faults::{Endpoint, Fault, is_write};
use super::paging::{Paging, listing};
use super::pulls::pulls;
use super::reply::{BOT_LOGIN, Reply, unix_seconds, user_json};
use super::state::GhState;

/// The largest request body read.
const MAX_BODY_BYTES: usize = 1 << 20;

/// The request as the answer needs it: everything is read before the lock is taken.
#[derive(Debug)]
pub(super) struct Asked<'a> {
    pub(super) method: Method,
    /// The host the client addressed, for absolute URLs in `Link`.
    pub(super) host: String,
    /// `http://{host}{prefix}`, for the URLs in answers.
    pub(super) base: String,
    /// The path as sent, prefix included, still percent-encoded.
    pub(super) raw_path: &'a str,
    /// Query pairs in the order sent.
    pub(super) query: Vec<(String, String)>,
    /// The `Authorization` header, if any and readable.
    authorization: Option<&'a str>,
    /// The body's JSON; `null` when there was none, the text as a JSON string when it was not JSON.
    pub(super) body: Value,
    /// Why the body cannot be used, when it cannot: answered instead of the request.
    bad_body: Option<(StatusCode, &'static str)>,
}

impl Asked<'_> {
    pub(super) fn param(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// A query parameter that filters a listing: absent or empty filters nothing.
    pub(super) fn filter(&self, name: &str) -> Option<&str> {
        self.param(name).filter(|v| !v.is_empty())
    }

    /// The credential in `Authorization` when its scheme is one of `schemes` (compared ignoring case).
    pub(super) fn credential(&self, schemes: &[&str]) -> Option<&str> {
        let (scheme, credential) = self.authorization?.trim().split_once(' ')?;
        schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)).then(|| credential.trim())
    }
}

pub(super) async fn handle(State(fake): State<FakeGitHub>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let (body, bad_body) = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(bytes) if bytes.is_empty() => (Value::Null, None),
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(json) => (json, None),
            Err(_) => (
                Value::String(String::from_utf8_lossy(&bytes).into_owned()),
                Some((StatusCode::BAD_REQUEST, "Problems parsing JSON")),
            ),
        },
        Err(_) => (Value::Null, Some((StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large"))),
    };
    let headers = &parts.headers;
    let host = headers.get(HOST).and_then(|h| h.to_str().ok()).map_or_else(|| fake.addr.to_string(), str::to_owned);
    let asked = Asked {
        method: parts.method.clone(),
        base: format!("http://{host}{}", fake.prefix),
        host,
        raw_path: parts.uri.path(),
        query: form_urlencoded::parse(parts.uri.query().unwrap_or("").as_bytes()).into_owned().collect(),
        authorization: headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()),
        body,
        bad_body,
    };
    let if_none_match = headers.get(IF_NONE_MATCH).and_then(|v| v.to_str().ok());
    let sent = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    let sent = sent.strip_prefix(fake.prefix.as_str()).unwrap_or(sent).to_owned();

    let (reply, delay) = {
        let mut st = fake.lock();
        if is_write(&asked.method) {
            st.bodies.push((asked.method.to_string(), sent.clone(), asked.body.clone()));
        }
        let raw = sent.split('?').next().unwrap_or("").to_owned();
        let query: Vec<Value> = asked.query.iter().map(|(k, v)| json!([k, v])).collect();
        let body = if asked.body.is_null() { Value::Null } else { asked.body.clone() };
        let all = |name| -> Vec<&str> { headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect() };
        let (agent, accept) = (all(axum::http::header::USER_AGENT), all(axum::http::header::ACCEPT));
        st.sent.push(json!({
            "method": asked.method.as_str(), "path": raw, "query": query, "body": body,
            "user_agent": agent, "accept": accept, "api_version": all(axum::http::HeaderName::from_static("x-github-api-version")),
        }));
        let (reply, delay) = answer(&fake, &mut st, &asked);
        let mut reply = reply.conditional(&asked.method, if_none_match);
        // As GitHub: every answer says where the caller stands with its rate limit (per credential).
        if !reply.headers.contains_key("x-ratelimit-remaining") {
            let who = asked.authorization.unwrap_or("anonymous").to_owned();
            let used = st.used.entry(who).or_insert(0);
            *used += 1;
            let used = *used;
            let reset = unix_seconds(SystemTime::now()) + 3600;
            reply.header("x-ratelimit-limit", "5000");
            reply.header("x-ratelimit-used", &used.to_string());
            reply.header("x-ratelimit-remaining", &5000u64.saturating_sub(used).to_string());
            reply.header("x-ratelimit-reset", &reset.to_string());
            reply.header("x-ratelimit-resource", "core");
        }
        st.calls.push((asked.method.to_string(), sent, reply.status.as_u16()));
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
    let mut segs = segs;
    // GitHub reads owner and repository names without regard to case.
    if segs.first().is_some_and(|s| s == "repos") && segs.len() >= 3 {
        segs[1] = segs[1].to_ascii_lowercase();
        segs[2] = segs[2].to_ascii_lowercase();
    }
    st.requests.push(segs.join("/"));
    if st.fail_next > 0 {
        st.fail_next -= 1;
        return (Reply::error(StatusCode::BAD_GATEWAY), None);
    }
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    // GitHub treats a missing, unparsable or zero page as the first.
    let page = asked.param("page").and_then(|p| p.parse().ok()).unwrap_or(1).max(1);
    let mut paging = Paging { page, cap: st.page_cap, link: true };
    let mut delay = None;
    let mut elsewhere = None;
    // A fault that answers in place of the request returns before anything is looked up or changed.
    match st.take_fault(Endpoint::of(&segs, page), is_write(&asked.method)) {
        Some(Fault::Status(code)) => {
            return (Reply::error(StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)), None);
        }
        Some(Fault::Html) => return (Reply::html(), None),
        Some(Fault::EmptyList) => return (Reply::ok(&json!([])), None),
        Some(Fault::RetryAfter { status, seconds }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
            return (Reply::secondary_rate_limit(status, seconds), None);
        }
        Some(Fault::RateLimited { status }) => {
            return (Reply::rate_limited(StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN)), None);
        }
        Some(Fault::Delay(d)) => delay = Some(d),
        Some(Fault::NoLink) => paging.link = false,
        Some(Fault::LinkElsewhere(port)) => elsewhere = Some(port),
        None => {}
    }
    let mut reply = if let Some(refused) = refuse_unauthenticated(st, asked, &segs) {
        refused
    } else if let Some(moved) = moved(st, asked, path, &segs) {
        moved
    } else if let Some((status, message)) = asked.bad_body {
        Reply::message(status, message)
    } else {
        route(st, asked, &segs, paging)
    };
    // The fault's answer must reach the client as it is, not as a 304 for the healthy page it resembles.
    if !paging.link {
        reply.header("x-fake-fault", "no-link");
    }
    if let Some(port) = elsewhere {
        let next = format!("<http://127.0.0.1:{port}{}?per_page=100&page=2>; rel=\"next\"", asked.raw_path);
        reply.header("link", &next);
        reply.header("x-fake-fault", "link-elsewhere");
    }
    (reply, delay)
}

/// GitHub's `301 Moved Permanently` for a renamed branch (to the new branch) or a moved repository (to
/// `/repositories/{id}/…`), if the request names one.
fn moved(st: &GhState, asked: &Asked<'_>, path: &str, segs: &[&str]) -> Option<Reply> {
    let ["repos", owner, name, rest @ ..] = segs else { return None };
    let repo = format!("{owner}/{name}");
    let location = if let Some(id) = st.moved.get(&repo) {
        let raw_rest: Vec<&str> = path.split('/').skip(4).collect();
        let tail = if raw_rest.is_empty() { String::new() } else { format!("/{}", raw_rest.join("/")) };
        format!("{}/repositories/{id}{tail}", asked.base)
    } else if let ["branches", branch] = rest
        && let Some(to) = st.renamed.get(&(repo.clone(), (*branch).to_owned()))
        && !st.branches.contains_key(&(repo.clone(), (*branch).to_owned()))
    {
        let to = percent_encoding::utf8_percent_encode(to, percent_encoding::NON_ALPHANUMERIC);
        format!("{}/repos/{owner}/{name}/branches/{to}", asked.base)
    } else {
        return None;
    };
    let mut reply = Reply::message(StatusCode::MOVED_PERMANENTLY, "Moved Permanently");
    reply.header("location", &location);
    Some(reply)
}

fn route(st: &mut GhState, asked: &Asked<'_>, segs: &[&str], paging: Paging) -> Reply {
    if let ["repos", owner, name, ..] = segs
        && st.hidden.contains(&format!("{owner}/{name}"))
    {
        return Reply::not_found();
    }
    match segs {
        ["repos", owner, name] => {
            let repo = format!("{owner}/{name}");
            if st.repos.contains(&repo) {
                let full_name = st.spelling.get(&repo).unwrap_or(&repo);
                Reply::ok(&json!({"full_name": full_name, "private": true, "default_branch": "main"}))
            } else {
                Reply::not_found()
            }
        }
        ["repos", owner, name, "branches"] => {
            let repo = format!("{owner}/{name}");
            let items: Vec<Value> =
                st.branches.iter().filter(|((r, _), _)| *r == repo).map(|((_, b), sha)| branch_json(b, sha)).collect();
            listing(asked, paging, items)
        }
        ["repos", owner, name, "branches", branch] => {
            match st.branches.get(&(format!("{owner}/{name}"), (*branch).to_owned())) {
                Some(sha) => Reply::ok(&branch_json(branch, sha)),
                None => Reply::not_found(),
            }
        }
        ["repos", owner, name, "contents", rest @ ..] => contents(st, asked, format!("{owner}/{name}"), rest),
        ["repos", owner, name, "installation"] if asked.method == Method::GET => {
            installation(st, &format!("{owner}/{name}"))
        }
        ["repos", owner, name, "deployments", rest @ ..] => {
            deployments(st, asked, &format!("{owner}/{name}"), rest, paging)
        }
        ["repos", owner, name, "pulls", rest @ ..] => pulls(st, asked, &format!("{owner}/{name}"), rest, paging),
        ["repos", owner, name, "issues", rest @ ..] => issues(st, asked, &format!("{owner}/{name}"), rest, paging),
        ["repos", owner, name, "commits", rest @ ..] => {
            commit_checks(st, asked, &format!("{owner}/{name}"), rest, paging)
        }
        ["app", "installations", id, "access_tokens"] if asked.method == Method::POST => access_token(st, id),
        // The token's user; an installation token belongs to no user.
        ["user"] if asked.method == Method::GET => match st.app {
            Some(_) => Reply::message(StatusCode::FORBIDDEN, "Resource not accessible by integration"),
            None => Reply::ok(&user_json(BOT_LOGIN)),
        },
        _ => Reply::not_found(),
    }
}

fn branch_json(name: &str, sha: &str) -> Value {
    json!({
        "name": name,
        "commit": { "sha": sha, "url": format!("https://api.github.com/commits/{sha}") },
        "protected": false,
        "_links": { "self": "https://api.github.com/branches", "html": "https://github.com/branches" },
    })
}
