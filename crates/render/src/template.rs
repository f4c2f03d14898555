//! Template expansion. A blueprint template is a CloudFormation template in JSON with a few directives,
//! each an object with one key, replaced structurally by a JSON value:
//!
//! - `{"Previewd::Setting": "service.cpu"}`: the merged setting (a scalar or a list of scalars);
//! - `{"Previewd::Context": "dns_name"}`: a name previewd derived (see [`Context`]);
//! - `{"Previewd::Join": [part, ...]}`: the parts, each a string, number or boolean, concatenated;
//! - a key `"Previewd::When": "database.enabled"` (or `"!database.enabled"`) inside any object keeps the
//!   object (without that key) when the boolean setting is true (false), and drops it from its parent
//!   otherwise.
//!
//! Values never pass through text: a setting or a branch name can become a JSON string, number, boolean or
//! list of those, and nothing else, so it cannot add a key, a resource or a line to the template.

use std::collections::BTreeMap;

use previewd_domain::{EMPTY_ON_DELETE_MARK, EMPTY_ON_DELETE_OUTPUT, EnvNames, RepoName, Stage};
use serde_json::{Map, Value as Json};
use toml::Value as Toml;

use crate::settings::{is_dynamic_reference, is_overridable};
use crate::{LayerKind, RenderError, Settings};

/// CloudFormation refuses a TemplateBody longer than this; larger templates must go through S3.
pub const TEMPLATE_BODY_MAX: usize = 51_200;

const DIRECTIVE: &str = "Previewd::";
const WHEN: &str = "Previewd::When";

/// The names a template may refer to with `Previewd::Context`.
#[derive(Debug, Clone, Default)]
pub struct Context(BTreeMap<&'static str, Json>);

impl Context {
    /// What an application stack (one per repository and stage) may use.
    pub fn application(owner: &str, repo: &RepoName, stage: Stage, app_stack_name: &str) -> Self {
        let mut c = BTreeMap::new();
        c.insert("owner", Json::from(owner));
        c.insert("repo", Json::from(repo.as_str()));
        c.insert("stage", Json::from(stage.as_str()));
        c.insert("app_stack_name", Json::from(app_stack_name));
        Self(c)
    }

    /// What an environment stack may use: everything its application stack may, and the branch's names.
    /// `rule_priority` is the environment's listener rule priority, unique per listener.
    pub fn with_environment(mut self, branch: &str, sha: &str, names: &EnvNames, rule_priority: u32) -> Self {
        let c = &mut self.0;
        c.insert("branch", Json::from(branch));
        c.insert("sha", Json::from(sha));
        c.insert("env_key", Json::from(names.env_key.as_str()));
        c.insert("stack_name", Json::from(names.stack_name.as_str()));
        c.insert("dns_name", Json::from(names.dns_name.as_str()));
        c.insert("bucket_prefix", Json::from(names.bucket_prefix.as_str()));
        c.insert("rule_priority", Json::from(rule_priority));
        self
    }
}

/// A rendered template and its compact body, as sent to CloudFormation.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub template: Json,
    pub body: String,
}

impl Rendered {
    /// Must the template be uploaded to S3 and passed as a TemplateURL?
    pub fn needs_template_url(&self) -> bool {
        self.body.len() > TEMPLATE_BODY_MAX
    }

    /// Indented JSON, for people.
    pub fn pretty(&self) -> String {
        serde_json::to_string_pretty(&self.template).unwrap_or_else(|_| self.body.clone())
    }
}

/// `dynamic` lists the settings a branch may make a dynamic reference (see
/// [`crate::Blueprint::dynamic_references`]): a join that makes one out of another branch value fails.
pub(crate) fn render(
    file: &str,
    template: &Json,
    settings: &Settings,
    ctx: &Context,
    dynamic: &[String],
) -> Result<Rendered, RenderError> {
    let fail = |pointer: &str, reason: String| RenderError::Template {
        file: file.to_owned(),
        pointer: pointer.to_owned(),
        reason,
    };
    let Json::Object(top) = template else {
        return Err(fail("/", "a template is a JSON object".to_owned()));
    };
    if top.contains_key("Parameters") {
        return Err(fail(
            "/Parameters",
            "values are fixed at render time: use Previewd::Setting instead of CloudFormation Parameters".to_owned(),
        ));
    }
    if !top.contains_key("Resources") {
        return Err(fail("/", "a template needs Resources".to_owned()));
    }
    let expander = Expander { file, settings, ctx, dynamic };
    let template = expander.walk(template, "")?.unwrap_or(Json::Null);
    let body = serde_json::to_string(&template).map_err(|e| fail("/", e.to_string()))?;
    Ok(Rendered { template, body })
}

struct Expander<'a> {
    file: &'a str,
    settings: &'a Settings,
    ctx: &'a Context,
    dynamic: &'a [String],
}

