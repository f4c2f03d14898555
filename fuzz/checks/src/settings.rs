//! A branch's own `.previewd.toml`, merged over the shipped `webapp` blueprint in staging: any text gives
//! settings or an error that names the file, and a branch can change only the values of overridable keys,
//! to values of the same type that the blueprint allows.

use std::path::Path;
use std::sync::OnceLock;

use previewd_domain::{BranchName, Stage};
use previewd_render::{Blueprint, Layer, LayerKind, RepoLayers, Settings};

/// The fuzzed text poses as this file; every error about it must name it, so its author can find it.
const SOURCE: &str = "fuzz/.previewd.toml";

/// The input (lossy UTF-8) as the branch's own layer, parsed, then merged in staging.
pub fn settings(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let layer = match Layer::parse(LayerKind::Branch, SOURCE, &text) {
        Ok(layer) => layer,
        Err(error) => {
            let message = error.to_string();
            assert!(message.contains(SOURCE), "a syntax error does not name the file: {message}");
            assert!(!message.contains('\n'), "a syntax error takes more than one line: {message}");
            return;
        }
    };
    let (blueprint, baseline) = webapp();
    let branch = BranchName::new("fuzz/branch").expect("branch");
    match blueprint.environment_settings(Stage::Staging, &branch, &RepoLayers::default(), Some(&layer)) {
        Ok(settings) => settings_hold(blueprint, baseline, &settings),
        Err(error) => {
            let message = error.to_string();
            assert!(message.contains(SOURCE), "an error about the branch's layer does not name it: {message}");
        }
    }
}

/// The shipped blueprint, loaded once, and a branch environment's settings without a layer of its own.
fn webapp() -> &'static (Blueprint, Settings) {
    static WEBAPP: OnceLock<(Blueprint, Settings)> = OnceLock::new();
    WEBAPP.get_or_init(|| {
        let stacks = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../stacks");
        let blueprint = Blueprint::load(&stacks, "webapp").expect("the shipped webapp blueprint loads");
        let branch = BranchName::new("fuzz/branch").expect("branch");
        let baseline = blueprint
            .environment_settings(Stage::Staging, &branch, &RepoLayers::default(), None)
            .expect("the webapp blueprint merges in staging");
        (blueprint, baseline)
    })
}

/// Against the settings without the branch's layer: the same keys with the same types; what the branch
/// set is overridable and allowed; nothing else moved.
fn settings_hold(blueprint: &Blueprint, baseline: &Settings, settings: &Settings) {
    let keys: Vec<&str> = settings.iter().map(|(key, _)| key).collect();
    let baseline_keys: Vec<&str> = baseline.iter().map(|(key, _)| key).collect();
    assert_eq!(keys, baseline_keys, "a branch's layer added or removed a key");
    for (key, setting) in settings.iter() {
        let before = baseline.get(key).expect("the same keys");
        assert_eq!(setting.value.type_str(), before.value.type_str(), "{key}: a branch's layer changed its type");
        if setting.origin.kind != LayerKind::Branch {
            assert_eq!(setting, before, "{key}: changed, but not by the branch's layer");
            continue;
        }
        assert_eq!(setting.origin.source, SOURCE, "{key}");
        assert!(is_overridable(key, &blueprint.overridable), "{key}: set by a branch but not overridable");
        if let Some(allowed) = blueprint.allowed.get(key) {
            assert!(allowed.contains(&setting.value), "{key}: {} is not an allowed value", setting.value);
        }
    }
}

/// `key` is an overridable key or lies in an overridable table.
fn is_overridable(key: &str, overridable: &[String]) -> bool {
    overridable.iter().any(|o| key == o || key.strip_prefix(o.as_str()).is_some_and(|rest| rest.starts_with('.')))
}
