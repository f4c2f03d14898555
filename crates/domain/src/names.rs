//! The names previewd is handed (repository, branch, commit, installation owner) as validated newtypes,
//! and every name it derives from them for the outside world: the environment key (one DNS label),
//! stack names, the S3 bucket prefix and AWS tag values.
//!
//! Derived names are pure functions of their inputs, so a restart or a second replica derives the same
//! names. Each is valid for the system that receives it whatever the branch name holds, and distinct
//! inputs give distinct names (see the property tests at the end of this file).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One DNS label holds at most 63 bytes (RFC 1035).
pub const DNS_LABEL_MAX: usize = 63;
/// A full DNS name holds at most 253 characters in its text form.
pub const DNS_NAME_MAX: usize = 253;
/// CloudFormation stack names hold at most 128 characters.
pub const STACK_NAME_MAX: usize = 128;
/// S3 bucket names hold at most 63 characters; the prefix leaves 13 for a blueprint's suffix (`-data`).
pub const BUCKET_PREFIX_MAX: usize = 50;
/// AWS tag values hold at most 256 characters.
pub const TAG_VALUE_MAX: usize = 256;
/// Application Load Balancer listener rule priorities run from 1 to 50,000.
pub const RULE_PRIORITY_MAX: u32 = 50_000;
/// Git sets no limit, but GitHub refuses refs much longer than this; it bounds what we store and log.
pub const BRANCH_NAME_MAX_BYTES: usize = 1024;
/// Hex digits of SHA-256 in a hashed environment key: 32 bits, so a collision needs two branches with the
/// same slug *and* the same hash.
const ENV_HASH_HEX: usize = 8;
/// The repository slug inside stack names is cut to this many characters; the repository hash after it
/// keeps the name unique.
const REPO_SLUG_IN_STACK: usize = 24;

/// What a constructor refused, and why. Offending input is clipped so a hostile value cannot flood a log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("invalid repository {0:?}: expected `owner/name` as GitHub spells it")]
    Repo(String),
    #[error("invalid branch name {name:?}: {reason}")]
    Branch { name: String, reason: &'static str },
    #[error("invalid commit SHA {0:?}: expected 40 (or 64) hexadecimal digits")]
    Sha(String),
    #[error("invalid owner id {0:?}: expected 1 to 32 characters of a-z, 0-9 and '-', starting with a letter")]
    Owner(String),
    #[error("invalid DNS zone {0:?}: expected a domain name such as preview.example.com")]
    Zone(String),
    #[error("invalid stage {0:?}: expected `staging` or `production`")]
    Stage(String),
}

