//! The run journal: one JSON record per line, each written, flushed and fsync'd before the
//! queue goes on, so a journal survives a killed process (at worst its last line is cut,
//! and is then ignored on reading).

use crate::engine::RunOutcome;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Errors of the journal.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// The journal file could not be opened, read or written.
    #[error("journal {file}: {during}: {source}")]
    Io {
        /// The journal file.
        file: PathBuf,
        /// What was done.
        during: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// What a journal record marks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JournalEvent {
    /// The queue started (or resumed).
    QueueStart,
    /// A queue unit (one plan invocation of one sweep point, or one script) started.
    RunStart,
    /// A queue unit ended (see `status`).
    RunEnd,
    /// The queue ended (see `status`).
    QueueEnd,
}

/// How a unit or the queue ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnitStatus {
    /// Every acquisition completed.
    Completed,
    /// It failed and its policy said skip: the queue went on.
    Skipped,
    /// It failed (and will be retried, or the queue aborts).
    Failed,
    /// Stopped or aborted by the user.
    Stopped,
    /// The queue aborted at this unit.
    Aborted,
}

/// One journal line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JournalRecord {
    /// What this record marks.
    pub event: JournalEvent,
    /// When it was written, RFC 3339 UTC.
    pub time: String,
    /// The queue file.
    pub queue: String,
    /// The unit's key (`003:defocus#1`), unique within the queue file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Attempt number, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// How it ended (`run_end`, `queue_end`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<UnitStatus>,
    /// The error, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The acquisitions of the unit: start, stop, exit status, frame counts, lost frames,
    /// metadata, output file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<RunOutcome>,
    /// The unit's parameters and user metadata.
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub metadata: serde_json::Value,
}

impl JournalRecord {
    /// A record of `event` for `queue`, time now, nothing else set.
    pub fn new(event: JournalEvent, queue: &str) -> Self {
        Self {
            event,
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            queue: queue.into(),
            key: None,
            attempt: None,
            status: None,
            error: None,
            runs: Vec::new(),
            metadata: serde_json::Value::Null,
        }
    }
}

/// True when `file` is not empty and its last byte is not a newline (a line cut by a crash).
fn ends_torn(file: &mut File) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    if file.metadata()?.len() == 0 {
        return Ok(false);
    }
    file.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    file.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

/// An append-only, fsync'd JSON-lines journal.
pub struct Journal {
    path: PathBuf,
    file: File,
}

impl Journal {
    /// Opens (creating) the journal for appending.
    ///
    /// # Errors
    /// [`JournalError::Io`].
    pub fn open(path: &Path) -> Result<Self, JournalError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| JournalError::Io {
                file: path.into(),
                during: "creating its folder",
                source,
            })?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(|source| JournalError::Io {
                file: path.into(),
                during: "opening",
                source,
            })?;
        // A crash in the middle of a write leaves a last line without its newline: the
        // next record would be appended onto it and be unreadable too. End it first.
        if ends_torn(&mut file).map_err(|source| JournalError::Io {
            file: path.into(),
            during: "checking its last line",
            source,
        })? {
            file.write_all(b"\n")
                .and_then(|()| file.sync_data())
                .map_err(|source| JournalError::Io {
                    file: path.into(),
                    during: "ending a torn last line",
                    source,
                })?;
        }
        Ok(Self {
            path: path.into(),
            file,
        })
    }

    /// The journal file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends `rec` as one line and syncs it to disk before returning.
    ///
    /// # Errors
    /// [`JournalError::Io`].
    pub fn append(&mut self, rec: &JournalRecord) -> Result<(), JournalError> {
        let io = |during, source| JournalError::Io {
            file: self.path.clone(),
            during,
            source,
        };
        let mut line = serde_json::to_string(rec)
            .map_err(|e| io("encoding a record", std::io::Error::other(e)))?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .map_err(|e| io("writing", e))?;
        self.file.sync_data().map_err(|e| io("syncing", e))
    }

    /// Reads every record of `path` (none if it does not exist). A line that does not parse
    /// (a line cut by a crash) is skipped.
    ///
    /// # Errors
    /// [`JournalError::Io`] when the file exists but cannot be read.
    pub fn read(path: &Path) -> Result<Vec<JournalRecord>, JournalError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(JournalError::Io {
                    file: path.into(),
                    during: "reading",
                    source,
                });
            }
        };
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}

/// Keys of the units that are finished (completed or skipped) according to `records`.
pub fn finished_keys(records: &[JournalRecord]) -> BTreeSet<String> {
    records
        .iter()
        .filter(|r| {
            r.event == JournalEvent::RunEnd
                && matches!(r.status, Some(UnitStatus::Completed | UnitStatus::Skipped))
        })
        .filter_map(|r| r.key.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_reads_and_ignores_a_cut_line() {
        let dir = std::env::temp_dir().join(format!("stemflow-journal-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let p = dir.join("journal.jsonl");
        let mut j = Journal::open(&p).unwrap();
        let mut r = JournalRecord::new(JournalEvent::RunEnd, "q.toml");
        r.key = Some("000:a".into());
        r.status = Some(UnitStatus::Completed);
        j.append(&r).unwrap();
        r.key = Some("001:b".into());
        r.status = Some(UnitStatus::Aborted);
        j.append(&r).unwrap();
        drop(j);
        // A crash in the middle of a write.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"event\":\"run_e").unwrap();
        let recs = Journal::read(&p).unwrap();
        assert_eq!(recs.len(), 2);
        let done = finished_keys(&recs);
        assert!(done.contains("000:a") && !done.contains("001:b"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// After a crash tore the last line, the next record (as `queue --resume` appends it)
    /// starts on a fresh line and reads back; the torn line alone is skipped.
    #[test]
    fn a_record_after_a_torn_line_starts_a_fresh_line() {
        let dir =
            std::env::temp_dir().join(format!("stemflow-journal-torn-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let p = dir.join("journal.jsonl");
        let mut j = Journal::open(&p).unwrap();
        let mut r = JournalRecord::new(JournalEvent::RunEnd, "q.toml");
        r.key = Some("000:a".into());
        r.status = Some(UnitStatus::Completed);
        j.append(&r).unwrap();
        drop(j);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"event\":\"run_e").unwrap();
        drop(f);
        let mut j = Journal::open(&p).unwrap();
        r.key = Some("001:b".into());
        j.append(&r).unwrap();
        drop(j);
        let recs = Journal::read(&p).unwrap();
        let keys: Vec<_> = recs.iter().filter_map(|r| r.key.as_deref()).collect();
        assert_eq!(keys, ["000:a", "001:b"], "{recs:?}");
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        // Opening a journal that ends cleanly adds nothing.
        drop(Journal::open(&p).unwrap());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), text);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
