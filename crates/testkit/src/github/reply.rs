//! The answers the fake sends: GitHub's JSON and error documents, rate limit headers, HTML from a proxy,
//! `ETag`s with conditional requests, and the shapes and timestamps GitHub writes inside them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// How far ahead an injected 403 puts `x-ratelimit-reset`, so a client honouring it waits briefly.
const RATE_LIMIT_RESET_AFTER: Duration = Duration::from_secs(60);
/// How far ahead [`Fault::RateLimited`](super::Fault::RateLimited) puts `x-ratelimit-reset`, so a test that waits
/// for it stays quick.
const RATE_LIMITED_RESET_AFTER: Duration = Duration::from_secs(2);
/// GitHub's answer past a secondary rate limit.
const SECONDARY_RATE_LIMIT: &str = "You have exceeded a secondary rate limit. Please wait a few minutes before you \
    try again. If you reach out to GitHub Support for help, please include the request ID \
    F00D:1234:5678AB:9ABCDE:66000000.";
/// GitHub's answer past the primary rate limit, for an installation.
const PRIMARY_RATE_LIMIT: &str = "API rate limit exceeded for installation. If you reach out to GitHub Support for \
    help, please include the request ID F00D:1234:5678AB:9ABCDE:66000000.";
/// Where GitHub's rate limit documents point.
const RATE_LIMITS_DOC: &str = "https://docs.github.com/rest/overview/rate-limits-for-the-rest-api";

/// Who writes through the API: previewd's GitHub App.
pub(super) const BOT_LOGIN: &str = "previewd[bot]";

/// A GitHub user as it appears in another object: a `[bot]` login is an app's bot.
pub(super) fn user_json(login: &str) -> Value {
    let kind = if login.ends_with("[bot]") { "Bot" } else { "User" };
    json!({ "login": login, "type": kind })
}

/// GitHub's timestamps: RFC 3339, UTC, whole seconds.
pub(super) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

pub(super) fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// An answer built under the lock and sent after it is released, so a delay never blocks other requests.
#[derive(Debug)]
pub(super) struct Reply {
    pub(super) status: StatusCode,
    pub(super) headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(status: StatusCode, value: &Value) -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
        Self { status, headers, body: serde_json::to_vec(value).expect("JSON serialises") }
    }

    pub(super) fn ok(value: &Value) -> Self {
        Self::json(StatusCode::OK, value)
    }

    pub(super) fn created(value: &Value) -> Self {
        Self::json(StatusCode::CREATED, value)
    }

    /// GitHub's error document with this message.
    pub(super) fn message(status: StatusCode, message: &str) -> Self {
        Self::json(
            status,
            &json!({
                "message": message,
                "documentation_url": "https://docs.github.com/rest",
                "status": status.as_str(),
            }),
        )
    }

    /// GitHub's error document, with the headers its clients look at for the statuses that have them.
    pub(super) fn error(status: StatusCode) -> Self {
        let message = match status.as_u16() {
            401 => "Bad credentials",
            403 => "API rate limit exceeded",
            404 => "Not Found",
            500 | 502 => "Server Error",
            _ => status.canonical_reason().unwrap_or("Unexpected error"),
        };
        let mut reply = Self::message(status, message);
        if status == StatusCode::FORBIDDEN {
            reply.rate_limit_headers(0, RATE_LIMIT_RESET_AFTER);
        }
        reply
    }

    pub(super) fn not_found() -> Self {
        Self::error(StatusCode::NOT_FOUND)
    }

    /// GitHub's 422 for a body that lacks a field it requires.
    pub(super) fn invalid_request(field: &str) -> Self {
        Self::message(StatusCode::UNPROCESSABLE_ENTITY, &format!("Invalid request.\n\n\"{field}\" wasn't supplied."))
    }

    /// GitHub's 422 "Validation Failed", with the one error that failed it.
    pub(super) fn validation_failed(resource: &str, field: &str, code: &str, message: &str) -> Self {
        Self::json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({
                "message": "Validation Failed",
                "errors": [{ "resource": resource, "field": field, "code": code, "message": message }],
                "documentation_url": "https://docs.github.com/rest",
                "status": "422",
            }),
        )
    }

    /// A secondary rate limit: the primary quota is untouched, `retry-after` says when to come back.
    pub(super) fn secondary_rate_limit(status: StatusCode, seconds: u64) -> Self {
        let mut reply = Self::json(
            status,
            &json!({
                "message": SECONDARY_RATE_LIMIT,
                "documentation_url": format!("{RATE_LIMITS_DOC}#about-secondary-rate-limits"),
                "status": status.as_str(),
            }),
        );
        reply.header("retry-after", &seconds.to_string());
        reply.rate_limit_headers(4999, Duration::from_secs(3600));
        reply
    }

    /// The primary rate limit spent, resetting shortly.
    pub(super) fn rate_limited(status: StatusCode) -> Self {
        let mut reply = Self::json(
            status,
            &json!({
                "message": PRIMARY_RATE_LIMIT,
                "documentation_url": format!("{RATE_LIMITS_DOC}#about-primary-rate-limits"),
                "status": status.as_str(),
            }),
        );
        reply.rate_limit_headers(0, RATE_LIMITED_RESET_AFTER);
        reply
    }

    /// The `x-ratelimit-*` headers of a quota of 5000 with `remaining` left, resetting `reset_after` from now.
    fn rate_limit_headers(&mut self, remaining: u64, reset_after: Duration) {
        let reset = unix_seconds(SystemTime::now().checked_add(reset_after).unwrap_or_else(SystemTime::now));
        self.header("x-ratelimit-limit", "5000");
        self.header("x-ratelimit-remaining", &remaining.to_string());
        self.header("x-ratelimit-used", &5000_u64.saturating_sub(remaining).to_string());
        self.header("x-ratelimit-resource", "core");
        self.header("x-ratelimit-reset", &reset.to_string());
    }

    /// What a captive portal or a misconfigured proxy serves in place of the API.
    pub(super) fn html() -> Self {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
        let body = b"<!DOCTYPE html>\n<html><head><title>Sign in to continue</title></head>\n\
            <body><h1>Network access requires sign-in</h1><p>Please log in to continue.</p></body></html>\n";
        Self { status: StatusCode::OK, headers, body: body.to_vec() }
    }

    pub(super) fn header(&mut self, name: &'static str, value: &str) {
        let value = HeaderValue::from_str(value).expect("a valid header value");
        self.headers.insert(HeaderName::from_static(name), value);
    }

    /// A strong validator over the exact bytes, so it changes whenever the body does.
    fn etag(&self) -> String {
        format!("\"{}\"", hex::encode(Sha256::digest(&self.body)))
    }

    /// Adds the `ETag` to a 200 and turns it into a 304 if the client already holds that version.
    pub(super) fn conditional(mut self, method: &Method, if_none_match: Option<&str>) -> Self {
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

    pub(super) fn into_response(self) -> Response {
        let mut response = Response::new(Body::from(self.body));
        *response.status_mut() = self.status;
        *response.headers_mut() = self.headers;
        response
    }
}
