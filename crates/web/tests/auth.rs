//! The dashboard token: off by default; when set, the dashboard, the API and the metrics need it (bearer
//! or the login form's cookie), while webhooks and health checks do not.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use previewd_domain::{OwnerId, Secret};
use previewd_reconciler::Queue;
use previewd_store::Store;
use previewd_web::{AppState, Metrics, router};
use tower::ServiceExt as _;

async fn app(token: Option<&str>) -> (axum::Router, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("t.db").display())).await.expect("store");
    let state = AppState {
        store,
        queue: Queue::new(),
        owner: OwnerId::new("t").expect("owner"),
        secrets: Arc::from(vec![Secret::new("hook")]),
        repos: Arc::new(BTreeMap::new()),
        metrics: Arc::new(Metrics::default()),
        dashboard_token: token.map(Secret::new),
    };
    (router(state), dir)
}

async fn get(app: &axum::Router, path: &str, auth: Option<(&str, String)>) -> (StatusCode, String) {
    let mut req = Request::get(path);
    if let Some((name, value)) = auth {
        req = req.header(name, value);
    }
    let res = app.clone().oneshot(req.body(Body::empty()).expect("request")).await.expect("response");
    let status = res.status();
    let body = axum::body::to_bytes(res.into_body(), 1 << 20).await.expect("body");
    (status, String::from_utf8_lossy(&body).into_owned())
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
