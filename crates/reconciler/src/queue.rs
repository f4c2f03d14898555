//! A keyed delay queue in two lanes: each environment id is in it at most once, is handed to at most one
//! worker at a time, and an id enqueued while it is being worked on is handed out again as soon as that
//! work ends (so a push during a reconcile is never lost, and many pushes coalesce into one more
//! reconcile). Work a webhook or a person asked for goes in the webhook lane and is handed out before any
//! background work (resync, fleet observer, reaper), so a full resync of a large fleet never makes a
//! push wait behind it.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Which work an id waits behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Someone is waiting for the result: a webhook, or a person on the dashboard.
    Webhook,
    /// Nobody is waiting: resync, the fleet observer, the reaper.
    Background,
}

#[derive(Debug)]
struct Entry {
    /// When it is due; `None` while running and not asked for again.
    due: Option<Instant>,
    /// Kept while the id runs and across requeues, so a push's follow-up polls stay urgent; it resets
    /// only when the entry is forgotten.
    lane: Lane,
    running: bool,
}

impl Entry {
    /// Its place in its lane's set, if it is waiting there (not running, and due some time).
    fn waiting_key(&self, id: i64) -> Option<(Lane, (Instant, i64))> {
        match (self.running, self.due) {
            (false, Some(due)) => Some((self.lane, (due, id))),
            _ => None,
        }
    }
}

/// Invariant: `(due, id)` is in the set of `entries[id].lane` exactly when that entry is waiting, so the
/// next due id of a lane is the first element of its set and nothing ever scans the whole queue.
#[derive(Debug, Default)]
struct State {
    entries: HashMap<i64, Entry>,
    webhook: BTreeSet<(Instant, i64)>,
    background: BTreeSet<(Instant, i64)>,
}

impl State {
    fn lane(&self, lane: Lane) -> &BTreeSet<(Instant, i64)> {
        match lane {
            Lane::Webhook => &self.webhook,
            Lane::Background => &self.background,
        }
    }

    fn lane_mut(&mut self, lane: Lane) -> &mut BTreeSet<(Instant, i64)> {
        match lane {
            Lane::Webhook => &mut self.webhook,
            Lane::Background => &mut self.background,
        }
    }

    /// Takes `id` out of its lane's set before its entry changes; `relist` puts it back after.
    fn unlist(&mut self, id: i64) {
        if let Some((lane, key)) = self.entries.get(&id).and_then(|e| e.waiting_key(id)) {
            self.lane_mut(lane).remove(&key);
        }
    }

    fn relist(&mut self, id: i64) {
        if let Some((lane, key)) = self.entries.get(&id).and_then(|e| e.waiting_key(id)) {
            self.lane_mut(lane).insert(key);
        }
    }

    /// The first due id of `lane`, if it is due by `now`, taken out of its set and marked running.
    fn take_due(&mut self, lane: Lane, now: Instant) -> Option<i64> {
        let &(due, id) = self.lane(lane).first()?;
        if due > now {
            return None;
        }
        self.lane_mut(lane).pop_first();
        let e = self.entries.get_mut(&id).expect("an id in a lane's set has an entry");
        e.running = true;
        e.due = None;
        Some(id)
    }

