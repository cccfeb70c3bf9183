//! The loss log: one JSON object per optimizer step (`step`, `loss`, `lr`, elapsed seconds),
//! appended and flushed line by line next to the checkpoints. On resume the lines past the
//! checkpoint's step are dropped first, so the log always describes the run that the
//! checkpoint continues.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// One logged step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogLine {
    pub step: u64,
    pub loss: f64,
    pub lr: f64,
    pub seconds: f64,
}

/// An open loss log.
pub struct LossLog {
    path: PathBuf,
    file: std::fs::File,
}

impl LossLog {
    /// Opens `path` for appending, keeping only lines with `step < resume_step` (0 = a new run:
    /// the file is truncated). Unparsable lines (a line cut by a crash) are dropped.
    pub fn open(path: &Path, resume_step: u64) -> std::io::Result<Self> {
        let kept: Vec<LogLine> = if resume_step == 0 || !path.exists() {
            Vec::new()
        } else {
            read(path)?
                .into_iter()
                .filter(|l| l.step < resume_step)
                .collect()
        };
        let mut text = String::new();
        for l in &kept {
            text.push_str(&serde_json::to_string(l).expect("serializable"));
            text.push('\n');
        }
        let tmp = path.with_extension("jsonl.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, path)?;
        let file = std::fs::OpenOptions::new().append(true).open(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line and flushes it.
    pub fn write(&mut self, line: &LogLine) -> std::io::Result<()> {
        let mut s = serde_json::to_string(line).expect("serializable");
        s.push('\n');
        self.file.write_all(s.as_bytes())?;
        self.file.flush()
    }
}

/// Every parsable line of a loss log.
pub fn read(path: &Path) -> std::io::Result<Vec<LogLine>> {
    let text = std::fs::read_to_string(path)?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(step: u64) -> LogLine {
        LogLine {
            step,
            loss: 1.0 / (step + 1) as f64,
            lr: 1e-3,
            seconds: step as f64,
        }
    }

    #[test]
    fn resume_drops_lines_past_the_checkpoint_and_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("loss.jsonl");
        let mut log = LossLog::open(&p, 0).unwrap();
        for s in 0..10 {
            log.write(&line(s)).unwrap();
        }
        drop(log);
        // A crash mid-line.
        let mut f = std::fs::OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"step\": 10, \"lo").unwrap();
        drop(f);
        let mut log = LossLog::open(&p, 6).unwrap();
        log.write(&line(6)).unwrap();
        let lines = read(&p).unwrap();
        assert_eq!(
            lines.iter().map(|l| l.step).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 4, 5, 6]
        );
        assert_eq!(lines[3], line(3));
        drop(log);
        assert!(LossLog::open(&p, 0).is_ok());
        assert!(read(&p).unwrap().is_empty(), "a new run starts a new log");
    }
}
