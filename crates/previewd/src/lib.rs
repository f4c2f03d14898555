//! The `previewd` application: configuration, the offline commands and the wiring of `serve`. Business
//! logic lives in the other crates; the `previewd` binary is a thin command line over this.

pub mod app;
pub mod config;
pub mod envs;
pub mod logs;
pub mod offline;
pub mod reap;

pub use app::Application;
pub use config::Config;
