//! The readiness probe against a real HTTPS server: the stand-in app on a loopback port, reached with
//! `connect_to` as a load balancer is reached through DNS, its wildcard certificate for the zone issued by
//! a CA the probe is told to trust by file.

use std::time::Duration;

use previewd_reconciler::probe::{Answer, Prober, Target};
use previewd_testkit::{StandInApp, free_port};

const ZONE: &str = "preview.test";
/// Every probe gives up by itself within seconds; this only stops a test that hangs.
const TEST_TIMEOUT: Duration = Duration::from_secs(30);

async fn app() -> StandInApp {
    StandInApp::start(ZONE).await.expect("the stand-in app starts")
}

fn target(app: &StandInApp, url: &str) -> Target {
    Target { url: url.to_owned(), connect_to: Some(app.connect_to()), ca_file: Some(app.ca_file().to_path_buf()) }
}

async fn probe_with(prober: &Prober, t: &Target) -> Answer {
    tokio::time::timeout(TEST_TIMEOUT, prober.probe(t)).await.expect("the probe answers in time")
}

async fn probe(t: &Target) -> Answer {
    probe_with(&Prober::new(4), t).await
}

#[tokio::test]
async fn a_200_passes_and_the_app_is_asked_for_the_urls_host() {
    let app = app().await;
    let prober = Prober::new(4);
    let t = target(&app, "https://shop-main.preview.test/");
    assert_eq!(probe_with(&prober, &t).await, Answer::Passed { status: 200 });
    assert_eq!(probe_with(&prober, &t).await, Answer::Passed { status: 200 }, "again, on the cached client");
    assert_eq!(app.requests(), 2);
    assert_eq!(app.hosts(), ["shop-main.preview.test", "shop-main.preview.test"]);
}

#[tokio::test]
async fn the_zone_apex_is_covered_too() {
    let app = app().await;
    assert_eq!(probe(&target(&app, "https://preview.test/")).await, Answer::Passed { status: 200 });
}

#[tokio::test]
async fn a_503_is_a_status_that_says_what_to_do() {
    let app = app().await;
    app.set_status(503);
    let answer = probe(&target(&app, "https://shop-main.preview.test/")).await;
    assert_eq!(answer, Answer::Status(503));
    assert!(answer.describe().contains("no healthy target"), "{}", answer.describe());
}

#[tokio::test]
async fn a_redirect_to_a_login_on_another_host_is_not_the_app() {
    let app = app().await;
    app.set_status(302);
    app.set_location(Some("https://login.example.com/oauth2/authorize?client_id=abc&state=xyz".into()));
    let answer = probe(&target(&app, "https://shop-main.preview.test/")).await;
    assert_eq!(answer, Answer::OffHost { status: 302, location: "https://login.example.com/oauth2/authorize".into() });
    assert_eq!(app.requests(), 1, "the redirect is not followed");
}

#[tokio::test]
async fn a_redirect_on_the_same_host_passes() {
    let app = app().await;
    app.set_status(302);
    app.set_location(Some("/login".into()));
    assert_eq!(probe(&target(&app, "https://shop-main.preview.test/")).await, Answer::Passed { status: 302 });
    assert_eq!(app.requests(), 1, "the redirect is not followed");
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_tls_failure() {
    let app = app().await;
    let t = Target { ca_file: None, ..target(&app, "https://shop-main.preview.test/") };
    let answer = probe(&t).await;
    assert!(matches!(answer, Answer::Tls(_)), "{answer:?}");
    assert_eq!(app.requests(), 0);
}

#[tokio::test]
async fn a_certificate_for_another_zone_is_a_tls_failure() {
    let app = app().await;
    let answer = probe(&target(&app, "https://shop-main.elsewhere.test/")).await;
    assert!(matches!(answer, Answer::Tls(_)), "{answer:?}");
}

#[tokio::test]
async fn a_closed_port_is_refused() {
    let app = app().await;
    let t =
        Target { connect_to: Some(format!("127.0.0.1:{}", free_port())), ..target(&app, "https://shop.preview.test/") };
    let answer = probe(&t).await;
    assert!(matches!(answer, Answer::Refused(_)), "{answer:?}");
}

#[tokio::test]
async fn a_name_that_does_not_resolve_is_no_name() {
    let t = Target { url: "https://shop-main.preview.invalid/".into(), connect_to: None, ca_file: None };
    let answer = probe(&t).await;
    assert!(matches!(&answer, Answer::NoName(m) if m.contains("shop-main.preview.invalid")), "{answer:?}");
}

#[tokio::test]
async fn an_explicit_port_in_the_url_still_goes_to_connect_to() {
    let app = app().await;
    assert_eq!(probe(&target(&app, "https://shop.preview.test:8443/")).await, Answer::Passed { status: 200 });
    assert_eq!(app.hosts(), ["shop.preview.test:8443"]);
}

#[tokio::test]
async fn a_missing_ca_file_is_invalid_and_named() {
    let app = app().await;
    let missing = app.ca_file().with_file_name("no-such-ca.pem");
    let t = Target { ca_file: Some(missing), ..target(&app, "https://shop.preview.test/") };
    let answer = probe(&t).await;
    assert!(matches!(&answer, Answer::Invalid(m) if m.contains("no-such-ca.pem")), "{answer:?}");
}
