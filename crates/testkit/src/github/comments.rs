//! Issue and pull request comments: listed in pages, created and edited through the API, added by a test
//! as a person would.

use std::time::SystemTime;

use axum::http::Method;
use serde_json::{Value, json};

use super::paging::{Paging, listing};
use super::reply::{BOT_LOGIN, Reply, rfc3339, user_json};
use super::routes::Asked;
use super::state::GhState;

/// Who writes the comments a test adds with [`FakeGitHub::add_comment`](super::FakeGitHub::add_comment).
pub(super) const HUMAN_LOGIN: &str = "octocat";
/// The longest comment body GitHub takes, in characters.
const MAX_COMMENT_BODY: usize = 65_536;

/// An issue or pull request comment.
#[derive(Debug)]
pub(super) struct Comment {
    pub(super) repo: String,
    pub(super) issue: u64,
    pub(super) body: String,
    pub(super) login: String,
    /// The GitHub App it was written through, if any (`performed_via_github_app`).
    pub(super) app: Option<u64>,
    pub(super) created: SystemTime,
    pub(super) updated: SystemTime,
}

impl Comment {
    fn json(&self, id: u64, base: &str, on_pull: bool) -> Value {
        let kind = if on_pull { "pull" } else { "issues" };
        json!({
            "id": id,
            "node_id": format!("IC_fake{id}"),
            "url": format!("{base}/repos/{}/issues/comments/{id}", self.repo),
            "html_url": format!("https://github.com/{}/{kind}/{}#issuecomment-{id}", self.repo, self.issue),
            "issue_url": format!("{base}/repos/{}/issues/{}", self.repo, self.issue),
            "body": self.body,
            "user": user_json(&self.login),
            "performed_via_github_app": self.app.map(|id| json!({ "id": id, "slug": "previewd", "name": "previewd" })),
            "author_association": "NONE",
            "created_at": rfc3339(self.created),
            "updated_at": rfc3339(self.updated),
        })
    }
}

/// `/repos/{o}/{r}/issues/{n}/comments` (list, create) and `/repos/{o}/{r}/issues/comments/{id}` (get, edit).
pub(super) fn issues(st: &mut GhState, asked: &Asked<'_>, repo: &str, rest: &[&str], paging: Paging) -> Reply {
    if !st.repos.contains(repo) {
        return Reply::not_found();
    }
    match rest {
        ["comments", id] => {
            let Some(id) = id.parse::<u64>().ok().filter(|id| st.comments.get(id).is_some_and(|c| c.repo == repo))
            else {
                return Reply::not_found();
            };
            if asked.method == Method::GET {
                let comment = &st.comments[&id];
                let on_pull = st.pulls.contains_key(&(repo.to_owned(), comment.issue));
                return Reply::ok(&comment.json(id, &asked.base, on_pull));
            }
            if asked.method != Method::PATCH {
                return Reply::not_found();
            }
            let Some(body) = asked.body["body"].as_str() else { return Reply::invalid_request("body") };
            if let Some(refused) = refuse_comment_body(body) {
                return refused;
            }
            let body = body.to_owned();
            let Some(comment) = st.comments.get_mut(&id) else { return Reply::not_found() };
            comment.body = body;
            comment.updated = SystemTime::now();
            let issue = comment.issue;
            let on_pull = st.pulls.contains_key(&(repo.to_owned(), issue));
            let reply = Reply::ok(&st.comments[&id].json(id, &asked.base, on_pull));
            st.log(repo, format!("comment edit {id}"));
            reply
        }
        [number, "comments"] => {
            let Some(issue) = number.parse::<u64>().ok().filter(|n| st.issue_exists(repo, *n)) else {
                return Reply::not_found();
            };
            let on_pull = st.pulls.contains_key(&(repo.to_owned(), issue));
            if asked.method == Method::GET {
                let items: Vec<Value> = st
                    .comments
                    .iter()
                    .filter(|(_, c)| c.repo == repo && c.issue == issue)
                    .map(|(id, c)| c.json(*id, &asked.base, on_pull))
                    .collect();
                return listing(asked, paging, items);
            }
            if asked.method != Method::POST {
                return Reply::not_found();
            }
            let Some(body) = asked.body["body"].as_str() else { return Reply::invalid_request("body") };
            if let Some(refused) = refuse_comment_body(body) {
                return refused;
            }
            let body = body.to_owned();
            let id = st.next_comment_id;
            st.next_comment_id += 1;
            let now = SystemTime::now();
            let app = st.app.as_ref().map(|a| a.app_id);
            let (owned, login) = (repo.to_owned(), BOT_LOGIN.to_owned());
            let comment = Comment { repo: owned, issue, body, login, app, created: now, updated: now };
            let reply = Reply::created(&comment.json(id, &asked.base, on_pull));
            st.comments.insert(id, comment);
            st.log(repo, format!("comment create {issue} {id}"));
            reply
        }
        _ => Reply::not_found(),
    }
}

/// GitHub's 422 for a comment body it does not take, if it does not.
fn refuse_comment_body(body: &str) -> Option<Reply> {
    (body.chars().count() > MAX_COMMENT_BODY).then(|| {
        Reply::validation_failed(
            "IssueComment",
            "body",
            "custom",
            &format!("body is too long (maximum is {MAX_COMMENT_BODY} characters)"),
        )
    })
}
