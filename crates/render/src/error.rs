//! What can go wrong while loading blueprints, merging settings or rendering, each error naming the file,
//! the key and the layer, so the person who wrote the bad value can find it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("unknown blueprint `{name}` in {dir} (available: {available})")]
    UnknownBlueprint { name: String, dir: PathBuf, available: String },

    #[error("{file}: cannot read ({layer} layer): {source}")]
    Unreadable {
        file: String,
        layer: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{file} ({layer} layer): not valid {format}: {message}")]
    Syntax { file: String, layer: String, format: &'static str, message: String },

    #[error("{file} ({layer} layer): key `{key}`: {reason}")]
    Setting { file: String, layer: String, key: String, reason: String },

    #[error("{file}: at {pointer}: {reason}")]
    Template { file: String, pointer: String, reason: String },
}
