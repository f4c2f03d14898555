//! How a reconcile step ends: an [`Action`] when it went through, a [`ReconcileError`] when it stopped
//! short; and the error policy, which says what an error means for the environment, as a pure function.

use std::time::Duration;

use previewd_render::RenderError;
use previewd_store::StoreError;

use crate::setup::Tuning;

/// What a reconcile step decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Desired and observed agree (or a person must act): nothing to do until something changes.
    Done,
    /// Look again after this long.
    Requeue(Duration),
}

/// Why a reconcile step stopped short. Errors from the layers below are kept whole, with their chain;
/// [`ReconcileError::needs_human`] says which kind the error policy sees.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// Worth retrying later: throttling, an outage, a lost connection.
    #[error("{0}")]
    Transient(String),
    /// Retrying will not help; the message says what a person should do.
    #[error("{0}")]
    NeedsHuman(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Cloud(#[from] previewd_cloud::CloudError),
    #[error(transparent)]
    GitHub(#[from] previewd_github::GithubError),
    #[error(transparent)]
    Render(#[from] RenderError),
}

impl ReconcileError {
    /// How long GitHub asked to wait, when it answered with a rate limit.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ReconcileError::GitHub(g) => g.retry_after(),
            _ => None,
        }
    }

    /// Another replica holds the environment now: the step's writes were refused, and it records nothing.
    pub fn is_fenced(&self) -> bool {
        matches!(self, ReconcileError::Store(e) if e.is_fenced())
    }

    /// AWS failing (a 5xx, an internal error), as opposed to throttling or an unreachable endpoint: the
    /// same fault again and again is the service's lasting answer (an emulator that cannot create a
    /// resource answers 500 every time), not a passing one.
    fn is_fault(&self) -> bool {
        matches!(self, ReconcileError::Cloud(e) if e.is_fault())
    }

    /// Retrying will not help: the environment is `failed` until a person acts or a push asks again.
    pub fn needs_human(&self) -> bool {
        match self {
            ReconcileError::Transient(_) | ReconcileError::Store(_) => false,
            ReconcileError::NeedsHuman(_) | ReconcileError::Render(_) => true,
            ReconcileError::Cloud(e) => !e.is_retryable(),
            // An answer that will not change by asking again (a settings "file" that is a folder, say).
            ReconcileError::GitHub(e) => matches!(e, previewd_github::GithubError::Unexpected { .. }),
        }
    }
}

/// What an error means for the environment that met it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ErrorAction {
    /// Another replica holds the environment now: nothing of this step is recorded.
    Fenced,
    /// Worth another try after `after`: the `retries`-th in a row.
    Retry { after: Duration, retries: i64 },
    /// A person must act: the environment is `failed` until something changes.
    Fail,
    /// The same AWS fault [`SAME_FAULT_MAX`] times in a row: `failed` too, saying so.
    Repeated,
}

/// The same AWS fault this many times in a row (each after the SDK's own retries) is not a passing one.
pub(crate) const SAME_FAULT_MAX: i64 = 5;

/// The error policy: transient errors retry with jittered exponential backoff (never sooner than
/// GitHub asked), the rest need a person, and so does an AWS fault that keeps coming back the same.
/// `retries`: transient errors in a row before this one; `same`: the last of them said the same.
pub(crate) fn error_policy(error: &ReconcileError, retries: i64, same: bool, tuning: &Tuning) -> ErrorAction {
    match error {
        e if e.is_fenced() => ErrorAction::Fenced,
        e if e.needs_human() => ErrorAction::Fail,
        e if e.is_fault() && same && retries + 1 >= SAME_FAULT_MAX => ErrorAction::Repeated,
        e => {
            let retries = retries + 1;
            let after = tuning.backoff(retries).max(e.retry_after().unwrap_or_default());
            ErrorAction::Retry { after, retries }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_policy_over_every_kind_of_error() {
        let t = Tuning { retry_min: Duration::from_secs(10), retry_max: Duration::from_secs(100), ..Tuning::default() };
        let fenced = ReconcileError::Store(StoreError::Fenced { id: 1 });
        assert_eq!(error_policy(&fenced, 0, false, &t), ErrorAction::Fenced);
        let unavailable = ReconcileError::Store(StoreError::Unavailable);
        let transient = ReconcileError::Transient("throttled".into());
        for e in [&unavailable, &transient] {
            let ErrorAction::Retry { after, retries } = error_policy(e, 0, false, &t) else { panic!("{e:?}") };
            assert_eq!(retries, 1);
            assert!((8..=12).contains(&after.as_secs()), "the first retry waits retry_min, jittered: {after:?}");
            let ErrorAction::Retry { after, .. } = error_policy(e, 10, true, &t) else { panic!("{e:?}") };
            assert!(after <= Duration::from_secs(120), "never past retry_max, jittered: {after:?}");
        }
        let limited = ReconcileError::GitHub(previewd_github::GithubError::RateLimited {
            what: "get a branch".into(),
            retry_after: Duration::from_secs(3_600),
        });
        let ErrorAction::Retry { after, .. } = error_policy(&limited, 0, false, &t) else { panic!("rate limited") };
        assert_eq!(after, Duration::from_secs(3_600), "not before GitHub said");
        for e in [
            ReconcileError::NeedsHuman("fix it".into()),
            ReconcileError::Render(RenderError::Setting {
                file: "previewd.toml".into(),
                layer: "preview".into(),
                key: "service.cpu".into(),
                reason: "not a number".into(),
            }),
        ] {
            assert_eq!(error_policy(&e, 0, false, &t), ErrorAction::Fail, "{e:?}");
        }
    }

    #[test]
    fn the_same_aws_fault_again_and_again_is_not_a_passing_one() {
        let t = Tuning::default();
        let fault = |code: &str| {
            ReconcileError::Cloud(previewd_cloud::CloudError::Retryable {
                op: "CreateStack",
                code: code.into(),
                message: "error parsing XML: no root element".into(),
            })
        };
        let e = fault("HTTP500");
        assert!(matches!(error_policy(&e, SAME_FAULT_MAX - 2, true, &t), ErrorAction::Retry { .. }));
        assert_eq!(error_policy(&e, SAME_FAULT_MAX - 1, true, &t), ErrorAction::Repeated);
        assert!(matches!(error_policy(&e, SAME_FAULT_MAX - 1, false, &t), ErrorAction::Retry { .. }), "another answer");
        // Being told to slow down, or not reaching AWS at all, is no answer about the request.
        for code in ["Throttling", "NoResponse"] {
            assert!(matches!(error_policy(&fault(code), 50, true, &t), ErrorAction::Retry { .. }), "{code}");
        }
        let unavailable = ReconcileError::Transient("GitHub is unavailable".into());
        assert!(matches!(error_policy(&unavailable, 50, true, &t), ErrorAction::Retry { .. }));
    }
}
