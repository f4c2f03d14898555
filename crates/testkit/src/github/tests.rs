use std::time::{Duration, SystemTime};

use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

use super::reply::unix_seconds;
use super::{FakeGitHub, Fault, Target};

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
    assert_eq!(link_of(&first).as_deref(), Some(format!(r#"{}; rel="next", {}; rel="last""#, at(2), at(3)).as_str()));
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
        [call(listing, 502), call(listing, 200), call(listing, 304), call("/repos/acme/shop/branches/feat%2Fx", 404)]
    );
    assert_eq!(fake.requests().last().map(String::as_str), Some("repos/acme/shop/branches/feat/x"));

    fake.reset_requests();
    assert_eq!((fake.request_count(), fake.requests().len(), fake.not_modified_count()), (0, 0, 0));
}

fn post_json(http: &reqwest::Client, url: &str, body: &Value) -> reqwest::RequestBuilder {
    http.post(url).json(body)
}

async fn json_of(response: reqwest::Response) -> Value {
    response.json().await.expect("a JSON answer")
}

fn ids(items: &Value) -> Vec<u64> {
    items.as_array().expect("a JSON list").iter().map(|i| i["id"].as_u64().expect("an id")).collect()
}

#[tokio::test]
async fn deployments_and_statuses_round_trip() {
    let fake = fake_with_branches(1).await;
    let http = reqwest::Client::new();
    let url = format!("{}/repos/{REPO}/deployments", fake.api_url());
    let first = json!({
        "ref": "abc123", "environment": "pr-7", "transient_environment": true,
        "production_environment": false, "auto_merge": false, "required_contexts": [],
        "description": "preview of #7", "payload": {"pr": 7},
    });
    let second = json!({
        "ref": "def456", "environment": "pr-8", "transient_environment": true,
        "production_environment": false, "auto_merge": false, "required_contexts": [],
    });
    let created = post_json(&http, &url, &first).send().await.expect("create");
    assert_eq!(created.status(), 201);
    let deployment = json_of(created).await;
    assert_eq!(deployment["id"], 1);
    assert_eq!((&deployment["sha"], &deployment["ref"]), (&json!("abc123"), &json!("abc123")));
    assert_eq!(deployment["task"], "deploy");
    assert_eq!((&deployment["environment"], &deployment["description"]), (&json!("pr-7"), &json!("preview of #7")));
    assert_eq!(deployment["transient_environment"], true);
    assert_eq!(deployment["production_environment"], false);
    assert_eq!(deployment["creator"]["login"], "previewd[bot]");
    let statuses_url = deployment["statuses_url"].as_str().expect("a URL");
    assert!(statuses_url.ends_with("/api/v3/repos/acme/shop/deployments/1/statuses"), "{statuses_url}");
    assert!(deployment["created_at"].as_str().expect("a time").ends_with('Z'));
    let created = post_json(&http, &url, &second).send().await.expect("create");
    assert_eq!(json_of(created).await["id"], 2);
    let unknown = format!("{}/repos/acme/nowhere/deployments", fake.api_url());
    assert_eq!(post_json(&http, &unknown, &first).send().await.expect("create").status(), 404);
    let no_ref = post_json(&http, &url, &json!({"environment": "pr-9"})).send().await.expect("create");
    assert_eq!(no_ref.status(), 422);

    let list = |query: &'static str| http.get(format!("{url}?{query}")).send();
    assert_eq!(ids(&json_of(list("").await.expect("list")).await), [2, 1], "newest first");
    assert_eq!(ids(&json_of(list("environment=pr-7").await.expect("list")).await), [1]);
    assert_eq!(ids(&json_of(list("sha=def456").await.expect("list")).await), [2]);
    assert_eq!(ids(&json_of(list("ref=abc123&environment=pr-8").await.expect("list")).await), Vec::<u64>::new());
    let paged = list("per_page=1&page=2").await.expect("list");
    assert!(link_of(&paged).expect("a Link header").contains(r#"rel="prev""#));
    assert_eq!(ids(&json_of(paged).await), [1]);

    let statuses = format!("{url}/1/statuses");
    let mut posted = Vec::new();
    for state in ["in_progress", "success"] {
        let body = json!({
            "state": state, "environment_url": "https://pr-7.preview.example.com",
            "log_url": "https://previewd.example.com/envs/pr-7", "description": "x".repeat(140),
            "auto_inactive": false,
        });
        let answered = post_json(&http, &statuses, &body).send().await.expect("status");
        assert_eq!(answered.status(), 201);
        let status = json_of(answered).await;
        assert_eq!((&status["state"], &status["environment_url"]), (&json!(state), &body["environment_url"]));
        assert_eq!(status["log_url"], body["log_url"]);
        assert!(status["deployment_url"].as_str().expect("a URL").ends_with("/repos/acme/shop/deployments/1"));
        posted.push(body);
    }
    let listed = json_of(http.get(&statuses).send().await.expect("statuses")).await;
    let states: Vec<&str> =
        listed.as_array().expect("a list").iter().map(|s| s["state"].as_str().expect("a state")).collect();
    assert_eq!(states, ["success", "in_progress"], "newest first");

    let too_long = json!({"state": "success", "description": "x".repeat(141)});
    let refused = post_json(&http, &statuses, &too_long).send().await.expect("status");
    assert_eq!(refused.status(), 422);
    assert_eq!(json_of(refused).await["message"], "Validation Failed");
    let bad_state = post_json(&http, &statuses, &json!({"state": "done"})).send().await.expect("status");
    assert_eq!(bad_state.status(), 422);
    assert_eq!(json_of(bad_state).await["message"], "Validation Failed");
    let nowhere = format!("{url}/99/statuses");
    let nowhere_status = post_json(&http, &nowhere, &json!({"state": "success"})).send().await;
    assert_eq!(nowhere_status.expect("status").status(), 404);
    assert_eq!(http.get(&nowhere).send().await.expect("statuses").status(), 404);

    let with_id = |body: &Value, id: u64| {
        let mut body = body.clone();
        body["id"] = json!(id);
        body
    };
    assert_eq!(fake.deployments(REPO), [with_id(&first, 1), with_id(&second, 2)]);
    assert_eq!(fake.deployment_statuses(REPO, 1), posted);
    assert!(fake.deployment_statuses(REPO, 2).is_empty());
    assert_eq!(
        fake.feedback_log(REPO),
        ["deployment 1 abc123 pr-7", "deployment 2 def456 pr-8", "status 1 in_progress", "status 1 success"]
    );
    let writes = fake.bodies();
    assert_eq!(writes[0], ("POST".to_owned(), "/repos/acme/shop/deployments".to_owned(), first.clone()));
    assert_eq!(writes.len(), 9, "every write is recorded, refused or not");
}

#[tokio::test]
async fn pulls_filter_by_head_and_state() {
    let fake = FakeGitHub::start("").await;
    fake.set_branch(REPO, "feat/x", &"a".repeat(40));
    fake.open_pull(REPO, 7, "feat/x");
    fake.open_pull(REPO, 8, "feat/y");
    fake.open_pull(REPO, 9, "feat/x");
    fake.close_pull(REPO, 9);
    let http = reqwest::Client::new();
    let url = format!("{}/repos/{REPO}/pulls", fake.api_url());
    let numbers = |query: &'static [(&'static str, &'static str)]| {
        let request = http.get(&url).query(query).send();
        async move {
            let listed = json_of(request.await.expect("pulls")).await;
            let listed = listed.as_array().expect("a list");
            listed.iter().map(|p| p["number"].as_u64().expect("a number")).collect::<Vec<_>>()
        }
    };
    assert_eq!(numbers(&[("state", "open"), ("head", "acme:feat/x")]).await, [7]);
    assert_eq!(numbers(&[("head", "acme:feat/x")]).await, [7], "state defaults to open");
    assert_eq!(numbers(&[("state", "all"), ("head", "acme:feat/x")]).await, [9, 7]);
    assert_eq!(numbers(&[("state", "closed")]).await, [9]);
    assert_eq!(numbers(&[]).await, [8, 7]);
    assert_eq!(numbers(&[("head", "someone:feat/x")]).await, Vec::<u64>::new());
    assert_eq!(numbers(&[("head", "feat/x")]).await, [8, 7], "GitHub ignores a head without its owner");
    assert_eq!(numbers(&[("per_page", "1"), ("page", "2")]).await, [7]);

    let listed = json_of(http.get(&url).query(&[("head", "acme:feat/x")]).send().await.expect("pulls")).await;
    let pull = &listed[0];
    assert_eq!((&pull["state"], &pull["head"]["ref"]), (&json!("open"), &json!("feat/x")));
    assert_eq!((&pull["head"]["label"], &pull["head"]["repo"]["full_name"]), (&json!("acme:feat/x"), &json!(REPO)));
    assert_eq!(pull["head"]["sha"], "a".repeat(40));
    assert_eq!(pull["html_url"], "https://github.com/acme/shop/pull/7");
    let unknown = format!("{}/repos/acme/nowhere/pulls", fake.api_url());
    assert_eq!(http.get(unknown).send().await.expect("pulls").status(), 404);
}

#[tokio::test]
async fn comments_are_created_listed_in_pages_and_edited() {
    let fake = FakeGitHub::start("/api/v3").await;
    fake.open_pull(REPO, 7, "feat/x");
    let human = fake.add_comment(REPO, 7, "looks good");
    assert_eq!(human, 1000);
    let http = reqwest::Client::new();
    let url = format!("{}/repos/{REPO}/issues/7/comments", fake.api_url());
    for i in 0..4 {
        let created = post_json(&http, &url, &json!({"body": format!("bot {i}")})).send().await.expect("comment");
        assert_eq!(created.status(), 201);
        let comment = json_of(created).await;
        assert_eq!((&comment["id"], &comment["user"]["login"]), (&json!(1001 + i), &json!("previewd[bot]")));
        assert_eq!(comment["html_url"], format!("https://github.com/acme/shop/pull/7#issuecomment-{}", 1001 + i));
    }

    let first = http.get(&url).query(&[("per_page", "2")]).send().await.expect("page 1");
    let link = link_of(&first).expect("a Link header");
    assert!(link.ends_with(r#"per_page=2&page=3>; rel="last""#), "{link}");
    let first = json_of(first).await;
    assert_eq!(ids(&first), [1000, 1001], "oldest first");
    assert_eq!(first[0]["user"]["login"], "octocat");
    let last = http.get(&url).query(&[("per_page", "2"), ("page", "3")]).send().await.expect("page 3");
    assert_eq!(ids(&json_of(last).await), [1004]);

    let edit = format!("{}/repos/{REPO}/issues/comments/1002", fake.api_url());
    let edited = http.patch(&edit).json(&json!({"body": "edited"})).send().await.expect("edit");
    assert_eq!(edited.status(), 200);
    assert_eq!(json_of(edited).await["body"], "edited");
    let missing = format!("{}/repos/{REPO}/issues/comments/5000", fake.api_url());
    assert_eq!(http.patch(&missing).json(&json!({"body": "x"})).send().await.expect("edit").status(), 404);
    let no_body = http.patch(&edit).json(&json!({})).send().await.expect("edit");
    assert_eq!(no_body.status(), 422);
    let not_json = http.patch(&edit).body("{not json").send().await.expect("edit");
    assert_eq!(not_json.status(), 400);
    assert_eq!(json_of(not_json).await["message"], "Problems parsing JSON");
    let no_issue = format!("{}/repos/{REPO}/issues/99/comments", fake.api_url());
    assert_eq!(post_json(&http, &no_issue, &json!({"body": "x"})).send().await.expect("comment").status(), 404);

    let bodies = |comments: Vec<(u64, String)>| comments.into_iter().map(|(_, body)| body).collect::<Vec<_>>();
    assert_eq!(bodies(fake.comments(REPO, 7)), ["looks good", "bot 0", "edited", "bot 2", "bot 3"]);
    fake.delete_comment(1001);
    assert_eq!(fake.comments(REPO, 7).iter().map(|(id, _)| *id).collect::<Vec<_>>(), [1000, 1002, 1003, 1004]);
    assert_eq!(
        fake.feedback_log(REPO),
        [
            "comment create 7 1001",
            "comment create 7 1002",
            "comment create 7 1003",
            "comment create 7 1004",
            "comment edit 1002"
        ]
    );
    let (method, path, body) = fake.bodies().into_iter().nth(4).expect("the edit's body");
    assert_eq!((method.as_str(), path.as_str()), ("PATCH", "/repos/acme/shop/issues/comments/1002"));
    assert_eq!(body, json!({"body": "edited"}));
}

#[tokio::test]
async fn a_faulted_write_changes_nothing() {
    let fake = fake_with_branches(1).await;
    fake.open_pull(REPO, 7, "b000");
    let http = reqwest::Client::new();
    let comments = format!("{}/repos/{REPO}/issues/7/comments", fake.api_url());
    let deployments = format!("{}/repos/{REPO}/deployments", fake.api_url());
    fake.inject(Target::Writes, Fault::RetryAfter { status: 403, seconds: 7 }, 2);

    let refused = post_json(&http, &comments, &json!({"body": "hello"})).send().await.expect("comment");
    assert_eq!(refused.status(), 403);
    assert_eq!(refused.headers().get("retry-after").map(|v| v.to_str().ok()), Some(Some("7")));
    let message = json_of(refused).await["message"].as_str().expect("a message").to_owned();
    assert!(message.starts_with("You have exceeded a secondary rate limit"), "{message}");
    // A read is no write: it passes, and leaves the fault for the next write.
    assert_eq!(http.get(&comments).send().await.expect("comments").status(), 200);
    let deployment = json!({"ref": "0".repeat(40), "environment": "pr-7"});
    assert_eq!(post_json(&http, &deployments, &deployment).send().await.expect("deploy").status(), 403);
    assert!(fake.comments(REPO, 7).is_empty());
    assert!(fake.deployments(REPO).is_empty());
    assert!(fake.feedback_log(REPO).is_empty());

    assert_eq!(post_json(&http, &comments, &json!({"body": "hello"})).send().await.expect("comment").status(), 201);
    assert_eq!(fake.comments(REPO, 7), [(1000, "hello".to_owned())], "ids were not spent on refused writes");
    assert_eq!(fake.bodies().len(), 3);

    fake.inject(Target::Comments, Fault::RateLimited { status: 429 }, 1);
    let limited = http.get(&comments).send().await.expect("comments");
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers().get("x-ratelimit-remaining").map(|v| v.to_str().ok()), Some(Some("0")));
    let reset: u64 = limited.headers()["x-ratelimit-reset"].to_str().expect("ASCII").parse().expect("unix seconds");
    let now = unix_seconds(SystemTime::now());
    assert!((now..=now + 3).contains(&reset), "{reset} is not about two seconds after {now}");
    assert_eq!(http.get(&comments).send().await.expect("comments").status(), 200);
}

/// A GitHub App's key pair: the private key as PKCS#1 PEM, the public one as SPKI PEM.
fn app_key() -> (String, String) {
    use rsa::pkcs1::EncodeRsaPrivateKey as _;
    use rsa::pkcs8::{EncodePublicKey as _, LineEnding};
    let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("an RSA key");
    let private = key.to_pkcs1_pem(LineEnding::LF).expect("PEM").to_string();
    let public = key.to_public_key().to_public_key_pem(LineEnding::LF).expect("PEM");
    (private, public)
}

fn app_jwt(private_pem: &str, claims: &Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(private_pem.as_bytes()).expect("an RSA key");
    jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::RS256), claims, &key).expect("a JWT")
}

#[tokio::test]
async fn app_mode_wants_a_jwt_then_an_installation_token() {
    let (private_pem, public_pem) = app_key();
    let fake = fake_with_branches(1).await;
    fake.enable_app(4242, &public_pem, Duration::from_secs(3600));
    let http = reqwest::Client::new();
    let api = fake.api_url();
    let now = unix_seconds(SystemTime::now());
    // As octocrab makes it: `iss` a number, issued a minute early, ten minutes to live.
    let jwt = app_jwt(&private_pem, &json!({"iat": now - 60, "exp": now + 540, "iss": 4242}));

    let installation_url = format!("{api}/repos/{REPO}/installation");
    let refused = http.get(&installation_url).send().await.expect("installation");
    assert_eq!(refused.status(), 401);
    assert_eq!(json_of(refused).await["message"], "A JSON web token could not be decoded");
    let stranger = app_jwt(&private_pem, &json!({"iat": now - 60, "exp": now + 540, "iss": "1"}));
    let too_long = app_jwt(&private_pem, &json!({"iat": now - 60, "exp": now + 600, "iss": "4242"}));
    for bad in ["not-a-jwt", stranger.as_str(), too_long.as_str()] {
        let refused = http.get(&installation_url).bearer_auth(bad).send().await.expect("installation");
        assert_eq!(refused.status(), 401, "{bad}");
    }
    let installation = http.get(&installation_url).bearer_auth(&jwt).send().await.expect("installation");
    assert_eq!(installation.status(), 200);
    let installation = json_of(installation).await;
    assert_eq!((&installation["id"], &installation["account"]["login"]), (&json!(42), &json!("acme")));
    assert_eq!(installation["app_id"], 4242);
    assert_eq!(fake.installation_id("acme"), Some(42));

    let tokens_url = format!("{api}/app/installations/42/access_tokens");
    let issued = http.post(&tokens_url).bearer_auth(&jwt).send().await.expect("token");
    assert_eq!(issued.status(), 201);
    let issued = json_of(issued).await;
    let token = issued["token"].as_str().expect("a token").to_owned();
    assert!(token.starts_with("ghs_"), "{token}");
    assert!(issued["expires_at"].as_str().expect("a time").ends_with('Z'));
    assert_eq!(issued["repository_selection"], "all");
    assert_eq!(fake.tokens_issued(), 1);
    let elsewhere = format!("{api}/app/installations/7/access_tokens");
    assert_eq!(http.post(&elsewhere).bearer_auth(&jwt).send().await.expect("token").status(), 404);
    // A string `iss` is taken too.
    let string_iss = app_jwt(&private_pem, &json!({"iat": now, "exp": now + 600, "iss": "4242"}));
    assert_eq!(http.post(&tokens_url).bearer_auth(&string_iss).send().await.expect("token").status(), 201);

    let repo_url = format!("{api}/repos/{REPO}");
    let with_token = http.get(&repo_url).header("authorization", format!("token {token}")).send().await;
    assert_eq!(with_token.expect("repo").status(), 200);
    assert_eq!(http.get(&repo_url).bearer_auth(&token).send().await.expect("repo").status(), 200);
    assert_eq!(fake.unauthenticated_count(), 0);
    let missing = http.get(&repo_url).send().await.expect("repo");
    assert_eq!(missing.status(), 401);
    assert_eq!(json_of(missing).await["message"], "Bad credentials");
    let with_jwt = http.get(&repo_url).bearer_auth(&jwt).send().await.expect("repo");
    assert_eq!(with_jwt.status(), 401, "a JWT is no installation token");
    assert_eq!(fake.unauthenticated_count(), 2);

    fake.enable_app(4242, &public_pem, Duration::from_secs(1));
    let issued = json_of(http.post(&tokens_url).bearer_auth(&jwt).send().await.expect("token")).await;
    let short_lived = issued["token"].as_str().expect("a token").to_owned();
    assert_eq!(http.get(&repo_url).bearer_auth(&short_lived).send().await.expect("repo").status(), 200);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    assert_eq!(http.get(&repo_url).bearer_auth(&short_lived).send().await.expect("repo").status(), 401);
    assert_eq!(fake.unauthenticated_count(), 3);
    assert_eq!(http.get(&repo_url).bearer_auth(&token).send().await.expect("repo").status(), 200, "still valid");
}

#[tokio::test]
async fn checks_on_a_commit_are_listed_as_github_lists_them() {
    let fake = FakeGitHub::start("/api/v3").await;
    let sha = "c".repeat(40);
    fake.set_check_run(REPO, &sha, "build", "queued", None);
    let first = fake.set_check_run(REPO, &sha, "build", "completed", Some("failure"));
    let rerun = fake.rerun_check_run(REPO, &sha, "build", "in_progress", None);
    assert!(rerun > first, "a re-run is a new run with a higher id");
    fake.set_check_run(REPO, &sha, "test", "completed", Some("success"));
    let http = reqwest::Client::new();
    // Owner and repository are read without regard to case, the commit too.
    let runs_url = format!("{}/repos/Acme/Shop/commits/{}/check-runs", fake.api_url(), sha.to_uppercase());

    let latest = json_of(http.get(format!("{runs_url}?per_page=1")).send().await.expect("check runs")).await;
    assert_eq!(latest["total_count"], 2, "the newest run of each name: {latest}");
    assert_eq!(latest["check_runs"][0]["name"], "test", "newest first");
    let all = json_of(http.get(format!("{runs_url}?filter=all&per_page=100")).send().await.expect("all")).await;
    assert_eq!(all["total_count"], 3, "{all}");
    let paged = http.get(format!("{runs_url}?per_page=1&page=2")).send().await.expect("page 2");
    assert!(link_of(&paged).is_some_and(|l| l.contains(r#"rel="prev""#)));
    let page2 = json_of(paged).await;
    let build = &page2["check_runs"][0];
    assert_eq!((build["id"].as_u64(), build["conclusion"].is_null()), (Some(rerun), true), "{build}");

    let status_url = format!("{}/repos/{REPO}/commits/{sha}/status", fake.api_url());
    let none = json_of(http.get(&status_url).send().await.expect("status")).await;
    assert_eq!((none["state"].as_str(), none["total_count"].as_u64()), (Some("pending"), Some(0)), "{none}");
    fake.set_status(REPO, &sha, "ci/legacy", "failure");
    fake.set_status(REPO, &sha, "ci/legacy", "success");
    fake.set_status(REPO, &sha, "ci/docs", "success");
    let combined = json_of(http.get(&status_url).send().await.expect("status")).await;
    assert_eq!(combined["state"], "success", "the newest status of each context counts: {combined}");
    assert_eq!(combined["total_count"], 2);
    fake.set_status(REPO, &sha, "ci/docs", "error");
    let combined = json_of(http.get(&status_url).send().await.expect("status")).await;
    assert_eq!(combined["state"], "failure", "{combined}");
    assert_eq!(combined["statuses"][0]["context"], "ci/docs", "newest first");

    let other = format!("{}/repos/acme/unknown/commits/{sha}/status", fake.api_url());
    assert_eq!(http.get(other).send().await.expect("status").status(), 404);
}
