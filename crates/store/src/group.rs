//! Group commit for webhook deliveries. Each delivery must be durable before GitHub hears 202, and a
//! commit costs an fsync (SQLite) or a WAL flush (PostgreSQL): one per delivery caps intake at the disk's
//! flush rate, and SQLite's one writer makes concurrent deliveries queue for its lock. One committer task
//! takes every delivery waiting, records them in one transaction, and answers each once it has committed,
//! so a burst costs one flush. Alone, a delivery is committed at once: nothing waits for a batch to fill.
//! A batch that fails is recorded one delivery at a time.
//!
//! One committer per process, on SQLite (one writer) and on PostgreSQL alike: a batch costs the same few
//! statements whatever its size (one on PostgreSQL, see `record_many`), so one committer taking large
//! batches outpaces several taking small ones (two, by branch, took 20 % less on PostgreSQL; three, 55 %
//! less), and one branch's deliveries are committed in the order they came.
//!
//! Once a batch that made an environment due has committed, the committer says so (`on_due`) before it
//! answers, so the server's dispatcher can claim it at once.
//!
//! The committer runs on a thread of its own, with a connection of its own. A batch waits on the
//! database between its statements; a task on the request runtime, woken from each wait, queued behind the
//! requests being parsed, and since the batch's time is every acknowledgement's latency, intake stalled
//! with a core idle. Its own connection spares the pool's hand-off and the round trips sqlx makes to test
//! a connection as it leaves and returns to the pool.

use tokio::sync::{mpsc, oneshot};

use crate::{Delivery, Recorded, Store, StoreError, intake};

/// Deliveries in one transaction at most.
const MAX_BATCH: usize = 256;
/// Deliveries waiting for the committer at most; a sender waits for room beyond it.
const QUEUE: usize = 1024;

type Reply = oneshot::Sender<Result<Recorded, StoreError>>;

/// The committer's handle; cheap to clone. The task ends when every handle is gone.
#[derive(Debug, Clone)]
pub struct DeliveryLog {
    tx: mpsc::Sender<(Delivery, Reply)>,
}

impl DeliveryLog {
    /// Starts the committer on a thread of its own. It ends when every handle is gone. `on_due` is called
    /// on that thread once a committed batch has made an environment due, before any sender hears (the
    /// server wakes its dispatcher with it, sparing the step the wait for a request's task).
    pub fn start(store: Store, on_due: impl Fn() + Send + 'static) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel(QUEUE);
        // The runtime is made on its thread: one dropped here, inside the caller's runtime, would panic.
        let (started, start) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new().name("previewd-intake".into()).spawn(move || {
            match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => {
                    let _ = started.send(Ok(()));
                    runtime.block_on(commit_loop(store, rx, on_due));
                }
                Err(e) => {
                    let _ = started.send(Err(e));
                }
            }
        })?;
        start.recv().map_err(|_| std::io::Error::other("the committer's thread ended before it started"))??;
        Ok(Self { tx })
    }

    /// Records `delivery` as [`Store::record_webhook`] does, committed with whatever else is waiting.
    pub async fn record(&self, delivery: Delivery) -> Result<Recorded, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((delivery, reply)).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

