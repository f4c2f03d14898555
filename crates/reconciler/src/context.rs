//! The reconciler's context: what every step works with, and the AWS calls every part makes the same
//! way (stack operations that mark what was seen of a stack stale, zone look-ups, DNS removal).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use previewd_cloud::{Aws, CloudError, DnsChange, OwnershipMarker, Stack, StackRequest, UpdateOutcome};
use previewd_domain::RepoName;
use previewd_github::GitHub;
use previewd_render::Blueprint;
use previewd_store::Store;

use crate::error::ReconcileError;
use crate::queue::Queue;
use crate::setup::{RepoSetup, Setup};
use crate::{artifacts, batch, durations, probe, settings_files, sightings};

/// What every part of the reconciler works with: the set-up, the store, AWS and GitHub, and this
/// process's caches and locks.
pub(crate) struct Inner {
    pub(crate) setup: Setup,
    pub(crate) store: Store,
    pub(crate) aws: Aws,
    pub(crate) github: GitHub,
    pub(crate) queue: Queue,
    pub(crate) blueprints: HashMap<String, Blueprint>,
    pub(crate) zone_ids: Mutex<HashMap<String, String>>,
    /// Branch settings files by repository and commit (a file at a commit never changes).
    pub(crate) settings_files: Mutex<settings_files::SettingsFiles>,
    /// One application-stack step per repository at a time in this process: environments of one
    /// repository share that stack, and two of them must not both create it.
    pub(crate) app_locks: Mutex<HashMap<RepoName, Arc<tokio::sync::Mutex<()>>>>,
    /// For seed hooks.
    pub(crate) http: reqwest::Client,
    /// One admission under a repository's cap at a time in this process.
    pub(crate) admit_locks: Mutex<HashMap<RepoName, Arc<tokio::sync::Mutex<()>>>>,
    /// Repositories whose last admission found them at their cap.
    pub(crate) full: Mutex<HashSet<RepoName>>,
    /// What the last listing of stacks showed.
    pub(crate) sightings: Arc<sightings::Sightings>,
    pub(crate) looks: batch::Looks,
    pub(crate) dns_changes: batch::DnsChanges,
    /// Commits' images waited for, looked up per ECR repository.
    pub(crate) images: artifacts::Images,
    /// Asks environments' URLs whether they answer.
    pub(crate) prober: probe::Prober,
    /// How long each blueprint's stack operations take.
    pub(crate) durations: durations::Durations,
}

impl Inner {
    // Every stack operation goes through these, so that what was seen of the stack before is known stale.

    // Marked before the call and again after it: a listing begun while the call was on its way may show
    // the stack as it was before.

    pub(crate) async fn create_stack(&self, req: &StackRequest) -> Result<String, previewd_cloud::CloudError> {
        self.sightings.acting(&req.name);
        let r = self.aws.create_stack(req).await;
        self.sightings.acting(&req.name);
        r
    }

    pub(crate) async fn update_stack(&self, req: &StackRequest) -> Result<UpdateOutcome, previewd_cloud::CloudError> {
        self.sightings.acting(&req.name);
        let r = self.aws.update_stack(req).await;
        self.sightings.acting(&req.name);
        r
    }

    /// By id, so a newer stack of the same name is never hit.
    pub(crate) async fn delete_stack(&self, stack: &Stack, token: &str) -> Result<(), previewd_cloud::CloudError> {
        self.sightings.acting(&stack.name);
        let r = self.aws.delete_stack(&stack.id, token, self.setup.stack_role_arn.as_deref()).await;
        self.sightings.acting(&stack.name);
        r
    }

    /// The hosted zone id of the repository's zone, looked up once.
    pub(crate) async fn zone_id(&self, repo: &RepoSetup) -> Result<String, ReconcileError> {
        let zone = repo.zone.as_str();
        if let Some(id) = self.zone_ids.lock().unwrap_or_else(|p| p.into_inner()).get(zone) {
            return Ok(id.clone());
        }
        let id = self.aws.hosted_zone_id(zone).await?;
        self.zone_ids.lock().unwrap_or_else(|p| p.into_inner()).insert(zone.to_owned(), id.clone());
        Ok(id)
    }

