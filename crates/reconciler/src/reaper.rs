//! The reaper: hourly (or on `previewd reap`), it finds what previewd left behind and removes it, but only
//! on proof. A branch is orphaned only when a complete listing (every page, HTTP 200, JSON) lacks it
//! and a direct look-up answers 404 while the repository is visible; it is removed only once it has
//! been orphaned for the grace period. Any error, an empty listing, or a pass that would remove more
//! than a share of a repository's environments removes nothing in that repository and is reported.
//! Removal is the reconciler's one teardown path; the reaper only records the verdict and enqueues.
//! Stacks carrying this installation's owner tag but no record are adopted (and then judged like any
//! other environment); names carrying our DNS marker whose environment is gone are removed. Nothing
//! without our tag or marker is ever touched.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use previewd_cloud::{OwnershipMarker, Stack};
use previewd_domain::{
    BranchName, CommitSha, Desired, EnvNames, EventKind, PassOutcome as Outcome, RepoName, Status, tags,
};
use previewd_github::BranchHead;
use previewd_store::{DesiredChange, EnvRecord, Lane, ReaperPassRecord, now_ms};
use serde::Serialize;

use crate::context::{Inner, humanize};
use crate::fleet::{self, expects_branch, removal_limit};

/// The setting that gives an environment a time-to-live since its last push.
pub const TTL_SETTING: &str = "lifecycle.ttl";

/// The store lock that keeps reaper passes one at a time, across replicas and `previewd reap`.
pub(crate) const LOCK: &str = "reaper";
/// A pass holds the lock at most this long; one that died is overtaken after it.
const LOCK_TTL: Duration = Duration::from_secs(15 * 60);

/// What the reaper does about one thing it looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Orphaned for the grace period: torn down through the reconciler.
    Remove,
    /// Orphaned, but not yet for the grace period.
    Wait,
    /// Its branch exists, or it is kept on purpose.
    Keep,
    /// An owner-tagged stack without a record: recorded, and judged like any environment from now on.
    Adopt,
    /// A DNS name with our marker whose environment is gone: removed.
    RemoveDns,
    /// Nothing is decided for this repository: the reason says why.
    Refuse,
}

impl Verdict {
    /// The verdict as the API, the command and the logs say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Remove => "remove",
            Verdict::Wait => "wait",
            Verdict::Keep => "keep",
            Verdict::Adopt => "adopt",
            Verdict::RemoveDns => "remove_dns",
            Verdict::Refuse => "refuse",
        }
    }
}

/// One decision and its reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    pub repo: String,
    /// The branch, or the DNS name or stack the decision is about.
    pub subject: String,
    pub verdict: Verdict,
    pub reason: String,
    #[serde(skip)]
    pub env_id: Option<i64>,
}

/// What one pass decided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    pub outcome: Outcome,
    pub dry_run: bool,
    pub decisions: Vec<Decision>,
    /// One line for logs and the dashboard.
    pub summary: String,
}

struct Pass<'a> {
    inner: &'a Inner,
    dry_run: bool,
    now: i64,
    decisions: Vec<Decision>,
}

impl Pass<'_> {
    fn decide(&mut self, repo: &str, subject: &str, env_id: Option<i64>, verdict: Verdict, reason: String) {
        tracing::info!(repo, subject, verdict = verdict.as_str(), reason, dry_run = self.dry_run, "reaper");
        self.decisions.push(Decision { repo: repo.to_owned(), subject: subject.to_owned(), verdict, reason, env_id });
    }

    fn refuse(&mut self, repo: &RepoName, reason: String) {
        tracing::warn!(%repo, reason, "reaper: nothing removed in this repository");
        self.decide(repo.as_str(), repo.as_str(), None, Verdict::Refuse, reason);
    }
}

