//! Faults a test injects: what they answer with ([`Fault`]), which requests they apply to ([`Target`]), and
//! how the first that matches a request is taken.

use std::time::Duration;

use axum::http::Method;

use super::state::GhState;

/// A failure to answer with instead of the real thing; see [`FakeGitHub::inject`](super::FakeGitHub::inject). A
/// fault that answers in place of the real thing (all but [`Delay`](Self::Delay) and [`NoLink`](Self::NoLink))
/// leaves the fake's state as it was, so a faulted write changes nothing.
#[derive(Debug, Clone)]
pub enum Fault {
    /// HTTP status with GitHub's JSON error document ({"message": …, "documentation_url": …}).
    Status(u16),
    /// 200 with an HTML body (a proxy's or captive portal's error page), Content-Type text/html.
    Html,
    /// 200 with an empty JSON array `[]` (only meaningful for listings).
    EmptyList,
    /// No answer for this long (the client should time out first); then the real answer.
    Delay(Duration),
    /// The requested page answered normally but without any `Link` header, so a client that trusts it
    /// stops early although more pages exist: broken pagination.
    NoLink,
    /// The requested page answered normally, its `Link` header's next page on another host: the
    /// loopback port given (a server that should never hear previewd's credentials).
    LinkElsewhere(u16),
    /// A secondary rate limit: `status` (GitHub uses 403 or 429) with GitHub's "You have exceeded a
    /// secondary rate limit" document and `retry-after: seconds`; the primary quota is not spent.
    RetryAfter {
        /// The HTTP status to answer with.
        status: u16,
        /// What `retry-after` says.
        seconds: u64,
    },
    /// The primary rate limit spent: `status` (403 or 429) with `x-ratelimit-remaining: 0` and
    /// `x-ratelimit-reset` two seconds from now (unix seconds).
    RateLimited {
        /// The HTTP status to answer with, 403 or 429.
        status: u16,
    },
}

/// Which requests an injected [`Fault`] applies to: matched on the path, whatever the method, except
/// [`Writes`](Self::Writes), which is matched on the method alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `/repos/{o}/{r}/branches`, any page.
    BranchList,
    /// `/repos/{o}/{r}/branches` for this page only (a missing `page` is page 1).
    BranchListPage(usize),
    /// `/repos/{o}/{r}/branches/{name}`.
    Branch,
    /// `/repos/{o}/{r}`.
    Repo,
    /// `/repos/{o}/{r}/contents/{path}`.
    Contents,
    /// `/repos/{o}/{r}/deployments` and everything under it (a deployment, its statuses).
    Deployments,
    /// `/repos/{o}/{r}/pulls` and everything under it.
    Pulls,
    /// `/repos/{o}/{r}/issues/...`: issue comments, listed, created or edited.
    Comments,
    /// `/repos/{o}/{r}/commits/{ref}/check-runs` and `/repos/{o}/{r}/commits/{ref}/status`.
    Checks,
    /// Every `POST`, `PATCH`, `PUT` or `DELETE`, whatever the path.
    Writes,
    /// `/app/installations/{id}/access_tokens`.
    InstallationToken,
    /// Every request.
    Any,
}

/// What a request asks for, as far as fault targets care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    Repo,
    BranchList { page: usize },
    Branch,
    Contents,
    Deployments,
    Pulls,
    Comments,
    Checks,
    InstallationToken,
    Other,
}

impl Endpoint {
    pub(super) fn of(segs: &[&str], page: usize) -> Self {
        match segs {
            ["repos", _, _] => Self::Repo,
            ["repos", _, _, "branches"] => Self::BranchList { page },
            ["repos", _, _, "branches", _] => Self::Branch,
            ["repos", _, _, "contents", ..] => Self::Contents,
            ["repos", _, _, "deployments", ..] => Self::Deployments,
            ["repos", _, _, "pulls", ..] => Self::Pulls,
            ["repos", _, _, "issues", ..] => Self::Comments,
            ["repos", _, _, "commits", _, "check-runs" | "status"] => Self::Checks,
            ["app", "installations", _, "access_tokens"] => Self::InstallationToken,
            _ => Self::Other,
        }
    }
}

impl Target {
    /// Whether this target covers a request for `endpoint`; `write` tells whether its method writes.
    fn matches(self, endpoint: Endpoint, write: bool) -> bool {
        match (self, endpoint) {
            (Self::Any, _) | (Self::BranchList, Endpoint::BranchList { .. }) => true,
            (Self::Writes, _) => write,
            (Self::BranchListPage(want), Endpoint::BranchList { page }) => want == page,
            (Self::Branch, Endpoint::Branch) | (Self::Repo, Endpoint::Repo) => true,
            (Self::Contents, Endpoint::Contents) | (Self::Deployments, Endpoint::Deployments) => true,
            (Self::Pulls, Endpoint::Pulls) | (Self::Comments, Endpoint::Comments) => true,
            (Self::Checks, Endpoint::Checks) => true,
            (Self::InstallationToken, Endpoint::InstallationToken) => true,
            _ => false,
        }
    }
}

/// Whether a request with this method changes something (and so is a target for [`Target::Writes`]).
pub(super) fn is_write(method: &Method) -> bool {
    [Method::POST, Method::PATCH, Method::PUT, Method::DELETE].contains(method)
}

#[derive(Debug)]
pub(super) struct Injected {
    pub(super) target: Target,
    pub(super) fault: Fault,
    pub(super) remaining: usize,
}

impl GhState {
    /// Consumes one use of the first injected fault that matches.
    pub(super) fn take_fault(&mut self, endpoint: Endpoint, write: bool) -> Option<Fault> {
        let i = self.faults.iter().position(|f| f.target.matches(endpoint, write))?;
        let injected = &mut self.faults[i];
        injected.remaining -= 1;
        let fault = injected.fault.clone();
        if injected.remaining == 0 {
            self.faults.remove(i);
        }
        Some(fault)
    }
}
