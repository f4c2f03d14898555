//! What a GitHub call can end in besides an answer, classed as the reconciler and the reaper need it:
//! retry, wait as GitHub asked, or stop for a person.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum GithubError {
    #[error("GitHub API {what}: HTTP {status}: {message}")]
    Status { what: String, status: u16, message: String },
    #[error("GitHub API {what}: {message}")]
    Transport { what: String, message: String },
    /// An answer that will not change by asking again (a settings "file" that is a folder, say).
    #[error("GitHub API {what}: unexpected answer: {message}")]
    Unexpected { what: String, message: String },
    /// An answer that is no answer (an HTML page from a proxy, a listing that does not add up): proves
    /// nothing, and may well be right next time.
    #[error("GitHub API {what}: garbled answer: {message}")]
    Garbled { what: String, message: String },
    /// GitHub's rate limit (primary or secondary): nothing is to be sent before `retry_after`.
    #[error("GitHub API {what}: rate limited; retrying in {}s", retry_after.as_secs())]
    RateLimited { what: String, retry_after: Duration },
}

impl GithubError {
    /// How long GitHub asked to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GithubError::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}
