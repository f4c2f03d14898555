//! `previewd envs …`: looks at and acts on environments through a running previewd's API (`--url` or
//! `PREVIEWD_URL`; the token from `PREVIEWD_DASHBOARD_TOKEN`). Tables for people, `--json` for scripts;
//! an unreachable or refusing server is said plainly, with what to do.

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::builder::PossibleValuesParser;
use previewd_domain::{Secret, Status};
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
        /// Only this repository's environments (owner/name).
        #[arg(long, value_name = "OWNER/NAME")]
        repo: Option<String>,
        /// Only environments in this status.
        #[arg(long, value_parser = PossibleValuesParser::new(Status::ALL.map(Status::as_str)))]
        status: Option<String>,
        /// Part of the branch name, case-blind.
        #[arg(long)]
        search: Option<String>,
        /// Deleted environments too.
        #[arg(long)]
        all: bool,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// One environment and its recent events.
    Show(Which),
    /// Deploy again at the branch's commit (a failed environment starts over).
    Redeploy(Which),
    /// Run the blueprint's seed steps again.
    Reseed(Which),
    /// Tear down now; the branch's next push brings it back.
    Destroy(Which),
    /// Exempt from the time-to-live and the reaper (--off lifts it).
    Keep {
        #[command(flatten)]
        which: Which,
        /// Lift the exemption: the time-to-live and the reaper apply again.
        #[arg(long)]
        off: bool,
    },
}

/// Which environment a command acts on.
#[derive(Debug, clap::Args)]
pub struct Which {
    /// The environment's id, as `envs list` shows it, or its branch's name, such as feature/login (a
    /// number is an id unless --repo is given).
    #[arg(value_name = "ID|BRANCH")]
    pub env: String,
    /// The repository (owner/name) whose branch it is: needed when several repositories have the branch.
    #[arg(long, value_name = "OWNER/NAME")]
    pub repo: Option<String>,
}

/// Runs the command against the server and writes what it shows to `out`.
pub async fn envs(args: &EnvsArgs, token: Option<&Secret>, out: &mut String) -> anyhow::Result<()> {
    let api = Api::new(&args.url, token)?;
    let value = match &args.command {
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
            api.call(reqwest::Method::GET, &format!("/api/environments?{}", q.finish())).await?
        }
        EnvsCommand::Show(which) => {
            let id = api.resolve(which).await?;
            api.call(reqwest::Method::GET, &format!("/api/environments/{id}")).await?
        }
        EnvsCommand::Redeploy(which) => api.act(which, "redeploy").await?,
        EnvsCommand::Reseed(which) => api.act(which, "reseed").await?,
        EnvsCommand::Destroy(which) => api.act(which, "destroy").await?,
        EnvsCommand::Keep { which, off } => api.act(which, if *off { "keep?value=false" } else { "keep" }).await?,
    };
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

/// A running previewd's API, as this command speaks to it.
struct Api<'a> {
    base: &'a str,
    client: reqwest::Client,
    token: Option<&'a Secret>,
}

impl<'a> Api<'a> {
    fn new(url: &'a str, token: Option<&'a Secret>) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder().timeout(REQUEST_TIMEOUT).build().context("cannot set up HTTP")?;
        Ok(Self { base: url.trim_end_matches('/'), client, token })
    }

    async fn call(&self, method: reqwest::Method, path: &str) -> anyhow::Result<Value> {
        let base = self.base;
        let mut req = self.client.request(method, format!("{base}{path}"));
        if let Some(t) = self.token {
            req = req.bearer_auth(t.expose());
        }
        let res = req
            .send()
            .await
            .with_context(|| format!("cannot reach previewd at {base}: is it running? (set --url or PREVIEWD_URL)"))?;
        let status = res.status();
        let body = res.text().await.context("cannot read previewd's answer")?;
        if status == reqwest::StatusCode::UNAUTHORIZED {
            match self.token {
                Some(_) => bail!(
                    "previewd at {base} refused the dashboard token it was given (PREVIEWD_DASHBOARD_TOKEN or \
                     dashboard_token in the configuration): it is not this server's"
                ),
                None => bail!("previewd at {base} wants its dashboard token: set PREVIEWD_DASHBOARD_TOKEN"),
            }
        }
        if !status.is_success() {
            bail!("previewd at {base} answered {status}: {}", previewd_domain::text::message(body.trim()));
        }
        serde_json::from_str(&body).context("previewd's answer is not JSON")
    }

    async fn act(&self, which: &Which, action: &str) -> anyhow::Result<Value> {
        let id = self.resolve(which).await?;
        self.call(reqwest::Method::POST, &format!("/api/environments/{id}/{action}")).await
    }

    /// The environment's id: as given, or the one its branch has (a live one before a deleted one; the
    /// newest deleted one when none lives).
    async fn resolve(&self, which: &Which) -> anyhow::Result<i64> {
        if which.repo.is_none()
            && let Ok(id) = which.env.parse::<i64>()
        {
            return Ok(id);
        }
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("branch", &which.env).append_pair("deleted", "true").append_pair("limit", "500");
        if let Some(repo) = &which.repo {
            q.append_pair("repo", repo);
        }
        let found = self.call(reqwest::Method::GET, &format!("/api/environments?{}", q.finish())).await?;
        // Only the branch asked for, whatever the server filtered (one that ignores `branch=` answers with
        // every environment).
        let found: Vec<&Value> = found
            .as_array()
            .map_or(&[][..], Vec::as_slice)
            .iter()
            .filter(|e| e["branch"].as_str() == Some(which.env.as_str()))
            .filter(|e| {
                which.repo.as_ref().is_none_or(|r| e["repo"].as_str().is_some_and(|x| x.eq_ignore_ascii_case(r)))
            })
            .collect();
        let branch = previewd_domain::text::printable(&which.env);
        let live: Vec<&Value> = found.iter().copied().filter(|e| e["status"] != "deleted").collect();
        // None live: the newest deleted one of each repository (newest activity comes first).
        let candidates: Vec<&Value> = match live.is_empty() {
            true => {
                let mut seen = std::collections::BTreeSet::new();
                found
                    .into_iter()
                    .filter(|e| seen.insert(e["repo"].as_str().unwrap_or("").to_ascii_lowercase()))
                    .collect()
            }
            false => live,
        };
        match candidates.as_slice() {
            [] => match &which.repo {
                Some(repo) => bail!("no environment for branch {branch} in {}", previewd_domain::text::printable(repo)),
                None => bail!(
                    "no environment for branch {branch} (`envs list --search` finds branches by part of their name)"
                ),
            },
            [one] => one["id"].as_i64().context("previewd's answer has no id"),
            many => {
                let repos: Vec<String> = many.iter().map(|e| text(&e["repo"])).collect();
                bail!("branch {branch} has an environment in {}: say which with --repo", repos.join(" and "))
            }
        }
    }
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
