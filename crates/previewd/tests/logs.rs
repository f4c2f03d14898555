//! Logs as an operator's pipeline reads them: the real `previewd serve` at `PREVIEWD_LOG_LEVEL=debug`,
//! JSON to a file (not a terminal), through a branch with a settings mistake, one that comes up and
//! goes, and a webhook that is refused.

use std::collections::BTreeSet;

use previewd_domain::Status;
use previewd_testkit::{REPO, SECRET, Serve, TestEnv, sha, webhook};
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

/// A JSON value read the strict way: a key twice in one object is an error (`jq` and serde_json keep
/// the second and lose the first without a word).
struct Unique;

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueVisitor)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Unique;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("JSON")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_unit<E>(self) -> Result<Unique, E> {
        Ok(Unique)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
        while seq.next_element::<Unique>()?.is_some() {}
        Ok(Unique)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
        let mut keys = BTreeSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !keys.insert(key.clone()) {
                return Err(serde::de::Error::custom(format!("the key {key:?} twice")));
            }
            map.next_value::<Unique>()?;
        }
        Ok(Unique)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_say_each_change_once_at_its_level_as_json_a_pipeline_can_read() {
    let mut t = TestEnv::start().await;
    t.stop_app().await; // the process below is the one under test
    let log = t.dir.path().join("serve.log");
    let env = [("PREVIEWD_LOG_LEVEL", "debug")];
    let child = Serve::start(&t, env!("CARGO_BIN_EXE_previewd"), &["--log-format", "json"], &env, log).await;
    let base = format!("http://{}", child.addr);
    let http = reqwest::Client::new();
    let deliver = |event: &'static str, id: String, body: Vec<u8>, signature: String| {
        let req = http
            .post(format!("{base}/webhooks/github"))
            .header("x-github-event", event)
            .header("x-github-delivery", id)
            .header("x-hub-signature-256", signature)
            .body(body);
        async move { req.send().await.expect("previewd answers").status() }
    };
    let push =
        |branch: &str, at: &str| serde_json::to_vec(&webhook::push(REPO, branch, &"0".repeat(40), at)).expect("json");
    let wait_for =
        |branch: &'static str, status: Status| t.wait_for(branch, status.as_str(), move |e| e.status == status);

    // A contributor's settings mistake in the branch's own file.
    t.github.set_branch(REPO, "typo/cpu", &sha(1));
    t.github.set_file(REPO, &sha(1), ".previewd.toml", "service.cpus = 512\n");
    let body = push("typo/cpu", &sha(1));
    assert_eq!(deliver("push", "d-1".into(), body.clone(), webhook::sign(SECRET, &body)).await, 202);
    wait_for("typo/cpu", Status::Failed).await;
    // A branch that comes up, and goes.
    t.github.set_branch(REPO, "feature/logs", &sha(2));
    let body = push("feature/logs", &sha(2));
    assert_eq!(deliver("push", "d-2".into(), body.clone(), webhook::sign(SECRET, &body)).await, 202);
    wait_for("feature/logs", Status::Ready).await;
    t.github.delete_branch(REPO, "feature/logs");
    let body = serde_json::to_vec(&webhook::branch_event("delete", REPO, "feature/logs")).expect("json");
    assert_eq!(deliver("delete", "d-3".into(), body.clone(), webhook::sign(SECRET, &body)).await, 202);
    wait_for("feature/logs", Status::Deleted).await;
    // A delivery signed with another secret.
    assert_eq!(deliver("push", "d-4".into(), body.clone(), webhook::sign("not-the-secret", &body)).await, 401);
    let logs = previewd_testkit::eventually("the refusal logged", || {
        let logs = child.logs();
        logs.contains("webhook refused").then_some(logs)
    })
    .await;
    assert!(!logs.contains('\u{1b}'), "no escape codes in a file: {logs}");
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|line| {
            serde_json::from_str::<Unique>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
            serde_json::from_str(line).expect("JSON")
        })
        .collect();
    let text = |l: &serde_json::Value| l.to_string();
    assert!(!lines.iter().any(|l| text(l).contains("\\u001b")), "no escape codes inside values either: {logs}");
    let at = |level: &'static str| lines.iter().filter(move |l| l["level"] == level);
    let of = |branch: &'static str, message: &'static str| {
        lines.iter().filter(move |l| l["span"]["branch"] == branch && l["fields"]["message"] == message).count()
    };

    // The mistake: one WARN line in words naming the key, and nothing at ERROR to page anyone for it.
    let warned: Vec<_> = at("WARN").filter(|l| text(l).contains("service.cpus")).collect();
    assert_eq!(warned.len(), 1, "{logs}");
    let error = warned[0]["fields"]["error"].as_str().expect("the error in words");
    assert!(error.contains("key `service.cpus`: unknown key") && !error.contains("Render("), "{error}");
    assert_eq!(at("ERROR").count(), 0, "{logs}");
    // Each change of an environment's life: one INFO line.
    for message in ["creating the stack", "ready", "tearing down", "torn down"] {
        assert_eq!(of("feature/logs", message), 1, "{message:?} once: {logs}");
    }
    assert!(at("INFO").all(|l| l["fields"]["message"].is_string()));
    let refused: Vec<_> = lines.iter().filter(|l| l["fields"]["message"] == "webhook refused").collect();
    assert_eq!(refused.len(), 1, "{logs}");
    assert!(refused[0]["fields"]["reason"].is_string(), "its reason has its own key: {}", refused[0]);
    // At debug level the lines are previewd's own: its libraries say only warnings.
    let theirs: Vec<_> =
        lines.iter().filter(|l| !l["target"].as_str().is_some_and(|t| t.starts_with("previewd"))).collect();
    assert!(theirs.iter().all(|l| l["level"] == "WARN" || l["level"] == "ERROR"), "{theirs:#?}");
    assert!(lines.iter().filter(|l| l["level"] == "DEBUG").count() >= 3, "previewd's debug lines are there: {logs}");
}