fn clip(s: &str) -> String {
    const MAX: usize = 200;
    match s.char_indices().nth(MAX) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

macro_rules! string_newtype {
    ($name:ident) => {
        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl FromStr for $name {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }
        impl TryFrom<String> for $name {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::new(&s)
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }
    };
}

/// A GitHub repository, `owner/name`, lower-cased: GitHub treats both parts case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RepoName(String);
string_newtype!(RepoName);

impl RepoName {
    pub fn new(s: &str) -> Result<Self, NameError> {
        let bad = || NameError::Repo(clip(s));
        let (owner, name) = s.split_once('/').ok_or_else(bad)?;
        // Owners: letters, digits, hyphens (and `_` for Enterprise Managed Users); names add `.`.
        let owner_ok = (1..=39).contains(&owner.len())
            && owner.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        let name_ok = (1..=100).contains(&name.len())
            && name != "."
            && name != ".."
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
        if owner_ok && name_ok { Ok(Self(s.to_ascii_lowercase())) } else { Err(bad()) }
    }

    pub fn owner(&self) -> &str {
        self.0.split_once('/').map_or("", |(o, _)| o)
    }

    pub fn name(&self) -> &str {
        self.0.split_once('/').map_or("", |(_, n)| n)
    }

    /// Eight hex digits that identify the repository inside derived names.
    pub fn hash(&self) -> String {
        short_hash(&[self.0.as_bytes()], 8)
    }

    /// A readable slug of `owner-name`, at most `max` characters; not unique on its own.
    pub fn slug(&self, max: usize) -> String {
        slugify(&self.0, max)
    }
}

/// A branch name that git accepts (`git check-ref-format --branch`), exactly as pushed.
///
/// It may hold anything git allows: unicode, slashes, quotes, `$()`, `;`, `<>`, `#`, right-to-left marks.
/// It is never put into a template, a DNS name or a stack name as such: see [`EnvKey`] and [`tag_value`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BranchName(String);
string_newtype!(BranchName);

impl BranchName {
    pub fn new(s: &str) -> Result<Self, NameError> {
        let reject = |reason| NameError::Branch { name: clip(s), reason };
        if s.is_empty() {
            return Err(reject("it is empty"));
        }
        if s.len() > BRANCH_NAME_MAX_BYTES {
            return Err(reject("it is longer than 1024 bytes"));
        }
        if s == "HEAD" {
            return Err(reject("`HEAD` is not a branch name"));
        }
        if s.starts_with('-') {
            return Err(reject("it starts with '-'"));
        }
        if s.starts_with('/') || s.ends_with('/') || s.contains("//") {
            return Err(reject("it has an empty path component"));
        }
        if s.ends_with('.') {
            return Err(reject("it ends with '.'"));
        }
        if s.contains("..") {
            return Err(reject("it contains '..'"));
        }
        if s.contains("@{") {
            return Err(reject("it contains '@{'"));
        }
        if s.chars().any(|c| c.is_ascii_control() || " ~^:?*[\\".contains(c)) {
            return Err(reject("it contains a space, a control character or one of ~ ^ : ? * [ \\"));
        }
        if s.split('/').any(|c| c.starts_with('.') || c.ends_with(".lock")) {
            return Err(reject("a path component starts with '.' or ends with '.lock'"));
        }
        Ok(Self(s.to_owned()))
    }

    /// SHA-256 of the exact name, in 64 lower-case hex digits: the branch's identity on a stack's tags,
    /// which hold at most 256 characters of a restricted set while a branch name holds 1,024 bytes of
    /// anything git allows. A stack is adopted under a branch only when this matches.
    pub fn identity(&self) -> String {
        format!("{:x}", Sha256::digest(self.0.as_bytes()))
    }

    /// Branches whose name ends in `-no-infra` are recorded and shown but never provisioned.
    pub fn is_no_infra(&self) -> bool {
        self.0.ends_with("-no-infra")
    }
}

/// A full commit SHA, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CommitSha(String);
string_newtype!(CommitSha);

impl CommitSha {
    pub fn new(s: &str) -> Result<Self, NameError> {
        if (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit()) {
            Ok(Self(s.to_ascii_lowercase()))
        } else {
            Err(NameError::Sha(clip(s)))
        }
    }

    /// The all-zero SHA GitHub sends as `after` when a branch is deleted.
    pub fn is_zero(&self) -> bool {
        self.0.bytes().all(|b| b == b'0')
    }

    /// The first seven digits, as git shows them.
    pub fn short(&self) -> &str {
        &self.0[..7]
    }
}

/// This installation's ownership id, stamped on every stack it creates (`previewd:owner`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OwnerId(String);
string_newtype!(OwnerId);

impl OwnerId {
    pub fn new(s: &str) -> Result<Self, NameError> {
        let ok = (1..=32).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok { Ok(Self(s.to_owned())) } else { Err(NameError::Owner(clip(s))) }
    }
}

/// The DNS zone under which each environment gets its name, e.g. `preview.example.com`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DnsZone(String);
string_newtype!(DnsZone);

impl DnsZone {
    pub fn new(s: &str) -> Result<Self, NameError> {
        let z = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
        // Leave room for one environment label and its dot.
        let ok = !z.is_empty() && z.len() < DNS_NAME_MAX - DNS_LABEL_MAX && z.split('.').all(is_hostname_label);
        if ok { Ok(Self(z)) } else { Err(NameError::Zone(clip(s))) }
    }
}

/// Where an environment runs: branch environments live in `staging`; `production` renders the same
/// blueprint for comparison and for the production deployment itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Staging,
    Production,
}

impl Stage {
    pub const ALL: [Stage; 2] = [Stage::Staging, Stage::Production];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Staging => "staging",
            Stage::Production => "production",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Stage {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        match s {
            "staging" => Ok(Stage::Staging),
            "production" => Ok(Stage::Production),
            other => Err(NameError::Stage(clip(other))),
        }
    }
}

/// The key of a branch's environment within its repository: one DNS label (`a-z0-9-`, at most 63 bytes,
/// no leading or trailing hyphen, no `--`).
///
/// A branch that already is such a label (`main`, `feature-login`) is its own key, unless it ends like a
/// hashed key does. Any other branch gets a readable slug, a hyphen and 8 hex digits of a hash of the exact
/// branch name (`feature/Login_v2` → `feature-login-v2-<8 hex>`). Plain keys never end in `-<8 hex>` and
/// hashed keys always do, so `feat/x`, `feat-x` and `FEAT_x` get three different keys, deterministically.
/// No key holds `--`: RDS and others refuse it in names CloudFormation derives from the stack name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EnvKey(String);
string_newtype!(EnvKey);

impl EnvKey {
    pub fn for_branch(branch: &BranchName) -> Self {
        let b = branch.as_str();
        if is_plain_label(b) && !ends_like_hash(b) {
            return Self(b.to_owned());
        }
        Self::hashed(branch)
    }

