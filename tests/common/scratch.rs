//! Scratch directories under cargo's per-target temporary directory, and the shared test data.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// The shared test data (`../shared/data` beside the workspace root; see its README).
pub fn shared_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data")
}

/// The cargo target directory this test was built into (parent of `CARGO_TARGET_TMPDIR`).
pub fn target_dir() -> PathBuf {
    let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().unwrap_or(tmp).to_path_buf()
}

/// A directory that is removed, with its contents, when dropped.
#[derive(Debug)]
pub struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `<CARGO_TARGET_TMPDIR>/<prefix>-<pid>-<n>-<ns>`, unique across the tests and
    /// processes running now.
    ///
    /// # Panics
    /// When the directory cannot be created (a broken test environment).
    pub fn new(prefix: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{prefix}-{}-{n}-{ns}", std::process::id()));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("cannot create scratch directory {}: {e}", path.display()));
        Self { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The last `max` bytes of a text, on a character boundary, for failure messages.
pub fn tail(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Writes into `dir` a copy of the simulated profile (`config/profiles/simulated.toml`) with
/// a dwell time of `dwell` (written as in TOML, e.g. `"0.002"` s) instead of 0.5 ms, for
/// scans slow enough to be watched or interrupted; returns its path.
///
/// # Panics
/// When the profile cannot be read or written, or no longer has a 0.5 ms dwell.
pub fn slow_simulated_profile(dir: &Path, dwell: &str) -> PathBuf {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/config/profiles/simulated.toml"
    ))
    .expect("reading the simulated profile");
    assert!(text.contains("dwell_time_s = 0.0005"));
    let profile = dir.join("slow.toml");
    std::fs::write(
        &profile,
        text.replace("dwell_time_s = 0.0005", &format!("dwell_time_s = {dwell}")),
    )
    .expect("writing the profile");
    profile
}
