//! The fleet observer: one look at everything, counted in pages, not environments. Every
//! `resync_every` it reads every page of each repository's branches (with ETags, so an unchanged page is
//! free of GitHub's rate limit), every stack carrying this installation's owner tag, and every DNS name
//! carrying a previewd marker in each zone, compares them with the store, and enqueues only the
//! environments whose desired or observed state differs. Idle, it makes no per-environment call and no
//! write.

use std::collections::{BTreeMap, HashMap};

use previewd_cloud::{CloudError, MarkedName, Stack};
use previewd_domain::{BranchName, CommitSha, Desired, RepoName, Status};
use previewd_github::{BranchListing, GithubError};
use previewd_store::EnvRecord;

use previewd_domain::tags;

use crate::context::Inner;
use crate::error::ReconcileError;

/// What one pass saw. An observation that failed is `Err` and decides nothing.
pub(crate) struct Fleet {
    /// Owner-tagged stacks by name.
    pub stacks: Result<HashMap<String, Stack>, CloudError>,
    /// When the stacks' listing began, and the pages it took.
    pub stacks_listed_at: tokio::time::Instant,
    pub stack_pages: usize,
    /// Marked DNS names by name (lower case, no final dot), per repository (through its zone).
    pub dns: BTreeMap<RepoName, Result<HashMap<String, MarkedName>, String>>,
    /// Each configured repository's branches: a complete listing, or why there is none.
    pub listings: BTreeMap<RepoName, Result<HashMap<BranchName, CommitSha>, String>>,
}

/// Reads the fleet: one DescribeStacks walk, one ListResourceRecordSets walk per zone, one branch
/// listing per repository.
pub(crate) async fn observe(inner: &Inner) -> Fleet {
    let stacks_listed_at = tokio::time::Instant::now();
    let owner = inner.setup.owner.as_str();
    let mut stack_pages = 0;
    let stacks = inner.aws.list_stacks().await.map(|listing| {
        stack_pages = listing.pages;
        listing.stacks.into_iter().filter(|s| s.tag(tags::OWNER) == Some(owner)).map(|s| (s.name.clone(), s)).collect()
    });
    let mut zones: HashMap<String, Result<HashMap<String, MarkedName>, String>> = HashMap::new();
    let mut dns = BTreeMap::new();
    let mut listings = BTreeMap::new();
    for (name, repo) in &inner.setup.repos {
        let zone = repo.zone.as_str().to_owned();
        if !zones.contains_key(&zone) {
            let read = async {
                let id = inner.zone_id(repo).await.map_err(|e| e.to_string())?;
                let names = inner.aws.marked_names(&id).await.map_err(|e| e.to_string())?;
                Ok::<_, String>(names.into_iter().map(|m| (m.name.clone(), m)).collect())
            };
            zones.insert(zone.clone(), read.await);
        }
        dns.insert(name.clone(), zones[&zone].clone());
        listings.insert(name.clone(), listing(inner.github.list_branches(name).await));
    }
    Fleet { stacks, stacks_listed_at, stack_pages, dns, listings }
}

fn listing(l: Result<BranchListing, GithubError>) -> Result<HashMap<BranchName, CommitSha>, String> {
    let l = l.map_err(|e| e.to_string())?;
    if l.branches.is_empty() {
        // Every repository has at least its default branch: an empty list is a fault, not an answer.
        return Err("GitHub listed no branches at all".to_owned());
    }
    Ok(l.branches.into_iter().collect())
}

/// The environments of one repository whose branches a listing must show: wanted, provisioned or on
/// the way. The share of these a single pass may find missing is bounded.
pub(crate) fn expects_branch(env: &EnvRecord) -> bool {
    env.desired != Desired::Absent
        && !matches!(env.status, Status::Deleted | Status::Skipped)
        && !env.branch.is_no_infra()
}

/// The most environments of `live` (those [`expects_branch`]) that one pass may find gone before it trusts nothing: a share, but
/// never fewer than `floor`.
pub(crate) fn removal_limit(live: usize, max_share: f64, floor: usize) -> usize {
    ((live as f64 * max_share).floor() as usize).max(floor)
}

