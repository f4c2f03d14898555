//! Deployments and their statuses: created, listed and read through the API, each kept with the body as
//! sent.

use std::time::SystemTime;

use axum::http::Method;
use serde_json::{Value, json};

use super::paging::{Paging, listing};
use super::reply::{BOT_LOGIN, Reply, rfc3339, user_json};
use super::routes::Asked;
use super::state::GhState;

/// The states GitHub takes for a deployment status.
const DEPLOYMENT_STATES: [&str; 7] = ["error", "failure", "inactive", "in_progress", "queued", "pending", "success"];
/// The longest deployment status description GitHub takes, in characters.
const MAX_STATUS_DESCRIPTION: usize = 140;

/// A deployment as created through the API.
#[derive(Debug)]
pub(super) struct Deployment {
    pub(super) repo: String,
    pub(super) id: u64,
    /// the request body as sent
    pub(super) sent: Value,
    git_ref: String,
    task: String,
    environment: String,
    description: String,
    payload: Value,
    transient: bool,
    production: bool,
    created: SystemTime,
    updated: SystemTime,
    /// in the order posted
    pub(super) statuses: Vec<DeploymentStatus>,
}

impl Deployment {
    fn url(&self, base: &str) -> String {
        format!("{base}/repos/{}/deployments/{}", self.repo, self.id)
    }

    fn json(&self, base: &str) -> Value {
        json!({
            "url": self.url(base),
            "id": self.id,
            "node_id": format!("DE_fake{}", self.id),
            "sha": self.git_ref,
            "ref": self.git_ref,
            "task": self.task,
            "payload": self.payload,
            "original_environment": self.environment,
            "environment": self.environment,
            "description": self.description,
            "creator": user_json(BOT_LOGIN),
            "created_at": rfc3339(self.created),
            "updated_at": rfc3339(self.updated),
            "statuses_url": format!("{}/statuses", self.url(base)),
            "repository_url": format!("{base}/repos/{}", self.repo),
            "transient_environment": self.transient,
            "production_environment": self.production,
        })
    }
}

/// A deployment status as posted through the API.
#[derive(Debug)]
pub(super) struct DeploymentStatus {
    id: u64,
    /// the request body as sent
    pub(super) sent: Value,
    state: String,
    environment: String,
    environment_url: String,
    log_url: String,
    description: String,
    created: SystemTime,
}

impl DeploymentStatus {
    fn json(&self, base: &str, deployment: &Deployment) -> Value {
        let deployment_url = deployment.url(base);
        json!({
            "url": format!("{deployment_url}/statuses/{}", self.id),
            "id": self.id,
            "node_id": format!("DES_fake{}", self.id),
            "state": self.state,
            "creator": user_json(BOT_LOGIN),
            "description": self.description,
            "environment": self.environment,
            "target_url": self.log_url,
            "log_url": self.log_url,
            "environment_url": self.environment_url,
            "created_at": rfc3339(self.created),
            "updated_at": rfc3339(self.created),
            "deployment_url": deployment_url,
            "repository_url": format!("{base}/repos/{}", deployment.repo),
        })
    }
}

/// `/repos/{o}/{r}/deployments/...`: list and create deployments, list and post their statuses.
pub(super) fn deployments(st: &mut GhState, asked: &Asked<'_>, repo: &str, rest: &[&str], paging: Paging) -> Reply {
    if !st.repos.contains(repo) {
        return Reply::not_found();
    }
    match rest {
        [] if asked.method == Method::GET => {
            let items: Vec<Value> = st
                .deployments
                .iter()
                .rev()
                .filter(|d| d.repo == repo)
                .filter(|d| asked.filter("sha").is_none_or(|sha| d.git_ref == sha))
                .filter(|d| asked.filter("ref").is_none_or(|r| d.git_ref == r))
                .filter(|d| asked.filter("task").is_none_or(|task| d.task == task))
                .filter(|d| asked.filter("environment").is_none_or(|env| d.environment == env))
                .map(|d| d.json(&asked.base))
                .collect();
            listing(asked, paging, items)
        }
        [] if asked.method == Method::POST => create_deployment(st, asked, repo),
        [id, more @ ..] => {
            let found =
                id.parse::<u64>().ok().and_then(|id| st.deployments.iter().position(|d| d.repo == repo && d.id == id));
            let Some(index) = found else { return Reply::not_found() };
            match more {
                [] if asked.method == Method::GET => Reply::ok(&st.deployments[index].json(&asked.base)),
                ["statuses"] if asked.method == Method::GET => {
                    let deployment = &st.deployments[index];
                    let items = deployment.statuses.iter().rev().map(|s| s.json(&asked.base, deployment)).collect();
                    listing(asked, paging, items)
                }
                ["statuses"] if asked.method == Method::POST => create_deployment_status(st, asked, index),
                _ => Reply::not_found(),
            }
        }
        _ => Reply::not_found(),
    }
}

