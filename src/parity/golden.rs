//! Reading a fixture folder (`golden.json` + `golden.safetensors`) and comparing outputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use dreamforge_core::{HostTensor, WeightSet};

#[derive(Debug, Clone, Copy, Deserialize)]
pub struct Tolerance {
    pub max_abs: f64,
    pub rel_l2: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Case {
    #[serde(default)]
    pub inputs: BTreeMap<String, String>,
    pub outputs: BTreeMap<String, String>,
    #[serde(default)]
    pub only_outputs: Option<Vec<String>>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// One fixture folder.
pub struct Fixture {
    pub dir: PathBuf,
    pub name: String,
    pub kind: String,
    pub json: serde_json::Value,
    pub tolerance: Tolerance,
    pub cases: Vec<Case>,
    pub golden: WeightSet,
}

impl Fixture {
    pub fn open(dir: &Path) -> Result<Self, String> {
        let gj = dir.join("golden.json");
        let text = std::fs::read_to_string(&gj).map_err(|e| format!("{}: {e}", gj.display()))?;
        let json: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| format!("{}: invalid JSON: {e}", gj.display()))?;
        let kind = json["kind"]
            .as_str()
            .ok_or_else(|| format!("{}: no `kind`", gj.display()))?
            .to_string();
        let tolerance: Tolerance = serde_json::from_value(json["tolerance"].clone())
            .map_err(|e| format!("{}: bad `tolerance`: {e}", gj.display()))?;
        let cases: Vec<Case> = serde_json::from_value(json["cases"].clone())
            .map_err(|e| format!("{}: bad `cases`: {e}", gj.display()))?;
        let golden = WeightSet::open(dir.join("golden.safetensors")).map_err(|e| e.to_string())?;
        Ok(Self {
            name: dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            dir: dir.to_path_buf(),
            kind,
            json,
            tolerance,
            cases,
            golden,
        })
    }

    /// A float golden tensor by key.
    /// A golden tensor by key as f32; integer goldens (token ids, masks) are converted, which is
    /// exact for ids below 2^24.
    pub fn tensor(&self, key: &str) -> Result<HostTensor, String> {
        match self.golden.dtype(key) {
            Some(d)
                if !matches!(
                    d,
                    safetensors::Dtype::F32
                        | safetensors::Dtype::F16
                        | safetensors::Dtype::BF16
                        | safetensors::Dtype::F64
                ) =>
            {
                let (shape, ids) = self.golden.read_i64(key).map_err(|e| e.to_string())?;
                Ok(HostTensor::new(
                    shape,
                    ids.into_iter().map(|v| v as f32).collect(),
                ))
            }
            _ => self.golden.read_f32(key).map_err(|e| e.to_string()),
        }
    }

    /// A case input by argument name (float).
    pub fn input(&self, case: &Case, name: &str) -> Result<HostTensor, String> {
        let key = case
            .inputs
            .get(name)
            .ok_or_else(|| format!("case has no input `{name}`"))?;
        self.tensor(key)
    }

    pub fn input_opt(&self, case: &Case, name: &str) -> Result<Option<HostTensor>, String> {
        match case.inputs.get(name) {
            Some(k) => self.tensor(k).map(Some),
            None => Ok(None),
        }
    }

    /// The weights path named by `weights`, or the folder itself.
    pub fn weights_path(&self) -> PathBuf {
        match self.json.get("weights").and_then(|w| w.as_str()) {
            Some(w) => self.dir.join(w),
            None => self.dir.clone(),
        }
    }

    /// Compares computed outputs with the case's goldens (respecting `only_outputs`).
    pub fn check(
        &self,
        index: usize,
        case: &Case,
        computed: &BTreeMap<String, HostTensor>,
    ) -> Outcome {
        let mut worst = Compare {
            max_abs: 0.0,
            rel_l2: 0.0,
        };
        for (name, key) in &case.outputs {
            if let Some(only) = &case.only_outputs
                && !only.contains(name)
            {
                continue;
            }
            let Some(got) = computed.get(name) else {
                return Outcome::case_error(
                    &self.name,
                    index,
                    format!("output `{name}` was not computed"),
                );
            };
            let want = match self.tensor(key) {
                Ok(t) => t,
                Err(e) => return Outcome::case_error(&self.name, index, e),
            };
            if got.shape != want.shape {
                return Outcome::case_error(
                    &self.name,
                    index,
                    format!(
                        "output `{name}` has shape {:?}, golden {:?}",
                        got.shape, want.shape
                    ),
                );
            }
            let c = compare(&got.data, &want.data);
            worst.max_abs = worst.max_abs.max(c.max_abs);
            worst.rel_l2 = worst.rel_l2.max(c.rel_l2);
        }
        let ok = worst.max_abs <= self.tolerance.max_abs && worst.rel_l2 <= self.tolerance.rel_l2;
        Outcome {
            fixture: self.name.clone(),
            case: Some(index),
            compare: Some(worst),
            ok,
            error: None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Compare {
    pub max_abs: f64,
    pub rel_l2: f64,
}

/// max |a − b| and ‖a − b‖₂ / ‖b‖₂ (NaN anywhere counts as infinite error).
pub fn compare(got: &[f32], want: &[f32]) -> Compare {
    let mut max_abs = 0f64;
    let mut num = 0f64;
    let mut den = 0f64;
    for (&g, &w) in got.iter().zip(want) {
        let d = (g as f64 - w as f64).abs();
        let d = if d.is_nan() { f64::INFINITY } else { d };
        max_abs = max_abs.max(d);
        num += d * d;
        den += (w as f64) * (w as f64);
    }
    let rel_l2 = if den > 0.0 {
        num.sqrt() / den.sqrt()
    } else {
        num.sqrt()
    };
    Compare { max_abs, rel_l2 }
}

/// The result of one case (or of a fixture that could not be loaded).
#[derive(Debug, Clone)]
pub struct Outcome {
    pub fixture: String,
    pub case: Option<usize>,
    pub compare: Option<Compare>,
    pub ok: bool,
    pub error: Option<String>,
}

impl Outcome {
    pub fn error(fixture: &str, msg: String) -> Self {
        Self {
            fixture: fixture.into(),
            case: None,
            compare: None,
            ok: false,
            error: Some(msg),
        }
    }

    pub fn case_error(fixture: &str, case: usize, msg: String) -> Self {
        Self {
            case: Some(case),
            ..Self::error(fixture, msg)
        }
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let case = self
            .case
            .map(|c| c.to_string())
            .unwrap_or_else(|| "-".into());
        match (&self.error, &self.compare) {
            (Some(e), _) => write!(
                f,
                "parity {} {case} ERROR {}",
                self.fixture,
                e.replace('\n', " ")
            ),
            (None, Some(c)) => write!(
                f,
                "parity {} {case} max_abs={:.3e} rel_l2={:.3e} {}",
                self.fixture,
                c.max_abs,
                c.rel_l2,
                if self.ok { "ok" } else { "FAIL" }
            ),
            (None, None) => write!(f, "parity {} {case} ERROR no comparison", self.fixture),
        }
    }
}