    /// The readable key a branch gets when no other environment of its repository holds it yet: its slug
    /// (`feature/login` → `feature-login`). `None` when the slug would be empty, cut short (over 63
    /// bytes) or shaped like a hashed key; then, and on a collision (`feat/x` after `feat-x`), the branch
    /// gets [`EnvKey::for_branch`]. Which one an environment got is recorded once and kept for life.
    pub fn readable(branch: &BranchName) -> Option<Self> {
        let b = branch.as_str();
        let slug = slugify(b, DNS_LABEL_MAX);
        let whole = slugify(b, b.len());
        (!slug.is_empty() && slug == whole && !ends_like_hash(&slug)).then_some(Self(slug))
    }

    /// The hashed key, always: slug, `-`, 8 hex digits of the exact branch name. A readable key never
    /// ends like this, so it is the fallback that cannot collide with one (`feat-x` arriving after
    /// `feat/x` took `feat-x` gets `feat-x-<8 hex>`).
    pub fn hashed(branch: &BranchName) -> Self {
        let b = branch.as_str();
        let hash = short_hash(&[b.as_bytes()], ENV_HASH_HEX);
        let slug = slugify(b, DNS_LABEL_MAX - 1 - ENV_HASH_HEX);
        let slug = if slug.is_empty() { "branch".to_owned() } else { slug };
        Self(format!("{slug}-{hash}"))
    }

    /// Is this key derived with a hash (the branch name was not a plain label)?
    pub fn is_hashed(&self) -> bool {
        ends_like_hash(&self.0)
    }

    /// A deterministic first choice of load-balancer listener rule priority (1..=50,000). Two keys can
    /// share it: whoever allocates priorities for one listener must record them and move on to the next
    /// free one.
    pub fn rule_priority_hint(&self) -> u32 {
        let h = short_hash(&[self.0.as_bytes()], 8);
        1 + u32::from_str_radix(&h, 16).unwrap_or(0) % RULE_PRIORITY_MAX
    }

    /// Accepts a key read back from the store or a stack tag; it must have the shape `for_branch` gives.
    pub fn new(s: &str) -> Result<Self, NameError> {
        if is_plain_label(s) {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::Branch { name: clip(s), reason: "not an environment key" })
        }
    }
}

/// Every name one environment is known by outside previewd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvNames {
    pub env_key: EnvKey,
    /// `previewd-<repo slug>-<env key>-<repo hash>`: ends with the repository's 8-hex hash, which fixes
    /// the repository and so the split, hence unique per (repository, branch).
    pub stack_name: String,
    /// `<env key>.<zone>`.
    pub dns_name: String,
    /// `previewd-<slug>-<12 hex>`; the hash covers owner, repository and branch, because bucket names are
    /// global across every AWS account.
    pub bucket_prefix: String,
}

impl EnvNames {
    /// The names with the hashed key ([`EnvKey::for_branch`]): unique whatever else exists.
    pub fn new(owner: &OwnerId, repo: &RepoName, branch: &BranchName, zone: &DnsZone) -> Self {
        Self::with_key(owner, repo, branch, zone, EnvKey::for_branch(branch))
    }

    /// The names with the always-hashed key ([`EnvKey::hashed`]): a new environment's fallback when
    /// another environment holds its readable key.
    pub fn hashed(owner: &OwnerId, repo: &RepoName, branch: &BranchName, zone: &DnsZone) -> Self {
        Self::with_key(owner, repo, branch, zone, EnvKey::hashed(branch))
    }

    /// The names with the readable key ([`EnvKey::readable`]) when the branch has one: a new
    /// environment's first choice.
    pub fn readable(owner: &OwnerId, repo: &RepoName, branch: &BranchName, zone: &DnsZone) -> Option<Self> {
        EnvKey::readable(branch).map(|key| Self::with_key(owner, repo, branch, zone, key))
    }

    /// The names a new environment takes: the readable ones when the branch has them, and the always-hashed
    /// ones as the fallback the store takes when another environment holds the readable key.
    pub fn choices(owner: &OwnerId, repo: &RepoName, branch: &BranchName, zone: &DnsZone) -> (Self, Option<Self>) {
        let hashed = Self::hashed(owner, repo, branch, zone);
        match Self::readable(owner, repo, branch, zone) {
            Some(readable) => (readable, Some(hashed)),
            None => (hashed, None),
        }
    }

    /// Every set of names an environment of the branch may carry (its choices, and the hashed key older
    /// versions gave): a stack with none of them is not one previewd made for the branch.
    pub fn candidates(owner: &OwnerId, repo: &RepoName, branch: &BranchName, zone: &DnsZone) -> Vec<Self> {
        let (first, fallback) = Self::choices(owner, repo, branch, zone);
        let mut all = vec![first];
        all.extend(fallback);
        let older = Self::new(owner, repo, branch, zone);
        if !all.contains(&older) {
            all.push(older);
        }
        all
    }

