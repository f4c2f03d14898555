//! A keyed delay queue: each environment id is in it at most once, is handed to at most one worker at a
//! time, and an id enqueued while it is being worked on is handed out again as soon as that work ends
//! (so a push during a reconcile is never lost, and many pushes coalesce into one more reconcile).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

#[derive(Debug, Default)]
struct Entry {
    /// When it is due; `None` while running and not asked for again.
    due: Option<Instant>,
    running: bool,
}

#[derive(Debug, Default)]
struct Inner {
    entries: Mutex<HashMap<i64, Entry>>,
    changed: Notify,
}

/// Cheap to clone; every clone is the same queue.
#[derive(Debug, Clone, Default)]
pub struct Queue {
    inner: Arc<Inner>,
}

impl Queue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Due now.
    pub fn enqueue(&self, id: i64) {
        self.enqueue_after(id, Duration::ZERO);
    }

    /// Due after `delay`, or sooner if it already was.
    pub fn enqueue_after(&self, id: i64, delay: Duration) {
        let due = Instant::now() + delay;
        {
            let mut entries = self.inner.entries.lock().unwrap_or_else(|p| p.into_inner());
            let e = entries.entry(id).or_default();
            e.due = Some(e.due.map_or(due, |d| d.min(due)));
        }
        self.inner.changed.notify_waiters();
    }

    /// Waits for the next due id that no one is working on, and marks it running.
    pub async fn next(&self) -> i64 {
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wake_at = {
                let mut entries = self.inner.entries.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                let ready =
                    entries.iter().filter(|(_, e)| !e.running).filter_map(|(id, e)| e.due.map(|d| (d, *id))).min();
                match ready {
                    Some((due, id)) if due <= now => {
                        let e = entries.get_mut(&id).expect("present");
                        e.running = true;
                        e.due = None;
                        return id;
                    }
                    Some((due, _)) => Some(due),
                    None => None,
                }
            };
            match wake_at {
                Some(at) => {
                    tokio::select! {
                        _ = &mut changed => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => changed.await,
            }
        }
    }

    /// Ends the work on `id`: it is handed out again at once if it was enqueued meanwhile, after `requeue`
    /// if given, and otherwise forgotten.
    pub fn done(&self, id: i64, requeue: Option<Duration>) {
        {
            let mut entries = self.inner.entries.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(e) = entries.get_mut(&id) {
                e.running = false;
                if let Some(delay) = requeue {
                    let due = Instant::now() + delay;
                    e.due = Some(e.due.map_or(due, |d| d.min(due)));
                }
                if e.due.is_none() {
                    entries.remove(&id);
                }
            }
        }
        self.inner.changed.notify_waiters();
    }

    /// How many ids are waiting or running.
    pub fn len(&self) -> usize {
        self.inner.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_worker_per_id_and_nothing_lost() {
        let q = Queue::new();
        q.enqueue(1);
        q.enqueue(1);
        assert_eq!(q.next().await, 1);
        // Enqueued while running: not handed to a second worker...
        q.enqueue(1);
        q.enqueue(2);
        assert_eq!(q.next().await, 2);
        let third = tokio::time::timeout(Duration::from_secs(1), q.next()).await;
        assert!(third.is_err(), "1 is still running");
        // ...but handed out again when the first run ends.
        q.done(1, None);
        assert_eq!(q.next().await, 1);
        q.done(1, None);
        q.done(2, None);
        assert!(q.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn delays_are_honoured_and_sooner_wins() {
        let q = Queue::new();
        q.enqueue_after(7, Duration::from_secs(60));
        q.enqueue_after(8, Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(q.next().await, 8);
        assert!(start.elapsed() >= Duration::from_secs(10));
        q.done(8, Some(Duration::from_secs(100)));
        q.enqueue_after(7, Duration::from_secs(20)); // sooner than 60
        assert_eq!(q.next().await, 7);
        assert!(start.elapsed() < Duration::from_secs(60));
        q.done(7, None);
        assert_eq!(q.len(), 1, "8 waits for its requeue");
    }
}