impl Expander<'_> {
    fn fail(&self, pointer: &str, reason: impl Into<String>) -> RenderError {
        RenderError::Template {
            file: self.file.to_owned(),
            pointer: if pointer.is_empty() { "/".into() } else { pointer.into() },
            reason: reason.into(),
        }
    }

    /// The expanded value, or `None` when a `Previewd::When` drops it.
    fn walk(&self, v: &Json, at: &str) -> Result<Option<Json>, RenderError> {
        match v {
            Json::Object(obj) => self.object(obj, at),
            Json::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    out.extend(self.walk(item, &format!("{at}/{i}"))?);
                }
                Ok(Some(Json::Array(out)))
            }
            other => Ok(Some(other.clone())),
        }
    }

    fn object(&self, obj: &Map<String, Json>, at: &str) -> Result<Option<Json>, RenderError> {
        if obj.len() == 1
            && let Some((k, arg)) = obj.iter().next()
            && k.starts_with(DIRECTIVE)
            && k != WHEN
        {
            return self.directive(k, arg, &format!("{at}/{}", escape(k))).map(Some);
        }
        let mut out = Map::with_capacity(obj.len());
        for (k, v) in obj {
            let here = format!("{at}/{}", escape(k));
            if k == WHEN {
                if !self.condition(v, &here)? {
                    return Ok(None);
                }
            } else if k.starts_with(DIRECTIVE) {
                return Err(self.fail(&here, format!("unknown directive `{k}`, or a directive with sibling keys")));
            } else if let Some(v) = self.walk(v, &here)? {
                out.insert(k.clone(), v);
            }
        }
        // CloudFormation's own joins run before it resolves references: a branch's value must not make
        // one there either.
        if obj.len() == 1
            && let Some((k, arg)) = obj.iter().next()
            && (k == "Fn::Join" || k == "Fn::Sub")
            && self.branch_set(arg)
            && out.get(k).is_some_and(|joined| is_dynamic_reference(&joined_text(k, joined)))
        {
            return Err(self.joined_reference(&format!("{at}/{}", escape(k))));
        }
        Ok(Some(Json::Object(out)))
    }

    fn directive(&self, name: &str, arg: &Json, at: &str) -> Result<Json, RenderError> {
        match name {
            "Previewd::Setting" => {
                let key = arg.as_str().ok_or_else(|| self.fail(at, "expects a setting name"))?;
                let setting = self.settings.get(key).ok_or_else(|| self.fail(at, format!("no setting `{key}`")))?;
                Ok(to_json(&setting.value))
            }
            "Previewd::Context" => {
                let key = arg.as_str().ok_or_else(|| self.fail(at, "expects a context name"))?;
                self.ctx.0.get(key).cloned().ok_or_else(|| {
                    let known: Vec<_> = self.ctx.0.keys().copied().collect();
                    self.fail(at, format!("no context value `{key}` here (known: {})", known.join(", ")))
                })
            }
            "Previewd::Join" => {
                let parts = arg.as_array().ok_or_else(|| self.fail(at, "expects a list"))?;
                let mut s = String::new();
                for (i, part) in parts.iter().enumerate() {
                    match self.walk(part, &format!("{at}/{i}"))? {
                        Some(Json::String(p)) => s.push_str(&p),
                        Some(Json::Number(n)) => s.push_str(&n.to_string()),
                        Some(Json::Bool(b)) => s.push_str(if b { "true" } else { "false" }),
                        _ => {
                            return Err(
                                self.fail(&format!("{at}/{i}"), "a joined part must be a string, number or boolean")
                            );
                        }
                    }
                }
                if is_dynamic_reference(&s) && parts.iter().any(|p| self.branch_set(p)) {
                    return Err(self.joined_reference(at));
                }
                Ok(Json::String(s))
            }
            other => Err(self.fail(at, format!("unknown directive `{other}`"))),
        }
    }

    /// A join (previewd's or CloudFormation's) made a dynamic reference out of a branch's value.
    fn joined_reference(&self, at: &str) -> RenderError {
        self.fail(
            at,
            "joins a value a branch set into a CloudFormation dynamic reference ({{resolve:…}}): it would be \
             resolved with the stack's role",
        )
    }

    /// Does `v` use a setting a branch set, outside the keys it may make a dynamic reference?
    fn branch_set(&self, v: &Json) -> bool {
        match v {
            Json::Object(obj) => obj.iter().any(|(k, arg)| {
                if k == "Previewd::Setting" {
                    arg.as_str().and_then(|key| self.settings.get(key).map(|s| (key, s))).is_some_and(|(key, s)| {
                        s.origin.kind == LayerKind::Branch && !is_overridable(key, self.dynamic)
                    })
                } else {
                    self.branch_set(arg)
                }
            }),
            Json::Array(items) => items.iter().any(|i| self.branch_set(i)),
            _ => false,
        }
    }

    fn condition(&self, v: &Json, at: &str) -> Result<bool, RenderError> {
        let raw = v.as_str().ok_or_else(|| self.fail(at, "expects a setting name"))?;
        let (negate, key) = match raw.strip_prefix('!') {
            Some(k) => (true, k),
            None => (false, raw),
        };
        match self.settings.get(key).map(|s| &s.value) {
            Some(Toml::Boolean(b)) => Ok(*b != negate),
            Some(_) => Err(self.fail(at, format!("setting `{key}` is not a boolean"))),
            None => Err(self.fail(at, format!("no setting `{key}`"))),
        }
    }
}