    fn with_key(owner: &OwnerId, repo: &RepoName, branch: &BranchName, zone: &DnsZone, env_key: EnvKey) -> Self {
        let stack_name = format!("previewd-{}-{}-{}", repo.slug(REPO_SLUG_IN_STACK), env_key.as_str(), repo.hash());
        let dns_name = format!("{}.{}", env_key.as_str(), zone.as_str());
        let bucket_prefix = Self::bucket_prefix(owner, repo, branch, &env_key);
        Self { env_key, stack_name, dns_name, bucket_prefix }
    }

    /// The names of a recorded environment: the key, stack and DNS name as recorded when it was first
    /// seen (they stay with it for life), and the bucket prefix derived from them.
    pub fn recorded(
        owner: &OwnerId,
        repo: &RepoName,
        branch: &BranchName,
        env_key: &EnvKey,
        stack_name: &str,
        dns_name: &str,
    ) -> Self {
        Self {
            env_key: env_key.clone(),
            stack_name: stack_name.to_owned(),
            dns_name: dns_name.to_owned(),
            bucket_prefix: Self::bucket_prefix(owner, repo, branch, env_key),
        }
    }

    fn bucket_prefix(owner: &OwnerId, repo: &RepoName, branch: &BranchName, env_key: &EnvKey) -> String {
        let hash = short_hash(&[owner.as_str().as_bytes(), repo.as_str().as_bytes(), branch.as_str().as_bytes()], 12);
        let slug = slugify(env_key.as_str(), BUCKET_PREFIX_MAX - "previewd-".len() - 1 - 12);
        format!("previewd-{slug}-{hash}")
    }
}

/// The application stack of a repository in a stage: `previewd-<repo slug>-<repo hash>-<stage>`.
/// It ends in a stage name, never in 8 hex digits, so it cannot equal an environment stack name.
pub fn app_stack_name(repo: &RepoName, stage: Stage) -> String {
    format!("previewd-{}-{}-{}", repo.slug(REPO_SLUG_IN_STACK), repo.hash(), stage.as_str())
}

/// `s` made into a valid AWS tag value: characters outside the set every AWS service accepts become `_`,
/// and the result is cut to 256 characters. Lossy by design: it is for humans. Machines identify a
/// branch by [`BranchName::identity`], and by this value only where it equals the name exactly.
pub fn tag_value(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() || " _.:/=+-@".contains(c) { c } else { '_' })
        .take(TAG_VALUE_MAX)
        .collect()
}

/// Is `s` a valid stack name: `[A-Za-z][-A-Za-z0-9]*`, at most 128 characters?
pub fn is_valid_stack_name(s: &str) -> bool {
    s.len() <= STACK_NAME_MAX
        && s.starts_with(|c: char| c.is_ascii_alphabetic())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Does `s` follow the S3 rules for general-purpose bucket names (with room for a suffix up to 63)?
pub fn is_valid_bucket_prefix(s: &str) -> bool {
    let b = s.as_bytes();
    (3..=BUCKET_PREFIX_MAX).contains(&b.len())
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && !s.contains("--")
        && !s.starts_with("xn-")
        && !s.starts_with("sthree-")
        && !s.starts_with("amzn-s3-demo-")
}

/// Does `s` end in a hyphen and 8 hex digits, as a hashed environment key does?
fn ends_like_hash(s: &str) -> bool {
    s.len() > ENV_HASH_HEX
        && s.as_bytes()[s.len() - ENV_HASH_HEX - 1] == b'-'
        && s[s.len() - ENV_HASH_HEX..].bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `[a-z0-9]` runs joined by single hyphens, at most 63 bytes: a label `slugify` returns unchanged.
fn is_plain_label(s: &str) -> bool {
    is_hostname_label(s) && !s.contains("--")
}

/// A lower-case RFC 1123 label.
fn is_hostname_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= DNS_LABEL_MAX
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Lower-case ASCII letters and digits kept, every other run of characters one hyphen, no hyphen at
/// either end, at most `max` bytes. Not injective: callers add a hash where they need uniqueness.
fn slugify(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.chars() {
        if out.len() >= max {
            break;
        }
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(max);
    while out.ends_with('-') {
        out.pop();
    }
    out
}

/// The first `hex` hex digits of SHA-256 over the parts, each followed by a NUL (no branch, repository or
/// owner contains one), so `("ab", "c")` and `("a", "bc")` differ.
fn short_hash(parts: &[&[u8]], hex: usize) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
        h.update([0]);
    }
    let digest = format!("{:x}", h.finalize());
    digest[..hex].to_owned()
}

#[cfg(test)]
mod tests;
