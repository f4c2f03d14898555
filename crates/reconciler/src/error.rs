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
    pub(crate) fn is_fault(&self) -> bool {
        matches!(self, ReconcileError::Cloud(e) if e.is_fault())
    }

    /// Whose failure it is, when retrying will not help: `true` for whoever runs previewd (AWS refused
    /// previewd's own request: its permissions, a limit, a blueprint it was given), `false` for the
    /// branch's team (a settings mistake in its file, an application that does not start), who are told
    /// on the environment's page and pull request. Logged at ERROR and WARN: an alert on ERROR is not paged
    /// for a contributor's typo.
    pub(crate) fn is_operators(&self) -> bool {
        matches!(self, ReconcileError::Cloud(_))
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
    /// The same AWS fault at least [`SAME_FAULT_MAX`] times in a row, over at least `retry_max`:
    /// `failed` too, saying so.
    Repeated,
}

/// The same AWS fault this many times in a row (each after the SDK's own retries) is not a passing one,
/// once it has also lasted `retry_max` (a short outage is waited out).
pub(crate) const SAME_FAULT_MAX: i64 = 5;

/// The same answer before this one: how many times in a row, since when (ms since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Repeats {
    pub(crate) times: i64,
    pub(crate) since: Option<i64>,
}

/// The error policy: transient errors retry with jittered exponential backoff (never sooner than
/// GitHub asked), the rest need a person, and so does an AWS fault that keeps coming back the same.
/// `retries`: transient errors in a row before this one; `same`: the same answer before this one, at
/// `now`.
pub(crate) fn error_policy(
    error: &ReconcileError,
    retries: i64,
    same: Repeats,
    now: i64,
    tuning: &Tuning,
) -> ErrorAction {
    let lasted = same.since.is_some_and(|since| now - since >= tuning.retry_max.as_millis() as i64);
    match error {
        e if e.is_fenced() => ErrorAction::Fenced,
        e if e.needs_human() => ErrorAction::Fail,
        // `retries`, which a step that went through resets, keeps "in a row" honest: the log has no
        // event for a step that went through.
        e if e.is_fault() && same.times.min(retries) + 1 >= SAME_FAULT_MAX && lasted => ErrorAction::Repeated,
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
        assert_eq!(error_policy(&fenced, 0, Repeats::default(), 0, &t), ErrorAction::Fenced);
        let unavailable = ReconcileError::Store(StoreError::Unavailable);
        let transient = ReconcileError::Transient("throttled".into());
        for e in [&unavailable, &transient] {
            let ErrorAction::Retry { after, retries } = error_policy(e, 0, Repeats::default(), 0, &t) else {
                panic!("{e:?}")
            };
            assert_eq!(retries, 1);
            assert!((8..=12).contains(&after.as_secs()), "the first retry waits retry_min, jittered: {after:?}");
            let ErrorAction::Retry { after, .. } = error_policy(e, 10, Repeats::default(), 0, &t) else {
                panic!("{e:?}")
            };
            assert!(after <= Duration::from_secs(120), "never past retry_max, jittered: {after:?}");
        }
        let limited = ReconcileError::GitHub(previewd_github::GithubError::RateLimited {
            what: "get a branch".into(),
            retry_after: Duration::from_secs(3_600),
        });
        let ErrorAction::Retry { after, .. } = error_policy(&limited, 0, Repeats::default(), 0, &t) else {
            panic!("rate limited")
        };
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
            assert_eq!(error_policy(&e, 0, Repeats::default(), 0, &t), ErrorAction::Fail, "{e:?}");
        }
    }

    #[test]
    fn the_same_aws_fault_again_and_again_is_not_a_passing_one() {
        let t = Tuning { retry_max: Duration::from_secs(300), ..Tuning::default() };
        let fault = |code: &str| {
            ReconcileError::Cloud(previewd_cloud::CloudError::Retryable {
                op: "CreateStack",
                code: code.into(),
                message: "error parsing XML: no root element".into(),
            })
        };
        let e = fault("HTTP500");
        let minutes = |m: i64| m * 60_000;
        let same = |times| Repeats { times, since: Some(0) };
        let retried = |a: ErrorAction| matches!(a, ErrorAction::Retry { .. });
        assert!(retried(error_policy(&e, 3, same(3), minutes(10), &t)), "four times is not five");
        assert_eq!(error_policy(&e, 4, same(4), minutes(10), &t), ErrorAction::Repeated);
        assert!(retried(error_policy(&e, 4, same(4), minutes(2), &t)), "a short outage is waited out");
        assert!(retried(error_policy(&e, 4, Repeats::default(), minutes(10), &t)), "another answer before");
        // Other errors in a row before it do not count: only the same answer does.
        assert!(retried(error_policy(&e, 9, same(1), minutes(10), &t)));
        // Steps that went through between them (they reset `retries`, and leave no event): not in a row.
        assert!(retried(error_policy(&e, 0, same(4), minutes(10), &t)));
        // Being told to slow down, or not reaching AWS at all, is no answer about the request.
        for code in ["Throttling", "NoResponse"] {
            assert!(retried(error_policy(&fault(code), 50, same(50), minutes(60), &t)), "{code}");
        }
        let unavailable = ReconcileError::Transient("GitHub is unavailable".into());
        assert!(retried(error_policy(&unavailable, 50, same(50), minutes(60), &t)));
    }
}
