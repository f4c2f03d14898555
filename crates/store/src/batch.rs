//! A batch of deliveries recorded in a few statements whatever its size (on PostgreSQL usually one):
//! each branch's deliveries folded first, as the domain folds them, then applied to the row as it was.

use std::collections::{BTreeMap, HashMap, HashSet};

use previewd_domain::{Desired, EventKind, Status};
use sqlx::any::{AnyArguments, AnyRow};
use sqlx::{AnyConnection, Arguments as _, Row as _};

use crate::intake::upsert_desired;
use crate::queue::Lane;
use crate::records::{Delivery, DesiredChange, Recorded};
use crate::{Backend, StoreError, db};

/// What a batch of deliveries asks for, as if every delivery were new: each delivery id's first
/// occurrence, and the branches they change, each with its deliveries folded ([`BranchUpdate`]).
pub(crate) struct BatchPlan<'a> {
    /// Indexes of the first occurrence of each delivery id; a later one is a duplicate.
    firsts: Vec<usize>,
    /// By branch, that branch's deliveries (indexes, in order) and what they change together.
    branches: BTreeMap<(&'a str, &'a str), (Vec<usize>, BranchUpdate)>,
}

impl<'a> BatchPlan<'a> {
    pub(crate) fn new(batch: &'a [Delivery]) -> Self {
        let mut seen = HashSet::new();
        let firsts: Vec<usize> = (0..batch.len()).filter(|&i| seen.insert(batch[i].id.as_str())).collect();
        Self::of(batch, firsts)
    }

    /// The plan for `deliveries` of `batch` only.
    fn of(batch: &'a [Delivery], deliveries: Vec<usize>) -> Self {
        let mut by_branch: BTreeMap<(&str, &str), Vec<usize>> = BTreeMap::new();
        for &i in &deliveries {
            if let Some(c) = &batch[i].change {
                by_branch.entry((c.repo.as_str(), c.branch.as_str())).or_default().push(i);
            }
        }
        let branches = by_branch
            .into_iter()
            .map(|(key, is)| {
                let update = BranchUpdate::fold(is.iter().filter_map(|&i| batch[i].change.as_ref()));
                (key, (is, update))
            })
            .collect();
        Self { firsts: deliveries, branches }
    }

    /// The deliveries' rows for `INSERT INTO deliveries`, read by [`json_rows`] with [`DELIVERY_COLUMNS`].
    fn deliveries(&self, batch: &[Delivery]) -> Vec<serde_json::Value> {
        self.firsts
            .iter()
            .map(|&i| {
                let d = &batch[i];
                serde_json::json!({ "id": d.id, "event": d.event, "outcome": d.outcome().as_str() })
            })
            .collect()
    }

    /// The branches' rows for [`BranchUpdate::set_clause`], read with [`UPDATE_COLUMNS`].
    fn updates(&self) -> Vec<serde_json::Value> {
        self.branches.iter().map(|(&(repo, branch), (_, u))| u.json(repo, branch)).collect()
    }

    /// Each delivery's answer: a duplicate unless it is a first occurrence, and then the environment it
    /// changed (`env_id` by repo and branch), if any.
    fn recorded(&self, batch: &[Delivery], env_ids: &HashMap<(String, String), i64>) -> Vec<Recorded> {
        let mut recorded = vec![Recorded::Duplicate; batch.len()];
        let key = |c: &DesiredChange| (c.repo.to_string(), c.branch.to_string());
        for &i in &self.firsts {
            recorded[i] =
                Recorded::New { env_id: batch[i].change.as_ref().and_then(|c| env_ids.get(&key(c)).copied()) };
        }
        recorded
    }

    /// One event row per delivery that changes a branch, in the batch's order, read with [`EVENT_COLUMNS`].
    fn events(&self, batch: &[Delivery]) -> Vec<serde_json::Value> {
        let mut rows: Vec<_> = self.branches.values().flat_map(|(is, _)| is.iter().copied()).collect();
        rows.sort_unstable();
        rows.iter()
            .filter_map(|&i| batch[i].change.as_ref())
            .map(|c| serde_json::json!({ "repo": c.repo.as_str(), "branch": c.branch.as_str(), "message": c.reason }))
            .collect()
    }
}

