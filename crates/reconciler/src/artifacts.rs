//! Whether commits' images are in ECR yet, asked per repository, not per environment: every environment
//! waiting on one ECR repository registers its tag, and a look asks for all of them in one
//! `BatchGetImage` (100 tags a call); the others waiting then read that answer while it is fresh. Looks of
//! one repository take turns, so environments that wake together (their waits are aligned, see
//! [`artifact_delay`]) cost one call, however many are dispatched at once.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use previewd_cloud::CloudError;
use previewd_domain::EcrRepository;

/// An answer younger than this is read instead of asking again.
const FRESH: Duration = Duration::from_millis(1_500);
/// A tag nobody asked about for this long is no longer looked for (its environment went away).
const FORGET: Duration = Duration::from_secs(600);

/// What a look found of one tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Found {
    Present,
    Missing,
    /// ECR has no such repository (yet: CI may create it on its first build).
    NoRepository,
}

#[derive(Default)]
struct RepoLooks {
    /// Tags waited for, and when an environment last asked about each.
    waiting: HashMap<String, Instant>,
    /// The last answer: when, the tags it asked about, those present, and whether the repository exists.
    answered: Option<(Instant, HashSet<String>, HashSet<String>, bool)>,
}

/// Per ECR repository: the tags waited for and the last answer; cheap to share.
#[derive(Default)]
pub(crate) struct Images {
    repos: Mutex<HashMap<EcrRepository, Arc<tokio::sync::Mutex<RepoLooks>>>>,
}

impl Images {
    /// Whether `tag` is in `repo`, from a fresh answer that asked about it, or from a new look asking for
    /// every tag waited for in the repository (`fetch` makes it: the tags in, those present out).
    pub(crate) async fn look<F, Fut>(&self, repo: &EcrRepository, tag: &str, fetch: F) -> Result<Found, CloudError>
    where
        F: FnOnce(Vec<String>) -> Fut,
        Fut: Future<Output = Result<Option<HashSet<String>>, CloudError>>,
    {
        let looks = self.repos.lock().unwrap_or_else(|p| p.into_inner()).entry(repo.clone()).or_default().clone();
        let mut looks = looks.lock().await;
        let now = Instant::now();
        looks.waiting.insert(tag.to_owned(), now);
        looks.waiting.retain(|_, asked| now.duration_since(*asked) < FORGET);
        let cached = match &looks.answered {
            Some((at, asked, present, exists)) if now.duration_since(*at) < FRESH && asked.contains(tag) => {
                Some((*exists, present.contains(tag)))
            }
            _ => None,
        };
        if let Some((exists, here)) = cached {
            if here {
                // Found: its environment goes on, and it is not looked for again.
                looks.waiting.remove(tag);
            }
            return Ok(found(exists, here));
        }
        let mut tags: Vec<String> = looks.waiting.keys().cloned().collect();
        tags.sort();
        let answer = fetch(tags.clone()).await?;
        let exists = answer.is_some();
        let present = answer.unwrap_or_default();
        // Found: their environments go on, and they are not looked for again.
        looks.waiting.retain(|t, _| !present.contains(t));
        let here = present.contains(tag);
        looks.answered = Some((Instant::now(), tags.into_iter().collect(), present, exists));
        Ok(found(exists, here))
    }
}

fn found(exists: bool, present: bool) -> Found {
    match (exists, present) {
        (false, _) => Found::NoRepository,
        (true, true) => Found::Present,
        (true, false) => Found::Missing,
    }
}

/// How long an environment waiting for its artifact waits before it looks again, having waited `waited`:
/// often at first (a build's end is near), less often later, and always up to the next multiple of the
/// step on the clock, so every environment waiting in a repository wakes at the same moment and shares
/// one look.
pub(crate) fn artifact_delay(waited: Duration, now_ms: i64) -> Duration {
    let step_ms: i64 = match waited.as_secs() {
        0..120 => 2_000,
        120..600 => 5_000,
        600..1800 => 15_000,
        _ => 60_000,
    };
    Duration::from_millis((step_ms - now_ms.rem_euclid(step_ms)) as u64)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn repo() -> EcrRepository {
        EcrRepository { registry_id: "123456789012".into(), region: "us-east-1".into(), name: "web".into() }
    }

    #[tokio::test]
    async fn environments_waiting_together_share_one_look() {
        let images = Arc::new(Images::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let present: HashSet<String> = ["t7".to_owned()].into();
        // Fifty environments wait; each has asked once before (registering its tag), when none was there.
        for i in 0..50 {
            images.look(&repo(), &format!("t{i}"), |_| async { Ok(Some(HashSet::new())) }).await.expect("look");
        }
        tokio::time::sleep(FRESH).await;
        // They wake together, once t7 is built: one call answers all fifty.
        let mut looks = Vec::new();
        for i in 0..50 {
            let (images, calls, p) = (images.clone(), calls.clone(), present.clone());
            looks.push(tokio::spawn(async move {
                images
                    .look(&repo(), &format!("t{i}"), |tags| async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        assert_eq!(tags.len(), 50, "every tag waited for");
                        Ok(Some(p))
                    })
                    .await
            }));
        }
        let mut answers = Vec::new();
        for l in looks {
            answers.push(l.await.expect("task").expect("look"));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(answers.iter().filter(|f| **f == Found::Present).count(), 1);
        assert_eq!(answers.iter().filter(|f| **f == Found::Missing).count(), 49);
        // t7 read that answer and went on: it is not asked for again.
        tokio::time::sleep(FRESH).await;
        images
            .look(&repo(), "t0", |tags| async move {
                assert!(!tags.iter().any(|t| t == "t7") && tags.len() == 49, "{tags:?}");
                Ok(Some(HashSet::new()))
            })
            .await
            .expect("look");
    }

    #[tokio::test]
    async fn a_missing_repository_is_said_and_an_error_is_not_remembered() {
        let images = Images::default();
        let r = images.look(&repo(), "a", |_| async { Ok(None) }).await;
        assert_eq!(r.expect("look"), Found::NoRepository);
        let images = Images::default();
        let err = CloudError::Retryable { op: "BatchGetImage", code: "Throttling".into(), message: "slow".into() };
        assert!(images.look(&repo(), "a", |_| async { Err(err) }).await.is_err());
        let r = images.look(&repo(), "a", |_| async { Ok(Some(["a".to_owned()].into())) }).await;
        assert_eq!(r.expect("asked again"), Found::Present);
    }

    #[test]
    fn waits_end_on_shared_boundaries() {
        assert_eq!(artifact_delay(Duration::from_secs(10), 1_000_500), Duration::from_millis(1_500));
        assert_eq!(artifact_delay(Duration::from_secs(300), 1_000_500), Duration::from_millis(4_500));
        assert_eq!(artifact_delay(Duration::from_secs(7200), 60_000), Duration::from_millis(60_000));
    }
}
