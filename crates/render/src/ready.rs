//! What "ready" asks of an environment, read from its settings: the commit's artifact to wait for (the
//! blueprint says what it is, in `blueprint.toml`'s `[artifact]`), the GitHub checks that must have passed,
//! and the URL that must answer (`artifact.*` and `readiness.*`, layered like every other setting).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use previewd_domain::EcrRepository;
use serde::Deserialize;

use crate::{RenderError, Setting, Settings};

/// What a commit's artifact is, as `blueprint.toml` declares it: a pattern over the settings and the
/// commit (`{service.image_repository}:{sha}`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum ArtifactSpec {
    /// An image in ECR: `<account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag>`.
    Image(String),
    /// An object in S3: `s3://<bucket>/<key>`.
    Object(String),
}

/// An image in ECR, parsed from its URI.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EcrImage {
    pub repository: EcrRepository,
    pub tag: String,
}

impl EcrImage {
    /// Parses `<account>.dkr.ecr.<region>.amazonaws.com[.cn]/<repository>:<tag>`.
    pub fn parse(uri: &str) -> Result<Self, String> {
        let not =
            || format!("{uri:?} is not an ECR image (<account>.dkr.ecr.<region>.amazonaws.com/<repository>:<tag>)");
        let (registry, rest) = uri.split_once('/').ok_or_else(not)?;
        let (repository, tag) = rest.rsplit_once(':').ok_or_else(not)?;
        let mut parts = registry.split('.');
        let (Some(account), Some("dkr"), Some("ecr"), Some(region), Some("amazonaws")) =
            (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(not());
        };
        let valid_repo = !repository.is_empty()
            && repository.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/".contains(&b));
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) || region.is_empty() || !valid_repo {
            return Err(not());
        }
        let repository =
            EcrRepository { registry_id: account.to_owned(), region: region.to_owned(), name: repository.to_owned() };
        Ok(Self { repository, tag: tag.to_owned() })
    }
}

/// A commit's artifact, resolved from the settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Artifact {
    Image(EcrImage),
    Object { bucket: String, key: String },
}

impl fmt::Display for Artifact {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Artifact::Image(i) => write!(f, "the image {}:{} in ECR", i.repository.uri(), i.tag),
            Artifact::Object { bucket, key } => write!(f, "the object s3://{bucket}/{key}"),
        }
    }
}

/// What the environment's readiness probe asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRules {
    pub url: String,
    /// `HOST:PORT` to connect to instead of resolving the URL's host.
    pub connect_to: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
}

/// Everything "ready" asks of one environment at one commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    /// The artifact to wait for; `None` when `artifact.wait` is off or the blueprint names none.
    pub artifact: Option<Artifact>,
    /// Names of GitHub checks that must have succeeded on the commit.
    pub checks: Vec<String>,
    /// How long the artifact and the checks may take.
    pub artifact_timeout: Duration,
    /// `None` when `readiness.probe` is off (or the blueprint has no such settings).
    pub probe: Option<ProbeRules>,
    /// How long one stack operation (a create, an update) may take before previewd ends it.
    pub infrastructure_timeout: Duration,
}

const DEFAULT_ARTIFACT_TIMEOUT: Duration = Duration::from_secs(2 * 3600);
const DEFAULT_READINESS_TIMEOUT: Duration = Duration::from_secs(600);
const DEFAULT_INFRASTRUCTURE_TIMEOUT: Duration = Duration::from_secs(3600);

/// Reads the rules from `settings` for the commit `sha` of the environment named `dns_name`. A blueprint
/// without these settings waits for nothing and probes nothing (as before they existed).
pub fn rules(
    settings: &Settings,
    spec: Option<&ArtifactSpec>,
    sha: &str,
    dns_name: &str,
) -> Result<Rules, RenderError> {
    let wait = flag(settings, "artifact.wait")?.unwrap_or(false);
    let artifact = match spec.filter(|_| wait) {
        None => None,
        Some(ArtifactSpec::Image(pattern)) => {
            let uri = expand(settings, "artifact.wait", pattern, sha, dns_name)?;
            Some(Artifact::Image(EcrImage::parse(&uri).map_err(|r| invalid(settings, "artifact.wait", r))?))
        }
        Some(ArtifactSpec::Object(pattern)) => {
            let uri = expand(settings, "artifact.wait", pattern, sha, dns_name)?;
            let (bucket, key) = uri
                .strip_prefix("s3://")
                .and_then(|r| r.split_once('/'))
                .filter(|(b, k)| !b.is_empty() && !k.is_empty())
                .ok_or_else(|| invalid(settings, "artifact.wait", format!("{uri:?} is not s3://<bucket>/<key>")))?;
            Some(Artifact::Object { bucket: bucket.to_owned(), key: key.to_owned() })
        }
    };
    let checks = match settings.get("artifact.checks") {
        None => Vec::new(),
        Some(s) => {
            s.value
                .as_array()
                .into_iter()
                .flatten()
                .map(|v| {
                    v.as_str().filter(|n| !n.trim().is_empty()).map(str::to_owned).ok_or_else(|| {
                        invalid(settings, "artifact.checks", "each check is a non-empty name".to_owned())
                    })
                })
                .collect::<Result<_, _>>()?
        }
    };
    let artifact_timeout = duration(settings, "artifact.timeout")?.unwrap_or(DEFAULT_ARTIFACT_TIMEOUT);
    let probe = match flag(settings, "readiness.probe")? {
        Some(true) => Some(probe_rules(settings, sha, dns_name)?),
        _ => None,
    };
    let infrastructure_timeout =
        duration(settings, "infrastructure.timeout")?.unwrap_or(DEFAULT_INFRASTRUCTURE_TIMEOUT);
    Ok(Rules { artifact, checks, artifact_timeout, probe, infrastructure_timeout })
}

