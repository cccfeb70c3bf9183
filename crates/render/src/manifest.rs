//! Render manifests: JSONL (one job per line; blank lines and lines starting with `#` or `//`
//! skipped; an optional first line `{"defaults": {...}}`) or TOML (`[defaults]` and `[[job]]`
//! tables, chosen by the `.toml` extension). A job's fields are the `dreamforge sample` flags
//! under their flag names (`negative_prompt`, `true_cfg`, ...) plus `seeds`, `count`,
//! `adapters`, `references`, `output` and `name`. Unknown fields are errors: a typo must not
//! silently render the wrong thing. A malformed line fails alone; the rest of the manifest
//! stands.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use dreamforge_core::Error;

/// One job's fields, every one optional (a job line, a header, a defaults file or the command
/// line's flags); [`JobFields::over`] layers them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobFields {
    /// A label for logs and file names (`[A-Za-z0-9._-]`, at most 64 characters).
    pub name: Option<String>,
    pub prompt: Option<String>,
    pub negative_prompt: Option<String>,
    /// First seed; with `count`, the seeds `seed .. seed + count`.
    pub seed: Option<u64>,
    /// Explicit seeds (instead of `seed` / `count`).
    pub seeds: Option<Vec<u64>>,
    /// Images to render [default 1].
    pub count: Option<usize>,
    pub width: Option<usize>,
    pub height: Option<usize>,
    pub steps: Option<usize>,
    /// SD guidance scale or FLUX.1-dev's distilled guidance (as `sample --guidance`).
    pub guidance: Option<f32>,
    /// FLUX true CFG scale (as `sample --true-cfg`).
    pub true_cfg: Option<f32>,
    /// SD sampler name (as `sample --sampler`).
    pub sampler: Option<String>,
    pub clip_skip: Option<usize>,
    /// Model path (relative paths are relative to the manifest's folder) [default: the
    /// built-in nano model].
    pub model: Option<String>,
    /// A diffusers folder supplying what a single-file model lacks (as `sample --components`).
    pub components: Option<String>,
    /// Adapters with strengths: `"path"`, `"path:0.8"` or `{"path": ..., "scale": 0.8}`.
    pub adapters: Option<Vec<AdapterSpec>>,
    /// Token-replacement references (Personalize Anything, FLUX family):
    /// `[{"image": ..., "mask": ..., "shift": [dx, dy], "prompt": ...}]`.
    pub references: Option<Vec<ReferenceSpec>>,
    /// Token replacement runs while σ > τ (as `sample --tau`).
    pub tau: Option<f32>,
    /// Attention sharing below τ (as `sample --share-attention`).
    pub share_attention: Option<bool>,
    /// Latent blending of the references' regions (as `sample --ref-blend`).
    pub ref_blend: Option<bool>,
    /// Sub-folder of the output folder (relative, never leaving it).
    pub output: Option<String>,
}

/// An adapter and its strength.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdapterSpec {
    pub path: String,
    pub scale: f64,
}

/// A reference subject for token replacement (`mask`: a mask image, `auto` or `all`, as
/// `sample --ref-mask`; `shift` in pixels).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferenceSpec {
    pub image: String,
    pub mask: Option<String>,
    /// `[dx, dy]` in pixels.
    pub shift: Option<[i64; 2]>,
    pub prompt: Option<String>,
}

impl<'de> Deserialize<'de> for AdapterSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AdapterSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(r#""path", "path:scale" or {"path": ..., "scale": ...}"#)
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<AdapterSpec, E> {
                Ok(AdapterSpec::parse(s))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<AdapterSpec, A::Error> {
                let (mut path, mut scale) = (None, None);
                while let Some(k) = m.next_key::<String>()? {
                    match k.as_str() {
                        "path" => path = Some(m.next_value::<String>()?),
                        "scale" => scale = Some(m.next_value::<f64>()?),
                        other => return Err(de::Error::unknown_field(other, &["path", "scale"])),
                    }
                }
                Ok(AdapterSpec {
                    path: path.ok_or_else(|| de::Error::missing_field("path"))?,
                    scale: scale.unwrap_or(1.0),
                })
            }
        }
        d.deserialize_any(V)
    }
}

impl AdapterSpec {
    /// `PATH[:SCALE]`; a suffix after the last `:` that is not a number belongs to the path
    /// (as `sample --lora`).
    pub fn parse(s: &str) -> Self {
        match s.rsplit_once(':') {
            Some((p, v)) if !p.is_empty() => match v.parse::<f64>() {
                Ok(scale) => Self {
                    path: p.into(),
                    scale,
                },
                Err(_) => Self {
                    path: s.into(),
                    scale: 1.0,
                },
            },
            _ => Self {
                path: s.into(),
                scale: 1.0,
            },
        }
    }
}

