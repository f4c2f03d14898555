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
        Status::ALL.into_iter().find(|st| st.as_str() == s).ok_or_else(|| format!("unknown status {s:?}"))
    }
}