    /// The soonest due time of any waiting id, for `next` to sleep until.
    fn first_due(&self) -> Option<Instant> {
        let first = |lane| self.lane(lane).first().map(|&(due, _)| due);
        match (first(Lane::Webhook), first(Lane::Background)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    state: Mutex<State>,
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

    /// Due now, in the webhook lane: what the web layer calls when a webhook or a person asks.
    pub fn enqueue(&self, id: i64) {
        self.enqueue_in(id, Lane::Webhook, Duration::ZERO);
    }

    /// Due after `delay`, or sooner if it already was. A new entry goes in the background lane; an entry
    /// already there keeps its lane, so a timer never demotes work someone is waiting for.
    pub fn enqueue_after(&self, id: i64, delay: Duration) {
        // The background lane never downgrades, which is exactly "new: background, existing: kept".
        self.enqueue_in(id, Lane::Background, delay);
    }

    /// Due after `delay`, or sooner if it already was. The webhook lane upgrades an entry waiting in the
    /// background lane; nothing downgrades one, since a push is no less urgent because a resync also
    /// noticed it.
    pub fn enqueue_in(&self, id: i64, lane: Lane, delay: Duration) {
        let due = Instant::now() + delay;
        {
            let mut state = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
            state.unlist(id);
            let e = state.entries.entry(id).or_insert(Entry { due: None, lane, running: false });
            e.due = Some(e.due.map_or(due, |d| d.min(due)));
            if lane == Lane::Webhook {
                e.lane = Lane::Webhook;
            }
            state.relist(id);
        }
        self.inner.changed.notify_waiters();
    }

    /// Waits for the next due id that no one is working on, and marks it running. A due webhook-lane id
    /// always goes first, even before background ids that were due earlier: background work can wait,
    /// and webhooks come from people, so they cannot starve it for long.
    pub async fn next(&self) -> i64 {
        loop {
            // Enabled before looking, so a change between the look and the wait still wakes us.
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let wake_at = {
                let mut state = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                let taken = state.take_due(Lane::Webhook, now).or_else(|| state.take_due(Lane::Background, now));
                if let Some(id) = taken {
                    return id;
                }
                state.first_due()
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
    /// if given (in the lane it had), and otherwise forgotten, lane and all.
    pub fn done(&self, id: i64, requeue: Option<Duration>) {
        {
            let mut state = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
            // Normally running, hence in no set; unlisting anyway keeps the invariant if it was not.
            state.unlist(id);
            if let Some(e) = state.entries.get_mut(&id) {
                e.running = false;
                if let Some(delay) = requeue {
                    let due = Instant::now() + delay;
                    e.due = Some(e.due.map_or(due, |d| d.min(due)));
                }
                if e.due.is_none() {
                    state.entries.remove(&id);
                }
            }
            state.relist(id);
        }
        self.inner.changed.notify_waiters();
    }

    /// How many ids are waiting or running.
    pub fn len(&self) -> usize {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner()).entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How long the longest-waiting due environment has been due (zero when none is).
    pub fn oldest_due_age(&self) -> Duration {
        let state = self.inner.state.lock().unwrap_or_else(|p| p.into_inner());
        state.first_due().map_or(Duration::ZERO, |due| Instant::now().saturating_duration_since(due))
    }

    /// How many ids wait in `lane` (due or not, and not running).
    pub fn waiting(&self, lane: Lane) -> usize {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner()).lane(lane).len()
    }

    /// Returns once the queue holds nothing: no id waiting and none running.
    pub async fn drained(&self) {
        loop {
            // Enabled before looking, as in `next`, so the last `done` cannot slip between look and wait.
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.is_empty() {
                return;
            }
            changed.await;
        }
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

    #[tokio::test(start_paused = true)]
    async fn a_due_webhook_goes_before_earlier_background_work() {
        let q = Queue::new();
        for id in 1..=1_000 {
            q.enqueue_in(id, Lane::Background, Duration::ZERO);
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        // Not due yet: it does not hold back background work that is.
        q.enqueue_in(5_001, Lane::Webhook, Duration::from_secs(60));
        assert_eq!(q.next().await, 1);
        q.enqueue(5_000);
        assert_eq!(q.next().await, 5_000);
        assert_eq!(q.next().await, 2, "then the background lane, oldest first");
        assert_eq!(q.waiting(Lane::Background), 998);
        assert_eq!(q.waiting(Lane::Webhook), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_webhook_upgrades_a_background_entry_and_nothing_downgrades() {
        let q = Queue::new();
        q.enqueue_after(1, Duration::from_secs(60));
        q.enqueue_in(2, Lane::Background, Duration::ZERO);
        assert_eq!(q.waiting(Lane::Background), 2);
        q.enqueue(1);
        assert_eq!((q.waiting(Lane::Webhook), q.waiting(Lane::Background)), (1, 1));
        q.enqueue_in(1, Lane::Background, Duration::ZERO);
        q.enqueue_after(1, Duration::ZERO);
        assert_eq!((q.waiting(Lane::Webhook), q.waiting(Lane::Background)), (1, 1), "still urgent");
        assert_eq!(q.next().await, 1, "due no earlier than 2, but urgent");
        assert_eq!(q.next().await, 2);
        assert_eq!(q.len(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_requeue_keeps_the_lane_until_the_entry_is_forgotten() {
        let q = Queue::new();
        q.enqueue(1);
        q.enqueue_after(2, Duration::ZERO);
        assert_eq!(q.next().await, 1);
        q.done(1, Some(Duration::from_secs(10)));
        assert_eq!(q.next().await, 2);
        q.done(2, Some(Duration::from_secs(5)));
        assert_eq!((q.waiting(Lane::Webhook), q.waiting(Lane::Background)), (1, 1));
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(q.next().await, 1, "2 was due first, but 1 kept the webhook lane");
        assert_eq!(q.next().await, 2);
        // Forgotten, so a later enqueue chooses the lane anew.
        q.done(1, None);
        q.enqueue_after(1, Duration::ZERO);
        assert_eq!((q.waiting(Lane::Webhook), q.waiting(Lane::Background)), (0, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn drained_waits_for_every_id_to_finish() {
        let q = Queue::new();
        q.drained().await;
        q.enqueue(1);
        q.enqueue_after(2, Duration::from_secs(5));
        let too_soon = Duration::from_secs(1);
        assert!(tokio::time::timeout(too_soon, q.drained()).await.is_err(), "both waiting");
        assert_eq!(q.next().await, 1);
        q.done(1, None);
        assert_eq!(q.next().await, 2);
        assert!(tokio::time::timeout(too_soon, q.drained()).await.is_err(), "2 running");
        let worker = q.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(3)).await;
            worker.done(2, None);
        });
        tokio::time::timeout(Duration::from_secs(60), q.drained()).await.expect("drained once 2 is done");
        assert!(q.is_empty());
    }
}
