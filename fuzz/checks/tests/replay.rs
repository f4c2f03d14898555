//! The fuzz checks in the normal test suite: every seed in `fuzz/corpus/<target>/` and every crash saved
//! in `fuzz/regressions/<target>/` (by `fuzz/run.sh`) goes through its check, so a crash found once stays
//! fixed; then a few hand-written cases per check, including the repository's own fixtures.

use std::fs;
use std::panic::catch_unwind;
use std::path::{Path, PathBuf};

use previewd_fuzz_checks::{EVENTS, branch_names, settings, signature, webhook};

/// A fuzz target's check: panics on a bug, returns on any other input.
type Check = fn(&[u8]);

/// Each fuzz target and its check, as `fuzz/fuzz_targets/<target>.rs` calls it.
const TARGETS: [(&str, Check); 4] =
    [("webhook", webhook), ("signature", signature), ("branch_names", branch_names), ("settings", settings)];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The files of `fuzz/<kind>/<target>/`, sorted; dot files (`.gitkeep`) are not inputs.
fn saved_inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = repo_root().join("fuzz").join(kind).join(target);
    let entries = fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file() && !path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
        .collect();
    files.sort();
    files
}

#[test]
fn every_saved_input_passes_its_check() {
    let mut failed = Vec::new();
    for (target, check) in TARGETS {
        let seeds = saved_inputs("corpus", target);
        assert!(!seeds.is_empty(), "fuzz/corpus/{target}/ holds no seed");
        for file in seeds.into_iter().chain(saved_inputs("regressions", target)) {
            let data = fs::read(&file).unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
            // The panic itself is printed by the default hook; this names the file it came from.
            if catch_unwind(|| check(&data)).is_err() {
                failed.push(format!("{target}: {}", file.display()));
            }
        }
    }
    assert!(failed.is_empty(), "inputs that fail their check:\n{}", failed.join("\n"));
}

/// A webhook input: the byte that picks `event`, then the body.
fn webhook_input(event: &str, body: &[u8]) -> Vec<u8> {
    let pick = EVENTS.iter().position(|e| *e == event).expect("a fuzzed event");
    let mut data = vec![b'0' + u8::try_from(pick).expect("six events")];
    data.extend_from_slice(body);
    data
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if u32::from(c) < 0x20 => out.push_str(&format!("\\u{:04x}", u32::from(c))),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The hostile names the render tests use: valid git branch names chosen to break templates, DNS and shells.
fn hostile_branches() -> Vec<String> {
    let path = repo_root().join("tests/fixtures/hostile-branches.txt");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    text.lines().filter(|l| !l.is_empty() && !l.starts_with("# ")).map(str::to_owned).collect()
}

#[test]
fn github_fixtures_and_hostile_pushes() {
    let fixtures = repo_root().join("tests/fixtures/github");
    for (event, file) in [
        ("push", "push.json"),
        ("push", "push-delete.json"),
        ("create", "create.json"),
        ("delete", "delete.json"),
        ("ping", "ping.json"),
    ] {
        let body = fs::read(fixtures.join(file)).expect("fixture");
        for event in [event, "issues", "pull_request"] {
            webhook(&webhook_input(event, &body));
        }
    }
    let sha = "a".repeat(40);
    let mut branches = hostile_branches();
    branches.extend(["a/../b".to_owned(), "x".repeat(1024), "x".repeat(1025), "HEAD".to_owned()]);
    for branch in &branches {
        let b = json_string(branch);
        let push = format!(
            r#"{{"ref":{r},"after":"{sha}","repository":{{"full_name":"Acme/Shop"}}}}"#,
            r = json_string(&format!("refs/heads/{branch}"))
        );
        webhook(&webhook_input("push", push.as_bytes()));
        let create = format!(r#"{{"ref":{b},"ref_type":"branch","repository":{{"full_name":"Acme/Shop"}}}}"#);
        webhook(&webhook_input("create", create.as_bytes()));
        webhook(&webhook_input("delete", create.as_bytes()));
        let pr = format!(
            r#"{{"action":"opened","pull_request":{{"head":{{"ref":{b},"repo":{{"full_name":"acme/shop"}}}}}},"repository":{{"full_name":"Acme/Shop"}}}}"#
        );
        webhook(&webhook_input("pull_request", pr.as_bytes()));
    }
    for data in [&b""[..], b"0", b"0{not json", b"3[]", b"5", b"\xff{}", b"0{\"ref\":\"refs/tags/v1\"}"] {
        webhook(data);
    }
}

/// A signature input: secret and header, each after a byte giving its length, then the body.
fn signature_input(secret: &[u8], header: &[u8], body: &[u8]) -> Vec<u8> {
    let mut data = vec![u8::try_from(secret.len()).expect("a short secret")];
    data.extend_from_slice(secret);
    data.push(u8::try_from(header.len()).expect("a short header"));
    data.extend_from_slice(header);
    data.extend_from_slice(body);
    data
}

#[test]
fn signatures() {
    // GitHub's own example from its documentation: the header is right, so the check's accepting path runs.
    let doc = b"sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
    signature(&signature_input(b"It's a Secret to Everybody", doc, b"Hello, World!"));
    signature(&signature_input(b"", doc, b"Hello, World!"));
    for header in [&b""[..], b"sha256=", b"sha256=zz", b"sha1=00", b"sha256= 00 ", b"\xff\xfe", doc] {
        signature(&signature_input(b"secret", header, b"{}"));
    }
    for data in [&b""[..], b"\x00", b"\xff", b"\x01s\xff", &[7u8; 300]] {
        signature(data);
    }
}

#[test]
fn branch_names_hostile_and_malformed() {
    for branch in hostile_branches() {
        branch_names(branch.as_bytes());
    }
    let long = ["a".repeat(63), "a".repeat(64), "a".repeat(300), "é".repeat(300), "x/".repeat(512), "x".repeat(1024)];
    for name in long.iter().map(String::as_bytes) {
        branch_names(name);
    }
    for name in [&b""[..], b"feature/login", b"a/../b", b"x-deadbeef", b"fix-0123abcd", b"\xff\xfe", b"a\x00b", b"-"] {
        branch_names(name);
    }
}

#[test]
fn settings_layers() {
    for text in [
        "",
        "service.cpu = \"512\"\napp.log_level = \"debug\"",
        "[service]\ncpu = \"256\"\nmemory = \"512\"\nhealth_check_path = \"/up\"",
        "database.enabled = false",
        "service.cpu = \"4096\"",
        "service.cpu = 512",
        "service.desired_count = 9",
        "\"service.cpu\" = \"512\"",
        "service = 1",
        "service.cpu.x = 1",
        "nothing.here = true",
        "x = ",
        "[[service]]",
        "app.log_level = 1979-05-27T07:32:00Z",
    ] {
        settings(text.as_bytes());
    }
    settings(b"\xff\xfe = 1");
    let defaults = fs::read(repo_root().join("stacks/webapp/defaults.toml")).expect("webapp defaults");
    settings(&defaults);
}
