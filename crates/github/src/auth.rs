//! How previewd proves who it is to GitHub: a token, or a GitHub App. An App signs a short JWT with its
//! private key, asks which installation serves a repository, and trades the JWT for that installation's
//! token, which lasts an hour and is renewed before it runs out.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use previewd_domain::Secret;
use serde::Deserialize;

/// An installation token is renewed this long before it expires.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);
/// GitHub accepts an App's JWT for at most ten minutes; a little less allows for clock drift.
const JWT_LIFETIME: Duration = Duration::from_secs(9 * 60);
/// ...and its `iat` is set this far in the past, as GitHub recommends for clocks that drift.
const JWT_BACKDATE: Duration = Duration::from_secs(60);

/// Credentials for the GitHub API.
#[derive(Debug, Clone, Default)]
pub enum Credentials {
    /// Anonymous: public repositories only, 60 requests an hour.
    #[default]
    None,
    /// A personal access token or a fine-grained token.
    Token(Secret),
    /// A GitHub App: its id and private key (PEM).
    App { app_id: u64, private_key: Secret },
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("GitHub App private key: not an RSA private key in PEM: {0}")]
    Key(String),
    #[error("GitHub App: cannot sign a JWT: {0}")]
    Sign(String),
}

/// A GitHub App's signing key and the installation tokens it has been given.
pub(crate) struct AppAuth {
    pub(crate) app_id: u64,
    key: EncodingKey,
    pub(crate) margin: Duration,
    /// Repository (`owner/name`, lower case) → installation id.
    pub(crate) installations: std::sync::Mutex<HashMap<String, u64>>,
    /// Installation id → its token and when it expires. Held across the refresh, so one request renews
    /// a token while the others wait for it.
    pub(crate) tokens: tokio::sync::Mutex<HashMap<u64, (Secret, SystemTime)>>,
}

impl std::fmt::Debug for AppAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppAuth").field("app_id", &self.app_id).finish_non_exhaustive()
    }
}

#[derive(Serialize)]
struct Claims {
    iat: u64,
    exp: u64,
    iss: String,
}

use serde::Serialize;

/// An installation token as GitHub hands it out.
#[derive(Deserialize)]
pub(crate) struct InstallationToken {
    pub(crate) token: String,
    pub(crate) expires_at: String,
}

impl AppAuth {
    pub(crate) fn new(app_id: u64, private_key: &Secret, margin: Duration) -> Result<Self, AuthError> {
        let key =
            EncodingKey::from_rsa_pem(private_key.expose().as_bytes()).map_err(|e| AuthError::Key(e.to_string()))?;
        Ok(Self {
            app_id,
            key,
            margin,
            installations: std::sync::Mutex::new(HashMap::new()),
            tokens: tokio::sync::Mutex::new(HashMap::new()),
        })
    }

    /// A JWT for the App's own endpoints, valid for a few minutes.
    pub(crate) fn jwt(&self) -> Result<Secret, AuthError> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let claims = Claims {
            iat: now.saturating_sub(JWT_BACKDATE).as_secs(),
            exp: (now + JWT_LIFETIME).as_secs(),
            iss: self.app_id.to_string(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map(Secret::new)
            .map_err(|e| AuthError::Sign(e.to_string()))
    }
}

/// When an installation token expires, from GitHub's `expires_at` (RFC 3339, UTC); an unreadable one is
/// taken to last a minute.
pub(crate) fn expiry(expires_at: &str) -> SystemTime {
    humantime::parse_rfc3339_weak(expires_at.trim_end_matches('Z'))
        .unwrap_or_else(|_| SystemTime::now() + Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_reads_github_times() {
        let t = expiry("2026-11-23T04:00:00Z");
        assert_eq!(t.duration_since(UNIX_EPOCH).expect("after the epoch").as_secs(), 1_795_406_400);
    }

    #[test]
    fn a_bad_key_is_refused_without_showing_it() {
        let e = AppAuth::new(1, &Secret::new("-----BEGIN RSA PRIVATE KEY-----\nsecretstuff\n"), REFRESH_MARGIN)
            .expect_err("not a key");
        assert!(!e.to_string().contains("secretstuff"), "{e}");
    }
}
