//! The dashboard token (`PREVIEWD_DASHBOARD_TOKEN`): when set, the dashboard, the API and the metrics
//! need it, as `Authorization: Bearer <token>` or, in a browser, through a login form that sets an
//! HttpOnly cookie. Webhooks carry their own signature and `/healthz` stays open for load balancers.

use axum::extract::{Form, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{Html, IntoResponse, Redirect, Response};
use previewd_domain::Secret;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::AppState;

const COOKIE: &str = "previewd_token";

/// Equal digests, compared in full: the time taken says nothing about where a guess went wrong.
fn matches(given: &str, token: &Secret) -> bool {
    let (a, b) = (Sha256::digest(given.as_bytes()), Sha256::digest(token.expose().as_bytes()));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn presented(req: &Request) -> Option<String> {
    let headers = req.headers();
    if let Some(bearer) =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "))
    {
        return Some(bearer.trim().to_owned());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(&format!("{COOKIE}=")).map(str::to_owned))
}

pub(crate) async fn require(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(token) = &state.dashboard_token else { return next.run(req).await };
    if presented(&req).is_some_and(|t| matches(&t, token)) {
        return next.run(req).await;
    }
    if req.uri().path() == "/" {
        return login_page(false, StatusCode::UNAUTHORIZED);
    }
    (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "a dashboard token is required").into_response()
}

fn login_page(failed: bool, status: StatusCode) -> Response {
    let note = if failed { "<p class=\"error\">That token is not right.</p>" } else { "" };
    let page = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>previewd: sign in</title></head>\
<body style=\"font:14px system-ui,sans-serif;margin:2rem\"><h1>previewd</h1>{note}<form method=\"post\" action=\"/login\">\
<label>Dashboard token <input type=\"password\" name=\"token\" autofocus></label> <button>Sign in</button></form></body></html>"
    );
    (status, Html(page)).into_response()
}

#[derive(Deserialize)]
pub(crate) struct Login {
    token: String,
}

pub(crate) async fn login(State(state): State<AppState>, Form(login): Form<Login>) -> Response {
    match &state.dashboard_token {
        Some(token) if matches(&login.token, token) => {
            let cookie = format!("{COOKIE}={}; HttpOnly; SameSite=Strict; Path=/", login.token);
            let mut r = Redirect::to("/").into_response();
            if let Ok(v) = cookie.parse() {
                r.headers_mut().insert(header::SET_COOKIE, v);
            }
            r
        }
        Some(_) => login_page(true, StatusCode::UNAUTHORIZED),
        None => Redirect::to("/").into_response(),
    }
}
