//! Settings layers and their merge, with provenance.
//!
//! The blueprint's defaults are the schema: every key a later layer sets must exist there and keep its
//! type. Tables merge key by key; any other value (arrays included) is replaced whole. Each leaf remembers
//! the layer that set it last, which is what `previewd explain` prints.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use toml::{Table, Value};

use crate::RenderError;

/// Where a layer sits in the merge order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerKind {
    /// `stacks/<blueprint>/defaults.toml`: every key, and so the schema.
    Defaults,
    /// `stacks/<blueprint>/<stage>.toml`.
    Stage(previewd_domain::Stage),
    /// `stacks/<blueprint>/preview.toml`: what every branch environment gets.
    Preview,
    /// A `[repos."o/n".branches."<glob>"]` table of the configuration.
    Pattern(String),
    /// The `.previewd.toml` committed in the branch: only overridable keys.
    Branch,
    /// `stacks/<blueprint>/waiting.toml`: what the environment runs with while its commit's artifact is
    /// missing (webapp: no task), applied last so the infrastructure comes up alongside the build.
    Waiting,
}

impl fmt::Display for LayerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayerKind::Defaults => f.write_str("blueprint defaults"),
            LayerKind::Stage(s) => write!(f, "stage {s}"),
            LayerKind::Preview => f.write_str("preview"),
            LayerKind::Pattern(glob) => write!(f, "branch pattern {glob}"),
            LayerKind::Branch => f.write_str("branch overrides"),
            LayerKind::Waiting => f.write_str("while the artifact is missing"),
        }
    }
}

/// One layer of settings and the file (or configuration table) it came from.
#[derive(Debug, Clone)]
pub struct Layer {
    pub kind: LayerKind,
    /// A path, or a path and a table name for configuration layers.
    pub source: String,
    pub table: Table,
}

impl Layer {
    /// Parses `text` as a TOML layer; a syntax error names the file and the layer.
    pub fn parse(kind: LayerKind, source: impl Into<String>, text: &str) -> Result<Self, RenderError> {
        let source = source.into();
        let table = toml::from_str::<Table>(text).map_err(|e| RenderError::Syntax {
            file: source.clone(),
            layer: kind.to_string(),
            format: "TOML",
            message: toml_error(text, &e),
        })?;
        Ok(Self { kind, source, table })
    }
}

/// A TOML error as one line: where (line and column) and what, never the line itself: a branch's file
/// may hold control characters or a huge value, an operator's a secret. Values the message quotes are
/// shown as [`previewd_domain::text::quote`] shows them.
pub fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let what = previewd_domain::text::quote(e.message().trim());
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {what}")
        }
        None => what,
    }
}

/// Which layer set a value: kind and source, shared by every value it set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub kind: LayerKind,
    pub source: String,
}

/// A merged value and the layer that set it.
#[derive(Debug, Clone, PartialEq)]
pub struct Setting {
    pub value: Value,
    pub origin: Arc<Origin>,
}

/// Merged settings: dotted key → value and origin, sorted by key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Settings {
    values: BTreeMap<String, Setting>,
}

impl Settings {
    pub fn get(&self, key: &str) -> Option<&Setting> {
        self.values.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Setting)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Merges `layers` in order; the first must be the blueprint defaults. `overridable` lists the keys
    /// (or table prefixes) a [`LayerKind::Branch`] layer may set.
    pub fn merge(layers: &[Layer], overridable: &[String]) -> Result<Self, RenderError> {
        let mut settings = Settings::default();
        let Some((defaults, rest)) = layers.split_first() else {
            return Ok(settings);
        };
        let origin = Arc::new(Origin { kind: defaults.kind.clone(), source: defaults.source.clone() });
        for (key, value) in flatten_layer(defaults)? {
            let err = |reason: &str| RenderError::Setting {
                file: defaults.source.clone(),
                layer: defaults.kind.to_string(),
                key: key.clone(),
                reason: reason.to_owned(),
            };
            check_scalar_or_list(&value).map_err(|r| err(&r))?;
            settings.values.insert(key, Setting { value, origin: origin.clone() });
        }
        for layer in rest {
            settings.apply(layer, overridable)?;
        }
        Ok(settings)
    }

