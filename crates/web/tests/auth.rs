//! The dashboard token: off by default; when set, the dashboard, the API and the metrics need it (bearer
//! or the login form's cookie), while webhooks and health checks do not.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use futures::StreamExt as _;
use previewd_domain::{BranchName, CommitSha, Desired, DnsZone, EnvNames, EventKind, OwnerId, RepoName, Secret};
use previewd_reconciler::Queue;
use previewd_store::{DesiredChange, Store};
use previewd_web::{AppState, Intake, router};
use tower::ServiceExt as _;

/// The scraper's token every test app is given.
const METRICS_TOKEN: &str = "metrics-only-0123456789";

async fn app(token: Option<&str>) -> (axum::Router, tempfile::TempDir) {
    let (router, _, dir) = app_on(token, false).await;
    (router, dir)
}

async fn app_on(token: Option<&str>, public: bool) -> (axum::Router, Store, tempfile::TempDir) {
    app_with(token, public, Intake::default()).await
}

async fn app_with(token: Option<&str>, public: bool, intake: Intake) -> (axum::Router, Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("t.db").display())).await.expect("store");
    let state = AppState {
        store: store.clone(),
        queue: Queue::new(store.clone()),
        deliveries: previewd_store::DeliveryLog::start(store.clone(), || {}).expect("committer"),
        owner: OwnerId::new("t").expect("owner"),
        secrets: Arc::from(vec![Secret::new("hook")]),
        repos: Arc::new(BTreeMap::new()),
        dashboard_token: token.map(Secret::new),
        metrics_token: Some(Secret::new(METRICS_TOKEN)),
        public,
        github_web_url: "https://github.com".into(),
        reconciler: None,
        intake,
    };
    (router(state), store, dir)
}

async fn get(app: &axum::Router, path: &str, auth: Option<(&str, String)>) -> (StatusCode, String) {
    // As a browser on this machine asks.
    let headers: Vec<(&str, String)> = auth.into_iter().collect();
    send(app, Request::get(path).header(header::HOST, "localhost:8080"), &headers).await
}

/// Sends the request with `headers` added; the status and the body as text.
async fn send(
    app: &axum::Router,
    mut req: axum::http::request::Builder,
    headers: &[(&str, String)],
) -> (StatusCode, String) {
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    let res = app.clone().oneshot(req.body(Body::empty()).expect("request")).await.expect("response");
    let status = res.status();
    let body = axum::body::to_bytes(res.into_body(), 1 << 20).await.expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Every answer, refusals and errors included, forbids framing and sniffing and asks not to be kept.
#[tokio::test]
async fn every_answer_carries_the_security_headers() {
    let (guarded, _dir) = app(Some("secret-token-0123456789")).await;
    for (path, want) in [
        ("/", StatusCode::UNAUTHORIZED),
        ("/api/environments", StatusCode::UNAUTHORIZED),
        ("/healthz", StatusCode::OK),
        ("/no/such/page", StatusCode::NOT_FOUND),
    ] {
        let req = Request::get(path).header(header::HOST, "localhost:8080").body(Body::empty()).expect("request");
        let res = guarded.clone().oneshot(req).await.expect("response");
        assert_eq!(res.status(), want, "{path}");
        let h = res.headers();
        assert_eq!(h.get(header::X_FRAME_OPTIONS).map(|v| v.as_bytes()), Some(&b"DENY"[..]), "{path}");
        assert_eq!(h[header::CONTENT_SECURITY_POLICY], "frame-ancestors 'none'", "{path}");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff", "{path}");
        assert_eq!(h[header::CACHE_CONTROL], "no-store", "{path}");
    }
    let (open, _dir) = app(None).await;
    let req = Request::get("/api/environments").header(header::HOST, "localhost:8080").body(Body::empty());
    let res = open.oneshot(req.expect("request")).await.expect("response");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()[header::CACHE_CONTROL], "no-store");
}