impl Inner {
    /// One reaper pass. In a dry run nothing is written, not even the evidence for the grace period.
    pub(crate) async fn reap(&self, dry_run: bool) -> Report {
        let started = now_ms();
        // One holder per pass, so two passes of one process (or two replicas on one host) exclude each other.
        let holder = &format!("{}/reaper-{:016x}", self.setup.instance, fastrand::u64(..));
        let until = started + LOCK_TTL.as_millis() as i64;
        let mut pass = Pass { inner: self, dry_run, now: started, decisions: Vec::new() };
        let outcome = match self.store.try_lock(LOCK, holder, until).await {
            Ok(true) => {
                let outcome = match pass.run().await {
                    Ok(()) => None,
                    Err(e) => {
                        tracing::warn!(error = %e, "reaper pass failed");
                        pass.decide("", "", None, Verdict::Refuse, format!("the pass failed: {e}"));
                        Some(Outcome::Failed)
                    }
                };
                if let Err(e) = self.store.unlock(LOCK, holder).await {
                    tracing::warn!(error = %e, "cannot release the reaper lock; it expires by itself");
                }
                outcome
            }
            Ok(false) => {
                pass.decide("", "", None, Verdict::Refuse, "another reaper pass is running: nothing done".into());
                Some(Outcome::Failed)
            }
            Err(e) => {
                pass.decide("", "", None, Verdict::Refuse, format!("cannot take the reaper lock: {e}"));
                Some(Outcome::Failed)
            }
        };
        let decisions = pass.decisions;
        let outcome = outcome.unwrap_or_else(|| {
            if decisions.iter().any(|d| d.verdict == Verdict::Refuse) {
                Outcome::Refused
            } else if decisions.iter().any(|d| matches!(d.verdict, Verdict::Remove | Verdict::RemoveDns)) {
                Outcome::Removed
            } else {
                Outcome::Clean
            }
        });
        let count = |v: Verdict| decisions.iter().filter(|d| d.verdict == v).count();
        if !dry_run {
            previewd_metrics::METRICS.reaper_removals.inc_by(count(Verdict::Remove) as u64);
        }
        let mut summary = format!(
            "{}{}: {} removed, {} waiting for the grace, {} adopted, {} dangling DNS names removed",
            if dry_run { "dry run, " } else { "" },
            outcome.as_str(),
            count(Verdict::Remove),
            count(Verdict::Wait),
            count(Verdict::Adopt),
            count(Verdict::RemoveDns),
        );
        for d in decisions.iter().filter(|d| d.verdict == Verdict::Refuse) {
            summary.push_str(&format!("; refused {}: {}", d.repo, d.reason));
        }
        let report = Report { outcome, dry_run, decisions, summary };
        let record = ReaperPassRecord {
            id: 0,
            started_at: started,
            finished_at: now_ms(),
            dry_run,
            outcome,
            summary: report.summary.clone(),
            decisions: serde_json::to_string(&report.decisions).unwrap_or_default(),
        };
        if let Err(e) = self.store.record_reaper_pass(&record).await {
            tracing::warn!(error = %e, "cannot record the reaper pass");
        }
        tracing::info!(outcome = outcome.as_str(), summary = %report.summary, "reaper pass");
        report
    }
}