const DELIVERY_COLUMNS: [(&str, &str); 3] = [("id", "text"), ("event", "text"), ("outcome", "text")];
const UPDATE_COLUMNS: [(&str, &str); 8] = [
    ("repo", "text"),
    ("branch", "text"),
    ("present", "bigint"),
    ("sha", "text"),
    ("keep_sha", "bigint"),
    ("n", "bigint"),
    ("any_present", "bigint"),
    ("display", "text"),
];
const EVENT_COLUMNS: [(&str, &str); 3] = [("repo", "text"), ("branch", "text"), ("message", "text")];

/// One environment's deliveries of a batch, folded into what they change without reading the row first:
/// applied by [`BranchUpdate::set_clause`] to the row as it was, they leave what applying them one at a time
/// would ([`upsert_desired`]).
#[derive(Debug, Default)]
struct BranchUpdate {
    present: i64,
    sha: Option<String>,
    /// Every delivery carried a present state without a commit (a `create`): the recorded commit stays if
    /// the branch was wanted already, as it does one delivery at a time. `sha` is then `None`.
    keep_sha: bool,
    /// Some delivery said the branch exists: no longer missing or expired, pushed now.
    any_present: bool,
    /// The last spelling of the repository a delivery carried.
    display: Option<String>,
    n: i64,
}

impl BranchUpdate {
    /// `SET` of an `UPDATE environments … FROM {rows} AS v`, with `$2` the webhook lane and `$3` now. SQL
    /// evaluates every `SET` expression against the row as it was (see `mark_due`, whose arithmetic this
    /// repeats). The status moves as [`Status::on_new_desire`] moves it, once: it moves nowhere further.
    fn set_clause() -> &'static str {
        static SET: std::sync::LazyLock<String> = std::sync::LazyLock::new(BranchUpdate::make_set_clause);
        &SET
    }

    fn make_set_clause() -> String {
        let moves: String = Status::ALL
            .into_iter()
            .filter(|s| s.on_new_desire() != *s)
            .map(|s| format!(" WHEN '{}' THEN '{}'", s.as_str(), s.on_new_desire().as_str()))
            .collect();
        format!(
            "SET desired_present = v.present, \
             desired_sha = CASE WHEN v.keep_sha = 1 AND desired_present = 1 THEN desired_sha ELSE v.sha END, \
             desired_seq = desired_seq + v.n, desired_at = $3, status = CASE status{moves} ELSE status END, \
             attempts = 0, retries = 0, \
             missing_since = CASE WHEN v.any_present = 1 THEN NULL ELSE missing_since END, \
             expired_at = CASE WHEN v.any_present = 1 THEN NULL ELSE expired_at END, \
             pushed_at = CASE WHEN v.any_present = 1 THEN $3 ELSE pushed_at END, \
             repo_display = COALESCE(v.display, repo_display), updated_at = $3, \
             observed_rev = observed_rev + v.n, feedback_due = COALESCE(feedback_due, $3), \
             due_seq = due_seq + v.n, \
             due_lane = CASE WHEN due_at IS NULL OR due_lane > $2 THEN $2 ELSE due_lane END, \
             due_at = CASE WHEN due_at IS NULL OR due_at > $3 THEN $3 ELSE due_at END"
        )
    }

    /// The branch's changes folded as the domain folds them ([`Desired::fold`]), without the row.
    fn fold<'c>(changes: impl IntoIterator<Item = &'c DesiredChange>) -> Self {
        let changes: Vec<&DesiredChange> = changes.into_iter().collect();
        let fold = Desired::fold(None, changes.iter().map(|c| &c.desired));
        BranchUpdate {
            present: i64::from(fold.present),
            sha: fold.sha.map(|s| s.to_string()),
            keep_sha: fold.keep_recorded_sha,
            any_present: fold.any_present,
            display: changes.iter().rev().find_map(|c| c.repo_display.clone()),
            n: fold.changes,
        }
    }

    fn json(&self, repo: &str, branch: &str) -> serde_json::Value {
        serde_json::json!({
            "repo": repo, "branch": branch, "present": self.present, "sha": self.sha,
            "keep_sha": i64::from(self.keep_sha), "n": self.n, "any_present": i64::from(self.any_present),
            "display": self.display,
        })
    }
}

