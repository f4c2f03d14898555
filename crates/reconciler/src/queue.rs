//! The work queue lives in the store (see [`Store::claim_due`]): every replica's dispatcher takes the next
//! due environment from it, so work acknowledged by one replica is done by whichever is free, and work
//! whose holder dies is taken over when its lease ends. Each environment is due at most once and held by
//! at most one replica; a request made while it is held keeps it due, so a push during a reconcile is
//! never lost and many pushes coalesce into one more reconcile. Work in the webhook lane (someone waits)
//! goes before background work (resync, fleet observer, reaper, polls).
//!
//! This handle only asks for work and wakes this process's dispatcher; another replica's dispatcher
//! notices within its idle poll.

use std::sync::Arc;
use std::time::Duration;

use previewd_store::{Lane, Store, StoreError, now_ms};
use tokio::sync::Notify;

/// Cheap to clone; every clone wakes the same dispatcher.
#[derive(Debug, Clone)]
pub struct Queue {
    store: Store,
    wake: Arc<Notify>,
}

impl Queue {
    pub fn new(store: Store) -> Self {
        Self { store, wake: Arc::new(Notify::new()) }
    }

    /// Due now, in the webhook lane: a person asked.
    pub async fn enqueue(&self, id: i64) -> Result<(), StoreError> {
        self.enqueue_in(id, Lane::Webhook, Duration::ZERO).await
    }

    /// Due after `delay` in `lane`, or sooner if it already was; see [`Store::enqueue`].
    pub async fn enqueue_in(&self, id: i64, lane: Lane, delay: Duration) -> Result<(), StoreError> {
        self.store.enqueue(id, lane, now_ms().saturating_add(delay.as_millis() as i64)).await?;
        self.wake();
        Ok(())
    }

    /// Tells this process's dispatcher to look now: something was made due here (a webhook's
    /// transaction does it itself), or a slot came free.
    pub fn wake(&self) {
        // A permit is stored when the dispatcher is not waiting, so a wake during a claim is not lost.
        self.wake.notify_one();
    }

    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }
}
