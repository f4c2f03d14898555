//! The words previewd's records are written in: event kinds, seed step outcomes, delivery outcomes,
//! reaper pass outcomes and GitHub deployment states. Each is an enum stored as text: written with
//! `as_str`, read back with `FromStr` (the store takes an unknown word for corrupt data), and shown and
//! serialised as the same word.

use serde::{Deserialize, Serialize};
use strum::{Display, EnumString, IntoStaticStr, VariantArray};

/// Derives for an enum stored as one snake_case word.
macro_rules! words {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Display, EnumString, IntoStaticStr,
            VariantArray,
        )]
        #[serde(rename_all = "snake_case")]
        #[strum(serialize_all = "snake_case")]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            pub fn as_str(self) -> &'static str {
                self.into()
            }
        }
    };
}

words! {
    /// What an entry of an environment's event log is about.
    pub enum EventKind {
        /// A webhook recorded a desired state.
        Webhook,
        /// The desired state changed on other evidence (GitHub's answer, the reaper's proof).
        Desired,
        Redeploy,
        Seed,
        /// GitHub could not be told.
        Github,
        Expired,
        Keep,
        Reaper,
        Dns,
        Emptying,
        Priority,
        Create,
        Update,
        Rollback,
        /// The branch is gone, but the environment is kept on purpose.
        Kept,
        /// GitHub does not show the branch, not yet proof of absence.
        Absence,
        Skipped,
        Admitted,
        Deleting,
        Deleted,
        Ready,
        /// Waiting for the commit's artifact, its checks, or its URL to answer.
        Waiting,
        /// The commit's artifact (and its checks) are there: it can run.
        Artifact,
        /// A step failed and will be tried again.
        Retry,
        /// A step failed and needs a person.
        Failed,
    }
}

words! {
    /// How a seed step ended.
    pub enum StepOutcome {
        Ok,
        /// Its `when` setting was not true.
        Skipped,
        Failed,
    }
}

words! {
    /// What became of a webhook delivery.
    pub enum DeliveryOutcome {
        /// It carried a desired state, now recorded.
        Recorded,
        /// It carried nothing to act on (a ping, a tag, an unconfigured repository).
        Ignored,
    }
}

words! {
    /// How a reaper pass ended.
    pub enum PassOutcome {
        /// Looked at everything; nothing to remove.
        Clean,
        /// Looked at everything and removed (or, in a dry run, would remove) something.
        Removed,
        /// Some repository could not be judged (an error, a suspicious listing): nothing removed there.
        Refused,
        /// Another pass holds the lock, or the pass could not read what it needs.
        Failed,
    }
}

impl PassOutcome {
    /// Whether `previewd reap` should exit 0.
    pub fn is_success(self) -> bool {
        matches!(self, PassOutcome::Clean | PassOutcome::Removed)
    }
}

words! {
    /// The GitHub deployment states previewd posts.
    pub enum DeploymentState {
        /// Waiting for the commit's artifact or checks: nothing runs yet.
        Queued,
        InProgress,
        Success,
        Failure,
        Inactive,
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use super::*;

    #[test]
    fn every_word_reads_back_as_itself_and_an_unknown_one_is_refused() {
        for k in EventKind::VARIANTS {
            assert_eq!(EventKind::from_str(k.as_str()), Ok(*k));
            assert_eq!(serde_json::to_value(k).ok(), Some(serde_json::Value::from(k.as_str())));
        }
        assert_eq!(DeploymentState::InProgress.as_str(), "in_progress");
        assert_eq!(StepOutcome::Ok.to_string(), "ok");
        assert!(EventKind::from_str("Ready").is_err(), "words are exact");
        assert!(PassOutcome::from_str("gone").is_err());
    }
}
