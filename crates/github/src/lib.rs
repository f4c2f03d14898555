//! GitHub as previewd sees it: webhooks in (signature check, then payloads into domain events) and the
//! API calls the reconciler and the reaper make (branch heads, a file at a commit, branch listings, the
//! checks on a commit).
//! No AWS, no database.

mod auth;
mod checks;
mod client;
mod error;
mod feedback;
mod webhook;
mod wire;

pub use auth::{AuthError, Credentials, REFRESH_MARGIN};
pub use checks::{CheckState, ChecksVerdict, CommitCheck, checks_verdict};
pub use client::{BranchHead, BranchListing, CALL_TIMEOUT, GitHub, GithubError, Identity, USER_AGENT};
pub use feedback::{DESCRIPTION_MAX, DeploymentState, DeploymentStatus, OpenPull, truncate};
pub use webhook::{MAX_BODY_BYTES, ParseError, SignatureError, WebhookEvent, parse_event, verify_signature};