/// `POST /repos/{o}/{r}/deployments`, with GitHub's defaults for what the body leaves out.
fn create_deployment(st: &mut GhState, asked: &Asked<'_>, repo: &str) -> Reply {
    let sent = &asked.body;
    let Some(git_ref) = sent["ref"].as_str().filter(|r| !r.is_empty()) else {
        return Reply::invalid_request("ref");
    };
    let environment = sent["environment"].as_str().unwrap_or("production").to_owned();
    let payload = match &sent["payload"] {
        Value::Null => json!({}),
        Value::String(s) if s.is_empty() => json!({}),
        other => other.clone(),
    };
    st.last_deployment_id += 1;
    let now = SystemTime::now();
    let deployment = Deployment {
        repo: repo.to_owned(),
        id: st.last_deployment_id,
        sent: sent.clone(),
        git_ref: git_ref.to_owned(),
        task: sent["task"].as_str().unwrap_or("deploy").to_owned(),
        description: sent["description"].as_str().unwrap_or_default().to_owned(),
        payload,
        transient: sent["transient_environment"].as_bool().unwrap_or(false),
        production: sent["production_environment"].as_bool().unwrap_or(environment == "production"),
        environment,
        created: now,
        updated: now,
        statuses: Vec::new(),
    };
    let reply = Reply::created(&deployment.json(&asked.base));
    st.log(repo, format!("deployment {} {} {}", deployment.id, deployment.git_ref, deployment.environment));
    st.deployments.push(deployment);
    reply
}

/// `POST /repos/{o}/{r}/deployments/{id}/statuses` for the deployment at `index`.
fn create_deployment_status(st: &mut GhState, asked: &Asked<'_>, index: usize) -> Reply {
    let sent = &asked.body;
    let Some(state) = sent["state"].as_str() else {
        return Reply::validation_failed("DeploymentStatus", "state", "missing_field", "state is missing");
    };
    if !DEPLOYMENT_STATES.contains(&state) {
        return Reply::validation_failed(
            "DeploymentStatus",
            "state",
            "invalid",
            &format!("state must be one of {}", DEPLOYMENT_STATES.join(", ")),
        );
    }
    let description = sent["description"].as_str().unwrap_or_default();
    if description.chars().count() > MAX_STATUS_DESCRIPTION {
        return Reply::validation_failed(
            "DeploymentStatus",
            "description",
            "custom",
            &format!("description is too long (maximum is {MAX_STATUS_DESCRIPTION} characters)"),
        );
    }
    st.last_status_id += 1;
    let now = SystemTime::now();
    let deployment = &st.deployments[index];
    let status = DeploymentStatus {
        id: st.last_status_id,
        sent: sent.clone(),
        state: state.to_owned(),
        environment: sent["environment"].as_str().unwrap_or(deployment.environment.as_str()).to_owned(),
        environment_url: sent["environment_url"].as_str().unwrap_or_default().to_owned(),
        // `target_url` is the older name of `log_url`.
        log_url: sent["log_url"].as_str().or_else(|| sent["target_url"].as_str()).unwrap_or_default().to_owned(),
        description: description.to_owned(),
        created: now,
    };
    let reply = Reply::created(&status.json(&asked.base, deployment));
    let (repo, line) = (deployment.repo.clone(), format!("status {} {state}", deployment.id));
    let deployment = &mut st.deployments[index];
    deployment.updated = now;
    deployment.statuses.push(status);
    st.log(&repo, line);
    reply
}
