//! The reconciler's decisions, as pure functions: given what is desired, what GitHub answered and what
//! CloudFormation shows, which one step comes next. The reconciler observes (I/O), asks [`branch`] and
//! [`teardown`] or [`converge`], and acts; everything here is table-tested over every stack state and
//! every race the reconciler must survive, with no I/O at all.

use std::fmt;
use std::str::FromStr;

use crate::{CommitSha, Desired};

/// A CloudFormation stack status, as `DescribeStacks` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StackStatus {
    CreateInProgress,
    CreateFailed,
    CreateComplete,
    RollbackInProgress,
    RollbackFailed,
    RollbackComplete,
    DeleteInProgress,
    DeleteFailed,
    DeleteComplete,
    UpdateInProgress,
    UpdateCompleteCleanupInProgress,
    UpdateComplete,
    UpdateFailed,
    UpdateRollbackInProgress,
    UpdateRollbackFailed,
    UpdateRollbackCompleteCleanupInProgress,
    UpdateRollbackComplete,
    ReviewInProgress,
    ImportInProgress,
    ImportComplete,
    ImportRollbackInProgress,
    ImportRollbackFailed,
    ImportRollbackComplete,
    /// A status this version of previewd does not know (AWS adds some now and then): never acted on.
    Other(String),
}

const NAMES: [(&str, StackStatus); 23] = [
    ("CREATE_IN_PROGRESS", StackStatus::CreateInProgress),
    ("CREATE_FAILED", StackStatus::CreateFailed),
    ("CREATE_COMPLETE", StackStatus::CreateComplete),
    ("ROLLBACK_IN_PROGRESS", StackStatus::RollbackInProgress),
    ("ROLLBACK_FAILED", StackStatus::RollbackFailed),
    ("ROLLBACK_COMPLETE", StackStatus::RollbackComplete),
    ("DELETE_IN_PROGRESS", StackStatus::DeleteInProgress),
    ("DELETE_FAILED", StackStatus::DeleteFailed),
    ("DELETE_COMPLETE", StackStatus::DeleteComplete),
    ("UPDATE_IN_PROGRESS", StackStatus::UpdateInProgress),
    ("UPDATE_COMPLETE_CLEANUP_IN_PROGRESS", StackStatus::UpdateCompleteCleanupInProgress),
    ("UPDATE_COMPLETE", StackStatus::UpdateComplete),
    ("UPDATE_FAILED", StackStatus::UpdateFailed),
    ("UPDATE_ROLLBACK_IN_PROGRESS", StackStatus::UpdateRollbackInProgress),
    ("UPDATE_ROLLBACK_FAILED", StackStatus::UpdateRollbackFailed),
    ("UPDATE_ROLLBACK_COMPLETE_CLEANUP_IN_PROGRESS", StackStatus::UpdateRollbackCompleteCleanupInProgress),
    ("UPDATE_ROLLBACK_COMPLETE", StackStatus::UpdateRollbackComplete),
    ("REVIEW_IN_PROGRESS", StackStatus::ReviewInProgress),
    ("IMPORT_IN_PROGRESS", StackStatus::ImportInProgress),
    ("IMPORT_COMPLETE", StackStatus::ImportComplete),
    ("IMPORT_ROLLBACK_IN_PROGRESS", StackStatus::ImportRollbackInProgress),
    ("IMPORT_ROLLBACK_FAILED", StackStatus::ImportRollbackFailed),
    ("IMPORT_ROLLBACK_COMPLETE", StackStatus::ImportRollbackComplete),
];

impl StackStatus {
    /// Every known status, for tables and tests.
    pub fn known() -> impl Iterator<Item = StackStatus> {
        NAMES.into_iter().map(|(_, s)| s)
    }

    pub fn as_str(&self) -> &str {
        match self {
            StackStatus::Other(s) => s,
            known => NAMES.iter().find(|(_, s)| s == known).map_or("UNKNOWN", |(n, _)| n),
        }
    }

    /// CloudFormation is working on the stack: nothing can start until it is done. A `…_PENDING` status
    /// counts too: AWS has none, but an emulator (moto) shows `CREATE_PENDING` while another caller's
    /// CreateStack is still being answered, and waiting for it is the safe reading.
    pub fn in_progress(&self) -> bool {
        let s = self.as_str();
        s.ends_with("_IN_PROGRESS") || s.ends_with("_PENDING")
    }

    /// States from which an update may start.
    pub fn updatable(&self) -> bool {
        matches!(
            self,
            StackStatus::CreateComplete
                | StackStatus::UpdateComplete
                | StackStatus::UpdateRollbackComplete
                | StackStatus::ImportComplete
        )
    }
}

