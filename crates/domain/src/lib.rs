//! previewd's domain: validated newtypes for what GitHub tells us, the names derived from them for AWS and
//! DNS, and (with the reconciler) the desired and observed state of an environment. No I/O lives here.

mod ecr;
pub mod kinds;
mod names;
pub mod plan;
mod secret;
mod state;
pub mod tags;
pub mod text;

pub use ecr::EcrRepository;
pub use kinds::{DeliveryOutcome, DeploymentState, EventKind, PassOutcome, StepOutcome};
pub use names::{
    BUCKET_PREFIX_MAX, BranchName, CommitSha, DNS_LABEL_MAX, DNS_NAME_MAX, DnsZone, EnvKey, EnvNames, NameError,
    OwnerId, RULE_PRIORITY_MAX, RepoName, STACK_NAME_MAX, Stage, TAG_VALUE_MAX, app_stack_name, is_valid_bucket_prefix,
    is_valid_stack_name, tag_value,
};
pub use plan::StackStatus;
pub use secret::Secret;
pub use state::{Desired, DesiredFold, Status};

/// The output previewd adds to every environment template: the buckets CloudFormation deletes with the
/// stack (DeletionPolicy `Delete`), which a teardown must empty first, as `previewd,<bucket>,…`. A
/// bucket the template retains is not listed, so what it holds is kept.
pub const EMPTY_ON_DELETE_OUTPUT: &str = "PreviewdEmptyOnDelete";
/// The first item of that output's value (alone when nothing is to be emptied).
pub const EMPTY_ON_DELETE_MARK: &str = "previewd";
