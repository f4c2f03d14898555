//! Pull requests a test opened, listed and read as GitHub serves them.

use axum::http::Method;
use serde_json::{Value, json};

use super::paging::{Paging, listing};
use super::reply::{Reply, user_json};
use super::routes::Asked;
use super::state::{GhState, owner_of};

/// A pull request a test opened, with [`FakeGitHub::open_pull`](super::FakeGitHub::open_pull).
#[derive(Debug)]
pub(super) struct Pull {
    pub(super) head_branch: String,
    pub(super) open: bool,
}

/// `/repos/{o}/{r}/pulls` and `/repos/{o}/{r}/pulls/{n}`.
pub(super) fn pulls(st: &GhState, asked: &Asked<'_>, repo: &str, rest: &[&str], paging: Paging) -> Reply {
    if !st.repos.contains(repo) || asked.method != Method::GET {
        return Reply::not_found();
    }
    let owner = owner_of(repo);
    let json_of = |number: u64, pull: &Pull| {
        let sha = st.branches.get(&(repo.to_owned(), pull.head_branch.clone())).cloned().unwrap_or_default();
        json!({
            "url": format!("{}/repos/{repo}/pulls/{number}", asked.base),
            "id": number,
            "number": number,
            "state": if pull.open { "open" } else { "closed" },
            "title": pull.head_branch,
            "html_url": format!("https://github.com/{repo}/pull/{number}"),
            "user": user_json(owner),
            "head": {
                "label": format!("{owner}:{}", pull.head_branch),
                "ref": pull.head_branch,
                "sha": sha,
                "repo": { "full_name": repo, "owner": { "login": owner } },
            },
            "base": { "label": format!("{owner}:main"), "ref": "main", "repo": { "full_name": repo } },
        })
    };
    match rest {
        [] => {
            // GitHub ignores a `head` without `owner:`, and lists everything: a classic client mistake.
            let head = asked.filter("head").and_then(|h| h.split_once(':'));
            let state = asked.param("state").unwrap_or("open");
            // Newest first, as GitHub sorts by default; numbers stand in for creation times.
            let items: Vec<Value> = st
                .pulls
                .iter()
                .rev()
                .filter(|((r, _), _)| r == repo)
                .filter(|(_, pull)| match state {
                    "all" => true,
                    "closed" => !pull.open,
                    _ => pull.open,
                })
                .filter(|(_, pull)| {
                    head.is_none_or(|(who, branch)| who.eq_ignore_ascii_case(owner) && branch == pull.head_branch)
                })
                .map(|((_, number), pull)| json_of(*number, pull))
                .collect();
            listing(asked, paging, items)
        }
        [number] => {
            match number.parse::<u64>().ok().and_then(|n| st.pulls.get(&(repo.to_owned(), n)).map(|p| (n, p))) {
                Some((number, pull)) => Reply::ok(&json_of(number, pull)),
                None => Reply::not_found(),
            }
        }
        _ => Reply::not_found(),
    }
}