async fn commit_loop(store: Store, mut rx: mpsc::Receiver<(Delivery, Reply)>, on_due: impl Fn()) {
    // Opened when a batch comes; dropped after a failure, so the next batch opens another.
    let mut conn = None;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (deliveries, replies): (Vec<Delivery>, Vec<Reply>) = batch.drain(..).unzip();
        let result = match connection(&store, &mut conn).await {
            // In this process's turn to write (SQLite), as every writer.
            Ok(c) => match store.take_turn().await {
                Ok(_turn) => intake::record_many(c, &deliveries, store.backend(), store.now()).await,
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        match result {
            Ok(recorded) => {
                if recorded.iter().any(|r| matches!(r, Recorded::New { env_id: Some(_) })) {
                    on_due();
                }
                for (reply, r) in replies.into_iter().zip(recorded) {
                    let _ = reply.send(Ok(r));
                }
            }
            // One bad delivery must not fail the others: each is tried alone, and answered for itself.
            Err(e) if deliveries.len() > 1 => {
                tracing::warn!(error = %e, n = deliveries.len(), "a batch of deliveries failed: recording them one by one");
                conn = None;
                let mut pending = deliveries.iter().zip(replies);
                for (d, reply) in pending.by_ref() {
                    let c = match connection(&store, &mut conn).await {
                        Ok(c) => c,
                        // No database to record them in: the rest are not tried, each waiting out the
                        // connection's timeout again.
                        Err(e) => {
                            let _ = reply.send(Err(e));
                            break;
                        }
                    };
                    let result = match store.take_turn().await {
                        Ok(_turn) => {
                            let change = d.change.as_ref();
                            intake::record_one(c, &d.id, &d.event, change, store.backend(), store.now()).await
                        }
                        Err(e) => Err(e),
                    };
                    match &result {
                        Ok(Recorded::New { env_id: Some(_) }) => on_due(),
                        Ok(_) => {}
                        Err(_) => conn = None,
                    }
                    let _ = reply.send(result);
                }
                for (_, reply) in pending {
                    let _ = reply.send(Err(StoreError::Unavailable));
                }
            }
            Err(e) => {
                conn = None;
                if let Some(reply) = replies.into_iter().next() {
                    let _ = reply.send(Err(e));
                }
            }
        }
    }
    if let Some(c) = conn {
        use sqlx::Connection as _;
        let _ = c.close().await;
    }
}

/// The committer's connection, opened if it has none.
async fn connection<'c>(
    store: &Store,
    conn: &'c mut Option<sqlx::AnyConnection>,
) -> Result<&'c mut sqlx::AnyConnection, StoreError> {
    if conn.is_none() {
        *conn = Some(store.open_writer().await?);
    }
    Ok(conn.as_mut().expect("opened above"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_burst_is_committed_together_and_each_sender_hears_its_own_answer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("t.db").display())).await.expect("store");
        let log = DeliveryLog::start(store.clone(), || {}).expect("committer");
        let send = |id: &str| {
            let (log, id) = (log.clone(), id.to_owned());
            tokio::spawn(async move { log.record(Delivery { id, event: "ping".into(), change: None }).await })
        };
        let answers: Vec<_> = ["a", "b", "a", "c"].into_iter().map(send).collect();
        let mut new = 0;
        for a in answers {
            match a.await.expect("task").expect("recorded") {
                Recorded::New { env_id: None } => new += 1,
                Recorded::Duplicate => {}
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(new, 3, "the repeated id is a duplicate, in a batch or not");
        assert_eq!(store.delivery_count().await.expect("count"), 3);
    }

    #[tokio::test]
    async fn on_due_is_called_only_for_what_made_an_environment_due() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("t.db").display())).await.expect("store");
        let told = Arc::new(AtomicUsize::new(0));
        let log = DeliveryLog::start(store, {
            let told = told.clone();
            move || {
                told.fetch_add(1, Ordering::SeqCst);
            }
        })
        .expect("committer");
        let record = |d: Delivery| log.record(d);
        assert!(matches!(
            record(crate::batch::tests::push("d1", "feature/a", Some('a'))).await,
            Ok(Recorded::New { .. })
        ));
        // Called before the answer is sent, so it has been by the time the answer arrives.
        assert_eq!(told.load(Ordering::SeqCst), 1);
        // A duplicate and a ping make nothing due.
        assert_eq!(
            record(crate::batch::tests::push("d1", "feature/a", Some('a'))).await.expect("recorded"),
            Recorded::Duplicate
        );
        let ping = Delivery { id: "d2".into(), event: "ping".into(), change: None };
        assert_eq!(record(ping).await.expect("recorded"), Recorded::New { env_id: None });
        assert_eq!(told.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn without_a_database_every_sender_hears_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("t.db").display())).await.expect("store");
        // The committer opens its connection with the first batch: in a directory gone by then, it cannot.
        drop(dir);
        let log = DeliveryLog::start(store, || {}).expect("committer");
        let send = |id: &str| {
            let (log, id) = (log.clone(), id.to_owned());
            tokio::spawn(async move { log.record(Delivery { id, event: "ping".into(), change: None }).await })
        };
        let answers: Vec<_> = ["a", "b", "c"].into_iter().map(send).collect();
        for a in answers {
            let answer = a.await.expect("task");
            assert!(
                matches!(answer, Err(StoreError::Db { op: "connect", .. } | StoreError::Unavailable)),
                "{answer:?}"
            );
        }
    }
}
