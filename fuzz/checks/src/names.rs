//! Branch names and every name derived from them: whatever a branch is called, the names previewd hands to
//! DNS, CloudFormation, S3 and AWS tags are valid there, and the same branch always gets the same names.

use previewd_domain::{
    BranchName, DNS_LABEL_MAX, DNS_NAME_MAX, DnsZone, EnvKey, EnvNames, OwnerId, RepoName, STACK_NAME_MAX,
    TAG_VALUE_MAX, is_valid_bucket_prefix, is_valid_stack_name, tag_value,
};

/// `BranchName` refuses longer names: GitHub refuses refs much longer than this.
const BRANCH_BYTES_MAX: usize = 1024;
/// Characters besides ASCII letters and digits that every AWS service accepts in a tag value.
const TAG_PUNCTUATION: &str = " _.:/=+-@";
/// A refusal quotes at most 200 characters of the input, escaped (`\u{10ffff}` at worst): a hostile name
/// cannot flood a log.
const ERROR_BYTES_MAX: usize = 4096;

/// `BranchName::new` on the input (lossy UTF-8); for a name it accepts, every derived name must hold.
pub fn branch_names(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match BranchName::new(&text) {
        Ok(branch) => branch_holds(&branch),
        Err(error) => {
            let message = error.to_string();
            assert!(message.len() <= ERROR_BYTES_MAX, "a refusal {} bytes long: {message}", message.len());
        }
    }
}

/// What every accepted branch name must satisfy, wherever it came from (a webhook, the fuzzer).
pub(crate) fn branch_holds(branch: &BranchName) {
    let s = branch.as_str();
    assert_eq!(BranchName::new(s).as_ref(), Ok(branch), "an accepted branch name is refused the second time");
    assert!(!s.is_empty() && s.len() <= BRANCH_BYTES_MAX, "{} bytes accepted", s.len());
    // Hashes over several names separate them with a NUL, and logs must not take control characters.
    assert!(!s.chars().any(|c| c.is_ascii_control()), "{s:?}: a control character was accepted");

    for (owner, repo, zone) in places() {
        env_names_hold(&owner, &repo, branch, &zone);
    }

    let tag = tag_value(s);
    assert_eq!(tag, tag_value(s), "tag_value is not deterministic");
    assert!(tag.chars().count() <= TAG_VALUE_MAX, "tag value of {} characters", tag.chars().count());
    assert!(
        tag.chars().all(|c| c.is_ascii_alphanumeric() || TAG_PUNCTUATION.contains(c)),
        "tag value {tag:?} holds a character AWS refuses"
    );
}

/// The installations, repositories and zones each branch is tried in: an ordinary one, and one with the
/// longest owner and repository GitHub allows and the longest zone `DnsZone` accepts, so every derived name
/// is at its longest.
fn places() -> [(OwnerId, RepoName, DnsZone); 2] {
    let long_repo = format!("{}/{}", "O".repeat(39), "r.e-p_o".repeat(14));
    let long_zone = format!("{}.{}.{}", "a".repeat(63), "b".repeat(63), "c".repeat(61));
    [
        (
            OwnerId::new("acme-previews").expect("owner"),
            RepoName::new("Acme/Shop").expect("repository"),
            DnsZone::new("preview.example.com").expect("zone"),
        ),
        (
            OwnerId::new(&format!("o{}", "-0".repeat(15))).expect("longest owner id"),
            RepoName::new(&long_repo).expect("longest repository"),
            DnsZone::new(&long_zone).expect("longest zone"),
        ),
    ]
}

/// The names with each of the three keys (`new`, `hashed`, `readable`) are valid and deterministic, and
/// the readable and hashed keys can never be mistaken for one another.
fn env_names_hold(owner: &OwnerId, repo: &RepoName, branch: &BranchName, zone: &DnsZone) {
    let names = EnvNames::new(owner, repo, branch, zone);
    assert_eq!(names, EnvNames::new(owner, repo, branch, zone), "EnvNames::new is not deterministic");
    assert_eq!(names.env_key, EnvKey::for_branch(branch));
    names_hold(&names, zone);

    let hashed = EnvNames::hashed(owner, repo, branch, zone);
    assert_eq!(hashed, EnvNames::hashed(owner, repo, branch, zone), "EnvNames::hashed is not deterministic");
    assert!(hashed.env_key.is_hashed(), "hashed key {} does not end in 8 hex digits", hashed.env_key);
    names_hold(&hashed, zone);

    let readable = EnvNames::readable(owner, repo, branch, zone);
    assert_eq!(readable, EnvNames::readable(owner, repo, branch, zone), "EnvNames::readable is not deterministic");
    match &readable {
        Some(readable) => {
            names_hold(readable, zone);
            assert!(!readable.env_key.is_hashed(), "readable key {} looks hashed", readable.env_key);
            assert_ne!(readable.stack_name, hashed.stack_name, "the fallback stack name equals the first choice");
        }
        None => assert!(names.env_key.is_hashed(), "{branch:?} is its own key but has no readable key"),
    }
    if !names.env_key.is_hashed() {
        assert_eq!(readable.map(|r| r.env_key).as_ref(), Some(&names.env_key), "a plain key is its own readable key");
    }
}

/// One environment's names, each valid for the system that receives it.
fn names_hold(names: &EnvNames, zone: &DnsZone) {
    let key = names.env_key.as_str();
    assert!(is_dns_label(key), "env key {key:?} is not a DNS label");
    assert!(!key.contains("--"), "env key {key:?} holds `--`");
    assert_eq!(EnvKey::new(key).as_ref(), Ok(&names.env_key), "env key {key:?} is not read back");
    assert_eq!(tag_value(key), key, "env key {key:?} is not a valid tag value as it is");

    let dns = &names.dns_name;
    assert_eq!(dns, &format!("{key}.{zone}"));
    assert!(dns.len() <= DNS_NAME_MAX, "DNS name of {} bytes: {dns}", dns.len());
    assert!(dns.split('.').all(is_dns_label), "DNS name {dns:?} has an invalid label");

    let stack = &names.stack_name;
    assert!(stack.chars().count() <= STACK_NAME_MAX, "stack name of {} characters: {stack}", stack.chars().count());
    assert!(
        stack.starts_with(|c: char| c.is_ascii_alphabetic())
            && stack.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
        "stack name {stack:?} does not match [a-zA-Z][-a-zA-Z0-9]*"
    );
    assert!(is_valid_stack_name(stack), "stack name {stack:?} refused by is_valid_stack_name");
    assert!(!stack.contains("--"), "stack name {stack:?} holds `--`");

    assert!(is_valid_bucket_prefix(&names.bucket_prefix), "bucket prefix {:?}", names.bucket_prefix);
}

/// One lower-case RFC 1123 label: `[a-z0-9-]`, 1 to 63 bytes, no hyphen at either end.
fn is_dns_label(s: &str) -> bool {
    (1..=DNS_LABEL_MAX).contains(&s.len())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}