impl Pass<'_> {
    async fn run(&mut self) -> Result<(), crate::error::ReconcileError> {
        let inner = self.inner;
        let fleet = fleet::observe(inner).await;
        let stacks = fleet
            .stacks
            .as_ref()
            .map_err(|e| crate::error::ReconcileError::Transient(format!("cannot list stacks: {e}")))?;
        // The teardowns this pass asks for start from its listing (see `crate::sightings`): kept from
        // before the first is asked for, then only theirs.
        inner.sightings.listed(stacks.values(), fleet.stack_pages, fleet.stacks_listed_at);
        let mut envs = inner.store.list().await?;
        let judged = self.judge_all(&fleet, stacks, &mut envs).await;
        let removed: HashSet<&str> = self
            .decisions
            .iter()
            .filter(|d| d.verdict == Verdict::Remove)
            .filter_map(|d| envs.iter().find(|e| Some(e.id) == d.env_id))
            .map(|e| e.stack_name.as_str())
            .collect();
        inner.sightings.retain(|name| removed.contains(name));
        judged
    }

    async fn judge_all(
        &mut self,
        fleet: &fleet::Fleet,
        stacks: &std::collections::HashMap<String, Stack>,
        envs: &mut Vec<EnvRecord>,
    ) -> Result<(), crate::error::ReconcileError> {
        self.adopt(stacks, &fleet.listings, envs).await?;
        for (repo, listing) in &fleet.listings {
            let repo_envs: Vec<&EnvRecord> = envs.iter().filter(|e| &e.repo == repo && expects_branch(e)).collect();
            match listing {
                Err(e) => self.refuse(repo, format!("cannot list branches: {e}")),
                Ok(branches) => self.judge(repo, branches, &repo_envs).await?,
            }
        }
        self.dangling_dns(fleet, envs).await
    }

    /// Owner-tagged environment stacks without a record (a lost database, a crash between CreateStack and
    /// its record) are recorded under the branch they were made for, when that branch can be named
    /// exactly: the stack's `previewd:branch-sha256` tag is the SHA-256 of the exact name, matched against
    /// the `previewd:branch` tag (exact where the name fits a tag) or else against a complete listing of
    /// the repository's branches; and the names that branch gives must be the stack's. Anything less
    /// (no identity tag, as on stacks made before it existed; a lossy tag and no match in the listing; no
    /// complete listing) is reported and left alone: adopting under a look-alike branch would find it
    /// absent and tear down a live environment.
    async fn adopt(
        &mut self,
        stacks: &std::collections::HashMap<String, Stack>,
        listings: &BTreeMap<RepoName, Result<std::collections::HashMap<BranchName, CommitSha>, String>>,
        envs: &mut Vec<EnvRecord>,
    ) -> Result<(), crate::error::ReconcileError> {
        let recorded: HashSet<&str> = envs.iter().map(|e| e.stack_name.as_str()).collect();
        let mut adopted = Vec::new();
        // Each repository's listed branches by identity, hashed once a pass and only when a stack needs it.
        let mut identities: BTreeMap<RepoName, Result<std::collections::HashMap<String, BranchName>, String>> =
            BTreeMap::new();
        let mut stacks: Vec<&Stack> = stacks.values().collect();
        stacks.sort_by(|a, b| a.name.cmp(&b.name));
        for s in stacks {
            if recorded.contains(s.name.as_str()) || s.tag(tags::ENV).is_none() {
                continue; // recorded, or an application stack
            }
            let Some(repo) = s.tag(tags::REPO).and_then(|r| RepoName::new(r).ok()) else {
                let why = "owner-tagged stack whose tags name no repository: left for a person".to_owned();
                self.decide("", &s.name, None, Verdict::Refuse, why);
                continue;
            };
            let Some(setup) = self.inner.setup.repos.get(&repo) else { continue };
            let listed = identities.entry(repo.clone()).or_insert_with(|| match listings.get(&repo) {
                Some(Ok(branches)) => Ok(branches.keys().map(|b| (b.identity(), b.clone())).collect()),
                Some(Err(e)) => Err(e.clone()),
                None => Err("its repository was not listed".to_owned()),
            });
            let branch = match exact_branch(s, listed) {
                Ok(branch) => branch,
                Err(why) => {
                    self.decide(repo.as_str(), &s.name, None, Verdict::Refuse, format!("{why}: left for a person"));
                    continue;
                }
            };
            let sha = s.tag(tags::SHA).and_then(|t| CommitSha::new(t).ok());
            // Its names are the readable or the hashed ones its branch gives, exactly; anything else is
            // not a stack previewd made for this branch.
            let owner = &self.inner.setup.owner;
            let candidates = EnvNames::candidates(owner, &repo, &branch, &setup.zone);
            let expected = candidates[0].stack_name.clone();
            let Some(names) =
                candidates.into_iter().find(|n| n.stack_name == s.name && s.tag(tags::ENV) == Some(n.env_key.as_str()))
            else {
                let why = format!("its tags name {repo}:{branch}, whose stack would be {expected}: left for a person");
                self.decide(repo.as_str(), &s.name, None, Verdict::Refuse, why);
                continue;
            };
            let reason = format!("stack {} carries our owner tag but has no record: adopted", s.name);
            if !self.dry_run {
                let change = DesiredChange {
                    repo: repo.clone(),
                    repo_display: None,
                    branch: branch.clone(),
                    names,
                    fallback: None,
                    desired: Desired::Present { sha },
                    reason: format!("reaper: {reason}"),
                };
                let id = self.inner.store.record_desired(&change).await?;
                if let Some(env) = self.inner.store.get(id).await? {
                    adopted.push(env);
                }
            }
            self.decide(repo.as_str(), branch.as_str(), None, Verdict::Adopt, reason);
        }
        envs.extend(adopted);
        Ok(())
    }

    /// Judges one repository's environments against a complete listing.
    async fn judge(
        &mut self,
        repo: &RepoName,
        branches: &std::collections::HashMap<BranchName, CommitSha>,
        envs: &[&EnvRecord],
    ) -> Result<(), crate::error::ReconcileError> {
        let inner = self.inner;
        let mut orphans = Vec::new();
        for env in envs.iter().filter(|e| !branches.contains_key(&e.branch)) {
            // The listing may lag or race a push: a direct look-up must answer 404 as well.
            match inner.github.branch_head(repo, &env.branch).await {
                Ok(BranchHead::At(_)) => {
                    if !self.dry_run && env.missing_since.is_some() {
                        inner.store.mark_seen(env.id).await?;
                    }
                    self.decide(
                        repo.as_str(),
                        env.branch.as_str(),
                        Some(env.id),
                        Verdict::Keep,
                        "not in the listing, but GitHub shows the branch".into(),
                    );
                }
                // The listing in hand is complete and lacks it: a 404, or a 301 to the branch's new name.
                Ok(BranchHead::Missing | BranchHead::Renamed(_)) => orphans.push(*env),
                Err(e) => {
                    self.refuse(repo, format!("cannot look up branch {}: {e}", env.branch));
                    return Ok(());
                }
            }
        }
        if !orphans.is_empty() {
            match inner.github.repo_visible(repo).await {
                Ok(true) => {}
                Ok(false) => {
                    self.refuse(repo, "GitHub does not show the repository to previewd's token (404)".into());
                    return Ok(());
                }
                Err(e) => {
                    self.refuse(repo, format!("cannot look up the repository: {e}"));
                    return Ok(());
                }
            }
        }
        let mut expiries = Vec::new();
        for env in envs.iter().filter(|e| branches.contains_key(&e.branch) && !e.keep && e.expired_at.is_none()) {
            if let Some(why) = self.expiry(repo, env)? {
                expiries.push((*env, why));
            }
        }
        let limit = removal_limit(envs.len(), inner.setup.reaper.max_share, inner.setup.reaper.min_removals);
        if orphans.len() + expiries.len() > limit {
            let why = format!(
                "{} of {} environments look orphaned and {} are past their time-to-live, more than the {} one pass \
                 may remove: is GitHub answering oddly, or a time-to-live mistaken?",
                orphans.len(),
                envs.len(),
                expiries.len(),
                limit
            );
            self.refuse(repo, why);
            return Ok(());
        }
        let grace = inner.setup.reaper.grace.as_millis() as i64;
        for (env, why) in expiries {
            if !self.dry_run {
                if !inner.store.expire(env.id, env.desired_seq, &format!("reaper: {why}")).await? {
                    continue; // pushed during the pass: alive
                }
                inner.queue.enqueue_in(env.id, Lane::Background, Duration::ZERO).await?;
            }
            self.decide(repo.as_str(), env.branch.as_str(), Some(env.id), Verdict::Remove, why);
        }
        for env in orphans {
            let subject = env.branch.as_str();
            let since = env.missing_since.unwrap_or(self.now).min(self.now);
            if env.keep {
                self.decide(
                    repo.as_str(),
                    subject,
                    Some(env.id),
                    Verdict::Keep,
                    "orphaned, but kept on purpose".into(),
                );
            } else if self.now - since >= grace {
                let why = format!(
                    "orphaned for {}: a complete listing lacks the branch and GitHub answers 404",
                    humanize(self.now - since)
                );
                if !self.dry_run {
                    let reason = format!("reaper: {why}");
                    if !inner.store.set_desired(env.id, env.desired_seq, &Desired::Absent, &reason).await? {
                        let why = "a webhook arrived during the pass: it wins".to_owned();
                        self.decide(repo.as_str(), subject, Some(env.id), Verdict::Keep, why);
                        continue;
                    }
                    inner.queue.enqueue_in(env.id, Lane::Background, Duration::ZERO).await?;
                }
                self.decide(repo.as_str(), subject, Some(env.id), Verdict::Remove, why);
            } else {
                if !self.dry_run && env.missing_since.is_none() {
                    inner.store.mark_missing(env.id, self.now).await?;
                }
                let why = format!(
                    "orphaned for {}; removed once that reaches the grace of {}",
                    humanize(self.now - since),
                    humanize(grace)
                );
                self.decide(repo.as_str(), subject, Some(env.id), Verdict::Wait, why);
            }
        }
        if !self.dry_run {
            for d in self.decisions.iter().filter(|d| d.repo == repo.as_str() && d.env_id.is_some()) {
                if let Some(id) = d.env_id {
                    inner
                        .store
                        .add_event(id, EventKind::Reaper, &format!("{:?}: {}", d.verdict, d.reason).to_lowercase())
                        .await?;
                }
            }
        }
        Ok(())
    }

    /// Why an environment whose branch exists is past its time-to-live (the `lifecycle.ttl` setting, from
    /// its blueprint or a branch pattern; none by default), if it is: then it is torn down until its next
    /// push.
    fn expiry(&mut self, repo: &RepoName, env: &EnvRecord) -> Result<Option<String>, crate::error::ReconcileError> {
        let inner = self.inner;
        let Some(setup) = inner.setup.repos.get(repo) else { return Ok(None) };
        let Some(blueprint) = inner.blueprints.get(&setup.blueprint) else { return Ok(None) };
        let settings =
            blueprint.environment_settings(previewd_domain::Stage::Staging, &env.branch, &setup.layers, None)?;
        let Some(setting) = settings.get(TTL_SETTING) else { return Ok(None) };
        let Some(text) = setting.value.as_str().filter(|t| !t.trim().is_empty()) else { return Ok(None) };
        let ttl = match humantime::parse_duration(text) {
            Ok(d) => d.as_millis() as i64,
            Err(e) => {
                let why = format!(
                    "{TTL_SETTING} = {text:?} (set by {}) is not a duration such as 7d: {e}",
                    setting.origin.source
                );
                self.decide(repo.as_str(), env.branch.as_str(), Some(env.id), Verdict::Keep, why);
                return Ok(None);
            }
        };
        let since = env.pushed_at.unwrap_or(env.created_at);
        Ok((self.now - since >= ttl).then(|| {
            format!(
                "no push for {}, past its time-to-live of {text} (set by {}): torn down until the next push",
                humanize(self.now - since),
                setting.origin.source
            )
        }))
    }

    /// Names carrying our marker whose environment no longer exists invite a subdomain takeover: they
    /// go. Names without the marker, or with another owner's, are never touched.
    async fn dangling_dns(
        &mut self,
        fleet: &fleet::Fleet,
        envs: &[EnvRecord],
    ) -> Result<(), crate::error::ReconcileError> {
        let inner = self.inner;
        let owner = inner.setup.owner.as_str();
        let mut seen = HashSet::new();
        let by_key: BTreeMap<(String, String), &EnvRecord> =
            envs.iter().map(|e| ((e.repo.as_str().to_ascii_lowercase(), e.env_key.to_string()), e)).collect();
        // A stack of ours for that environment keeps its name, whatever the store says (a lost record).
        let Ok(stacks) = &fleet.stacks else { return Ok(()) };
        let stacked: HashSet<(String, String)> = stacks
            .values()
            .filter_map(|s| Some((s.tag(tags::REPO)?.to_ascii_lowercase(), s.tag(tags::ENV)?.to_owned())))
            .collect();
        for (repo, names) in &fleet.dns {
            let Ok(names) = names else { continue };
            let Some(setup) = inner.setup.repos.get(repo) else { continue };
            for m in names.values() {
                if m.owner != owner || !seen.insert(m.name.clone()) {
                    continue;
                }
                let key = (m.repo.to_ascii_lowercase(), m.env_key.clone());
                let env = by_key.get(&key);
                let gone = env.is_none_or(|e| e.status == Status::Deleted && e.desired == Desired::Absent)
                    && !stacked.contains(&key);
                if !gone {
                    continue;
                }
                let why =
                    format!("carries our marker for {}:{}, whose environment no longer exists", m.repo, m.env_key);
                if !self.dry_run {
                    let zone = inner.zone_id(setup).await?;
                    let marker = OwnershipMarker::new(&m.owner, &m.repo, &m.env_key);
                    inner.remove_name(&zone, &m.name, m.target.as_deref(), &marker).await?;
                }
                self.decide(&m.repo, &m.name, env.map(|e| e.id), Verdict::RemoveDns, why);
            }
        }
        Ok(())
    }
}