    fn apply(&mut self, layer: &Layer, overridable: &[String]) -> Result<(), RenderError> {
        let origin = Arc::new(Origin { kind: layer.kind.clone(), source: layer.source.clone() });
        for (key, value) in flatten_layer(layer)? {
            let err = |reason: String| RenderError::Setting {
                file: layer.source.clone(),
                layer: layer.kind.to_string(),
                key: key.clone(),
                reason,
            };
            // A branch's file is a contributor's: say what it may set.
            let may_set = || if overridable.is_empty() { "none".to_owned() } else { overridable.join(", ") };
            let Some(current) = self.values.get_mut(&key) else {
                let reason = self.unknown_key_reason(&key);
                return Err(err(match layer.kind {
                    LayerKind::Branch => format!("{reason}; overridable keys: {}", may_set()),
                    _ => reason,
                }));
            };
            if layer.kind == LayerKind::Branch && !is_overridable(&key, overridable) {
                return Err(err(format!("a branch may not override this key; overridable keys: {}", may_set())));
            }
            let value = conform(&current.value, value).map_err(err)?;
            *current = Setting { value, origin: origin.clone() };
        }
        Ok(())
    }

    fn unknown_key_reason(&self, key: &str) -> String {
        // A table where the schema has a value, or a typo: say which.
        if let Some((parent, _)) = key.rsplit_once('.')
            && self.values.contains_key(parent)
        {
            return format!("`{parent}` is a value, not a table");
        }
        let prefix = format!("{key}.");
        if self.values.keys().any(|k| k.starts_with(&prefix)) {
            return "expected a table, found a value".to_owned();
        }
        "unknown key (the blueprint's defaults.toml declares every key)".to_owned()
    }
}

/// Does `v` (or an item of it) hold a CloudFormation dynamic reference, `{{resolve:…}}`? Read loosely
/// (any case, blanks after the braces), so no spelling CloudFormation might accept slips through.
pub fn holds_dynamic_reference(v: &Value) -> bool {
    match v {
        Value::String(s) => is_dynamic_reference(s),
        Value::Array(items) => items.iter().any(holds_dynamic_reference),
        _ => false,
    }
}

/// Does the text hold `{{resolve:`, in any case, with any blanks inside?
pub(crate) fn is_dynamic_reference(s: &str) -> bool {
    let folded: String = s.chars().filter(|c| !c.is_whitespace()).collect::<String>().to_ascii_lowercase();
    folded.contains("{{resolve:")
}