#[tokio::test]
async fn open_without_a_token() {
    let (app, _dir) = app(None).await;
    for path in ["/", "/api/environments", "/metrics", "/healthz"] {
        assert_eq!(get(&app, path, None).await.0, StatusCode::OK, "{path}");
    }
}

#[tokio::test]
async fn a_token_guards_dashboard_api_and_metrics() {
    let (app, _dir) = app(Some("s3cret-dash")).await;
    for path in ["/api/environments", "/metrics"] {
        assert_eq!(get(&app, path, None).await.0, StatusCode::UNAUTHORIZED, "{path}");
        assert_eq!(get(&app, path, Some(("authorization", "Bearer wrong".into()))).await.0, StatusCode::UNAUTHORIZED);
        assert_eq!(get(&app, path, Some(("authorization", "Bearer s3cret-dash".into()))).await.0, StatusCode::OK);
    }
    let (status, page) = get(&app, "/", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(page.contains("<form method=\"post\" action=\"/login\">") && !page.contains("s3cret"), "{page}");
    assert_eq!(get(&app, "/healthz", None).await.0, StatusCode::OK);

    let login = |token: &str| {
        Request::post("/login")
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("token={token}")))
            .expect("request")
    };
    let wrong = app.clone().oneshot(login("nope")).await.expect("response");
    assert_eq!(wrong.status(), StatusCode::UNAUTHORIZED);
    assert!(wrong.headers().get(header::SET_COOKIE).is_none());
    let right = app.clone().oneshot(login("s3cret-dash")).await.expect("response");
    assert_eq!(right.status(), StatusCode::SEE_OTHER);
    let cookie = right.headers()[header::SET_COOKIE].to_str().expect("cookie").to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(cookie.contains("Max-Age=") && !cookie.contains("s3cret-dash"), "the cookie is not the token: {cookie}");
    let pair = cookie.split(';').next().expect("pair").to_owned();
    let (status, page) = get(&app, "/", Some(("cookie", pair))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("<h1>previewd</h1>"));

    // Webhooks answer to their signature, not to the dashboard token.
    let res = app
        .clone()
        .oneshot(
            Request::post("/webhooks/github").header("x-github-event", "ping").body(Body::from("{}")).expect("req"),
        )
        .await
        .expect("response");
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "no signature");
}

/// An environment to act on.
async fn one_env(store: &Store) -> i64 {
    let (owner, repo) = (OwnerId::new("t").expect("owner"), RepoName::new("acme/shop").expect("repo"));
    let branch = BranchName::new("<img/src=x/onerror=alert(1)>").expect("branch");
    let names = EnvNames::new(&owner, &repo, &branch, &DnsZone::new("p.example.com").expect("zone"));
    let desired = Desired::Present { sha: Some(CommitSha::new(&"a".repeat(40)).expect("sha")) };
    let change =
        DesiredChange { repo, repo_display: None, branch, names, fallback: None, desired, reason: "test".into() };
    store.record_desired(&change).await.expect("record")
}

async fn post(app: &axum::Router, path: &str, headers: &[(&str, String)]) -> (StatusCode, String) {
    send(app, Request::post(path).header(header::HOST, "previewd.test"), headers).await
}

