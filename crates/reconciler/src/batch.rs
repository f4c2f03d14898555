//! Requests that arrive close together share one call: the looks of environments waiting on
//! CloudFormation share one DescribeStacks listing, and DNS changes one ChangeResourceRecordSets per zone.
//! AWS limits both per account (Route53 takes a few changes a second; DescribeStacks is throttled
//! early), and a fleet whose environments change together would otherwise pay one call each.
//!
//! The first request of a batch opens it; whatever joins within the window rides along; the batch is
//! then served in a task of its own, so a caller that gives up (its lease lost, its step abandoned)
//! strands nobody else.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use previewd_cloud::{CloudError, DnsChange, Stack};
use tokio::sync::oneshot;

/// Looks batched together at most (a listing answers any number; this bounds one batch's answer).
pub(crate) const MAX_LOOKS: usize = 1_000;
/// Names changed in one ChangeResourceRecordSets at most: two records each, of Route53's 1,000.
pub(crate) const MAX_DNS_CHANGES: usize = 100;

pub(crate) type Looks = Batcher<(), String, Result<Option<Stack>, CloudError>>;
pub(crate) type DnsChanges = Batcher<String, DnsChange, Result<(), CloudError>>;

type Waiting<T, R> = Vec<(T, oneshot::Sender<R>)>;
/// Each open batch, by key, with the id its window's timer knows it by.
type Open<K, T, R> = Arc<Mutex<HashMap<K, (u64, Waiting<T, R>)>>>;

/// Open batches by key (a zone, say); cheap to clone.
pub(crate) struct Batcher<K, T, R> {
    open: Open<K, T, R>,
    /// Requests in one batch at most; a full batch is served at once.
    max: usize,
}

impl<K, T, R> Clone for Batcher<K, T, R> {
    fn clone(&self) -> Self {
        Self { open: self.open.clone(), max: self.max }
    }
}

impl<K, T, R> Batcher<K, T, R>
where
    K: Hash + Eq + Clone + Send + 'static,
    T: Send + 'static,
    R: Send + 'static,
{
    pub(crate) fn new(max: usize) -> Self {
        Self { open: Arc::new(Mutex::new(HashMap::new())), max: max.max(1) }
    }

    /// `item`'s answer, from `serve` called with every item of its batch (answers in the same order).
    /// `serve` is the opener's: every caller passes one, and one serves the batch. `None` if the batch's
    /// server failed to answer (it panicked).
    pub(crate) async fn submit<F, Fut>(&self, key: K, item: T, window: Duration, serve: F) -> Option<R>
    where
        F: FnOnce(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let (opened, full) = {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            let opened = !open.contains_key(&key);
            let batch = open.entry(key.clone()).or_insert_with(|| (fastrand::u64(..), Vec::new()));
            batch.1.push((item, reply));
            let id = batch.0;
            let full = (batch.1.len() >= self.max).then(|| open.remove(&key)).flatten();
            (opened.then_some(id), full)
        };
        if let Some((_, batch)) = full {
            tokio::spawn(answer_all(batch, serve));
        } else if let Some(id) = opened {
            let open = self.open.clone();
            tokio::spawn(async move {
                tokio::time::sleep(window).await;
                let batch = {
                    let mut open = open.lock().unwrap_or_else(|p| p.into_inner());
                    // Served already if it filled up (and another may be open under the key by now).
                    match open.get(&key) {
                        Some((current, _)) if *current == id => open.remove(&key).map(|(_, b)| b),
                        _ => None,
                    }
                };
                if let Some(batch) = batch {
                    answer_all(batch, serve).await;
                }
            });
        }
        answer.await.ok()
    }
}

async fn answer_all<T, R, F, Fut>(batch: Waiting<T, R>, serve: F)
where
    F: FnOnce(Vec<T>) -> Fut,
    Fut: Future<Output = Vec<R>>,
{
    // A caller that gave up (its lease lost, its step abandoned) asks for nothing any more.
    let (items, replies): (Vec<T>, Vec<oneshot::Sender<R>>) =
        batch.into_iter().filter(|(_, reply)| !reply.is_closed()).unzip();
    if items.is_empty() {
        return;
    }
    for (reply, r) in replies.into_iter().zip(serve(items).await) {
        let _ = reply.send(r);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test]
    async fn requests_within_the_window_share_one_call_and_each_hears_its_own_answer() {
        let batcher: Batcher<&str, u32, u32> = Batcher::new(3);
        let calls = Arc::new(AtomicUsize::new(0));
        let ask = |key: &'static str, n: u32| {
            let (batcher, calls) = (batcher.clone(), calls.clone());
            tokio::spawn(async move {
                batcher
                    .submit(key, n, Duration::from_millis(50), move |items| async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        items.into_iter().map(|i| i * 10).collect()
                    })
                    .await
            })
        };
        // Two keys; the first fills up (3) and is served at once, its fourth request opens another batch.
        let asked: Vec<_> =
            [("a", 1), ("a", 2), ("b", 3), ("a", 4), ("a", 5)].into_iter().map(|(k, n)| ask(k, n)).collect();
        let mut answers = Vec::new();
        for a in asked {
            answers.push(a.await.expect("task").expect("answered"));
        }
        assert_eq!(answers, [10, 20, 30, 40, 50]);
        assert_eq!(calls.load(Ordering::SeqCst), 3, "a: two batches (one full), b: one");
    }

    #[tokio::test]
    async fn a_caller_that_gives_up_strands_nobody_and_asks_for_nothing() {
        let batcher: Batcher<(), u32, u32> = Batcher::new(10);
        let served = Arc::new(Mutex::new(Vec::new()));
        let serve = {
            let served = served.clone();
            move |items: Vec<u32>| async move {
                served.lock().expect("lock").extend(items.iter().copied());
                items
            }
        };
        let opener = batcher.submit((), 1, Duration::from_millis(50), serve.clone());
        // The opener is dropped before the window ends; the one that joined still hears back, and the
        // opener's request is not made.
        let joined = {
            let batcher = batcher.clone();
            tokio::spawn(async move { batcher.submit((), 2, Duration::from_millis(50), serve).await })
        };
        let _ = tokio::time::timeout(Duration::from_millis(5), opener).await;
        assert_eq!(joined.await.expect("task"), Some(2));
        assert_eq!(*served.lock().expect("lock"), [2]);
    }
}