fn probe_rules(settings: &Settings, sha: &str, dns_name: &str) -> Result<ProbeRules, RenderError> {
    let key = "readiness.url";
    let pattern = text(settings, key)?.unwrap_or_default();
    let url = expand(settings, key, &pattern, sha, dns_name)?;
    // Settings fill in a path, never the host: a branch may set the health check path, and must not be
    // able to point previewd's probe at another host. The host is what the pattern says without them.
    let authority = |u: &str| {
        let u = url::Url::parse(u).ok()?;
        Some((u.host_str()?.to_owned(), u.port_or_known_default(), u.username().to_owned(), u.password().is_some()))
    };
    let bare = expand_with(&pattern, sha, dns_name, |_| Some(String::new()));
    let parsed = url::Url::parse(&url).map_err(|e| invalid(settings, key, format!("{url:?} is not a URL: {e}")))?;
    let credentials = !parsed.username().is_empty() || parsed.password().is_some();
    if !matches!(parsed.scheme(), "http" | "https")
        || credentials
        || authority(&url).is_none()
        || authority(&url) != authority(&bare)
    {
        return Err(invalid(
            settings,
            key,
            format!(
                "{url:?} must be an http(s) URL without credentials whose host and port the pattern itself names \
                 (settings fill in the path)"
            ),
        ));
    }
    // Normalised: control characters a setting brought are percent-encoded, never carried along.
    let url = parsed.to_string();
    let connect_to = text(settings, "readiness.connect_to")?.filter(|t| !t.trim().is_empty());
    if let Some(c) = &connect_to
        && c.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
    {
        return Err(invalid(settings, "readiness.connect_to", format!("{c:?} is not HOST:PORT")));
    }
    let ca_file = text(settings, "readiness.ca_file")?.filter(|t| !t.trim().is_empty()).map(PathBuf::from);
    let timeout = duration(settings, "readiness.timeout")?.unwrap_or(DEFAULT_READINESS_TIMEOUT);
    Ok(ProbeRules { url, connect_to, ca_file, timeout })
}

fn invalid(settings: &Settings, key: &str, reason: String) -> RenderError {
    let (file, layer) = settings
        .get(key)
        .map(|s: &Setting| (s.origin.source.clone(), s.origin.kind.to_string()))
        .unwrap_or_else(|| ("blueprint.toml".to_owned(), "blueprint".to_owned()));
    RenderError::Setting { file, layer, key: key.to_owned(), reason }
}

fn flag(settings: &Settings, key: &str) -> Result<Option<bool>, RenderError> {
    settings
        .get(key)
        .map(|s| s.value.as_bool().ok_or_else(|| invalid(settings, key, "must be true or false".to_owned())))
        .transpose()
}

fn text(settings: &Settings, key: &str) -> Result<Option<String>, RenderError> {
    settings
        .get(key)
        .map(|s| {
            s.value.as_str().map(str::to_owned).ok_or_else(|| invalid(settings, key, "must be a string".to_owned()))
        })
        .transpose()
}

fn duration(settings: &Settings, key: &str) -> Result<Option<Duration>, RenderError> {
    let Some(t) = text(settings, key)? else { return Ok(None) };
    humantime::parse_duration(t.trim())
        .map(Some)
        .map_err(|e| invalid(settings, key, format!("{t:?} is not a duration such as 10m or 2h: {e}")))
}

