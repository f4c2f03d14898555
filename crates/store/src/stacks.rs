//! What the reconciler last saw of each environment's stack, kept for people: the environment's page
//! reads it here, with its age, and never asks AWS while it answers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Fence, Store, StoreError, db};

/// An environment's stack as the reconciler last saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StackObservation {
    /// When it looked (milliseconds since the epoch).
    pub observed_at: i64,
    /// The stack's status as CloudFormation named it; `None`: there was no stack.
    pub status: Option<String>,
    pub outputs: BTreeMap<String, String>,
    /// Newest first, as of the last settled status the reconciler saw.
    pub events: Vec<StackEvent>,
}

/// One event of a stack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackEvent {
    pub timestamp: String,
    pub logical_id: String,
    pub status: String,
    pub reason: Option<String>,
}

#[derive(sqlx::FromRow)]
struct ObservationRow {
    observed_at: i64,
    status: Option<String>,
    outputs: String,
    events: String,
}

fn json<T: serde::de::DeserializeOwned>(what: &'static str, text: String) -> Result<T, StoreError> {
    serde_json::from_str(&text).map_err(|_| StoreError::Corrupt { what, value: text })
}

fn text<T: Serialize>(what: &'static str, value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt { what, value: e.to_string() })
}

impl Store {
    /// What the reconciler last saw of the environment's stack, if it has looked.
    pub async fn stack_observation(&self, env_id: i64) -> Result<Option<StackObservation>, StoreError> {
        let row: Option<ObservationRow> =
            sqlx::query_as("SELECT observed_at, status, outputs, events FROM stack_observations WHERE env_id = $1")
                .bind(env_id)
                .fetch_optional(&self.pool)
                .await
                .map_err(db("read stack observation"))?;
        row.map(|r| {
            Ok(StackObservation {
                observed_at: r.observed_at,
                status: r.status,
                outputs: json("stack outputs", r.outputs)?,
                events: json("stack events", r.events)?,
            })
        })
        .transpose()
    }

    /// Records what the reconciler saw of the environment's stack; refused when `fence`'s lease was
    /// taken over.
    pub async fn record_stack_observation(&self, fence: Fence, o: &StackObservation) -> Result<(), StoreError> {
        // `WHERE` before `ON CONFLICT`: SQLite would read a bare `SELECT`'s `ON` as a join's.
        let sql = format!(
            "INSERT INTO stack_observations (env_id, observed_at, status, outputs, events) \
             SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM environments WHERE id = $6{}) \
             ON CONFLICT (env_id) DO UPDATE SET observed_at = excluded.observed_at, status = excluded.status, \
             outputs = excluded.outputs, events = excluded.events",
            fence.condition(7)
        );
        let q = sqlx::query(&sql)
            .bind(fence.id)
            .bind(o.observed_at)
            .bind(o.status.clone())
            .bind(text("stack outputs", &o.outputs)?)
            .bind(text("stack events", &o.events)?)
            .bind(fence.id);
        let r = fence.bind(q).execute(&mut *self.write().await?).await.map_err(db("record stack observation"))?;
        fence.check(r.rows_affected())
    }
}

impl Store {
    /// How long each blueprint's stack operations take, as learned: (blueprint, operation, milliseconds).
    pub async fn stack_durations(&self) -> Result<Vec<(String, String, i64)>, StoreError> {
        sqlx::query_as("SELECT blueprint, operation, millis FROM stack_durations")
            .fetch_all(&self.pool)
            .await
            .map_err(db("read stack durations"))
    }

    /// Records how long the blueprint's `operation` is now expected to take (the reconciler averages).
    pub async fn record_stack_duration(&self, blueprint: &str, operation: &str, millis: i64) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO stack_durations (blueprint, operation, millis, learned_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (blueprint, operation) DO UPDATE SET millis = excluded.millis, learned_at = excluded.learned_at",
        )
        .bind(blueprint.to_owned())
        .bind(operation.to_owned())
        .bind(millis)
        .bind(self.now())
        .execute(&mut *self.write().await?)
        .await
        .map_err(db("record stack duration"))?;
        Ok(())
    }
}