#[tokio::test]
async fn without_a_token_read_only_on_loopback_and_nothing_beyond() {
    let (app, store, _dir) = app_on(None, false).await;
    let id = one_env(&store).await;
    let (status, body) = post(&app, &format!("/api/environments/{id}/redeploy"), &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(body.contains("PREVIEWD_DASHBOARD_TOKEN"), "{body}");
    assert_eq!(get(&app, &format!("/api/environments/{id}"), None).await.0, StatusCode::OK);

    // A page whose name was rebound to 127.0.0.1 asks with its own name: nothing for it.
    let res = app
        .clone()
        .oneshot(
            Request::get("/api/environments")
                .header(header::HOST, "rebound.example.com")
                .body(Body::empty())
                .expect("req"),
        )
        .await
        .expect("response");
    assert_eq!(res.status(), StatusCode::FORBIDDEN, "DNS rebinding");

    let (public, _store, _dir) = app_on(None, true).await;
    for path in ["/", "/api/environments", "/metrics"] {
        let (status, body) = get(&public, path, None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert!(body.contains("set PREVIEWD_DASHBOARD_TOKEN"), "{body}");
    }
    assert_eq!(get(&public, "/healthz", None).await.0, StatusCode::OK);
}

#[tokio::test]
async fn actions_need_the_token_and_refuse_other_sites() {
    let (app, store, _dir) = app_on(Some("s3cret-dash"), true).await;
    let id = one_env(&store).await;
    let path = format!("/api/environments/{id}/redeploy");
    assert_eq!(post(&app, &path, &[]).await.0, StatusCode::UNAUTHORIZED);
    let bearer = ("authorization", "Bearer s3cret-dash".to_owned());
    assert_eq!(post(&app, &path, std::slice::from_ref(&bearer)).await.0, StatusCode::ACCEPTED);
    let events = store.events(id, 10).await.expect("events");
    assert!(events.iter().any(|e| e.kind == EventKind::Redeploy), "{events:?}");

    let res = app
        .clone()
        .oneshot(
            Request::post("/login")
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(Body::from("token=s3cret-dash"))
                .expect("request"),
        )
        .await
        .expect("response");
    let cookie =
        res.headers()[header::SET_COOKIE].to_str().expect("cookie").split(';').next().expect("pair").to_owned();
    let evil = [("cookie", cookie.clone()), ("origin", "https://evil.example.net".to_owned())];
    assert_eq!(post(&app, &path, &evil).await.0, StatusCode::FORBIDDEN, "cross-site with the session cookie");
    let same = [("cookie", cookie.clone()), ("origin", "http://previewd.test".to_owned())];
    assert_eq!(post(&app, &path, &same).await.0, StatusCode::ACCEPTED);
    assert_eq!(post(&app, &format!("/api/environments/{id}/keep"), &same).await.0, StatusCode::ACCEPTED);
    assert!(store.get(id).await.expect("get").expect("env").keep);
    let (status, body) = post(&app, &format!("/api/environments/{id}/reseed"), &same).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(post(&app, &format!("/api/environments/{id}/destroy"), &same).await.0, StatusCode::ACCEPTED);
    assert!(store.get(id).await.expect("get").expect("env").expired_at.is_some());
    assert_eq!(post(&app, "/api/environments/999/redeploy", &same).await.0, StatusCode::NOT_FOUND);

    // Filters and paging, decided in SQL.
    let auth = Some(("authorization", "Bearer s3cret-dash".to_owned()));
    let (status, body) = get(&app, "/api/environments?q=ONERROR&repo=acme/shop&limit=5", auth.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let list: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(list[0]["branch"], "<img/src=x/onerror=alert(1)>", "{body}");
    let (_, body) = get(&app, "/api/environments?q=nothing-like-it", auth.clone()).await;
    assert_eq!(body, "[]");
    let (status, body) = get(&app, "/api/environments?status=bogus", auth.clone()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = get(&app, &format!("/api/environments/{id}"), auth).await;
    assert_eq!(status, StatusCode::OK);
    let one: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(one["events"].as_array().is_some_and(|e| e.len() >= 3), "{body}");
}

#[tokio::test]
async fn the_dashboard_escapes_filters_pages_and_refreshes_rows() {
    let (app, store, _dir) = app_on(None, false).await;
    let id = one_env(&store).await;
    let (status, page) = get(&app, "/", None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains("&lt;img/src=x/onerror=alert(1)&gt;") && !page.contains("<img/src"), "{page}");
    assert!(page.contains("The reaper has not run yet."), "{page}");
    assert!(page.contains("https://github.com/acme/shop/commit/aaaaaaa"), "commits link to GitHub: {page}");
    let (_, none) = get(&app, "/?q=nothing-like-it&status=", None).await;
    assert!(none.contains("No environments match."), "{none}");
    let (_, pending) = get(&app, "/?status=pending&sort=branch&page=1", None).await;
    assert!(pending.contains(&format!("data-env=\"{id}\"")), "{pending}");
    let (status, _) = get(&app, "/?status=bogus", None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, rows) = get(&app, "/?fragment=rows", None).await;
    assert!(rows.starts_with("<tr") && !rows.contains("<html"), "only the rows: {rows}");
    let (status, detail) = get(&app, &format!("/environments/{id}"), None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(detail.contains("<bdi>&lt;img/src=x/onerror=alert(1)&gt;</bdi>"), "{detail}");
    assert!(detail.contains("Read-only: actions need PREVIEWD_DASHBOARD_TOKEN."), "{detail}");
    assert_eq!(get(&app, &format!("/environments/{id}?fragment=status"), None).await.1, "pending", "the live status");
    assert_eq!(get(&app, "/environments/999", None).await.0, StatusCode::NOT_FOUND);
    let (_, metrics) = get(&app, "/metrics", None).await;
    assert!(
        metrics.contains("previewd_environments{repo=\"acme/shop\",status=\"pending\"} 1")
            && metrics.contains("previewd_environments{repo=\"acme/shop\",status=\"ready\"} 0"),
        "counted in SQL: {metrics}"
    );
}

/// A webhook whose body stops halfway (a slow or hostile sender).
fn stalled_webhook() -> Request<Body> {
    let first: Result<bytes::Bytes, std::io::Error> = Ok(bytes::Bytes::from_static(b"{\"zen\":"));
    let stream = futures::stream::iter([first]).chain(futures::stream::pending());
    Request::post("/webhooks/github")
        .header("x-github-event", "ping")
        .header("x-github-delivery", "stalled")
        .body(Body::from_stream(stream))
        .expect("request")
}

#[tokio::test]
async fn webhook_bodies_are_bounded_in_number_and_time() {
    let intake = Intake::new(1, std::time::Duration::from_millis(400), std::time::Duration::from_millis(50));
    let (app, _store, _dir) = app_with(None, false, intake).await;
    // The only slot is held by a body that never finishes...
    let stalled = tokio::spawn(app.clone().oneshot(stalled_webhook()));
    // ...so, once it has the slot, another delivery is refused at once rather than buffered (until then
    // the other is read, and refused for its missing signature).
    let refused = loop {
        let (status, body) = send(&app, Request::post("/webhooks/github"), &[]).await;
        if status != StatusCode::UNAUTHORIZED {
            break (status, body);
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(refused.0, StatusCode::SERVICE_UNAVAILABLE, "{}", refused.1);
    // The stalled one is cut off at the read timeout, and its slot is free again.
    let res = stalled.await.expect("joined").expect("response");
    assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
    let (status, _) = send(&app, Request::post("/webhooks/github"), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "read, then refused for its missing signature");
}

#[tokio::test]
async fn the_metrics_token_reads_the_metrics_and_nothing_else() {
    let dashboard = "secret-token-0123456789";
    let (guarded, _dir) = app(Some(dashboard)).await;
    let bearer = |t: &str| Some(("authorization", format!("Bearer {t}")));
    let (status, body) = get(&guarded, "/metrics", bearer(METRICS_TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("# TYPE"), "{body}");
    for path in ["/", "/api/environments", "/api/reaper", "/environments/1"] {
        assert_eq!(get(&guarded, path, bearer(METRICS_TOKEN)).await.0, StatusCode::UNAUTHORIZED, "{path}");
    }
    let destroy = Request::post("/api/environments/1/destroy").header(header::HOST, "localhost:8080");
    let auth = [("authorization", format!("Bearer {METRICS_TOKEN}"))];
    assert_eq!(send(&guarded, destroy, &auth).await.0, StatusCode::UNAUTHORIZED, "it acts on nothing");
    // The dashboard token still reads them; no token does not.
    assert_eq!(get(&guarded, "/metrics", bearer(dashboard)).await.0, StatusCode::OK);
    assert_eq!(get(&guarded, "/metrics", None).await.0, StatusCode::UNAUTHORIZED);
}