impl JobFields {
    /// `self` layered over `lower`: each field set here wins. The seed fields move as a group
    /// (a job's `seeds` replaces a default `seed` / `count`; a job's `seed` replaces default
    /// `seeds` but keeps a default `count`); `adapters` and `references` replace, never append
    /// (`[]` clears a default).
    pub fn over(&self, lower: &JobFields) -> JobFields {
        let (seed, seeds, count) = if self.seeds.is_some() {
            (self.seed, self.seeds.clone(), self.count)
        } else if self.seed.is_some() {
            (self.seed, None, self.count.or(lower.count))
        } else {
            (lower.seed, lower.seeds.clone(), self.count.or(lower.count))
        };
        JobFields {
            name: self.name.clone().or(lower.name.clone()),
            prompt: self.prompt.clone().or(lower.prompt.clone()),
            negative_prompt: self
                .negative_prompt
                .clone()
                .or(lower.negative_prompt.clone()),
            seed,
            seeds,
            count,
            width: self.width.or(lower.width),
            height: self.height.or(lower.height),
            steps: self.steps.or(lower.steps),
            guidance: self.guidance.or(lower.guidance),
            true_cfg: self.true_cfg.or(lower.true_cfg),
            sampler: self.sampler.clone().or(lower.sampler.clone()),
            clip_skip: self.clip_skip.or(lower.clip_skip),
            model: self.model.clone().or(lower.model.clone()),
            components: self.components.clone().or(lower.components.clone()),
            adapters: self.adapters.clone().or(lower.adapters.clone()),
            references: self.references.clone().or(lower.references.clone()),
            tau: self.tau.or(lower.tau),
            share_attention: self.share_attention.or(lower.share_attention),
            ref_blend: self.ref_blend.or(lower.ref_blend),
            output: self.output.clone().or(lower.output.clone()),
        }
    }

    /// Reads a defaults file (TOML by extension, else JSON) holding job fields.
    pub fn read_defaults(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let r = if is_toml(path) {
            toml::from_str(&text).map_err(|e| one_line(&e.to_string()))
        } else {
            serde_json::from_str(&text).map_err(|e| e.to_string())
        };
        r.map_err(|e| Error::config(path, e))
    }
}

/// One job of a manifest as written: where it is and its fields, or why it could not be read.
#[derive(Debug, Clone)]
pub struct ManifestLine {
    /// `line 12` (JSONL) or `job 3` (TOML).
    pub label: String,
    pub fields: Result<JobFields, String>,
}

/// A parsed manifest.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub path: PathBuf,
    /// The header line (`{"defaults": {...}}`) or `[defaults]` table.
    pub defaults: JobFields,
    pub jobs: Vec<ManifestLine>,
}

