use std::collections::HashMap;
use std::process::Command;

use proptest::prelude::*;

use super::*;

fn branch(s: &str) -> BranchName {
    BranchName::new(s).expect("valid branch")
}

fn names(repo: &str, b: &str) -> EnvNames {
    EnvNames::new(
        &OwnerId::new("acme-previews").expect("owner"),
        &RepoName::new(repo).expect("repo"),
        &branch(b),
        &DnsZone::new("preview.example.com").expect("zone"),
    )
}

#[test]
fn plain_branches_are_their_own_key() {
    for b in ["main", "feature-login", "release-2024-10", "a", "0day", "fix-deadbee"] {
        assert_eq!(EnvKey::for_branch(&branch(b)).as_str(), b);
    }
}

#[test]
fn plain_names_that_look_hashed_are_hashed() {
    let key = EnvKey::for_branch(&branch("fix-deadbeef"));
    assert!(key.is_hashed());
    assert!(key.as_str().starts_with("fix-deadbeef-"), "{key}");
}

#[test]
fn other_branches_get_a_readable_slug_and_a_hash() {
    let key = EnvKey::for_branch(&branch("feature/Login_v2"));
    assert!(key.is_hashed());
    let (slug, hash) = key.as_str().rsplit_once('-').expect("hashed key");
    assert_eq!(slug, "feature-login-v2");
    assert_eq!(hash.len(), 8);
    assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
    // Deterministic.
    assert_eq!(key, EnvKey::for_branch(&branch("feature/Login_v2")));
}

#[test]
fn names_that_collide_once_slugified_get_different_keys() {
    let keys: Vec<_> = ["feat/x", "feat-x", "FEAT_x", "feat--x", "feat.x", "feat/x/"]
        .iter()
        .filter_map(|b| BranchName::new(b).ok())
        .map(|b| EnvKey::for_branch(&b))
        .collect();
    assert_eq!(keys.len(), 5, "`feat/x/` is not a valid branch");
    for (i, a) in keys.iter().enumerate() {
        for b in &keys[i + 1..] {
            assert_ne!(a, b);
        }
    }
}

#[test]
fn non_ascii_branches_still_get_a_key() {
    let key = EnvKey::for_branch(&branch("機能/ログイン"));
    assert!(key.as_str().starts_with("branch-") && key.is_hashed(), "{key}");
}

#[test]
fn git_rules_are_enforced() {
    for bad in [
        "", "HEAD", "-x", "a b", "a..b", ".a", "a/.b", "a.lock", "a/", "/a", "a//b", "a@{b", "a\\b", "a.", "a~", "a^",
        "a:b", "a?", "a*", "a[", "a\tb", "a\u{7f}",
    ] {
        assert!(BranchName::new(bad).is_err(), "{bad:?} must be rejected");
    }
    for good in ["@", "a'\"$();|&<>#", "é/🚀", "x/-y", "a\u{200f}b", "refs/heads/x", "a.lock.b"] {
        assert!(BranchName::new(good).is_ok(), "{good:?} must be accepted");
    }
}

#[test]
fn env_names_have_the_documented_shape() {
    let n = names("Acme/Shop", "feature-login");
    assert_eq!(n.dns_name, "feature-login.preview.example.com");
    assert_eq!(
        n.stack_name,
        format!("previewd-acme-shop-feature-login-{}", RepoName::new("acme/shop").unwrap().hash())
    );
    assert!(n.bucket_prefix.starts_with("previewd-feature-login-"), "{}", n.bucket_prefix);
}

#[test]
fn app_and_env_stack_names_never_meet() {
    let repo = RepoName::new("acme/shop").expect("repo");
    for stage in Stage::ALL {
        let app = app_stack_name(&repo, stage);
        assert!(is_valid_stack_name(&app));
        for b in ["staging", "production", "app", "main"] {
            assert_ne!(names("acme/shop", b).stack_name, app);
        }
    }
}

#[test]
fn repository_names_follow_github() {
    for good in ["acme/shop", "Acme-Co/web.site", "a/b", "octocat_acme/x_y"] {
        assert!(RepoName::new(good).is_ok(), "{good}");
    }
    for bad in ["acme", "acme/", "/shop", "acme/shop/x", "acme/..", "ac me/shop", "acme/sh;op"] {
        assert!(RepoName::new(bad).is_err(), "{bad}");
    }
    assert_eq!(RepoName::new("Acme/Shop").unwrap(), RepoName::new("acme/shop").unwrap());
}

