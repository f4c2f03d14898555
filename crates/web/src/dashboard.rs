//! The dashboard: one server-rendered page listing environments (branch, status, URL, commit, age, last
//! error). Every value is HTML-escaped; branch names may hold `<script>`.

use std::fmt::Write as _;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use crate::{AppState, EnvView};

/// The page reloads itself this often, in seconds, so it follows provisioning without a script.
const REFRESH_SECONDS: u32 = 5;

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn age(ms: i64) -> String {
    let secs = ((previewd_store::now_ms() - ms).max(0) / 1000) as u64;
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

pub(crate) async fn page(State(state): State<AppState>) -> Response {
    let envs = match state.store.list().await {
        Ok(envs) => envs,
        Err(e) => {
            tracing::error!(error = ?e, "cannot list environments");
            return (StatusCode::SERVICE_UNAVAILABLE, "cannot read environments now").into_response();
        }
    };
    let mut rows = String::new();
    for e in &envs {
        let v = EnvView::from(e);
        let url = match &v.url {
            Some(u) if v.status == "ready" => format!("<a href=\"{0}\">{0}</a>", esc(u)),
            _ => format!("<span class=\"muted\">{}</span>", esc(&v.dns_name)),
        };
        let sha = v.sha.as_deref().map_or(String::new(), |s| esc(&s[..7.min(s.len())]));
        let _ = write!(
            rows,
            "<tr data-env=\"{}\"><td>{}</td><td>{}</td><td class=\"status {}\">{}</td><td>{url}</td><td><code>{sha}</code></td><td>{}</td><td class=\"error\">{}</td></tr>",
            esc(&v.env),
            esc(&v.repo),
            esc(&v.branch),
            esc(&v.status),
            esc(&v.status),
            age(e.created_at),
            esc(v.last_error.as_deref().unwrap_or(""))
        );
    }
    // The reaper's last pass: when, how it ended, what it removed or why it refused.
    let reaper = match state.store.last_reaper_pass().await {
        Ok(Some(p)) => format!(
            "<p class=\"reaper {}\">Reaper, {}: {}</p>",
            esc(&p.outcome),
            esc(&crate::rfc3339(p.finished_at)),
            esc(&p.summary)
        ),
        _ => "<p class=\"reaper muted\">The reaper has not run yet.</p>".to_owned(),
    };
    if envs.is_empty() {
        rows.push_str("<tr><td colspan=\"7\" class=\"muted\">No environments yet: push a branch.</td></tr>");
    }
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
<title>previewd</title><style>body{{font:14px system-ui,sans-serif;margin:2rem}}table{{border-collapse:collapse;width:100%}}\
th,td{{text-align:left;padding:.4rem .6rem;border-bottom:1px solid #ddd;vertical-align:top}}.muted{{color:#888}}\
.error{{color:#a00;max-width:30rem}}.ready{{color:#070}}.failed{{color:#a00}}.refused{{color:#a00}}</style></head><body>\
<h1>previewd</h1>{reaper}<table><thead><tr><th>Repository</th><th>Branch</th><th>Status</th><th>URL</th><th>SHA</th><th>Age</th><th>Last error</th></tr></thead>\
<tbody>{rows}</tbody></table><p class=\"muted\">JSON: <a href=\"/api/environments\">/api/environments</a></p></body></html>"
    ))
    .into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_markup() {
        assert_eq!(super::esc("<script>\"'&"), "&lt;script&gt;&quot;&#39;&amp;");
    }
}