fn is_plain_key(k: &str) -> bool {
    !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub(crate) fn is_overridable(key: &str, overridable: &[String]) -> bool {
    overridable.iter().any(|o| key == o || key.strip_prefix(o.as_str()).is_some_and(|r| r.starts_with('.')))
}

/// Every non-table value under `table`, with its dotted key. A key segment outside `[A-Za-z0-9_-]` (a
/// quoted key holding a dot, say) is returned as an error, so `"a.b" = 1` cannot pose as `a.b = 1`.
fn flatten(prefix: &str, table: &Table, out: &mut Vec<(String, Value)>) -> Result<(), String> {
    for (k, v) in table {
        let key = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
        if !is_plain_key(k) {
            return Err(key);
        }
        match v {
            Value::Table(t) => flatten(&key, t, out)?,
            other => out.push((key, other.clone())),
        }
    }
    Ok(())
}

fn flatten_layer(layer: &Layer) -> Result<Vec<(String, Value)>, RenderError> {
    let mut leaves = Vec::new();
    flatten("", &layer.table, &mut leaves).map_err(|key| RenderError::Setting {
        file: layer.source.clone(),
        layer: layer.kind.to_string(),
        key,
        reason: "keys are made of letters, digits, '_' and '-'".to_owned(),
    })?;
    Ok(leaves)
}

/// Settings are scalars or lists of scalars: nothing a later layer sets can carry keys of its own.
fn check_scalar_or_list(v: &Value) -> Result<(), String> {
    match v {
        Value::Datetime(_) => Err("dates are not supported; use a string".to_owned()),
        Value::Array(items) => {
            if items.iter().any(|i| matches!(i, Value::Array(_) | Value::Table(_) | Value::Datetime(_))) {
                return Err("lists may hold only strings, numbers and booleans".to_owned());
            }
            if let Some(first) = items.first()
                && items.iter().any(|i| i.type_str() != first.type_str())
            {
                return Err("all items of a list must have one type".to_owned());
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// `new` if it has the type of `current` (an integer is accepted where a float is expected).
fn conform(current: &Value, new: Value) -> Result<Value, String> {
    let wrong = |new: &Value| format!("expected {}, found {}", describe(current), describe(new));
    match (current, new) {
        (Value::Float(_), Value::Integer(i)) => Ok(Value::Float(i as f64)),
        (Value::Array(cur), Value::Array(items)) => {
            let new = Value::Array(items);
            check_scalar_or_list(&new)?;
            if let (Some(want), Value::Array(items)) = (cur.first(), &new)
                && let Some(bad) = items.iter().find(|i| i.type_str() != want.type_str())
            {
                return Err(format!(
                    "expected a list of {}, found an item of type {}",
                    want.type_str(),
                    bad.type_str()
                ));
            }
            Ok(new)
        }
        (cur, new) if cur.type_str() == new.type_str() => Ok(new),
        (_, new) => Err(wrong(&new)),
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Array(_) => "a list".to_owned(),
        Value::Table(_) => "a table".to_owned(),
        other => other.type_str().to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(kind: LayerKind, text: &str) -> Layer {
        Layer::parse(kind, "test.toml", text).expect("valid TOML")
    }

    fn defaults() -> Layer {
        layer(
            LayerKind::Defaults,
            r#"
            [service]
            cpu = 1024
            count = 2
            ratio = 0.5
            subnets = ["a", "b"]
            [database]
            enabled = true
            class = "db.m6g.large"
            "#,
        )
    }

    fn message(layers: &[Layer], overridable: &[&str]) -> String {
        let overridable: Vec<String> = overridable.iter().map(|s| s.to_string()).collect();
        Settings::merge(layers, &overridable).expect_err("must fail").to_string()
    }

    #[test]
    fn later_layers_win_key_by_key_and_keep_their_origin() {
        let s = Settings::merge(
            &[
                defaults(),
                layer(LayerKind::Preview, "service.cpu = 256\n[database]\nenabled = false"),
                layer(LayerKind::Pattern("perf/*".into()), "service = { cpu = 4096 }"),
            ],
            &[],
        )
        .expect("merges");
        let cpu = s.get("service.cpu").expect("cpu");
        assert_eq!(cpu.value, Value::Integer(4096));
        assert_eq!(cpu.origin.kind, LayerKind::Pattern("perf/*".into()));
        assert_eq!(s.get("service.count").expect("count").origin.kind, LayerKind::Defaults);
        assert_eq!(s.get("database.enabled").expect("db").value, Value::Boolean(false));
        assert_eq!(s.get("database.class").expect("class").origin.kind, LayerKind::Defaults);
    }

    #[test]
    fn integers_widen_to_floats_and_lists_replace_whole() {
        let s = Settings::merge(
            &[defaults(), layer(LayerKind::Preview, "service.ratio = 1\nservice.subnets = [\"c\"]")],
            &[],
        )
        .expect("merges");
        assert_eq!(s.get("service.ratio").expect("ratio").value, Value::Float(1.0));
        assert_eq!(s.get("service.subnets").expect("subnets").value, Value::Array(vec![Value::String("c".into())]));
    }

    #[test]
    fn errors_name_file_key_and_layer() {
        let m = message(&[defaults(), layer(LayerKind::Preview, "service.cpu = \"big\"")], &[]);
        assert_eq!(m, "test.toml (preview layer): key `service.cpu`: expected integer, found string");
        let m = message(&[defaults(), layer(LayerKind::Preview, "service.cpus = 1")], &[]);
        assert!(m.starts_with("test.toml (preview layer): key `service.cpus`: unknown key"), "{m}");
        let m = message(&[defaults(), layer(LayerKind::Preview, "service.cpu.x = 1")], &[]);
        assert!(m.ends_with("`service.cpu` is a value, not a table"), "{m}");
        let m = message(&[defaults(), layer(LayerKind::Preview, "service = 1")], &[]);
        assert!(m.ends_with("expected a table, found a value"), "{m}");
        let m = message(&[defaults(), layer(LayerKind::Preview, "service.subnets = [1]")], &[]);
        assert!(m.ends_with("expected a list of string, found an item of type integer"), "{m}");
        let m = message(&[defaults(), layer(LayerKind::Preview, "service.subnets = [[\"a\"]]")], &[]);
        assert!(m.ends_with("lists may hold only strings, numbers and booleans"), "{m}");
    }

    #[test]
    fn a_branch_may_set_only_overridable_keys() {
        let ok = Settings::merge(
            &[defaults(), layer(LayerKind::Branch, "service.cpu = 512\ndatabase.enabled = false")],
            &["service.cpu".into(), "database".into()],
        );
        assert!(ok.is_ok(), "{ok:?}");
        let m = message(&[defaults(), layer(LayerKind::Branch, "service.count = 9")], &["service.cpu", "database"]);
        assert_eq!(
            m,
            "test.toml (branch overrides layer): key `service.count`: a branch may not override this key; \
             overridable keys: service.cpu, database"
        );
        // A typo in a branch's file is told the same list.
        let m = message(&[defaults(), layer(LayerKind::Branch, "service.cpus = 9")], &["service.cpu", "database"]);
        assert_eq!(
            m,
            "test.toml (branch overrides layer): key `service.cpus`: unknown key (the blueprint's defaults.toml \
             declares every key); overridable keys: service.cpu, database"
        );
        // A prefix names a table, not a string prefix.
        let m = message(&[defaults(), layer(LayerKind::Branch, "service.count = 9")], &["service.c"]);
        assert!(m.contains("may not override"), "{m}");
    }

    #[test]
    fn quoted_keys_cannot_pose_as_nested_ones() {
        let m = message(&[defaults(), layer(LayerKind::Preview, "\"service.cpu\" = 1")], &[]);
        assert!(m.contains("key `service.cpu`: keys are made of"), "{m}");
        let m = message(&[layer(LayerKind::Defaults, "\"a.b\" = 1")], &[]);
        assert!(m.contains("keys are made of"), "{m}");
    }

    #[test]
    fn syntax_errors_name_the_file_and_layer() {
        let e = Layer::parse(LayerKind::Branch, ".previewd.toml", "x = ").expect_err("bad TOML").to_string();
        assert!(e.starts_with(".previewd.toml (branch overrides layer): not valid TOML: line 1, column 5:"), "{e}");
    }

    #[test]
    fn syntax_errors_quote_no_raw_control_character_and_no_huge_line() {
        let hostile = format!("a = 1\nb = \"{}\" \u{1b}]0;pwned\u{7}\r\u{9b}", "x".repeat(200_000));
        let e = Layer::parse(LayerKind::Branch, ".previewd.toml", &hostile).expect_err("bad TOML").to_string();
        assert!(e.contains("line 2, column"), "{e}");
        assert!(!e.chars().any(|c| c.is_control()), "{e:?}");
        assert!(e.len() < 600, "{} bytes", e.len());
    }
}