/// Fills `{sha}`, `{dns_name}` and `{table.key}` (a setting's value) into `pattern`.
fn expand(settings: &Settings, key: &str, pattern: &str, sha: &str, dns_name: &str) -> Result<String, RenderError> {
    let mut unknown = None;
    let out = expand_with(pattern, sha, dns_name, |name| {
        let value = settings.get(name).and_then(|s| match &s.value {
            toml::Value::String(t) => Some(t.clone()),
            toml::Value::Integer(i) => Some(i.to_string()),
            _ => None,
        });
        if value.is_none() {
            unknown.get_or_insert_with(|| name.to_owned());
        }
        value
    });
    match unknown {
        Some(name) => Err(invalid(settings, key, format!("{{{name}}} names no string or number setting"))),
        None => Ok(out),
    }
}

fn expand_with(pattern: &str, sha: &str, dns_name: &str, mut setting: impl FnMut(&str) -> Option<String>) -> String {
    let mut out = String::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else { break };
        let name = &rest[open + 1..open + close];
        match name {
            "sha" => out.push_str(sha),
            "dns_name" => out.push_str(dns_name),
            _ => out.push_str(&setting(name).unwrap_or_default()),
        }
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Layer, LayerKind};

    fn settings(extra: &str) -> Settings {
        let defaults = Layer::parse(
            LayerKind::Defaults,
            "defaults.toml",
            r#"
            [service]
            image_repository = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/team/web"
            health_check_path = "/healthz"
            [artifact]
            wait = true
            checks = []
            timeout = "2h"
            [readiness]
            probe = true
            url = "https://{dns_name}{service.health_check_path}"
            connect_to = ""
            ca_file = ""
            timeout = "10m"
            "#,
        )
        .expect("defaults");
        let branch = Layer::parse(LayerKind::Branch, ".previewd.toml", extra).expect("branch");
        Settings::merge(&[defaults, branch], &["service.health_check_path".to_owned()]).expect("merge")
    }

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn the_image_and_the_url_come_from_the_settings() {
        let spec = ArtifactSpec::Image("{service.image_repository}:{sha}".into());
        let r = rules(&settings(""), Some(&spec), SHA, "feature-login.preview.example.com").expect("rules");
        let Some(Artifact::Image(image)) = &r.artifact else { panic!("an image: {r:?}") };
        assert_eq!(
            (
                image.repository.registry_id.as_str(),
                image.repository.region.as_str(),
                image.repository.name.as_str(),
                image.tag.as_str()
            ),
            ("123456789012", "eu-west-1", "team/web", SHA)
        );
        let probe = r.probe.expect("probe on");
        assert_eq!(probe.url, "https://feature-login.preview.example.com/healthz");
        assert_eq!(probe.timeout, Duration::from_secs(600));
        assert_eq!(r.artifact_timeout, Duration::from_secs(7200));
    }

    #[test]
    fn a_branch_cannot_point_the_probe_at_another_host() {
        let spec = ArtifactSpec::Image("{service.image_repository}:{sha}".into());
        for hostile in ["@evil.example/", ".evil.example/", ":443@evil.example/", ":6379/"] {
            let s = settings(&format!("[service]\nhealth_check_path = {hostile:?}\n"));
            let err = rules(&s, Some(&spec), SHA, "a.preview.example.com").expect_err(hostile).to_string();
            assert!(err.contains("readiness.url"), "{hostile}: {err}");
        }
        let s = settings("[service]\nhealth_check_path = \"/status?deep=1\"\n");
        assert!(rules(&s, Some(&spec), SHA, "a.preview.example.com").is_ok());
    }

    #[test]
    fn images_outside_ecr_are_refused_with_the_form_expected() {
        for bad in ["nginx:latest", "123.dkr.ecr.us-east-1.amazonaws.com/web:x", "ghcr.io/acme/web:abc"] {
            assert!(EcrImage::parse(bad).is_err(), "{bad}");
        }
        let spec = ArtifactSpec::Object("s3://bundles/web/{sha}.zip".into());
        let r = rules(&settings(""), Some(&spec), SHA, "a.example.com").expect("rules");
        assert_eq!(r.artifact, Some(Artifact::Object { bucket: "bundles".into(), key: format!("web/{SHA}.zip") }));
    }

    #[test]
    fn turned_off_it_waits_for_nothing_and_probes_nothing() {
        let defaults =
            Layer::parse(LayerKind::Defaults, "d.toml", "[artifact]\nwait = false\n[readiness]\nprobe = false\n")
                .expect("defaults");
        let s = Settings::merge(&[defaults], &[]).expect("merge");
        let spec = ArtifactSpec::Image("x".into());
        let r = rules(&s, Some(&spec), SHA, "a.example.com").expect("rules");
        assert_eq!((r.artifact, r.probe), (None, None));
    }
}