/// The branch an owner-tagged stack was made for, named exactly, or why it cannot be: its identity tag
/// must match the branch tag (where that holds the whole name) or one branch of a complete listing
/// (`listed`: the listing's branches by identity).
fn exact_branch(
    s: &Stack,
    listed: &Result<std::collections::HashMap<String, BranchName>, String>,
) -> Result<BranchName, String> {
    let Some(identity) = s.tag(tags::BRANCH_ID) else {
        return Err(format!(
            "owner-tagged stack {} has no {} tag (made before previewd recorded a branch's exact \
             identity), so its branch cannot be named exactly",
            s.name,
            tags::BRANCH_ID
        ));
    };
    if let Some(branch) = s.tag(tags::BRANCH).and_then(|b| BranchName::new(b).ok())
        && branch.identity() == identity
    {
        return Ok(branch);
    }
    match listed {
        Ok(branches) => branches.get(identity).cloned().ok_or_else(|| {
            format!(
                "owner-tagged stack {} names branch {:?} only in part, and no branch GitHub lists has its \
                 identity",
                s.name,
                s.tag(tags::BRANCH).unwrap_or("")
            )
        }),
        Err(e) => Err(format!("cannot name the branch of owner-tagged stack {}: {e}", s.name)),
    }
}

#[cfg(test)]
mod tests {
    use super::Verdict;

    #[test]
    fn a_verdict_reads_the_same_in_the_logs_as_in_the_api() {
        use Verdict::*;
        for v in [Remove, Wait, Keep, Adopt, RemoveDns, Refuse] {
            assert_eq!(serde_json::to_value(v).expect("json"), v.as_str(), "{v:?}");
        }
    }
}
