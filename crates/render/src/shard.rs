//! Which part of the work this worker does: `--shard i/N`, a Slurm job array
//! (`SLURM_ARRAY_TASK_ID` − `SLURM_ARRAY_TASK_MIN`, divided by `SLURM_ARRAY_TASK_STEP`, of
//! `SLURM_ARRAY_TASK_COUNT`), or a Kubernetes Indexed Job (`JOB_COMPLETION_INDEX` with
//! `--shard-count`). An image's shard is its key's hash modulo N ([`Shard::owns`]): it
//! depends on nothing but the image's own content, so shards are disjoint, cover everything,
//! and adding, removing or reordering other lines moves nothing.

use std::fmt;

use dreamforge_core::Error;

/// Shard `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// Everything: shard 0 of 1.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    pub fn new(index: usize, count: usize) -> Result<Self, Error> {
        if count == 0 {
            return Err(Error::InvalidInput(
                "the shard count must be at least 1".into(),
            ));
        }
        if index >= count {
            return Err(Error::InvalidInput(format!(
                "shard index {index} is out of range for {count} shards (indices are 0-based: 0..{})",
                count - 1
            )));
        }
        Ok(Self { index, count })
    }

    /// `i/N`.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = || Error::InvalidInput(format!("--shard `{s}`: expected INDEX/COUNT, e.g. 3/64"));
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let i = i.trim().parse().map_err(|_| bad())?;
        let n = n.trim().parse().map_err(|_| bad())?;
        Self::new(i, n)
    }

    /// The shard from, in order: the `--shard` flag; `JOB_COMPLETION_INDEX` with
    /// `--shard-count` (Kubernetes Indexed Job); the Slurm array variables; else all of the
    /// work. `env` looks a variable up (`std::env::var` in the binary).
    pub fn resolve(
        flag: Option<&str>,
        shard_count: Option<usize>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<(Self, &'static str), Error> {
        if let Some(s) = flag {
            return Ok((Self::parse(s)?, "--shard"));
        }
        let num = |name: &str| -> Result<Option<usize>, Error> {
            match env(name) {
                None => Ok(None),
                Some(v) if v.trim().is_empty() => Ok(None),
                Some(v) => v.trim().parse().map(Some).map_err(|_| {
                    Error::InvalidInput(format!("{name}=`{v}` is not a non-negative integer"))
                }),
            }
        };
        if let Some(i) = num("JOB_COMPLETION_INDEX")? {
            let n = shard_count.ok_or_else(|| {
                Error::InvalidInput(
                    "JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job) but --shard-count is not: pass the Job's `completions`".into(),
                )
            })?;
            return Ok((Self::new(i, n)?, "JOB_COMPLETION_INDEX"));
        }
        if let Some(id) = num("SLURM_ARRAY_TASK_ID")? {
            let n = match (shard_count, num("SLURM_ARRAY_TASK_COUNT")?) {
                (Some(n), _) | (None, Some(n)) => n,
                (None, None) => {
                    return Err(Error::InvalidInput(
                        "SLURM_ARRAY_TASK_ID is set but SLURM_ARRAY_TASK_COUNT is not; pass --shard-count".into(),
                    ));
                }
            };
            let min = num("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
            let step = num("SLURM_ARRAY_TASK_STEP")?.unwrap_or(1).max(1);
            if id < min || (id - min) % step != 0 {
                return Err(Error::InvalidInput(format!(
                    "SLURM_ARRAY_TASK_ID={id} is not in the array {min}, {}, ... (SLURM_ARRAY_TASK_MIN / _STEP)",
                    min + step
                )));
            }
            return Ok((Self::new((id - min) / step, n)?, "SLURM_ARRAY_TASK_ID"));
        }
        if let Some(n) = shard_count {
            return Err(Error::InvalidInput(format!(
                "--shard-count {n} without an index: set JOB_COMPLETION_INDEX or pass --shard i/{n}"
            )));
        }
        Ok((Self::ALL, "default"))
    }

    /// The shard an image with this key (hex SHA-256) belongs to, out of `count`.
    pub fn of_key(key: &str, count: usize) -> usize {
        let head = key.get(..16).unwrap_or(key);
        let v = u64::from_str_radix(head, 16).unwrap_or_else(|_| {
            // Not hex (never for our keys): fall back to FNV-1a of the text.
            key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
            })
        });
        (v % count as u64) as usize
    }

    /// True when the image with this key is this shard's work.
    pub fn owns(&self, key: &str) -> bool {
        Self::of_key(key, self.count) == self.index
    }

    /// `0003-of-0064`: a file-name tag.
    pub fn tag(&self) -> String {
        format!("{:04}-of-{:04}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn sources_in_order() {
        let (s, from) = Shard::resolve(Some("2/5"), None, env(&[])).unwrap();
        assert_eq!((s, from), (Shard::new(2, 5).unwrap(), "--shard"));
        let (s, _) = Shard::resolve(None, None, env(&[])).unwrap();
        assert_eq!(s, Shard::ALL);
        let (s, from) = Shard::resolve(
            None,
            None,
            env(&[
                ("SLURM_ARRAY_TASK_ID", "12"),
                ("SLURM_ARRAY_TASK_MIN", "10"),
                ("SLURM_ARRAY_TASK_STEP", "2"),
                ("SLURM_ARRAY_TASK_COUNT", "4"),
            ]),
        )
        .unwrap();
        assert_eq!(
            (s, from),
            (Shard::new(1, 4).unwrap(), "SLURM_ARRAY_TASK_ID")
        );
        let (s, _) = Shard::resolve(None, Some(8), env(&[("JOB_COMPLETION_INDEX", "7")])).unwrap();
        assert_eq!(s, Shard::new(7, 8).unwrap());
    }

    #[test]
    fn bad_shards() {
        for s in ["3/3", "1/0", "a/2", "2", "-1/4"] {
            assert!(Shard::parse(s).is_err(), "{s}");
        }
        assert!(Shard::resolve(None, None, env(&[("JOB_COMPLETION_INDEX", "1")])).is_err());
        assert!(Shard::resolve(None, Some(4), env(&[])).is_err());
        assert!(Shard::resolve(None, None, env(&[("SLURM_ARRAY_TASK_ID", "1")])).is_err());
        assert!(
            Shard::resolve(
                None,
                None,
                env(&[
                    ("SLURM_ARRAY_TASK_ID", "x"),
                    ("SLURM_ARRAY_TASK_COUNT", "2")
                ])
            )
            .is_err()
        );
        let odd = env(&[
            ("SLURM_ARRAY_TASK_ID", "3"),
            ("SLURM_ARRAY_TASK_STEP", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ]);
        assert!(Shard::resolve(None, None, odd).is_err());
    }
}