impl FromStr for StackStatus {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(NAMES.iter().find(|(n, _)| *n == s).map_or_else(|| StackStatus::Other(s.to_owned()), |(_, st)| st.clone()))
    }
}

impl fmt::Display for StackStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What GitHub said about the branch in this reconcile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GitHubAnswer {
    /// The branch exists at this commit.
    At(CommitSha),
    /// 404 for the branch while GitHub shows the repository.
    NotFound,
    /// Not asked: a teardown under way was decided on proof already.
    NotAsked,
}

/// Whether the branch is there, as far as acting goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BranchDecision {
    /// Build (or keep) its environment at this commit.
    Present(CommitSha),
    /// Proven gone: tear its environment down.
    Absent,
    /// GitHub answers 404, but something newer than the grace period says the branch exists (a webhook
    /// ahead of GitHub's API, a listing): not proof yet. Look again in this many milliseconds.
    NotYetProof { wait_ms: i64 },
    /// The branch is gone, but the environment is kept on purpose: only an explicit deletion removes it.
    Kept,
}

/// What the store knows about the branch, besides GitHub's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    pub desired: Desired,
    /// When the desired state last changed (a `delete` event's arrival, say).
    pub desired_at: i64,
    /// When a push or branch creation was last reported.
    pub pushed_at: Option<i64>,
    /// When a listing or a look-up first lacked the branch (the caller records `now` on the first 404).
    pub missing_since: Option<i64>,
    /// The reaper found the environment past its time-to-live, and no push has come since.
    pub expired: bool,
    /// Kept on purpose.
    pub keep: bool,
}

/// How long GitHub's API may lag its webhooks, and how long a branch must be missing to be gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Waits {
    pub grace_ms: i64,
    pub api_lag_ms: i64,
}

/// Decides whether the branch is present, from GitHub's answer and what was recorded.
pub fn branch(e: &Evidence, github: &GitHubAnswer, now: i64, waits: Waits) -> BranchDecision {
    if e.expired {
        return BranchDecision::Absent;
    }
    match github {
        GitHubAnswer::At(sha) => BranchDecision::Present(sha.clone()),
        GitHubAnswer::NotAsked => BranchDecision::Absent,
        GitHubAnswer::NotFound if e.desired == Desired::Absent => {
            // An explicit deletion (a `delete` event, a push with `deleted: true`, a reaper's verdict)
            // that GitHub confirms: at once; unless a push came just before it, which may be the
            // branch's re-creation that GitHub's API does not show yet (the `delete` was late).
            let since_delete = now - e.desired_at;
            let push_just_before = e.pushed_at.is_some_and(|p| e.desired_at - p < waits.api_lag_ms);
            if push_just_before && since_delete < waits.api_lag_ms {
                BranchDecision::NotYetProof { wait_ms: waits.api_lag_ms - since_delete }
            } else {
                BranchDecision::Absent
            }
        }
        GitHubAnswer::NotFound if e.keep => BranchDecision::Kept,
        GitHubAnswer::NotFound => {
            let missing_for = now - e.missing_since.unwrap_or(now).min(now);
            if missing_for >= waits.grace_ms {
                BranchDecision::Absent
            } else {
                BranchDecision::NotYetProof { wait_ms: waits.grace_ms - missing_for }
            }
        }
    }
}

/// The environment stack as observed, reduced to what decisions need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackView {
    pub status: StackStatus,
    /// Carries this installation's owner tag.
    pub owned: bool,
    /// Its `previewd:sha` and `previewd:template` tags match the commit and the rendered template.
    pub current: bool,
}

/// One step of a teardown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TeardownStep {
    /// No stack: the environment is gone.
    Done,
    /// CloudFormation is busy with the stack (a create, an update, our own delete): look again.
    Wait,
    /// Empty the buckets, then DeleteStack. `retry`: after DELETE_FAILED, counted as an attempt.
    Delete { retry: bool },
    /// A person must act: the message says why and what to do.
    Refuse(String),
}

/// One step toward the desired commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConvergeStep {
    Create,
    Wait,
    /// A failed create leaves a stack that can only be deleted: delete it (counted), then create again.
    DeleteAfterRollback,
    /// `counted`: an update after a rolled-back update counts as another attempt.
    Update {
        counted: bool,
    },
    /// The stack is what was asked for: point DNS at it and call it ready.
    PointDns,
    Refuse(String),
}

fn not_ours() -> String {
    "the stack exists but was not created by this previewd (its owner tag differs); it is never touched: remove or rename it"
        .to_owned()
}

