//! `dreamforge render --status`: per shard, how many images exist (done), how many last failed
//! (on their input, or retryably) and how many nobody has made yet (missing). An image is done
//! when its file exists — the log says why the others are not.

use std::collections::HashMap;
use std::path::Path;

use crate::log::{self, Record, Status};
use crate::plan::Plan;
use crate::shard::Shard;

/// One shard's counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardStatus {
    pub shard: usize,
    pub images: usize,
    pub done: usize,
    pub failed: usize,
    pub retryable: usize,
    pub missing: usize,
    /// Bad job lines this shard reports.
    pub bad_jobs: usize,
}

impl ShardStatus {
    pub fn complete(&self) -> bool {
        self.done == self.images && self.bad_jobs == 0
    }

    fn add(&mut self, o: &ShardStatus) {
        self.images += o.images;
        self.done += o.done;
        self.failed += o.failed;
        self.retryable += o.retryable;
        self.missing += o.missing;
        self.bad_jobs += o.bad_jobs;
    }
}

/// The status of every shard of `count` for `plan` rendered into `out`, and the total.
pub fn summarize(plan: &Plan, out: &Path, count: usize) -> (Vec<ShardStatus>, ShardStatus) {
    let (records, _) = log::read_all(out);
    let mut last: HashMap<&str, &Record> = HashMap::new();
    for r in &records {
        if let Some(i) = &r.image {
            last.insert(i.as_str(), r);
        }
    }
    let mut shards: Vec<ShardStatus> = (0..count)
        .map(|shard| ShardStatus {
            shard,
            ..Default::default()
        })
        .collect();
    for img in &plan.images {
        let s = &mut shards[Shard::of_key(&img.shard_key, count)];
        s.images += 1;
        if out.join(&img.path).is_file() {
            s.done += 1;
            continue;
        }
        let rel = img.path.to_string_lossy();
        match last.get(rel.as_ref()).map(|r| r.status) {
            Some(Status::Failed) => s.failed += 1,
            Some(Status::Retryable) => s.retryable += 1,
            _ => s.missing += 1,
        }
    }
    for b in &plan.bad {
        shards[Shard::of_key(&b.shard_key, count)].bad_jobs += 1;
    }
    let mut total = ShardStatus {
        shard: count,
        ..Default::default()
    };
    for s in &shards {
        total.add(s);
    }
    (shards, total)
}