/// Why the environment needs a reconcile, or `None` when what the fleet shows agrees with the record.
/// An observation that failed (`None` for that part) shows no difference: the next pass looks again.
pub(crate) fn differs(
    env: &EnvRecord,
    owner: &str,
    head: Option<Option<&CommitSha>>,
    stack: Option<Option<&Stack>>,
    dns: Option<Option<&MarkedName>>,
) -> Option<&'static str> {
    let wanted = env.desired != Desired::Absent;
    if env.branch.is_no_infra() {
        let settled = if wanted { Status::Skipped } else { Status::Deleted };
        return (env.status != settled).then_some("a -no-infra branch to record");
    }
    if matches!(env.status, Status::Pending | Status::Provisioning | Status::Deleting) {
        return Some("work under way");
    }
    // Over its repository's cap: looked at again (a database count, no call) until there is room.
    if env.status == Status::Skipped && wanted {
        return Some("skipped over the cap");
    }
    let expired = env.expired_at.is_some();
    match (head, wanted) {
        (Some(Some(_)), false) if !expired => return Some("the branch is listed again"),
        (Some(Some(h)), true) if !expired && env.desired != (Desired::Present { sha: Some(h.clone()) }) => {
            return Some("the branch moved (a push was missed)");
        }
        (Some(None), true) if env.status != Status::Deleted && !env.keep => {
            return Some("the listing lacks the branch");
        }
        _ => {}
    }
    match env.status {
        Status::Ready => {
            // Asked for something else while it looked settled (the queue that held it was lost in a
            // restart, say): a deletion, an expiry, another commit.
            let desired_sha = match &env.desired {
                Desired::Present { sha } => sha.as_ref(),
                Desired::Absent => None,
            };
            if !wanted || expired || desired_sha.is_some_and(|d| Some(d) != env.deployed_sha.as_ref()) {
                return Some("asked for a change not yet made");
            }
            if env.seed_pending {
                return Some("seeding asked for and not done");
            }
            let stack = stack?;
            let Some(s) = stack else { return Some("its stack is gone") };
            if s.tag(tags::OWNER) != Some(owner) || s.tag(tags::ENV) != Some(env.env_key.as_str()) {
                return Some("its stack is not ours");
            }
            let deployed = env.deployed_sha.as_ref().map(CommitSha::as_str);
            if !s.stack_status().updatable() || s.tag(tags::SHA) != deployed {
                return Some("its stack changed");
            }
            match dns {
                Some(None) => Some("its DNS name is gone"),
                Some(Some(m)) if m.owner != owner || !same_name(m.target.as_deref(), s.outputs.get("Endpoint")) => {
                    Some("its DNS name points elsewhere")
                }
                _ => None,
            }
        }
        // A teardown that gave up, or a record that says gone while a stack remains: it costs money.
        Status::Failed | Status::Deleted if !wanted || expired => stack.flatten().map(|_| "a stack remains"),
        _ => None,
    }
}

/// DNS names compare without case and without the final dot, as Route53 and `upsert_dns` do.
fn same_name(a: Option<&str>, b: Option<&String>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.trim_end_matches('.').eq_ignore_ascii_case(b.trim_end_matches('.')),
        _ => false,
    }
}