fn exhausted(what: &str, attempts: i64, advice: &str) -> String {
    format!("{what} {attempts} times; {advice}")
}

/// The next teardown step for the stack, `attempts` having been spent on deleting it.
pub fn teardown(stack: Option<&StackView>, attempts: i64, max_attempts: i64) -> TeardownStep {
    let Some(s) = stack else { return TeardownStep::Done };
    if !s.owned {
        return TeardownStep::Refuse(not_ours());
    }
    if s.status.in_progress() {
        // Deletion wins over a create or update under way, once CloudFormation lets go of the stack.
        return TeardownStep::Wait;
    }
    match s.status {
        StackStatus::DeleteFailed if attempts >= max_attempts => TeardownStep::Refuse(exhausted(
            "could not be deleted",
            attempts,
            "remove what blocks it; previewd tries again at every resync",
        )),
        StackStatus::DeleteFailed => TeardownStep::Delete { retry: true },
        StackStatus::DeleteComplete => TeardownStep::Done,
        _ => TeardownStep::Delete { retry: false },
    }
}

/// The next step toward the desired commit, `attempts` having been spent on this desired state.
pub fn converge(stack: Option<&StackView>, attempts: i64, max_attempts: i64) -> ConvergeStep {
    let Some(s) = stack else { return ConvergeStep::Create };
    if !s.owned {
        return ConvergeStep::Refuse(not_ours());
    }
    if s.status.in_progress() {
        return ConvergeStep::Wait;
    }
    match &s.status {
        StackStatus::DeleteComplete => ConvergeStep::Create,
        StackStatus::RollbackComplete if attempts >= max_attempts => {
            ConvergeStep::Refuse(exhausted("failed to create", attempts, "fix the template or settings and push again"))
        }
        StackStatus::RollbackComplete => ConvergeStep::DeleteAfterRollback,
        st if st.updatable() && s.current => ConvergeStep::PointDns,
        StackStatus::UpdateRollbackComplete if attempts >= max_attempts => ConvergeStep::Refuse(exhausted(
            "rolled back the update",
            attempts,
            "fix the template or settings and push again",
        )),
        StackStatus::UpdateRollbackComplete => ConvergeStep::Update { counted: true },
        st if st.updatable() => ConvergeStep::Update { counted: false },
        StackStatus::UpdateRollbackFailed => ConvergeStep::Refuse(
            "UPDATE_ROLLBACK_FAILED: continue the rollback (ContinueUpdateRollback) or delete the stack".to_owned(),
        ),
        StackStatus::DeleteFailed => {
            ConvergeStep::Refuse("DELETE_FAILED: remove what blocks the deletion, then delete the stack".to_owned())
        }
        other => ConvergeStep::Refuse(format!("{other}: inspect the stack's events in the CloudFormation console")),
    }
}

/// Whether a failed resource's reason will be the same however often the stack is created again: an image
/// that is not there, a property or parameter AWS refuses, a permission the stack's role lacks. Such a
/// stack waits for a new push or a redeploy instead of being deleted and created again.
pub fn lasting_cause(reason: &str) -> bool {
    const LASTING: [&str; 7] = [
        "CannotPullContainerError",
        "not found: manifest unknown",
        "Invalid",
        "ValidationError",
        "not authorized",
        "AccessDenied",
        "Model validation failed",
    ];
    LASTING.iter().any(|l| reason.contains(l))
}

/// One step for a repository's application stack, which its environments share and import from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppStep {
    Create,
    /// CloudFormation is working on it: the environment waits.
    Wait,
    /// As rendered: the environment goes on.
    Ready,
    /// `counted`: after a rolled-back update, another try counted against the environment.
    Update {
        counted: bool,
    },
    /// A failed create leaves a stack that can only be deleted: delete it (counted), then create again.
    DeleteAfterRollback,
    Refuse(String),
}