    /// Removes `name` and its marker when the marker is ours, whether or not they exist. With the `target`
    /// previewd pointed it at, the pair is deleted as written, in one request shared with other names of
    /// the zone; a name not as written (changed since, or never made) is read first, as otherwise.
    /// `Ok(true)` when something was removed.
    pub(crate) async fn remove_name(
        &self,
        zone: &str,
        name: &str,
        target: Option<&str>,
        marker: &OwnershipMarker,
    ) -> Result<bool, previewd_cloud::CloudError> {
        if let Some(target) = target {
            match self.change_dns(zone, previewd_cloud::DnsChange::deletion(name, target, marker)?).await {
                Ok(()) => return Ok(true),
                Err(e) if previewd_cloud::MISMATCHED_CHANGE_CODES.contains(&e.code()) => {}
                Err(e) => return Err(e),
            }
        }
        self.aws.delete_dns(zone, name, marker).await
    }
}

/// A duration in milliseconds as people write it (`10m`, `90s`).
pub(crate) fn humanize(ms: i64) -> String {
    humantime::format_duration(Duration::from_secs((ms.max(0) / 1000) as u64)).to_string()
}

/// Calls that come together share one (see [`crate::batch`]).
impl Inner {
    /// The stack as CloudFormation shows it now, for an environment waiting on it: looks that come
    /// together share one listing when that costs fewer calls (its pages) than describing each.
    pub(crate) async fn look(&self, name: &str) -> Result<Option<Stack>, CloudError> {
        let (aws, pages) = (self.aws.clone(), self.sightings.pages());
        let sightings = self.sightings.clone();
        let serve = move |names: Vec<String>| async move {
            if names.len() >= 2 && names.len() >= pages {
                match aws.list_stacks().await {
                    Ok(listing) => {
                        sightings.paged(listing.pages);
                        let by_name: HashMap<&str, &Stack> =
                            listing.stacks.iter().map(|s| (s.name.as_str(), s)).collect();
                        // One page is one answer; a walk over several is not a snapshot (a stack deleted
                        // meanwhile shifts the pages), so a stack it lacks is looked up on its own.
                        let whole = listing.pages == 1;
                        let answers = names.iter().map(|n| {
                            let aws = aws.clone();
                            let seen = by_name.get(n.as_str()).map(|s| (*s).clone());
                            async move {
                                match seen {
                                    Some(s) => Ok(Some(s)),
                                    None if whole => Ok(None),
                                    None => aws.describe_stack(n).await,
                                }
                            }
                        });
                        return futures::future::join_all(answers).await;
                    }
                    Err(e) => return names.iter().map(|_| Err(e.clone())).collect(),
                }
            }
            futures::future::join_all(names.iter().map(|n| aws.describe_stack(n))).await
        };
        let answer = self.looks.submit((), name.to_owned(), self.setup.tuning.batch_window, serve).await;
        answer.unwrap_or_else(|| Err(unanswered("DescribeStacks")))
    }

    /// Submits `change` to the zone with the others that come together: one request for all, and when
    /// Route53 refuses it (one change among them not as it says), each again on its own, so one name's
    /// error is its own.
    pub(crate) async fn change_dns(&self, zone: &str, change: DnsChange) -> Result<(), CloudError> {
        let (aws, zone_id) = (self.aws.clone(), zone.to_owned());
        let serve = move |changes: Vec<DnsChange>| async move {
            if changes.len() == 1 {
                return vec![aws.submit_dns(&zone_id, changes).await];
            }
            let n = changes.len();
            match aws.submit_dns(&zone_id, changes.clone()).await {
                Ok(()) => vec![Ok(()); n],
                Err(e) if e.is_retryable() => vec![Err(e); n],
                Err(_) => {
                    let mut each = Vec::with_capacity(n);
                    for c in changes {
                        each.push(aws.submit_dns(&zone_id, vec![c]).await);
                    }
                    each
                }
            }
        };
        let answer = self.dns_changes.submit(zone.to_owned(), change, self.setup.tuning.batch_window, serve).await;
        answer.unwrap_or_else(|| Err(unanswered("ChangeResourceRecordSets")))
    }
}

fn unanswered(op: &'static str) -> CloudError {
    CloudError::Retryable { op, code: "Unanswered".into(), message: "the batch this call joined was not served".into() }
}