impl Inner {
    /// One pass of the fleet observer: enqueues what differs; returns how many it enqueued, and whether it
    /// saw everything (the stacks, every repository's branches and DNS names, each listing trusted).
    pub(crate) async fn resync_fleet(&self) -> Result<(usize, bool), ReconcileError> {
        let fleet = observe(self).await;
        let envs = self.store.list().await?;
        let owner = self.setup.owner.as_str();
        if let Err(e) = &fleet.stacks {
            tracing::warn!(error = %e, "cannot list stacks: stacks are compared at the next pass");
        }
        let mut complete = fleet.stacks.is_ok() && fleet.dns.values().all(Result::is_ok);
        let mut trusted: BTreeMap<&RepoName, &HashMap<BranchName, CommitSha>> = BTreeMap::new();
        for (repo, listing) in &fleet.listings {
            match listing {
                Err(e) => {
                    complete = false;
                    tracing::warn!(%repo, error = %e, "cannot list branches: nothing is taken as gone");
                }
                Ok(branches) => {
                    let live: Vec<_> = envs.iter().filter(|e| &e.repo == repo && expects_branch(e)).collect();
                    let missing = live.iter().filter(|e| !branches.contains_key(&e.branch)).count();
                    let limit = removal_limit(live.len(), self.setup.reaper.max_share, self.setup.reaper.min_removals);
                    if missing > limit {
                        complete = false;
                        tracing::warn!(%repo, missing, live = live.len(), "the listing lacks too many branches to be trusted");
                    } else {
                        trusted.insert(repo, branches);
                    }
                }
            }
        }
        let now = previewd_store::now_ms();
        let mut enqueued = 0;
        for env in &envs {
            let head = trusted.get(&env.repo).map(|b| b.get(&env.branch));
            if let Some(h) = head {
                // Evidence for the grace period: when a trusted listing first lacked the branch.
                if h.is_some() && env.missing_since.is_some() {
                    self.store.mark_seen(env.id).await?;
                } else if h.is_none() && expects_branch(env) && env.missing_since.is_none() {
                    self.store.mark_missing(env.id, now).await?;
                }
            }
            let stack = fleet.stacks.as_ref().ok().map(|s| s.get(&env.stack_name));
            let dns = match fleet.dns.get(&env.repo) {
                Some(Ok(names)) => Some(names.get(&env.dns_name.to_ascii_lowercase())),
                _ => None,
            };
            if let Some(why) = differs(env, owner, head, stack, dns) {
                tracing::debug!(repo = %env.repo, branch = %env.branch, why, "resync: differs");
                self.queue.enqueue_in(env.id, previewd_store::Lane::Background, std::time::Duration::ZERO).await?;
                enqueued += 1;
            }
        }
        Ok((enqueued, complete))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use previewd_domain::{DnsZone, EnvNames, OwnerId};

    use super::*;

    fn sha(c: char) -> CommitSha {
        CommitSha::new(&c.to_string().repeat(40)).expect("sha")
    }

    fn env(status: Status, desired: Desired) -> EnvRecord {
        let repo = RepoName::new("acme/shop").expect("repo");
        let branch = BranchName::new("feature/x").expect("branch");
        let names = EnvNames::new(
            &OwnerId::new("me").expect("owner"),
            &repo,
            &branch,
            &DnsZone::new("p.example.com").expect("zone"),
        );
        EnvRecord {
            id: 1,
            repo,
            repo_display: None,
            branch,
            env_key: names.env_key,
            stack_name: names.stack_name,
            dns_name: names.dns_name,
            desired,
            desired_seq: 1,
            desired_at: 0,
            status,
            deployed_sha: Some(sha('a')),
            stack_id: None,
            url: None,
            last_error: None,
            rule_priority: None,
            seeded_at: None,
            attempts: 0,
            retries: 0,
            missing_since: None,
            keep: false,
            pushed_at: None,
            expired_at: None,
            seed_pending: false,
            seed_requested_at: None,
            seed_step: 0,
            seed_task: None,
            seed_log: Vec::new(),
            observed_rev: 0,
            feedback_due: None,
            feedback_retries: 0,
            feedback_error: None,
            deployment: None,
            lease_epoch: 0,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn stack(e: &EnvRecord, status: &str, sha_tag: &str) -> Stack {
        Stack {
            id: "id".into(),
            name: e.stack_name.clone(),
            status: status.into(),
            reason: None,
            created_at: None,
            updated_at: None,
            tags: BTreeMap::from([
                (tags::OWNER.to_owned(), "me".to_owned()),
                (tags::ENV.to_owned(), e.env_key.to_string()),
                (tags::SHA.to_owned(), sha_tag.to_owned()),
            ]),
            outputs: BTreeMap::from([("Endpoint".to_owned(), "lb.example.com".to_owned())]),
        }
    }

    fn marked(e: &EnvRecord, target: &str) -> MarkedName {
        MarkedName {
            name: e.dns_name.clone(),
            owner: "me".into(),
            repo: e.repo.to_string(),
            env_key: e.env_key.to_string(),
            target: Some(target.into()),
        }
    }

    #[test]
    fn a_settled_fleet_shows_no_difference() {
        let a = sha('a');
        let ready = env(Status::Ready, Desired::Present { sha: Some(a.clone()) });
        let s = stack(&ready, "UPDATE_COMPLETE", a.as_str());
        let m = marked(&ready, "lb.example.com.");
        assert_eq!(differs(&ready, "me", Some(Some(&a)), Some(Some(&s)), Some(Some(&m))), None);
        // Unknown parts (a failed observation) show nothing either.
        assert_eq!(differs(&ready, "me", None, None, None), None);
        let failed = env(Status::Failed, Desired::Present { sha: Some(a.clone()) });
        assert_eq!(
            differs(&failed, "me", Some(Some(&a)), Some(Some(&s)), Some(None)),
            None,
            "a failure waits for a person"
        );
        let gone = env(Status::Deleted, Desired::Absent);
        assert_eq!(differs(&gone, "me", Some(None), Some(None), Some(None)), None);
    }

    #[test]
    fn every_difference_is_found() {
        let (a, b) = (sha('a'), sha('b'));
        let ready = env(Status::Ready, Desired::Present { sha: Some(a.clone()) });
        let s = stack(&ready, "UPDATE_COMPLETE", a.as_str());
        let m = marked(&ready, "lb.example.com");
        let ok_dns = Some(Some(&m));
        assert!(differs(&ready, "me", Some(Some(&b)), Some(Some(&s)), ok_dns).is_some(), "missed push");
        assert!(differs(&ready, "me", Some(None), Some(Some(&s)), ok_dns).is_some(), "branch missing");
        assert!(differs(&ready, "me", Some(Some(&a)), Some(None), ok_dns).is_some(), "stack gone");
        let old = stack(&ready, "UPDATE_COMPLETE", b.as_str());
        assert!(differs(&ready, "me", Some(Some(&a)), Some(Some(&old)), ok_dns).is_some(), "stack at another commit");
        let rolled = stack(&ready, "UPDATE_ROLLBACK_FAILED", a.as_str());
        assert!(differs(&ready, "me", Some(Some(&a)), Some(Some(&rolled)), ok_dns).is_some(), "stack broken");
        assert!(differs(&ready, "me", Some(Some(&a)), Some(Some(&s)), Some(None)).is_some(), "DNS gone");
        let upper = marked(&ready, "LB.Example.com.");
        assert_eq!(
            differs(&ready, "me", Some(Some(&a)), Some(Some(&s)), Some(Some(&upper))),
            None,
            "DNS is case-blind"
        );
        let asked = env(Status::Ready, Desired::Present { sha: Some(b.clone()) });
        assert!(differs(&asked, "me", None, None, None).is_some(), "a push whose work was lost in a restart");
        let deleted = env(Status::Ready, Desired::Absent);
        assert!(differs(&deleted, "me", None, None, None).is_some(), "a deletion whose work was lost");
        let kept = previewd_store::EnvRecord { keep: true, ..ready.clone() };
        assert_eq!(differs(&kept, "me", Some(None), Some(Some(&s)), ok_dns), None, "a kept orphan costs nothing");
        let elsewhere = marked(&ready, "other.example.com");
        assert!(differs(&ready, "me", Some(Some(&a)), Some(Some(&s)), Some(Some(&elsewhere))).is_some(), "DNS moved");
        let failed_teardown = env(Status::Failed, Desired::Absent);
        assert!(differs(&failed_teardown, "me", Some(None), Some(Some(&s)), None).is_some(), "a stack left behind");
        let relisted = env(Status::Deleted, Desired::Absent);
        assert!(differs(&relisted, "me", Some(Some(&a)), Some(None), None).is_some(), "a late delete");
        for st in [Status::Pending, Status::Provisioning, Status::Deleting] {
            assert!(differs(&env(st, Desired::Absent), "me", None, None, None).is_some(), "{st} after a restart");
        }
    }

    #[test]
    fn the_removal_limit_has_a_floor() {
        assert_eq!(removal_limit(5, 0.5, 3), 3);
        assert_eq!(removal_limit(20, 0.5, 3), 10);
        assert_eq!(removal_limit(0, 0.5, 3), 3);
    }
}