/// Adds [`EMPTY_ON_DELETE_OUTPUT`] to a rendered environment template: the buckets that go with the
/// stack, so a teardown knows what to empty from the stack's description alone and never empties a
/// bucket the template retains. Left out (a teardown then reads the template from CloudFormation) when a
/// bucket's existence or policy is CloudFormation's to decide at deploy time (a `Condition`, a policy
/// that is not a string, a `Transform` whose macros may add buckets).
pub(crate) fn declare_emptied_buckets(rendered: Rendered, file: &str) -> Result<Rendered, RenderError> {
    let mut template = rendered.template;
    let Some(top) = template.as_object_mut().filter(|t| !t.contains_key("Transform")) else {
        return Ok(Rendered { template, body: rendered.body });
    };
    let reserved = format!("/Outputs/{EMPTY_ON_DELETE_OUTPUT}");
    if top.get("Outputs").and_then(|o| o.get(EMPTY_ON_DELETE_OUTPUT)).is_some() {
        let reason = "previewd writes this output itself (the buckets a teardown empties): rename it".to_owned();
        return Err(RenderError::Template { file: file.to_owned(), pointer: reserved, reason });
    }
    let mut emptied = vec![Json::from(EMPTY_ON_DELETE_MARK)];
    for (logical, resource) in top.get("Resources").and_then(Json::as_object).into_iter().flatten() {
        if resource.get("Type").and_then(Json::as_str) != Some("AWS::S3::Bucket") {
            continue;
        }
        if resource.get("Condition").is_some() {
            return Ok(Rendered { template, body: rendered.body });
        }
        match resource.get("DeletionPolicy") {
            None => {}
            Some(Json::String(p)) if p == "Delete" => {}
            Some(Json::String(_)) => continue, // retained with what it holds
            Some(_) => return Ok(Rendered { template, body: rendered.body }),
        }
        emptied.push(serde_json::json!({ "Ref": logical }));
    }
    let value = if emptied.len() == 1 { emptied.remove(0) } else { serde_json::json!({ "Fn::Join": [",", emptied] }) };
    let outputs = top.entry("Outputs").or_insert_with(|| Json::Object(Map::new()));
    let Some(outputs) = outputs.as_object_mut() else {
        let reason = "Outputs must be an object".to_owned();
        return Err(RenderError::Template { file: file.to_owned(), pointer: "/Outputs".to_owned(), reason });
    };
    let description = "The buckets deleted with this stack, which previewd empties first (written by previewd).";
    outputs
        .insert(EMPTY_ON_DELETE_OUTPUT.to_owned(), serde_json::json!({ "Description": description, "Value": value }));
    let body = serde_json::to_string(&template).map_err(|e| RenderError::Template {
        file: file.to_owned(),
        pointer: "/".to_owned(),
        reason: e.to_string(),
    })?;
    Ok(Rendered { template, body })
}

/// The text a `Fn::Join` or `Fn::Sub` makes, as far as it is known at render time: what CloudFormation
/// fills in later (a `Ref`, an attribute) stands as a NUL, which no reference can span.
fn joined_text(function: &str, arg: &Json) -> String {
    let text = |v: &Json| v.as_str().map_or_else(|| "\0".to_owned(), str::to_owned);
    match (function, arg) {
        ("Fn::Join", Json::Array(a)) => {
            let delimiter = a.first().map(text).unwrap_or_default();
            let parts = a.get(1).and_then(Json::as_array).map(|p| p.iter().map(text).collect::<Vec<_>>());
            parts.map(|p| p.join(&delimiter)).unwrap_or_default()
        }
        ("Fn::Sub", Json::String(s)) => s.clone(),
        ("Fn::Sub", Json::Array(a)) => {
            let mut s = a.first().map(text).unwrap_or_default();
            for (name, value) in a.get(1).and_then(Json::as_object).into_iter().flatten() {
                s = s.replace(&format!("${{{name}}}"), &text(value));
            }
            s
        }
        _ => String::new(),
    }
}

/// JSON pointer escaping (RFC 6901).
fn escape(k: &str) -> String {
    k.replace('~', "~0").replace('/', "~1")
}

/// Settings are scalars or lists of scalars (see `settings`), so this is total.
pub(crate) fn to_json(v: &Toml) -> Json {
    match v {
        Toml::String(s) => Json::String(s.clone()),
        Toml::Integer(i) => Json::from(*i),
        Toml::Float(f) => serde_json::Number::from_f64(*f).map_or(Json::Null, Json::Number),
        Toml::Boolean(b) => Json::Bool(*b),
        Toml::Datetime(d) => Json::String(d.to_string()),
        Toml::Array(items) => Json::Array(items.iter().map(to_json).collect()),
        Toml::Table(t) => Json::Object(t.iter().map(|(k, v)| (k.clone(), to_json(v))).collect()),
    }
}