fn is_toml(p: &Path) -> bool {
    p.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"))
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    defaults: JobFields,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlManifest {
    #[serde(default)]
    defaults: JobFields,
    #[serde(default)]
    job: Vec<toml::Value>,
}

impl Manifest {
    /// Reads `path`. Only an unreadable file (or, for TOML, one that is not TOML at all) fails
    /// as a whole; a bad job line is kept as that line's error.
    pub fn read(path: &Path) -> Result<Self, Error> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let m = if is_toml(path) {
            Self::parse_toml(path, &bytes)?
        } else {
            Self::parse_jsonl(path, &bytes)?
        };
        if m.jobs.is_empty() {
            return Err(Error::format(path, "the manifest holds no jobs"));
        }
        Ok(m)
    }

    /// Parses JSONL bytes.
    pub fn parse_jsonl(path: &Path, bytes: &[u8]) -> Result<Self, Error> {
        let mut defaults = JobFields::default();
        let mut jobs = Vec::new();
        let mut seen_content = false;
        for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let label = format!("line {}", i + 1);
            let text = match std::str::from_utf8(raw) {
                Ok(t) => t.trim(),
                Err(_) => {
                    jobs.push(ManifestLine {
                        label,
                        fields: Err("not UTF-8 text".into()),
                    });
                    seen_content = true;
                    continue;
                }
            };
            if text.is_empty() || text.starts_with('#') || text.starts_with("//") {
                continue;
            }
            let first = !seen_content;
            seen_content = true;
            let is_header = serde_json::from_str::<serde_json::Value>(text)
                .ok()
                .and_then(|v| v.as_object().map(|o| o.contains_key("defaults")))
                .unwrap_or(false);
            if is_header {
                if !first {
                    jobs.push(ManifestLine {
                        label,
                        fields: Err("a `defaults` header must be the first line".into()),
                    });
                    continue;
                }
                let h: Header = serde_json::from_str(text)
                    .map_err(|e| Error::config(path, format!("{label}: {e}")))?;
                defaults = h.defaults;
                continue;
            }
            jobs.push(ManifestLine {
                label,
                fields: serde_json::from_str::<JobFields>(text).map_err(|e| e.to_string()),
            });
        }
        Ok(Self {
            path: path.into(),
            defaults,
            jobs,
        })
    }

    /// Parses TOML bytes.
    pub fn parse_toml(path: &Path, bytes: &[u8]) -> Result<Self, Error> {
        let text = std::str::from_utf8(bytes).map_err(|_| Error::format(path, "not UTF-8 text"))?;
        let m: TomlManifest =
            toml::from_str(text).map_err(|e| Error::config(path, one_line(&e.to_string())))?;
        let jobs = m
            .job
            .into_iter()
            .enumerate()
            .map(|(i, v)| ManifestLine {
                label: format!("job {}", i + 1),
                fields: v
                    .try_into::<JobFields>()
                    .map_err(|e| one_line(&e.to_string())),
            })
            .collect();
        Ok(Self {
            path: path.into(),
            defaults: m.defaults,
            jobs,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jsonl(s: &str) -> Manifest {
        Manifest::parse_jsonl(Path::new("m.jsonl"), s.as_bytes()).unwrap()
    }

    #[test]
    fn unknown_fields_fail_their_line_only() {
        let m = jsonl(
            "{\"defaults\": {\"steps\": 4}}\n# a comment\n\n{\"prompt\": \"a\"}\n{\"promt\": \"b\"}\nnot json\n{\"prompt\": \"c\", \"seed\": 3}\n",
        );
        assert_eq!(m.defaults.steps, Some(4));
        assert_eq!(m.jobs.len(), 4);
        assert_eq!(m.jobs[0].label, "line 4");
        assert!(m.jobs[0].fields.is_ok());
        let e = m.jobs[1].fields.as_ref().unwrap_err();
        assert!(e.contains("unknown field `promt`"), "{e}");
        assert!(m.jobs[2].fields.is_err());
        assert_eq!(m.jobs[3].fields.as_ref().unwrap().seed, Some(3));
    }

    #[test]
    fn late_header_and_bad_utf8_are_line_errors() {
        let mut bytes = b"{\"prompt\": \"a\"}\n{\"defaults\": {}}\n".to_vec();
        bytes.extend_from_slice(&[0xff, 0xfe, b'\n']);
        let m = Manifest::parse_jsonl(Path::new("m"), &bytes).unwrap();
        assert_eq!(m.jobs.len(), 3);
        assert!(
            m.jobs[1]
                .fields
                .as_ref()
                .unwrap_err()
                .contains("first line")
        );
        assert!(m.jobs[2].fields.as_ref().unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn adapters_in_three_spellings() {
        let m = jsonl(
            r#"{"prompt": "a", "adapters": ["x.safetensors", "y.safetensors:0.5", {"path": "z", "scale": 2}]}"#,
        );
        let a = m.jobs[0].fields.as_ref().unwrap().adapters.clone().unwrap();
        assert_eq!(a[0].scale, 1.0);
        assert_eq!((a[1].path.as_str(), a[1].scale), ("y.safetensors", 0.5));
        assert_eq!((a[2].path.as_str(), a[2].scale), ("z", 2.0));
        let m = jsonl(r#"{"prompt": "a", "adapters": [{"path": "z", "scael": 2}]}"#);
        assert!(m.jobs[0].fields.as_ref().unwrap_err().contains("scael"));
    }

    #[test]
    fn toml_manifest() {
        let t = "[defaults]\nsteps = 4\nmodel = \"m\"\n\n[[job]]\nprompt = \"a\"\ncount = 2\n\n[[job]]\nprompt = \"b\"\nwidht = 3\n";
        let m = Manifest::parse_toml(Path::new("m.toml"), t.as_bytes()).unwrap();
        assert_eq!(m.defaults.model.as_deref(), Some("m"));
        assert_eq!(m.jobs[0].fields.as_ref().unwrap().count, Some(2));
        assert_eq!(m.jobs[1].label, "job 2");
        assert!(m.jobs[1].fields.as_ref().unwrap_err().contains("widht"));
        assert!(Manifest::parse_toml(Path::new("m.toml"), b"[job\n").is_err());
        assert!(Manifest::parse_toml(Path::new("m.toml"), b"[jobs]\n").is_err());
    }

    #[test]
    fn layering() {
        let d = JobFields {
            seed: Some(1),
            count: Some(4),
            steps: Some(8),
            adapters: Some(vec![AdapterSpec::parse("a")]),
            ..Default::default()
        };
        let j = JobFields {
            seeds: Some(vec![5, 6]),
            adapters: Some(vec![]),
            ..Default::default()
        };
        let m = j.over(&d);
        assert_eq!(
            (m.seed, m.seeds.clone(), m.count),
            (None, Some(vec![5, 6]), None)
        );
        assert_eq!(m.steps, Some(8));
        assert_eq!(m.adapters, Some(vec![]));
        let j = JobFields {
            seed: Some(9),
            ..Default::default()
        };
        let m = j.over(&d);
        assert_eq!((m.seed, m.count), (Some(9), Some(4)));
    }
}
