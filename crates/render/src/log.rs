//! The results log: one JSON line per image (or bad job) per attempt, in
//! `OUT/_render/results-IIII-of-NNNN.jsonl` — one file per shard, so workers on different
//! boxes never append to the same file (appends from several hosts to one file on NFS
//! interleave). Each record is written with a single `write` on a file opened for appending, so
//! a line is whole or, after a kill in the middle, a torn last line that readers skip.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use dreamforge_core::Error;

use crate::plan::STATE_DIR;
use crate::shard::Shard;

/// What happened to one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Rendered and written.
    Done,
    /// Failed on its input (bad line, missing file, bad value): a rerun fails the same way.
    Failed,
    /// Failed on something a rerun may not meet (I/O, out of memory, device).
    Retryable,
}

/// One line of the results log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Unix time in seconds.
    pub time: f64,
    pub shard: String,
    pub status: Status,
    /// Manifest place (`line 12`).
    pub job: String,
    /// The image path relative to the output folder (absent for a bad job line).
    pub image: Option<String>,
    pub seed: Option<u64>,
    /// Seconds this image took (its share of a batch), absent for failures.
    pub seconds: Option<f64>,
    pub error: Option<String>,
    pub host: Option<String>,
}

/// The log file of `shard` under `out`.
pub fn path(out: &Path, shard: Shard) -> PathBuf {
    out.join(STATE_DIR)
        .join(format!("results-{}.jsonl", shard.tag()))
}

/// Appends `r` as one line (one `write` call on an append-mode file).
pub fn append(file: &Path, r: &Record) -> Result<(), Error> {
    let mut line = serde_json::to_string(r).expect("a record serializes");
    line.push('\n');
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .map_err(|e| Error::io(file, e))?;
    f.write_all(line.as_bytes()).map_err(|e| Error::io(file, e))
}

/// Ends a torn last line (a kill during an append) so the next record starts on a line of its
/// own. Call once before appending; only this shard's worker writes its file.
pub fn repair(file: &Path) -> Result<(), Error> {
    let Ok(bytes) = std::fs::read(file) else {
        return Ok(());
    };
    if bytes.last().is_some_and(|&b| b != b'\n') {
        let mut f = OpenOptions::new()
            .append(true)
            .open(file)
            .map_err(|e| Error::io(file, e))?;
        f.write_all(b"\n").map_err(|e| Error::io(file, e))?;
    }
    Ok(())
}

/// Every readable record of every shard's log under `out`, in file then line order, and the
/// number of lines skipped (torn by a kill, or not ours).
pub fn read_all(out: &Path) -> (Vec<Record>, usize) {
    let dir = out.join(STATE_DIR);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("results-") && n.ends_with(".jsonl"))
                })
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    let (mut out, mut skipped) = (Vec::new(), 0);
    for f in files {
        let Ok(bytes) = std::fs::read(&f) else {
            continue;
        };
        for line in bytes.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<Record>(line) {
                Ok(r) => out.push(r),
                Err(_) => skipped += 1,
            }
        }
    }
    (out, skipped)
}

/// Seconds since the Unix epoch.
pub fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// This machine's name, for the records (`HOSTNAME`, else `/etc/hostname`).
pub fn host() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_lines_are_skipped() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join(STATE_DIR)).unwrap();
        let p = path(d.path(), Shard::new(1, 3).unwrap());
        let r = Record {
            time: 1.0,
            shard: "1/3".into(),
            status: Status::Done,
            job: "line 1".into(),
            image: Some("a.png".into()),
            seed: Some(3),
            seconds: Some(0.5),
            error: None,
            host: None,
        };
        append(&p, &r).unwrap();
        append(&p, &r).unwrap();
        // A kill in the middle of a write.
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"time\": 2.0, \"sha").unwrap();
        let (recs, skipped) = read_all(d.path());
        assert_eq!((recs.len(), skipped), (2, 1));
        assert_eq!(recs[0], r);
        // After the repair the next record stands on a line of its own.
        repair(&p).unwrap();
        repair(&p).unwrap();
        append(&p, &r).unwrap();
        let (recs, skipped) = read_all(d.path());
        assert_eq!((recs.len(), skipped), (3, 1));
    }
}