/// PostgreSQL: a batch in one statement, so in one round trip with no `BEGIN` or `COMMIT` of its own,
/// when every delivery is new and every branch it changes is recorded (the usual case: GitHub
/// redelivers rarely, and a branch is new once). Otherwise it changes nothing and answers `None`. The
/// branches' rows are locked in (repo, branch) order, as every batch locks them. A delivery id inserted
/// meanwhile by another replica fails the statement, and with it the whole batch.
pub(crate) async fn record_batch_at_once(
    conn: &mut AnyConnection,
    batch: &[Delivery],
    plan: &BatchPlan<'_>,
    now: i64,
) -> Result<Option<Vec<Recorded>>, StoreError> {
    // Its text is made once: it is the same for every batch.
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "WITH v AS (SELECT * FROM {v}), d AS (SELECT * FROM {d}), \
         env AS (SELECT id, repo, branch FROM environments WHERE (repo, branch) IN (SELECT repo, branch FROM v) \
           ORDER BY repo, branch FOR UPDATE), \
         ok AS (SELECT (SELECT count(*) FROM env) = $6 \
           AND NOT EXISTS (SELECT 1 FROM deliveries WHERE id IN (SELECT id FROM d)) AS ok), \
         ins AS (INSERT INTO deliveries (id, event, received_at, outcome) SELECT d.id, d.event, $3, d.outcome \
           FROM d WHERE (SELECT ok FROM ok) RETURNING 1), \
         upd AS (UPDATE environments {set} FROM v, env \
           WHERE (SELECT ok FROM ok) AND environments.id = env.id AND env.repo = v.repo AND env.branch = v.branch \
           RETURNING environments.id, environments.repo, environments.branch), \
         ev AS (INSERT INTO events (env_id, at, kind, message) SELECT env.id, $3, '{webhook}', e.message \
           FROM {e} JOIN env ON env.repo = e.repo AND env.branch = e.branch WHERE (SELECT ok FROM ok) \
           ORDER BY e.ord RETURNING 1) \
         SELECT (SELECT ok FROM ok)::int::bigint AS ok, (SELECT count(*) FROM ins) AS ins, \
           (SELECT count(*) FROM ev) AS ev, upd.id, upd.repo, upd.branch FROM (SELECT 1) AS one \
           LEFT JOIN upd ON true",
            v = json_rows_at(Backend::Postgres, 1, "v", &UPDATE_COLUMNS),
            d = json_rows_at(Backend::Postgres, 4, "d", &DELIVERY_COLUMNS),
            e = json_rows_at(Backend::Postgres, 5, "e", &EVENT_COLUMNS),
            set = BranchUpdate::set_clause(),
            webhook = EventKind::Webhook.as_str(),
        )
    });
    let events = plan.events(batch);
    let mut args = json_args(&plan.updates(), &[Lane::Webhook as i64, now])?;
    bind_json(&mut args, &plan.deliveries(batch))?;
    bind_json(&mut args, &events)?;
    bind(&mut args, plan.branches.len() as i64)?;
    let rows = match sqlx::query_with(SQL.as_str(), args).fetch_all(&mut *conn).await {
        Ok(rows) => rows,
        // Another replica recorded one of these deliveries meanwhile (a unique violation), or holds it
        // uncommitted while it waits for a row this statement locked (a deadlock, which PostgreSQL ends):
        // nothing was written, and the transaction tells the duplicates.
        Err(sqlx::Error::Database(e)) if matches!(e.code().as_deref(), Some("23505" | "40P01")) => return Ok(None),
        Err(e) => return Err(db("record deliveries")(e)),
    };
    // From here the statement has committed: its answer is read, and not second-guessed into an error
    // that would have the deliveries recorded again.
    let first = rows.first().ok_or(StoreError::Corrupt { what: "batch", value: "no answer".into() })?;
    let int = |c: &str| first.try_get::<i64, _>(c).map_err(db("record deliveries"));
    if int("ok")? != 1 {
        return Ok(None);
    }
    let ids = env_ids(&rows, "record deliveries")?;
    let done = (int("ins")?, ids.len(), int("ev")?);
    let asked = (plan.firsts.len() as i64, plan.branches.len(), events.len() as i64);
    if done != asked {
        tracing::error!(
            ?done,
            ?asked,
            "a batch wrote other counts than it asked for (deliveries, environments, events)"
        );
    }
    Ok(Some(plan.recorded(batch, &ids)))
}