/// The next step for the application stack, `attempts` having been spent on it by this environment.
/// `current` says its template tag matches this render.
pub fn application(stack: Option<&StackView>, attempts: i64, max_attempts: i64) -> AppStep {
    let advice = "this application stack is shared by the repository's environments: look at its events";
    let Some(s) = stack else { return AppStep::Create };
    if !s.owned {
        return AppStep::Refuse("it exists but was not created by this previewd; it is never touched".to_owned());
    }
    if s.status.in_progress() {
        return AppStep::Wait;
    }
    match &s.status {
        st if st.updatable() && s.current => AppStep::Ready,
        StackStatus::UpdateRollbackComplete if attempts >= max_attempts => {
            AppStep::Refuse(exhausted("rolled back an update", attempts, advice))
        }
        StackStatus::UpdateRollbackComplete => AppStep::Update { counted: true },
        st if st.updatable() => AppStep::Update { counted: false },
        StackStatus::RollbackComplete if attempts >= max_attempts => {
            AppStep::Refuse(exhausted("failed to create", attempts, advice))
        }
        StackStatus::RollbackComplete => AppStep::DeleteAfterRollback,
        other => AppStep::Refuse(format!("it is {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;

    fn sha(c: char) -> CommitSha {
        CommitSha::new(&c.to_string().repeat(40)).expect("sha")
    }

    fn present() -> Desired {
        Desired::Present { sha: Some(sha('a')) }
    }

    #[test]
    fn causes_that_will_not_change_are_told_from_passing_ones() {
        assert!(lasting_cause("Service (AWS::ECS::Service) failed: CannotPullContainerError: pull image manifest"));
        assert!(lasting_cause("TaskDefinition failed: Invalid request provided: cpu"));
        assert!(!lasting_cause("Service failed: Rate exceeded"));
        assert!(!lasting_cause("ListenerRule failed: Priority '7' is currently in use (PriorityInUse)"));
    }

    #[test]
    fn stack_statuses_round_trip_and_unknown_ones_are_kept() {
        for s in StackStatus::known() {
            assert_eq!(s.as_str().parse::<StackStatus>(), Ok(s.clone()));
        }
        assert_eq!("NEW_THING".parse::<StackStatus>(), Ok(StackStatus::Other("NEW_THING".into())));
        assert!(!StackStatus::Other("NEW_THING".into()).updatable());
        assert!(StackStatus::Other("CREATE_PENDING".into()).in_progress(), "waited for, never acted on");
    }

    fn evidence(desired: Desired, missing_since: Option<i64>) -> Evidence {
        Evidence { desired, desired_at: 0, pushed_at: None, missing_since, expired: false, keep: false }
    }

    #[test]
    fn branch_presence_needs_proof_of_absence() {
        let now = 100 * MIN;
        let grace = 10 * MIN;
        let waits = Waits { grace_ms: grace, api_lag_ms: MIN / 2 };
        use BranchDecision::*;
        use GitHubAnswer::*;
        let table: &[(&str, Evidence, GitHubAnswer, BranchDecision)] = &[
            ("GitHub shows it: present at its head", evidence(present(), None), At(sha('b')), Present(sha('b'))),
            (
                "a late delete while the branch was re-created",
                evidence(Desired::Absent, None),
                At(sha('c')),
                Present(sha('c')),
            ),
            ("explicit deletion confirmed", evidence(Desired::Absent, None), NotFound, Absent),
            (
                "a push GitHub's API does not show yet",
                evidence(present(), None),
                NotFound,
                NotYetProof { wait_ms: grace },
            ),
            (
                "missing for less than the grace",
                evidence(present(), Some(now - 3 * MIN)),
                NotFound,
                NotYetProof { wait_ms: 7 * MIN },
            ),
            ("missing for the whole grace", evidence(present(), Some(now - grace)), NotFound, Absent),
            ("missing long ago (previewd was down)", evidence(present(), Some(now - 600 * MIN)), NotFound, Absent),
            ("teardown under way", evidence(Desired::Absent, None), NotAsked, Absent),
            (
                "a clock that went backwards is no proof",
                evidence(present(), Some(now + MIN)),
                NotFound,
                NotYetProof { wait_ms: grace },
            ),
            ("kept on purpose", Evidence { keep: true, ..evidence(present(), Some(0)) }, NotFound, Kept),
            (
                "kept, but deleted explicitly",
                Evidence { keep: true, ..evidence(Desired::Absent, None) },
                NotFound,
                Absent,
            ),
            ("past its time-to-live", Evidence { expired: true, ..evidence(present(), None) }, At(sha('a')), Absent),
            (
                "a late delete right after a re-creating push GitHub does not show yet",
                Evidence { desired_at: now - 1_000, pushed_at: Some(now - 2_000), ..evidence(Desired::Absent, None) },
                NotFound,
                NotYetProof { wait_ms: MIN / 2 - 1_000 },
            ),
            (
                "... and once GitHub had time to catch up",
                Evidence {
                    desired_at: now - MIN,
                    pushed_at: Some(now - MIN - 2_000),
                    ..evidence(Desired::Absent, None)
                },
                NotFound,
                Absent,
            ),
            (
                "a delete long after the last push: at once",
                Evidence {
                    desired_at: now - 1_000,
                    pushed_at: Some(now - 60 * MIN),
                    ..evidence(Desired::Absent, None)
                },
                NotFound,
                Absent,
            ),
        ];
        for (case, e, gh, want) in table {
            assert_eq!(&branch(e, gh, now, waits), want, "{case}");
        }
        let zero = Waits { grace_ms: 0, api_lag_ms: 0 };
        assert_eq!(
            branch(&evidence(present(), None), &NotFound, now, zero),
            Absent,
            "grace 0s: the first 404 is proof"
        );
    }

    fn view(status: StackStatus, current: bool) -> StackView {
        StackView { status, owned: true, current }
    }

    #[test]
    fn teardown_over_every_stack_state() {
        assert_eq!(teardown(None, 0, 3), TeardownStep::Done);
        for st in StackStatus::known().chain([StackStatus::Other("X".into())]) {
            let step = teardown(Some(&view(st.clone(), true)), 0, 3);
            let want = match &st {
                s if s.in_progress() => TeardownStep::Wait,
                StackStatus::DeleteFailed => TeardownStep::Delete { retry: true },
                StackStatus::DeleteComplete => TeardownStep::Done,
                _ => TeardownStep::Delete { retry: false },
            };
            assert_eq!(step, want, "{st}");
            let foreign = StackView { owned: false, ..view(st.clone(), true) };
            assert!(matches!(teardown(Some(&foreign), 0, 3), TeardownStep::Refuse(_)), "{st}: never touch another's");
        }
        assert!(
            matches!(teardown(Some(&view(StackStatus::DeleteFailed, true)), 3, 3), TeardownStep::Refuse(m) if m.contains("3 times"))
        );
    }

    #[test]
    fn converge_over_every_stack_state() {
        assert_eq!(converge(None, 0, 3), ConvergeStep::Create);
        for st in StackStatus::known().chain([StackStatus::Other("X".into())]) {
            for current in [true, false] {
                let step = converge(Some(&view(st.clone(), current)), 0, 3);
                let ok = match (&st, current) {
                    (s, _) if s.in_progress() => step == ConvergeStep::Wait,
                    (StackStatus::DeleteComplete, _) => step == ConvergeStep::Create,
                    (StackStatus::RollbackComplete, _) => step == ConvergeStep::DeleteAfterRollback,
                    (s, true) if s.updatable() => step == ConvergeStep::PointDns,
                    (StackStatus::UpdateRollbackComplete, false) => step == ConvergeStep::Update { counted: true },
                    (s, false) if s.updatable() => step == ConvergeStep::Update { counted: false },
                    _ => matches!(step, ConvergeStep::Refuse(_)),
                };
                assert!(ok, "{st} current={current}: {step:?}");
                let foreign = StackView { owned: false, ..view(st.clone(), current) };
                assert!(matches!(converge(Some(&foreign), 0, 3), ConvergeStep::Refuse(_)), "{st}");
            }
        }
        for st in [StackStatus::RollbackComplete, StackStatus::UpdateRollbackComplete] {
            assert!(matches!(converge(Some(&view(st, false)), 3, 3), ConvergeStep::Refuse(_)), "attempts spent");
        }
    }

    #[test]
    fn application_over_every_stack_state() {
        assert_eq!(application(None, 0, 3), AppStep::Create);
        for st in StackStatus::known().chain([StackStatus::Other("X".into())]) {
            for current in [true, false] {
                let step = application(Some(&view(st.clone(), current)), 0, 3);
                let ok = match (&st, current) {
                    (s, _) if s.in_progress() => step == AppStep::Wait,
                    (s, true) if s.updatable() => step == AppStep::Ready,
                    (StackStatus::UpdateRollbackComplete, false) => step == AppStep::Update { counted: true },
                    (s, false) if s.updatable() => step == AppStep::Update { counted: false },
                    (StackStatus::RollbackComplete, _) => step == AppStep::DeleteAfterRollback,
                    _ => matches!(step, AppStep::Refuse(_)),
                };
                assert!(ok, "{st} current={current}: {step:?}");
                let foreign = StackView { owned: false, ..view(st.clone(), current) };
                assert!(matches!(application(Some(&foreign), 0, 3), AppStep::Refuse(_)), "{st}: never touch another's");
            }
        }
        for st in [StackStatus::RollbackComplete, StackStatus::UpdateRollbackComplete] {
            let step = application(Some(&view(st, false)), 3, 3);
            assert!(matches!(step, AppStep::Refuse(m) if m.contains("3 times")), "attempts spent");
        }
        let current_after_rollback = application(Some(&view(StackStatus::UpdateRollbackComplete, true)), 3, 3);
        assert_eq!(current_after_rollback, AppStep::Ready, "a rolled-back update to this very template is in use");
    }
}
