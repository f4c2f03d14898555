//! `previewd envs …`: looks at and acts on environments through a running previewd's API (`--url` or
//! `PREVIEWD_URL`; the token from `PREVIEWD_DASHBOARD_TOKEN`). Tables for people, `--json` for scripts;
//! an unreachable or refusing server is said plainly, with what to do.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use previewd_domain::Secret;
use serde_json::Value;

/// The API answers in milliseconds; past this the server is not answering.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, clap::Args)]
pub struct EnvsArgs {
    /// Where previewd runs.
    #[arg(long, env = "PREVIEWD_URL", default_value = "http://127.0.0.1:8080")]
    pub url: String,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: EnvsCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum EnvsCommand {
    /// Environments, newest activity first (deleted ones with --all).
    List {
        #[arg(long)]
        repo: Option<String>,
        #[arg(long)]
        status: Option<String>,
        /// Part of the branch name.
        #[arg(long)]
        search: Option<String>,
        #[arg(long)]
        all: bool,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One environment and its recent events.
    Show { id: i64 },
    /// Deploy again at the branch's commit (a failed environment starts over).
    Redeploy { id: i64 },
    /// Run the blueprint's seed steps again.
    Reseed { id: i64 },
    /// Tear down now; the branch's next push brings it back.
    Destroy { id: i64 },
    /// Exempt from the time-to-live and the reaper (--off lifts it).
    Keep {
        id: i64,
        #[arg(long)]
        off: bool,
    },
}

/// Runs the command against the server and writes what it shows to `out`.
pub async fn envs(args: &EnvsArgs, token: Option<&Secret>, out: &mut String) -> anyhow::Result<()> {
    let base = args.url.trim_end_matches('/');
    let client = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().context("cannot set up HTTP")?;
    let (method, path) = match &args.command {
        EnvsCommand::List { repo, status, search, all, limit } => {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("limit", &limit.to_string());
            for (k, v) in [("repo", repo), ("status", status), ("q", search)] {
                if let Some(v) = v {
                    q.append_pair(k, v);
                }
            }
            if *all {
                q.append_pair("deleted", "true");
            }
            (reqwest::Method::GET, format!("/api/environments?{}", q.finish()))
        }
        EnvsCommand::Show { id } => (reqwest::Method::GET, format!("/api/environments/{id}")),
        EnvsCommand::Redeploy { id } => (reqwest::Method::POST, format!("/api/environments/{id}/redeploy")),
        EnvsCommand::Reseed { id } => (reqwest::Method::POST, format!("/api/environments/{id}/reseed")),
        EnvsCommand::Destroy { id } => (reqwest::Method::POST, format!("/api/environments/{id}/destroy")),
        EnvsCommand::Keep { id, off } => {
            (reqwest::Method::POST, format!("/api/environments/{id}/keep{}", if *off { "?value=false" } else { "" }))
        }
    };
    let mut req = client.request(method, format!("{base}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t.expose());
    }
    let res = req
        .send()
        .await
        .with_context(|| format!("cannot reach previewd at {base}: is it running? (set --url or PREVIEWD_URL)"))?;
    let status = res.status();
    let body = res.text().await.context("cannot read previewd's answer")?;
    if status == reqwest::StatusCode::UNAUTHORIZED {
        bail!("previewd at {base} wants its dashboard token: set PREVIEWD_DASHBOARD_TOKEN");
    }
    if !status.is_success() {
        bail!("previewd at {base} answered {status}: {}", previewd_domain::text::message(body.trim()));
    }
    let value: Value = serde_json::from_str(&body).context("previewd's answer is not JSON")?;
    if args.json {
        let _ = writeln!(out, "{}", serde_json::to_string_pretty(&value).unwrap_or_default());
        return Ok(());
    }
    match &args.command {
        EnvsCommand::List { .. } => table(value.as_array().map_or(&[][..], Vec::as_slice), out),
        EnvsCommand::Show { .. } => show(&value, out),
        _ => {
            let _ = writeln!(out, "{}: recorded for environment {}", text(&value["action"]), value["id"]);
        }
    }
    Ok(())
}

/// A value as the terminal shows it: control characters (an escape sequence in a branch's settings
/// error could retitle or clear the operator's terminal) written out, not obeyed.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => previewd_domain::text::printable(s).into_owned(),
        Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

/// A value cut to `n` characters, on one line.
fn cut(s: &str, n: usize) -> String {
    let one_line: String = s.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    if one_line.chars().count() <= n {
        one_line
    } else {
        format!("{}…", one_line.chars().take(n - 1).collect::<String>())
    }
}

fn table(envs: &[Value], out: &mut String) {
    let _ = writeln!(out, "{:>5}  {:<12}  {:<20}  {:<32}  {:<44}  LAST ERROR", "ID", "STATUS", "REPO", "BRANCH", "URL");
    for e in envs {
        let _ = writeln!(
            out,
            "{:>5}  {:<12}  {:<20}  {:<32}  {:<44}  {}",
            text(&e["id"]),
            text(&e["status"]),
            cut(&text(&e["repo"]), 20),
            cut(&text(&e["branch"]), 32),
            cut(&text(&e["url"]), 44),
            cut(&text(&e["last_error"]), 60)
        );
    }
    if envs.is_empty() {
        let _ = writeln!(out, "(no environments)");
    }
}

fn show(e: &Value, out: &mut String) {
    for key in [
        "id",
        "repo",
        "branch",
        "env",
        "status",
        "sha",
        "deployed_sha",
        "url",
        "stack_name",
        "keep",
        "last_error",
        "created_at",
        "updated_at",
    ] {
        let _ = writeln!(out, "{key:<13} {}", text(&e[key]));
    }
    if e["stack"].is_object() {
        let seen = &e["stack"];
        let _ = writeln!(out, "{:<13} {} (seen {})", "stack_status", text(&seen["status"]), text(&seen["observed_at"]));
    }
    let _ = writeln!(out, "events:");
    for ev in e["events"].as_array().map_or(&[][..], Vec::as_slice) {
        let at = ev["at"].as_i64().unwrap_or(0);
        let when = humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(at.max(0) as u64));
        let _ = writeln!(out, "  {when}  {:<10} {}", text(&ev["kind"]), text(&ev["message"]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_previewd_recorded_reaches_the_terminal_as_text_not_as_control_sequences() {
        let hostile = "bad \u{1b}]0;owned\u{7}\u{1b}[2J\r\nforged line \u{9b}31m \u{202e}";
        let env = serde_json::json!({
            "id": 1, "branch": hostile, "last_error": hostile,
            "events": [{ "at": 0, "kind": "failed", "message": hostile }],
        });
        let mut out = String::new();
        show(&env, &mut out);
        table(std::slice::from_ref(&env), &mut out);
        assert!(!out.chars().any(|c| previewd_domain::text::is_unsafe(c) && c != '\n'), "{out:?}");
        assert!(out.contains("\\u{1b}]0;owned"), "{out}");
        assert!(!out.lines().any(|l| l.starts_with("forged line")), "no line of its own: {out}");
    }
}