/// The environments a statement answers with (`id`, `repo`, `branch`; a row whose `id` is NULL names
/// none), by repository and branch.
fn env_ids(rows: &[AnyRow], op: &'static str) -> Result<HashMap<(String, String), i64>, StoreError> {
    let mut ids = HashMap::new();
    for row in rows {
        if let Some(id) = row.try_get::<Option<i64>, _>("id").map_err(db(op))? {
            ids.insert((row.try_get("repo").map_err(db(op))?, row.try_get("branch").map_err(db(op))?), id);
        }
    }
    Ok(ids)
}

/// A batch of deliveries in a few statements, whatever its size: one insert of the delivery ids (those it
/// did not insert are duplicates), one update of the environments they change (on PostgreSQL after
/// locking them in (repo, branch) order, as every batch locks them) and one insert of their events. Each
/// environment ends as if its deliveries had been recorded one by one, in order ([`record_delivery`]); a
/// branch seen for the first time is inserted that way.
pub(crate) async fn record_batch(
    tx: &mut AnyConnection,
    batch: &[Delivery],
    plan: BatchPlan<'_>,
    now: i64,
    backend: Backend,
) -> Result<Vec<Recorded>, StoreError> {
    // `WHERE true`: SQLite reads an ON CONFLICT after a bare SELECT's FROM as a join's.
    let sql = format!(
        "INSERT INTO deliveries (id, event, received_at, outcome) SELECT d.id, d.event, $2, d.outcome FROM {} \
         WHERE true ON CONFLICT (id) DO NOTHING RETURNING id",
        json_rows(backend, "d", &DELIVERY_COLUMNS)
    );
    let args = json_args(&plan.deliveries(batch), &[now])?;
    let new: HashSet<String> = sqlx::query_scalar_with(&sql, args)
        .fetch_all(&mut *tx)
        .await
        .map_err(db("record delivery"))?
        .into_iter()
        .collect();
    // The new deliveries only, if some were not.
    let plan = if new.len() == plan.firsts.len() {
        plan
    } else {
        BatchPlan::of(batch, plan.firsts.into_iter().filter(|&i| new.contains(&batch[i].id)).collect())
    };
    let mut ids = HashMap::new();
    if !plan.branches.is_empty() {
        let updates = plan.updates();
        if backend == Backend::Postgres {
            let sql = format!(
                "SELECT id FROM environments WHERE (repo, branch) IN (SELECT v.repo, v.branch FROM {}) \
                 ORDER BY repo, branch FOR UPDATE",
                json_rows(backend, "v", &UPDATE_COLUMNS)
            );
            sqlx::query_with(&sql, json_args(&updates, &[])?)
                .fetch_all(&mut *tx)
                .await
                .map_err(db("lock environment"))?;
        }
        let sql = format!(
            "UPDATE environments {} FROM {} WHERE environments.repo = v.repo AND environments.branch = v.branch \
             RETURNING environments.id, environments.repo, environments.branch",
            BranchUpdate::set_clause(),
            json_rows(backend, "v", &UPDATE_COLUMNS)
        );
        let args = json_args(&updates, &[Lane::Webhook as i64, now])?;
        let rows = sqlx::query_with(&sql, args).fetch_all(&mut *tx).await.map_err(db("update desired"))?;
        ids = env_ids(&rows, "update desired")?;
    }
    let mut events = Vec::new();
    for (&(repo, branch), (deliveries, _)) in &plan.branches {
        let key = (repo.to_owned(), branch.to_owned());
        match ids.get(&key) {
            Some(&id) => events.extend(deliveries.iter().map(|&i| (i, id))),
            // A branch seen for the first time: inserted, then changed, one delivery at a time.
            None => {
                for (n, &i) in deliveries.iter().enumerate() {
                    let c = batch[i].change.as_ref().expect("grouped by its change");
                    ids.insert(key.clone(), upsert_desired(tx, c, now, backend, n == 0, Some(Lane::Webhook)).await?);
                }
            }
        }
    }
    if !events.is_empty() {
        // In the batch's order: the log reads by id.
        events.sort_unstable();
        let rows: Vec<_> = events
            .iter()
            .filter_map(|&(i, id)| {
                Some(serde_json::json!({ "env_id": id, "message": batch[i].change.as_ref()?.reason }))
            })
            .collect();
        let sql = format!(
            "INSERT INTO events (env_id, at, kind, message) SELECT e.env_id, $2, '{}', e.message FROM {} \
             ORDER BY e.ord",
            EventKind::Webhook.as_str(),
            json_rows(backend, "e", &[("env_id", "bigint"), ("message", "text")])
        );
        sqlx::query_with(&sql, json_args(&rows, &[now])?).execute(&mut *tx).await.map_err(db("append event"))?;
    }
    Ok(plan.recorded(batch, &ids))
}