#[test]
fn tag_values_keep_only_characters_aws_accepts() {
    assert_eq!(tag_value("feature/login-v2"), "feature/login-v2");
    assert_eq!(tag_value("a\"b<c>é;$(x)"), "a_b_c_____x_");
    assert_eq!(tag_value("x'y"), "x_y");
    assert_eq!(tag_value(&"é".repeat(300)).chars().count(), TAG_VALUE_MAX);
}

#[test]
fn a_branch_identity_tells_apart_what_its_tag_value_confuses() {
    let b = |s: &str| BranchName::new(s).unwrap();
    assert_eq!(tag_value("fix#12"), tag_value("fix_12"));
    assert_ne!(b("fix#12").identity(), b("fix_12").identity());
    assert_ne!(b("feat/über").identity(), b("feat/_ber").identity());
    // SHA-256 of the exact bytes, as `sha256sum` prints it: a person can check a tag by hand.
    assert_eq!(b("main").identity(), "0d6e4079e36703ebd37c00722f5891d28b0e2811dc114b129215123adcce3605");
}

#[test]
fn long_inputs_are_clipped_in_errors() {
    let err = BranchName::new(&format!("{}~", "a".repeat(5000))).unwrap_err().to_string();
    assert!(err.len() < 400, "{err}");
}

#[test]
fn no_infra_suffix() {
    assert!(branch("docs-no-infra").is_no_infra());
    assert!(branch("feat/x-no-infra").is_no_infra());
    assert!(!branch("no-infra-later").is_no_infra());
}

/// Characters a hostile branch name may hold: everything git accepts that tends to break templates,
/// shells, YAML, JSON or DNS.
const PIECES: &[&str] = &[
    "a",
    "z",
    "A",
    "Z",
    "0",
    "9",
    "-",
    "_",
    ".",
    "@",
    "'",
    "\"",
    "$",
    "(",
    ")",
    ";",
    "|",
    "&",
    "<",
    ">",
    "#",
    "!",
    "%",
    ",",
    "=",
    "+",
    "{",
    "}",
    "]",
    "`",
    "é",
    "ß",
    "日本",
    "🚀",
    "\u{200f}",
    "\u{202e}",
    "\u{200d}",
    "ﬀ",
    "İ",
    "${AWS.StackName}",
    "{\"Ref\",\"X\"}",
    "!Ref",
    "&anchor",
    "---",
    "%0a",
    "%00",
    "Fn__Sub",
    "xn--",
    "<script>",
];

prop_compose! {
    /// A path component: it starts with neither '.' nor '-', so git's rejections stay rare.
    fn component()(head in "[a-zA-Z0-9_é🚀'\"$(<#]", parts in prop::collection::vec(prop::sample::select(PIECES), 0..12))
        -> String
    {
        let mut s = head + &parts.concat();
        // Mend the few sequences git refuses anywhere, so filtering keeps nearly every case.
        while s.contains("..") || s.contains("@{") {
            s = s.replace("..", ".x").replace("@{", "@x");
        }
        if s.ends_with('.') || s.ends_with(".lock") {
            s.push('x');
        }
        s
    }
}

prop_compose! {
    fn any_branch()(parts in prop::collection::vec(component(), 1..8), long in any::<bool>(), fill in "[a-zA-Z0-9/]{0,4}")
        -> String
    {
        let mut s = parts.join("/");
        if long {
            // Up to 250 characters.
            while s.chars().count() < 250 {
                s.push('x');
                s.push_str(&fill.replace('/', "-"));
            }
            s = s.chars().take(250).collect();
        }
        s
    }
}

