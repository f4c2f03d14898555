//! The wire under the GitHub client: the HTTP stack that carries previewd's name, which URLs its
//! credentials may go to, and what an answer's headers say (the next page, a rename, a rate limit, the
//! operation for metrics). Pure functions but for building the stack.

use std::sync::Arc;
use std::time::Duration;

use octocrab::Octocrab;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use previewd_domain::{BranchName, RepoName};

/// Path segments are encoded whole: a branch may hold `/`, `#`, `?`, `%` and anything else git allows.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// What previewd says it is, as GitHub asks every client to (`previewd/<version>`).
pub const USER_AGENT: &str = concat!("previewd/", env!("CARGO_PKG_VERSION"));
/// The media type GitHub recommends asking for.
const ACCEPT: &str = "application/vnd.github+json";

/// octocrab over a hyper client of previewd's own: octocrab's ready-made client sends `User-Agent:
/// octocrab` (and would send it beside previewd's own), so previewd builds the stack and names itself.
/// (octocrab adds `X-GitHub-Api-Version` to each request itself.)
/// Every call is bounded as a whole where the client sends it, connecting included.
pub(crate) fn http_client(api_url: &str) -> Result<Octocrab, String> {
    use octocrab::service::middleware::base_uri::BaseUriLayer;
    use octocrab::service::middleware::extra_headers::ExtraHeadersLayer;
    let uri: http::Uri = api_url.parse().map_err(|e| format!("{api_url:?} is not a URL: {e}"))?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(provider)
        .map_err(|e| format!("TLS set-up: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(connector);
    let headers = vec![
        (http::header::USER_AGENT, http::HeaderValue::from_static(USER_AGENT)),
        (http::header::ACCEPT, http::HeaderValue::from_static(ACCEPT)),
    ];
    octocrab::OctocrabBuilder::new_empty()
        .with_service(client)
        .with_layer(&BaseUriLayer::new(uri))
        .with_layer(&ExtraHeadersLayer::new(Arc::new(headers)))
        .with_auth(octocrab::AuthState::None)
        .build()
        .map_err(|e| e.to_string())
}

/// A request's operation, for metrics: its method and the shape of its path, never a repository, a
/// branch or an id (labels stay few).
pub(crate) fn operation(method: &http::Method, route: &str) -> &'static str {
    let path = match route.find("://") {
        Some(i) => route[i + 3..].find('/').map_or("", |j| &route[i + 3 + j..]),
        None => route,
    };
    let path = path.split('?').next().unwrap_or("");
    let segs: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // Past `/repos/{owner}/{name}` (GitHub Enterprise's `/api/v3` prefix skipped).
    let rest = match segs.iter().position(|s| *s == "repos") {
        Some(i) => segs.get(i + 3..).unwrap_or(&[]),
        None if segs.contains(&"app") => return "create_installation_token",
        None => return "other",
    };
    match (method.as_str(), rest) {
        ("GET", []) => "get_repository",
        ("GET", ["branches"]) => "list_branches",
        ("GET", ["branches", ..]) => "get_branch",
        ("GET", ["contents", ..]) => "get_contents",
        ("GET", ["installation"]) => "get_installation",
        ("GET", ["deployments"]) => "list_deployments",
        ("POST", ["deployments"]) => "create_deployment",
        ("POST", ["deployments", _, "statuses"]) => "create_deployment_status",
        ("GET", ["pulls"]) => "list_pulls",
        ("GET", ["issues", _, "comments"]) => "list_comments",
        ("POST", ["issues", _, "comments"]) => "create_comment",
        ("PATCH", ["issues", "comments", _]) => "edit_comment",
        ("GET", ["commits", _, "check-runs"]) => "list_check_runs",
        ("GET", ["commits", _, "status"]) => "get_combined_status",
        _ => "other",
    }
}

/// How long a rate-limited answer asks to wait: `Retry-After` (the secondary limits), else the primary
/// limit's reset time when nothing remains; a 429 without either waits a minute. `None`: not a limit.
pub(crate) fn rate_limited(status: http::StatusCode, headers: &http::HeaderMap) -> Option<Duration> {
    if status != http::StatusCode::FORBIDDEN && status != http::StatusCode::TOO_MANY_REQUESTS {
        return None;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    if let Some(secs) = header("retry-after").and_then(|v| v.parse::<u64>().ok()) {
        return Some(Duration::from_secs(secs));
    }
    if header("x-ratelimit-remaining") == Some("0")
        && let Some(reset) = header("x-ratelimit-reset").and_then(|v| v.parse::<u64>().ok())
    {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs();
        return Some(Duration::from_secs(reset.saturating_sub(now).max(1)));
    }
    (status == http::StatusCode::TOO_MANY_REQUESTS).then_some(Duration::from_secs(60))
}

/// The `rel="next"` URL of a `Link` header: `<https://…?page=2>; rel="next", <…>; rel="last"`.
pub(crate) fn next_link(header: &str) -> Option<String> {
    header.split(',').find_map(|part| {
        let (url, params) = part.split_once(';')?;
        params
            .split(';')
            .any(|p| p.trim() == "rel=\"next\"")
            .then(|| url.trim().trim_start_matches('<').trim_end_matches('>').to_owned())
    })
}

/// The branch a `301`'s `Location` names when it is another branch of the same repository
/// (`…/repos/{owner}/{repo}/branches/{branch}`, the API's own host, names compared as GitHub does,
/// without regard to case); `None` for anything else (a moved repository answers with
/// `…/repositories/{id}/…`).
pub(crate) fn renamed_to(base: &str, repo: &RepoName, location: &str) -> Option<BranchName> {
    let base_uri = base.parse::<http::Uri>().ok()?;
    // A relative Location is relative to the API's host.
    let absolute = match (location.starts_with('/'), base_uri.scheme_str(), base_uri.authority()) {
        (true, Some(scheme), Some(authority)) => format!("{scheme}://{authority}{location}"),
        _ => location.to_owned(),
    };
    if !under(base, &absolute) {
        return None;
    }
    let path = absolute.parse::<http::Uri>().ok()?.path().to_owned();
    let rest = path.strip_prefix(base_uri.path().trim_end_matches('/'))?;
    let mut segments = rest.trim_start_matches('/').splitn(5, '/');
    let (Some("repos"), Some(owner), Some(name), Some("branches"), Some(branch)) =
        (segments.next(), segments.next(), segments.next(), segments.next(), segments.next())
    else {
        return None;
    };
    // The new name may come encoded as one segment (`feat%2Fx`) or not (`feat/x`).
    let same = RepoName::new(&format!("{owner}/{name}")).ok()? == *repo;
    let branch = percent_encoding::percent_decode_str(branch).decode_utf8().ok()?;
    same.then(|| BranchName::new(&branch).ok()).flatten()
}

/// Is `url` under the API at `base`: the same scheme, host and port, and a path within the base's?
pub(crate) fn under(base: &str, url: &str) -> bool {
    let (Ok(base), Ok(url)) = (base.parse::<http::Uri>(), url.parse::<http::Uri>()) else { return false };
    let prefix = base.path().trim_end_matches('/');
    let path = url.path();
    base.scheme() == url.scheme()
        && base.authority().map(|a| a.as_str().to_ascii_lowercase())
            == url.authority().map(|a| a.as_str().to_ascii_lowercase())
        && path.strip_prefix(prefix).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

pub(crate) fn enc(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_are_named_by_shape() {
        let get = http::Method::GET;
        assert_eq!(operation(&get, "/repos/a/b/branches/feat%2Fx"), "get_branch");
        assert_eq!(
            operation(&get, "https://ghe.example/api/v3/repos/a/b/branches?per_page=100&page=2"),
            "list_branches"
        );
        assert_eq!(operation(&http::Method::POST, "/repos/a/b/deployments/7/statuses"), "create_deployment_status");
        assert_eq!(operation(&http::Method::PATCH, "/repos/a/b/issues/comments/9"), "edit_comment");
        assert_eq!(operation(&http::Method::POST, "/app/installations/42/access_tokens"), "create_installation_token");
        assert_eq!(operation(&get, "/repos/a/b/commits/abc/check-runs?per_page=100"), "list_check_runs");
        assert_eq!(operation(&get, "/repos/a/b/commits/abc/status?per_page=100&page=2"), "get_combined_status");
    }

    #[test]
    fn hostile_branch_names_stay_one_path_segment() {
        assert_eq!(enc("feat/x#y?z%20"), "feat%2Fx%23y%3Fz%2520");
        assert_eq!(enc("é"), "%C3%A9");
    }

    #[test]
    fn a_301_to_another_branch_of_the_repository_is_a_rename_and_anything_else_a_move() {
        let repo = RepoName::new("acme/shop").expect("repo");
        let base = "https://ghe.example/api/v3";
        let renamed = |l: &str| renamed_to(base, &repo, l).map(|b| b.as_str().to_owned());
        assert_eq!(
            renamed("https://ghe.example/api/v3/repos/acme/shop/branches/feat%2Fnew").as_deref(),
            Some("feat/new")
        );
        assert_eq!(renamed("https://ghe.example/api/v3/repos/Acme/Shop/branches/new").as_deref(), Some("new"));
        assert_eq!(renamed("/api/v3/repos/acme/shop/branches/new").as_deref(), Some("new"));
        assert_eq!(
            renamed("https://ghe.example/api/v3/repos/acme/shop/branches/feat/new").as_deref(),
            Some("feat/new")
        );
        for moved in [
            "https://ghe.example/api/v3/repositories/42/branches/new",
            "https://ghe.example/api/v3/repos/acme/other/branches/new",
            "https://evil.example/api/v3/repos/acme/shop/branches/new",
            "https://ghe.example/api/v3/repos/acme/shop/branches/..",
            "",
        ] {
            assert_eq!(renamed(moved), None, "{moved}");
        }
    }

    #[test]
    fn links_are_followed_only_under_the_configured_api() {
        let ghe = "https://ghe.example/api/v3";
        assert!(under(ghe, "https://ghe.example/api/v3/repositories/1/branches?page=2"));
        assert!(under(ghe, "https://GHE.example/api/v3/repos/a/b/branches"));
        assert!(under("https://api.github.com", "https://api.github.com/repositories/1/branches?page=2"));
        for elsewhere in [
            "https://evil.example/api/v3/repos/a/b/branches?page=2",
            "http://ghe.example/api/v3/repos/a/b/branches",
            "https://ghe.example:8443/api/v3/repos/a/b/branches",
            "https://ghe.example/api/v3evil/x",
            "https://ghe.example/other",
            "https://ghe.example.evil.example/api/v3/x",
            "https://user@ghe.example/api/v3/x",
        ] {
            assert!(!under(ghe, elsewhere), "{elsewhere}");
        }
    }

    #[test]
    fn the_next_page_comes_from_the_link_header() {
        let h = r#"<https://api.github.com/repositories/1/branches?per_page=100&page=2>; rel="next", <https://api.github.com/repositories/1/branches?per_page=100&page=5>; rel="last""#;
        assert_eq!(next_link(h).as_deref(), Some("https://api.github.com/repositories/1/branches?per_page=100&page=2"));
        assert_eq!(next_link(r#"<https://x/?page=1>; rel="prev", <https://x/?page=1>; rel="first""#), None);
    }
}
