//! What each fuzz target checks, as plain functions over any bytes: `fuzz/fuzz_targets/*` hand them
//! libFuzzer's inputs, and `tests/replay.rs` runs every saved input through them in the normal test suite,
//! so a crash found once stays fixed.
//!
//! A check never panics on its own account: a panic is a bug found, either in the code under test or in
//! an invariant it broke (each `assert!` says which).

mod names;
mod settings;
mod signature;
mod webhook;

pub use names::branch_names;
pub use settings::settings;
pub use signature::signature;
pub use webhook::{EVENTS, webhook};