fn valid_branch() -> impl Strategy<Value = BranchName> {
    any_branch().prop_filter_map("git rejects it", |s| BranchName::new(&s).ok())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn derived_names_are_always_valid(b in valid_branch()) {
        let n = EnvNames::new(
            &OwnerId::new("acme").unwrap(),
            &RepoName::new("Some-Org/some.repo_name").unwrap(),
            &b,
            &DnsZone::new("preview.example.com").unwrap(),
        );
        prop_assert!(is_plain_label(n.env_key.as_str()), "key {:?}", n.env_key);
        prop_assert!(!n.stack_name.contains("--"), "stack {:?}", n.stack_name);
        prop_assert!(n.env_key.as_str().len() <= DNS_LABEL_MAX);
        prop_assert!(is_valid_stack_name(&n.stack_name), "stack {:?}", n.stack_name);
        prop_assert!(is_valid_bucket_prefix(&n.bucket_prefix), "bucket {:?}", n.bucket_prefix);
        prop_assert!(n.dns_name.len() <= DNS_NAME_MAX);
        let tag = tag_value(b.as_str());
        prop_assert!(tag.chars().count() <= TAG_VALUE_MAX);
        prop_assert!(tag.chars().all(|c| c.is_ascii_alphanumeric() || " _.:/=+-@".contains(c)));
        prop_assert_eq!(EnvKey::new(n.env_key.as_str()).unwrap(), n.env_key);
    }

    #[test]
    fn derived_names_are_unique(bs in prop::collection::vec(valid_branch(), 2..64)) {
        let mut seen: HashMap<String, &BranchName> = HashMap::new();
        for b in &bs {
            let n = names("acme/shop", b.as_str());
            for name in [n.env_key.to_string(), n.stack_name, n.dns_name, n.bucket_prefix] {
                if let Some(prev) = seen.insert(name.clone(), b) {
                    prop_assert_eq!(prev, b, "{} is derived from two branches", name);
                }
            }
        }
    }

    #[test]
    fn readable_when_plain_ascii(b in "[a-z][a-z0-9]{0,10}(/[A-Za-z0-9_]{1,10}){0,3}") {
        let key = EnvKey::for_branch(&branch(&b));
        let slug = if key.is_hashed() { &key.as_str()[..key.as_str().len() - 9] } else { key.as_str() };
        let expected = b.to_ascii_lowercase().replace(['/', '_'], "-");
        let expected = expected.split('-').filter(|p| !p.is_empty()).collect::<Vec<_>>().join("-");
        prop_assert_eq!(slug, expected);
    }

    #[test]
    fn the_same_branch_in_two_repositories_gets_two_stacks(b in valid_branch()) {
        prop_assert_ne!(names("acme/shop", b.as_str()).stack_name, names("acme/shop-api", b.as_str()).stack_name);
        prop_assert_ne!(names("acme/shop", b.as_str()).bucket_prefix, names("acme/shop-api", b.as_str()).bucket_prefix);
    }
}

proptest! {
    // Each case starts a git process: fewer cases, still a real cross-check of the validator.
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn validator_agrees_with_git(s in prop_oneof![any_branch(), "[ -~]{1,12}", any_branch().prop_map(|s| format!("{s}.lock"))]) {
        let git = Command::new("git").args(["check-ref-format", "--branch", &s]).output().expect("git is installed");
        prop_assert_eq!(BranchName::new(&s).is_ok(), git.status.success(), "{:?}", s);
    }
}

#[test]
fn readable_keys_are_slugs_that_cannot_pass_for_hashed_ones() {
    let key = |b: &str| EnvKey::readable(&BranchName::new(b).expect("branch")).map(|k| k.to_string());
    assert_eq!(key("feature/login").as_deref(), Some("feature-login"));
    assert_eq!(key("main").as_deref(), Some("main"));
    assert_eq!(key("Feature/Login_v2").as_deref(), Some("feature-login-v2"));
    assert_eq!(key("fix-0123abcd"), None, "shaped like a hashed key");
    assert_eq!(key("ü/ñ"), None, "nothing readable is left");
    assert_eq!(key("ümlaut").as_deref(), Some("mlaut"));
    assert_eq!(key(&"a".repeat(64)), None, "cut short would not be whole");
    assert_eq!(key(&"a".repeat(63)).map(|k| k.len()), Some(63));
    for b in ["feature/login", "main", "x"] {
        let readable = EnvKey::readable(&BranchName::new(b).expect("branch")).expect("readable");
        assert!(EnvKey::new(readable.as_str()).is_ok(), "{b}: a valid key");
    }
}

/// The names a new environment takes are chosen here only (the webhook and the reaper's adoption both
/// ask): readable first, the always-hashed key on a collision; a branch with no readable key has no
/// fallback; adoption accepts those and the hashed key older versions gave.
#[test]
fn a_new_environment_chooses_its_names_in_one_place() {
    let owner = OwnerId::new("acme-previews").expect("owner");
    let repo = RepoName::new("acme/shop").expect("repo");
    let zone = DnsZone::new("preview.example.com").expect("zone");
    let login = BranchName::new("feature/login").expect("branch");
    let (first, fallback) = EnvNames::choices(&owner, &repo, &login, &zone);
    assert_eq!(first.env_key.as_str(), "feature-login");
    assert_eq!(fallback, Some(EnvNames::hashed(&owner, &repo, &login, &zone)));
    // Shaped like a hashed key: no readable one.
    let odd = BranchName::new("release-0123abcd").expect("branch");
    assert_eq!(EnvNames::choices(&owner, &repo, &odd, &zone), (EnvNames::hashed(&owner, &repo, &odd, &zone), None));
    let candidates = EnvNames::candidates(&owner, &repo, &login, &zone);
    assert_eq!(candidates[0], first);
    assert!(candidates.contains(&EnvNames::new(&owner, &repo, &login, &zone)));
    assert!(candidates.contains(&EnvNames::hashed(&owner, &repo, &login, &zone)));
}
