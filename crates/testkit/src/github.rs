//! A stateful fake of the GitHub REST API, for octocrab: branches with their heads, files at commits,
//! paginated branch listings, and injected failures. It can sit under a path prefix, as GitHub
//! Enterprise Server's `/api/v3` does. Paths are decoded segment by segment, so a branch holding `/`,
//! `#` or `%` reaches it intact.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::json;

#[derive(Debug, Default)]
struct GhState {
    /// (repo, branch) → head sha
    branches: BTreeMap<(String, String), String>,
    /// repositories GitHub shows (any that ever had a branch)
    repos: std::collections::BTreeSet<String>,
    /// (repo, sha, path) → text
    files: BTreeMap<(String, String, String), String>,
    /// every request path, decoded
    requests: Vec<String>,
    /// answer this many requests with 502
    fail_next: usize,
    /// repositories answered with 404 throughout, as for a token that lost access
    hidden: std::collections::BTreeSet<String>,
}

#[derive(Debug, Clone)]
pub struct FakeGitHub {
    state: Arc<Mutex<GhState>>,
    addr: SocketAddr,
    prefix: String,
}

impl FakeGitHub {
    /// Serves on a free port; `prefix` is `""` for github.com or `"/api/v3"` for Enterprise.
    pub async fn start(prefix: &str) -> Self {
        Self::start_on("127.0.0.1:0", prefix).await
    }

    pub async fn start_on(addr: &str, prefix: &str) -> Self {
        let state = Arc::new(Mutex::new(GhState::default()));
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let fake = Self { state: state.clone(), addr, prefix: prefix.to_owned() };
        let app = Router::new().fallback(handle).with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        fake
    }

    /// The base URL to configure as `PREVIEWD_GITHUB_API_URL`.
    pub fn api_url(&self) -> String {
        format!("http://{}{}", self.addr, self.prefix)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GhState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_branch(&self, repo: &str, branch: &str, sha: &str) {
        let mut st = self.lock();
        st.repos.insert(repo.to_owned());
        st.branches.insert((repo.to_owned(), branch.to_owned()), sha.to_owned());
    }

    pub fn delete_branch(&self, repo: &str, branch: &str) {
        self.lock().branches.remove(&(repo.to_owned(), branch.to_owned()));
    }

    pub fn set_file(&self, repo: &str, sha: &str, path: &str, text: &str) {
        self.lock().files.insert((repo.to_owned(), sha.to_owned(), path.to_owned()), text.to_owned());
    }

    /// Answers 404 for the repository and everything in it (`false`: shows it again).
    pub fn hide_repo(&self, repo: &str, hidden: bool) {
        let mut st = self.lock();
        if hidden {
            st.hidden.insert(repo.to_owned());
        } else {
            st.hidden.remove(repo);
        }
    }

    pub fn fail_next(&self, n: usize) {
        self.lock().fail_next = n;
    }

    pub fn requests(&self) -> Vec<String> {
        self.lock().requests.clone()
    }
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        axum::Json(
            json!({"message": "Not Found", "documentation_url": "https://docs.github.com/rest", "status": "404"}),
        ),
    )
        .into_response()
}

fn branch_json(name: &str, sha: &str) -> serde_json::Value {
    json!({
        "name": name,
        "commit": { "sha": sha, "url": format!("https://api.github.com/commits/{sha}") },
        "protected": false,
        "_links": { "self": "https://api.github.com/branches", "html": "https://github.com/branches" },
    })
}

async fn handle(State(fake): State<FakeGitHub>, req: Request) -> Response {
    let raw = req.uri().path().to_owned();
    let query: BTreeMap<String, String> =
        form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect();
    let Some(path) = raw.strip_prefix(&fake.prefix) else { return not_found() };
    let segs: Vec<String> = path
        .split('/')
        .skip(1)
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let mut st = fake.lock();
    st.requests.push(segs.join("/"));
    if st.fail_next > 0 {
        st.fail_next -= 1;
        return (StatusCode::BAD_GATEWAY, axum::Json(json!({"message": "Server Error"}))).into_response();
    }
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    if let ["repos", owner, name, ..] = segs.as_slice()
        && st.hidden.contains(&format!("{owner}/{name}"))
    {
        return not_found();
    }
    match segs.as_slice() {
        ["repos", owner, name] => {
            let repo = format!("{owner}/{name}");
            if st.repos.contains(&repo) {
                axum::Json(json!({"full_name": repo, "private": true, "default_branch": "main"})).into_response()
            } else {
                not_found()
            }
        }
        ["repos", owner, name, "branches"] => {
            let repo = format!("{owner}/{name}");
            let per_page: usize = query.get("per_page").and_then(|p| p.parse().ok()).unwrap_or(30);
            let page: usize = query.get("page").and_then(|p| p.parse().ok()).unwrap_or(1);
            let all: Vec<_> =
                st.branches.iter().filter(|((r, _), _)| *r == repo).map(|((_, b), sha)| branch_json(b, sha)).collect();
            let items: Vec<_> = all.into_iter().skip((page - 1) * per_page).take(per_page).collect();
            axum::Json(items).into_response()
        }
        ["repos", owner, name, "branches", branch] => {
            match st.branches.get(&(format!("{owner}/{name}"), (*branch).to_owned())) {
                Some(sha) => axum::Json(branch_json(branch, sha)).into_response(),
                None => not_found(),
            }
        }
        ["repos", owner, name, "contents", rest @ ..] => {
            let repo = format!("{owner}/{name}");
            let path = rest.join("/");
            let sha = query.get("ref").cloned().unwrap_or_default();
            match st.files.get(&(repo, sha.clone(), path.clone())) {
                Some(text) => axum::Json(json!({
                    "type": "file",
                    "encoding": "base64",
                    "size": text.len(),
                    "name": path.rsplit('/').next(),
                    "path": path,
                    "sha": sha,
                    "content": base64::engine::general_purpose::STANDARD.encode(text),
                }))
                .into_response(),
                None => not_found(),
            }
        }
        _ => not_found(),
    }
}
