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

    /// CloudFormation is working on the stack: nothing can start until it is done.
    pub fn in_progress(&self) -> bool {
        self.as_str().ends_with("_IN_PROGRESS")
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
}

/// Decides whether the branch is present, from GitHub's answer and what was recorded. `missing_since` is
/// when a listing or a look-up first lacked the branch (the caller records `now` on the first 404);
/// `expired`: the reaper found the environment past its time-to-live, and no push has come since.
pub fn branch(
    desired: &Desired,
    expired: bool,
    github: &GitHubAnswer,
    missing_since: Option<i64>,
    now: i64,
    grace_ms: i64,
) -> BranchDecision {
    if expired {
        return BranchDecision::Absent;
    }
    match github {
        GitHubAnswer::At(sha) => BranchDecision::Present(sha.clone()),
        GitHubAnswer::NotAsked => BranchDecision::Absent,
        // An explicit deletion (a `delete` event, a push with `deleted: true`, a reaper's verdict) that
        // GitHub confirms: at once.
        GitHubAnswer::NotFound if *desired == Desired::Absent => BranchDecision::Absent,
        GitHubAnswer::NotFound => {
            let missing_for = now - missing_since.unwrap_or(now).min(now);
            if missing_for >= grace_ms {
                BranchDecision::Absent
            } else {
                BranchDecision::NotYetProof { wait_ms: grace_ms - missing_for }
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
    fn stack_statuses_round_trip_and_unknown_ones_are_kept() {
        for s in StackStatus::known() {
            assert_eq!(s.as_str().parse::<StackStatus>(), Ok(s.clone()));
        }
        assert_eq!("NEW_THING".parse::<StackStatus>(), Ok(StackStatus::Other("NEW_THING".into())));
        assert!(!StackStatus::Other("NEW_THING".into()).updatable());
    }

    #[test]
    fn branch_presence_needs_proof_of_absence() {
        let now = 100 * MIN;
        let grace = 10 * MIN;
        use BranchDecision::*;
        use GitHubAnswer::*;
        let table: &[(&str, Desired, GitHubAnswer, Option<i64>, BranchDecision)] = &[
            ("GitHub shows it: present at its head", present(), At(sha('b')), None, Present(sha('b'))),
            ("a late delete while the branch was re-created", Desired::Absent, At(sha('c')), None, Present(sha('c'))),
            ("explicit deletion confirmed", Desired::Absent, NotFound, None, Absent),
            ("a push GitHub's API does not show yet", present(), NotFound, None, NotYetProof { wait_ms: grace }),
            (
                "missing for less than the grace",
                present(),
                NotFound,
                Some(now - 3 * MIN),
                NotYetProof { wait_ms: 7 * MIN },
            ),
            ("missing for the whole grace", present(), NotFound, Some(now - grace), Absent),
            ("missing long ago (previewd was down)", present(), NotFound, Some(now - 600 * MIN), Absent),
            ("teardown under way", Desired::Absent, NotAsked, None, Absent),
            (
                "a clock that went backwards is no proof",
                present(),
                NotFound,
                Some(now + MIN),
                NotYetProof { wait_ms: grace },
            ),
        ];
        for (case, desired, gh, missing, want) in table {
            assert_eq!(&branch(desired, false, gh, *missing, now, grace), want, "{case}");
        }
        assert_eq!(branch(&present(), false, &NotFound, None, now, 0), Absent, "grace 0s: the first 404 is proof");
        assert_eq!(branch(&present(), true, &At(sha('a')), None, now, grace), Absent, "past its time-to-live");
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
}
