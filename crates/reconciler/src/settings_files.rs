//! Branch settings files as previewd remembers them: by repository and commit (a file at a commit never
//! changes), bounded in bytes rather than entries, so a flood of pushes with large files cannot grow
//! previewd's memory.

use std::collections::HashMap;

use previewd_domain::{CommitSha, RepoName};

/// A branch's settings file holds a few overrides: one larger than this is refused, not read.
pub(crate) const SETTINGS_FILE_MAX: usize = 64 * 1024;
/// Branch settings files remembered by commit, in bytes; past this the cache starts afresh.
const SETTINGS_CACHE_BYTES: usize = 16 * 1024 * 1024;
/// What an entry costs besides its text (its key, and the map's own room).
const SETTINGS_ENTRY_BYTES: usize = 128;

/// The cache itself.
#[derive(Debug, Default)]
pub(crate) struct SettingsFiles {
    files: HashMap<(RepoName, CommitSha), Option<String>>,
    bytes: usize,
}

impl SettingsFiles {
    pub(crate) fn get(&self, repo: &RepoName, sha: &CommitSha) -> Option<&Option<String>> {
        self.files.get(&(repo.clone(), sha.clone()))
    }

    pub(crate) fn insert(&mut self, repo: RepoName, sha: CommitSha, text: Option<String>) {
        let size = SETTINGS_ENTRY_BYTES + text.as_ref().map_or(0, String::len);
        if self.bytes + size > SETTINGS_CACHE_BYTES {
            self.files.clear();
            self.bytes = 0;
        }
        self.bytes += size;
        if let Some(old) = self.files.insert((repo, sha), text) {
            self.bytes -= SETTINGS_ENTRY_BYTES + old.map_or(0, |t| t.len());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_is_bounded_in_bytes() {
        let repo = RepoName::new("acme/shop").expect("repo");
        let mut files = SettingsFiles::default();
        let big = "x".repeat(SETTINGS_FILE_MAX);
        for n in 0..2_000u32 {
            let sha = CommitSha::new(&format!("{n:040x}")).expect("sha");
            files.insert(repo.clone(), sha, Some(big.clone()));
            assert!(files.bytes <= SETTINGS_CACHE_BYTES, "{} bytes after {n}", files.bytes);
            let held: usize =
                files.files.values().map(|t| SETTINGS_ENTRY_BYTES + t.as_ref().map_or(0, String::len)).sum();
            assert_eq!(held, files.bytes);
        }
        let last = CommitSha::new(&format!("{:040x}", 1_999)).expect("sha");
        assert_eq!(files.get(&repo, &last), Some(&Some(big)));
        // The same commit again replaces its entry, counted once.
        let before = files.bytes;
        files.insert(repo.clone(), last, None);
        assert_eq!(files.bytes, before - SETTINGS_FILE_MAX);
    }
}
