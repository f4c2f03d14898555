//! Desired and observed state of an environment, as the store records them and the dashboard shows them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::CommitSha;

/// What GitHub says should exist: the branch (at a commit, when the event named one), or nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Desired {
    Present { sha: Option<CommitSha> },
    Absent,
}

/// A branch's desired-state changes folded in order, as recording them one at a time would leave them.
/// A `create` event carries no commit: the commit a push already told stays.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredFold {
    /// Whether the branch is wanted after the last change.
    pub present: bool,
    /// Its commit, when known (see `keep_recorded_sha`).
    pub sha: Option<CommitSha>,
    /// The recorded state was not known to the fold and every change since it was a `create`: the
    /// recorded commit stays if the branch was wanted already (`sha` is then `None`).
    pub keep_recorded_sha: bool,
    /// Some change said the branch exists: it is no longer missing or expired, and was pushed now.
    pub any_present: bool,
    /// How many changes were folded (each is a generation of the desired state).
    pub changes: i64,
}

impl Desired {
    /// Folds `changes` onto `recorded` (`None`: not read, as in a batch applied in one statement).
    pub fn fold<'a>(recorded: Option<&Desired>, changes: impl IntoIterator<Item = &'a Desired>) -> DesiredFold {
        let mut present = recorded.map(|d| matches!(d, Desired::Present { .. }));
        let mut fold = DesiredFold {
            sha: match recorded {
                Some(Desired::Present { sha }) => sha.clone(),
                _ => None,
            },
            ..DesiredFold::default()
        };
        for change in changes {
            match change {
                Desired::Present { sha: None } => match present {
                    Some(true) => {}
                    Some(false) => fold.sha = None,
                    None => fold.keep_recorded_sha = true,
                },
                Desired::Present { sha } => (fold.sha, fold.keep_recorded_sha) = (sha.clone(), false),
                Desired::Absent => (fold.sha, fold.keep_recorded_sha) = (None, false),
            }
            let now_present = matches!(change, Desired::Present { .. });
            present = Some(now_present);
            fold.any_present |= now_present;
            fold.changes += 1;
        }
        fold.present = present.unwrap_or(false);
        fold
    }
}

impl DesiredFold {
    /// The desired state the fold leaves, given what was recorded (read only when the fold kept it).
    pub fn desired(&self, recorded: Option<&Desired>) -> Desired {
        match (self.present, self.keep_recorded_sha, recorded) {
            (false, ..) => Desired::Absent,
            (true, true, Some(Desired::Present { sha })) => Desired::Present { sha: sha.clone() },
            (true, _, _) => Desired::Present { sha: self.sha.clone() },
        }
    }
}

/// Where an environment stands, as users see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Recorded, not yet acted on.
    Pending,
    /// A stack operation toward the desired state is under way.
    Provisioning,
    /// The stack matches the desired commit and the URL answers to its DNS name.
    Ready,
    /// Stopped on an error that needs a person; `last_error` says what to do.
    Failed,
    /// Being torn down.
    Deleting,
    /// Gone: the branch is gone and so is everything previewd made for it.
    Deleted,
    /// A `-no-infra` branch: recorded and shown, never provisioned.
    Skipped,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Pending,
        Status::Provisioning,
        Status::Ready,
        Status::Failed,
        Status::Deleting,
        Status::Deleted,
        Status::Skipped,
    ];

    /// The status an environment shows once it is asked for something new: one that had settled on an
    /// outcome (`deleted`, `failed`) starts over; one under way stays as it is until the reconciler looks.
    pub fn on_new_desire(self) -> Status {
        match self {
            Status::Deleted | Status::Failed => Status::Pending,
            s => s,
        }
    }

    /// Whether an environment in this status holds AWS resources or is about to (`has_stack`: a stack
    /// was recorded for it), and so takes a place under its repository's cap. A failure that created
    /// nothing (a branch's settings refused) holds none.
    pub fn holds_resources(self, has_stack: bool) -> bool {
        match self {
            Status::Provisioning | Status::Ready | Status::Deleting => true,
            // Waiting for its commit's artifact with its stack up (or an earlier commit running).
            Status::Failed | Status::Pending => has_stack,
            Status::Deleted | Status::Skipped => false,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Provisioning => "provisioning",
            Status::Ready => "ready",
            Status::Failed => "failed",
            Status::Deleting => "deleting",
            Status::Deleted => "deleted",
            Status::Skipped => "skipped",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Status::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| {
            let all: Vec<&str> = Status::ALL.iter().map(|s| s.as_str()).collect();
            format!("unknown status {s:?}: one of {}", all.join(", "))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(c: char) -> Desired {
        Desired::Present { sha: Some(CommitSha::new(&c.to_string().repeat(40)).expect("sha")) }
    }
    const CREATE: Desired = Desired::Present { sha: None };

    /// Folding a branch's changes at once leaves what folding them one at a time leaves, whether or not
    /// the recorded state was read first.
    #[test]
    fn a_fold_at_once_agrees_with_one_at_a_time() {
        let states = [None, Some(Desired::Absent), Some(CREATE), Some(at('a'))];
        let changes = [Desired::Absent, CREATE, at('b'), at('c')];
        for recorded in &states {
            for n in 0..=3 {
                for pick in 0..changes.len().pow(n) {
                    let seq: Vec<&Desired> =
                        (0..n).map(|i| &changes[pick / changes.len().pow(i) % changes.len()]).collect();
                    let mut one_by_one = recorded.clone().unwrap_or(Desired::Absent);
                    for c in &seq {
                        one_by_one = Desired::fold(Some(&one_by_one), [*c]).desired(None);
                    }
                    let base = recorded.clone().unwrap_or(Desired::Absent);
                    let unread = Desired::fold(None, seq.iter().copied());
                    if n > 0 {
                        assert_eq!(unread.desired(Some(&base)), one_by_one, "{recorded:?} then {seq:?}");
                    }
                    assert_eq!(Desired::fold(Some(&base), seq.iter().copied()).desired(None), one_by_one);
                    assert_eq!(unread.changes, i64::from(n));
                }
            }
        }
    }

    #[test]
    fn a_create_keeps_the_commit_a_push_told() {
        assert_eq!(Desired::fold(Some(&at('a')), [&CREATE]).desired(None), at('a'));
        assert_eq!(Desired::fold(Some(&Desired::Absent), [&CREATE]).desired(None), CREATE);
        let unread = Desired::fold(None, [&CREATE]);
        assert!(unread.keep_recorded_sha && unread.any_present);
    }

    #[test]
    fn only_what_holds_resources_counts() {
        let holding: Vec<_> = Status::ALL.into_iter().filter(|s| s.holds_resources(false)).collect();
        assert_eq!(holding, [Status::Provisioning, Status::Ready, Status::Deleting]);
        assert!(Status::Failed.holds_resources(true) && !Status::Failed.holds_resources(false));
        assert!(Status::Pending.holds_resources(true) && !Status::Pending.holds_resources(false));
    }
}
