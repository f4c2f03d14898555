//! The event log: an append-only history per environment, written in the same transaction as the
//! change it tells of.

use previewd_domain::EventKind;
use sqlx::AnyConnection;

use crate::records::{EventRecord, parse};
use crate::{Store, StoreError, db};

/// Appends to an environment's event log.
pub async fn append(
    conn: &mut AnyConnection,
    env_id: i64,
    at: i64,
    kind: EventKind,
    message: &str,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO events (env_id, at, kind, message) VALUES ($1, $2, $3, $4)")
        .bind(env_id)
        .bind(at)
        .bind(kind.as_str())
        .bind(message)
        .execute(conn)
        .await
        .map_err(db("append event"))?;
    Ok(())
}

/// Ends a change of one environment: with its event when `changed`, else rolled back. Returns `changed`.
pub async fn commit_with(
    mut tx: sqlx::Transaction<'_, sqlx::Any>,
    changed: bool,
    id: i64,
    at: i64,
    kind: EventKind,
    message: &str,
) -> Result<bool, StoreError> {
    if !changed {
        tx.rollback().await.map_err(db("rollback"))?;
        return Ok(false);
    }
    append(&mut tx, id, at, kind, message).await?;
    tx.commit().await.map_err(db("commit"))?;
    Ok(true)
}

#[derive(sqlx::FromRow)]
struct EventRow {
    id: i64,
    env_id: i64,
    at: i64,
    kind: String,
    message: String,
}

/// The newest `limit` events of an environment, oldest first.
pub async fn newest(conn: &mut AnyConnection, id: i64, limit: i64) -> Result<Vec<EventRecord>, StoreError> {
    let rows: Vec<EventRow> =
        sqlx::query_as("SELECT id, env_id, at, kind, message FROM events WHERE env_id = $1 ORDER BY id DESC LIMIT $2")
            .bind(id)
            .bind(limit)
            .fetch_all(conn)
            .await
            .map_err(db("read events"))?;
    rows.into_iter()
        .rev()
        .map(|r| {
            let kind = parse("event kind", &r.kind)?;
            Ok(EventRecord { id: r.id, env_id: r.env_id, at: r.at, kind, message: r.message })
        })
        .collect()
}

impl Store {
    /// Appends to an environment's event log.
    pub async fn add_event(&self, id: i64, kind: EventKind, message: &str) -> Result<(), StoreError> {
        append(&mut *self.write().await?, id, self.now(), kind, message).await
    }

    /// The newest `limit` events of an environment, oldest first.
    pub async fn events(&self, id: i64, limit: i64) -> Result<Vec<EventRecord>, StoreError> {
        newest(&mut *self.read().await?, id, limit).await
    }
}
