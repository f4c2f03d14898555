//! GitHub App authentication: JWTs signed with the app's key for `/app/...` and a repository's
//! installation, installation tokens for everything else, and the installations and tokens themselves.

use std::time::{Duration, SystemTime};

use axum::http::StatusCode;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

use super::reply::{Reply, rfc3339, unix_seconds};
use super::routes::Asked;
use super::state::{GhState, owner_of};

/// The longest a GitHub App's JWT may live (`exp` - `iat`), in seconds.
const MAX_JWT_LIFETIME: u64 = 600;
/// How far ahead of the fake's clock a JWT's `iat` may be, in seconds.
const JWT_CLOCK_SKEW: u64 = 60;
/// How long an installation token lives when app mode is off: GitHub's hour.
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// GitHub's answer to a request for `/app/...` without a JWT it can verify.
const JWT_UNDECODABLE: &str = "A JSON web token could not be decoded";

/// GitHub App authentication, once [`FakeGitHub::enable_app`](super::FakeGitHub::enable_app) has turned it on.
#[derive(Debug)]
pub(super) struct AppAuth {
    pub(super) app_id: u64,
    pub(super) key: DecodingKey,
    pub(super) token_ttl: Duration,
}

impl AppAuth {
    /// Whether GitHub would take `jwt` from this app at `now` (unix seconds): RS256 under the app's key,
    /// not expired, `iss` the app id (a number or a string), living at most ten minutes and not issued
    /// in the future.
    fn accepts(&self, jwt: &str, now: u64) -> bool {
        let mut validation = Validation::new(Algorithm::RS256);
        // `iss` is checked below: jsonwebtoken only counts a string as present, and GitHub takes a number.
        validation.set_required_spec_claims(&["exp"]);
        validation.leeway = 0;
        let Ok(data) = jsonwebtoken::decode::<Value>(jwt, &self.key, &validation) else { return false };
        let claims = data.claims;
        let issued_by_app = match &claims["iss"] {
            Value::Number(n) => n.as_u64() == Some(self.app_id),
            Value::String(s) => *s == self.app_id.to_string(),
            _ => false,
        };
        let lifetime_ok = match (claims["iat"].as_u64(), claims["exp"].as_u64()) {
            (Some(iat), Some(exp)) => iat <= exp && exp - iat <= MAX_JWT_LIFETIME && iat <= now + JWT_CLOCK_SKEW,
            _ => false,
        };
        issued_by_app && lifetime_ok
    }
}

/// In app mode, the 401 for a request without the credentials its path wants: a JWT of the app for
/// `/app/...` and a repository's installation, an unexpired installation token the fake issued for
/// anything else (these refusals are counted). `None` when the request may go on.
pub(super) fn refuse_unauthenticated(st: &mut GhState, asked: &Asked<'_>, segs: &[&str]) -> Option<Reply> {
    let app = st.app.as_ref()?;
    let now = SystemTime::now();
    if matches!(segs, ["app", ..] | ["repos", _, _, "installation"]) {
        let verified = asked.credential(&["bearer"]).is_some_and(|jwt| app.accepts(jwt, unix_seconds(now)));
        return (!verified).then(|| Reply::message(StatusCode::UNAUTHORIZED, JWT_UNDECODABLE));
    }
    let valid = asked
        .credential(&["token", "bearer"])
        .and_then(|token| st.tokens.get(token))
        .is_some_and(|expires| *expires > now);
    if valid {
        None
    } else {
        st.unauthenticated += 1;
        Some(Reply::error(StatusCode::UNAUTHORIZED))
    }
}

/// `GET /repos/{o}/{r}/installation`: the app's installation on the repository's owner.
pub(super) fn installation(st: &GhState, repo: &str) -> Reply {
    let owner = owner_of(repo);
    match st.installations.get(owner) {
        Some(id) if st.repos.contains(repo) => Reply::ok(&json!({
            "id": id,
            "account": { "login": owner, "type": "Organization" },
            "app_id": st.app.as_ref().map(|app| app.app_id),
            "target_type": "Organization",
            "repository_selection": "all",
            "access_tokens_url": format!("https://api.github.com/app/installations/{id}/access_tokens"),
            "html_url": format!("https://github.com/organizations/{owner}/settings/installations/{id}"),
        })),
        _ => Reply::not_found(),
    }
}

/// `POST /app/installations/{id}/access_tokens`: a new installation token.
pub(super) fn access_token(st: &mut GhState, id: &str) -> Reply {
    let Some(id) = id.parse::<u64>().ok().filter(|id| st.installations.values().any(|known| known == id)) else {
        return Reply::not_found();
    };
    let ttl = st.app.as_ref().map_or(DEFAULT_TOKEN_TTL, |app| app.token_ttl);
    let token: String = format!("ghs_{}", (0..36).map(|_| fastrand::alphanumeric()).collect::<String>());
    let expires = SystemTime::now().checked_add(ttl).unwrap_or_else(SystemTime::now);
    st.tokens.insert(token.clone(), expires);
    Reply::created(&json!({
        "token": token,
        "expires_at": rfc3339(expires),
        "permissions": {
            "contents": "read",
            "deployments": "write",
            "issues": "write",
            "metadata": "read",
            "pull_requests": "write",
            "statuses": "write",
        },
        "repository_selection": "all",
        "installation_id": id,
    }))
}