/// A batch's rows, sent as one JSON array (`$1`, see [`json_args`]), as a table `alias` with `columns`
/// (name, PostgreSQL type) and `ord`, each row's place in the array. The statement's text is the same
/// whatever the batch's size, so it is parsed and planned once per connection, not once per batch.
fn json_rows(backend: Backend, alias: &str, columns: &[(&str, &str)]) -> String {
    json_rows_at(backend, 1, alias, columns)
}

/// As [`json_rows`], from parameter `$param`.
fn json_rows_at(backend: Backend, param: usize, alias: &str, columns: &[(&str, &str)]) -> String {
    let names: Vec<&str> = columns.iter().map(|(name, _)| *name).collect();
    match backend {
        Backend::Postgres => {
            let typed: Vec<String> = columns.iter().map(|(name, ty)| format!("{name} {ty}")).collect();
            format!(
                "ROWS FROM (json_to_recordset(${param}::json) AS ({})) WITH ORDINALITY AS {alias}({}, ord)",
                typed.join(", "),
                names.join(", ")
            )
        }
        Backend::Sqlite => {
            let read: Vec<String> = names.iter().map(|name| format!("value ->> '{name}' AS {name}")).collect();
            format!("(SELECT {}, key AS ord FROM json_each(${param})) AS {alias}", read.join(", "))
        }
    }
}

/// The arguments of a batch statement: its rows as one JSON parameter (`$1`, read by [`json_rows`]),
/// then `extra` (`$2`, …).
fn json_args(rows: &[serde_json::Value], extra: &[i64]) -> Result<AnyArguments<'static>, StoreError> {
    let mut args = AnyArguments::default();
    bind_json(&mut args, rows)?;
    for &v in extra {
        bind(&mut args, v)?;
    }
    Ok(args)
}

fn bind_json(args: &mut AnyArguments<'static>, rows: &[serde_json::Value]) -> Result<(), StoreError> {
    let json = serde_json::to_string(rows).map_err(|e| StoreError::Corrupt { what: "batch", value: e.to_string() })?;
    args.add(json).map_err(|e| StoreError::Db { op: "bind", source: sqlx::Error::Encode(e) })
}

fn bind(args: &mut AnyArguments<'static>, v: i64) -> Result<(), StoreError> {
    args.add(v).map_err(|e| StoreError::Db { op: "bind", source: sqlx::Error::Encode(e) })
}

#[cfg(test)]
pub(crate) mod tests;
