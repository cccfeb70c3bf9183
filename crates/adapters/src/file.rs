//! Adapter files (safetensors), read by key pattern — the format is detected from the keys,
//! never from a flag — and written in PEFT / diffusers naming.
//!
//! - PEFT / diffusers: `<component>.<module>.lora_A.weight` `[r, in]`,
//!   `<module>.lora_B.weight` `[out, r]` (also `.lora_A.default.weight`, `base_model.model.`
//!   prefixes); alpha in the `lora_adapter_metadata` JSON (`<component>.lora_alpha` flat, or
//!   unprefixed `lora_alpha`) or as `<module>.alpha` tensors; none → scale 1.
//! - kohya: `lora_unet_<module with _>.lora_down.weight` / `.lora_up.weight` / `.alpha`
//!   (0-d); names are matched against the model's module names with `.` → `_`.
//!
//! Formats and their sources: docs/reference/flux-lora-formats.md, shared methods.md §3.3.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use dreamforge_core::weights::SafetensorsFile;
use dreamforge_core::{Error, HostTensor, Result};

use crate::rank::RankSchedule;

/// How a file names its layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// PEFT / diffusers (`lora_A` / `lora_B`).
    Peft,
    /// kohya sd-scripts (`lora_down` / `lora_up` / `alpha`).
    Kohya,
    /// XLabs x-flux (`<block>.processor.<qkv|proj>_lora[12].down.weight` / `.up.weight`, no
    /// alpha); FLUX only, converted to module names by the FLUX pipeline.
    XLabs,
}

/// One layer's low-rank factors as stored (`down [r, in]`, `up [out, r]`).
#[derive(Debug, Clone, PartialEq)]
pub struct LayerWeights {
    pub down: HostTensor,
    pub up: HostTensor,
    /// `ΔW = (alpha / r)·up·down`; `None` means scale 1.
    pub alpha: Option<f32>,
}

impl LayerWeights {
    pub fn rank(&self) -> usize {
        self.down.shape[0]
    }

    /// `alpha / r` (1 without alpha).
    pub fn scale(&self) -> f64 {
        self.alpha
            .map(|a| a as f64 / self.rank() as f64)
            .unwrap_or(1.0)
    }
}

/// The layers of one adapter file by their name in the file (without the format's suffixes;
/// PEFT names keep their component prefix, e.g. `transformer.blocks.0.attn.to_q`).
#[derive(Debug, Clone)]
pub struct AdapterFile {
    pub path: PathBuf,
    pub format: Format,
    pub layers: BTreeMap<String, LayerWeights>,
    pub metadata: HashMap<String, String>,
    /// Tensors that are not part of any low-rank pair or alpha (e.g. DoRA magnitudes, biases,
    /// norm replacements): not applied, worth a warning.
    pub ignored: Vec<String>,
    /// After a layout conversion: layer name here → the layer's name in the file (what
    /// messages show).
    pub source_names: BTreeMap<String, String>,
}

impl AdapterFile {
    /// The file's own name of layer `name` (as converted layouts rename layers).
    pub fn source_name<'a>(&'a self, name: &'a str) -> &'a str {
        self.source_names.get(name).map_or(name, String::as_str)
    }
}

/// The safetensors metadata key of dreamforge's own adapter description (JSON: `method`
/// `lora`|`tlora`, `parametrization` `vanilla`|`orthogonal`, `rank`, `min_rank`,
/// `rank_exponent`, `lora_alpha`, `target_modules`, `trigger`, `base_model`, `run_config`).
///
/// An orthogonal T-LoRA `ΔW_t = P·diag(λ⊙m_t)·Q − P0·diag(λ0⊙m_t)·Q0` is stored as a plain
/// rank-`2r` LoRA pair `down = [Q; Q0]`, `up = [P·diag(λ), −P0·diag(λ0)]` (scale 1), which is
/// exact: any LoRA runtime applies it (as the full-rank adapter, the T-LoRA at its last
/// step), and dreamforge masks components `j` and `r + j` together (`parametrization`
/// `orthogonal`).
pub const META_KEY: &str = "dreamforge_adapter";

const PEFT_A: [&str; 2] = [".lora_A.weight", ".lora_A.default.weight"];
const KOHYA_DOWN: &str = ".lora_down.weight";
const XLABS_DOWN: &str = ".down.weight";

fn read_scalar(f: &SafetensorsFile, key: &str) -> Result<f32> {
    match f.read_f32(key) {
        Ok(t) if t.data.len() == 1 => Ok(t.data[0]),
        Ok(t) => Err(Error::format(
            f.path(),
            format!("`{key}` should hold one value, it has shape {:?}", t.shape),
        )),
        Err(_) => {
            let (shape, v) = f.read_i64(key)?;
            match v.as_slice() {
                [x] => Ok(*x as f32),
                _ => Err(Error::format(
                    f.path(),
                    format!("`{key}` should hold one value, it has shape {shape:?}"),
                )),
            }
        }
    }
}

/// `lora_alpha` for PEFT layers of `component` from the diffusers metadata: a JSON object
/// with flat keys (`"transformer.lora_alpha"`, or unprefixed `"lora_alpha"`), or nested
/// (`{"transformer_lora_adapter_metadata": {"lora_alpha": …}}`).
fn metadata_alpha(meta: &HashMap<String, String>, component: &str, module: &str) -> Option<f32> {
    let v: serde_json::Value = serde_json::from_str(meta.get("lora_adapter_metadata")?).ok()?;
    let num = |x: &serde_json::Value| x.as_f64().map(|f| f as f32);
    let nested = v.get(format!("{component}_lora_adapter_metadata"));
    let field = |name: &str| {
        v.get(format!("{component}.{name}"))
            .or_else(|| nested.and_then(|n| n.get(name)))
            .or_else(|| v.get(name))
    };
    // PEFT `alpha_pattern`: module-name regexes matched as `(.*\.)?(pattern)$`
    // (`peft.utils.other.get_pattern_key`).
    if let Some(patterns) = field("alpha_pattern").and_then(|p| p.as_object()) {
        for (pattern, alpha) in patterns {
            let anchored = format!("^(.*\\.)?({pattern})$");
            if regex::Regex::new(&anchored).is_ok_and(|r| r.is_match(module)) {
                return num(alpha);
            }
        }
    }
    field("lora_alpha").and_then(num)
}

fn component_of(name: &str) -> &str {
    name.split('.').next().unwrap_or("")
}

impl AdapterFile {
    /// Reads `path`, detecting the naming from its keys. Unpaired factors, rank disagreements
    /// and files without any LoRA layer are errors naming the file and the layer.
    pub fn read(path: &Path) -> Result<Self> {
        let f = SafetensorsFile::open(path)?;
        let keys: Vec<String> = f.keys().map(str::to_owned).collect();
        let metadata = f.metadata().clone();
        let mut layers = BTreeMap::new();
        let format = if keys.iter().any(|k| k.ends_with(KOHYA_DOWN)) {
            for k in keys.iter().filter(|k| k.ends_with(KOHYA_DOWN)) {
                let name = k.trim_end_matches(KOHYA_DOWN);
                let up = format!("{name}.lora_up.weight");
                let alpha_key = format!("{name}.alpha");
                let alpha = if f.info(&alpha_key).is_some() {
                    Some(read_scalar(&f, &alpha_key)?)
                } else {
                    None
                };
                if let Some(l) = pair(&f, k, &up, name, alpha)? {
                    layers.insert(name.to_owned(), l);
                }
            }
            Format::Kohya
        } else if keys.iter().any(|k| PEFT_A.iter().any(|s| k.ends_with(s))) {
            for k in &keys {
                let Some(suffix) = PEFT_A.iter().find(|s| k.ends_with(**s)) else {
                    continue;
                };
                let raw = k.trim_end_matches(suffix);
                let up = format!("{raw}{}", suffix.replace("lora_A", "lora_B"));
                let name = raw.strip_prefix("base_model.model.").unwrap_or(raw);
                let alpha_key = format!("{raw}.alpha");
                let alpha = if f.info(&alpha_key).is_some() {
                    Some(read_scalar(&f, &alpha_key)?)
                } else {
                    metadata_alpha(
                        &metadata,
                        component_of(name),
                        name.split_once('.').map_or(name, |(_, m)| m),
                    )
                };
                if let Some(l) = pair(&f, k, &up, name, alpha)? {
                    layers.insert(name.to_owned(), l);
                }
            }
            Format::Peft
        } else if keys
            .iter()
            .any(|k| k.contains(".processor.") && k.ends_with(XLABS_DOWN))
        {
            for k in keys.iter().filter(|k| k.ends_with(XLABS_DOWN)) {
                let name = k.trim_end_matches(XLABS_DOWN);
                let up = format!("{name}.up.weight");
                if let Some(l) = pair(&f, k, &up, name, None)? {
                    layers.insert(name.to_owned(), l);
                }
            }
            Format::XLabs
        } else {
            let shown: Vec<&str> = keys.iter().take(3).map(String::as_str).collect();
            return Err(Error::format(
                path,
                format!(
                    "no LoRA layers found (expected `.lora_A.weight`/`.lora_B.weight` or `.lora_down.weight`/`.lora_up.weight` keys; the file has {} key(s), e.g. {})",
                    keys.len(),
                    shown.join(", ")
                ),
            ));
        };
        let used: std::collections::HashSet<String> = layers
            .keys()
            .flat_map(|name| {
                let raws = [name.clone(), format!("base_model.model.{name}")];
                raws.into_iter().flat_map(|raw| {
                    [
                        ".lora_A.weight",
                        ".lora_B.weight",
                        ".lora_A.default.weight",
                        ".lora_B.default.weight",
                        ".lora_down.weight",
                        ".lora_up.weight",
                        ".down.weight",
                        ".up.weight",
                        ".alpha",
                    ]
                    .map(|s| format!("{raw}{s}"))
                })
            })
            .collect();
        let ignored = keys.into_iter().filter(|k| !used.contains(k)).collect();
        Ok(Self {
            path: path.to_path_buf(),
            format,
            layers,
            metadata,
            ignored,
            source_names: BTreeMap::new(),
        })
    }

    /// Writes `layers` (module name → factors, names as the model's checkpoint modules) in
    /// PEFT / diffusers naming under `component` (`transformer`, `unet`, …; `""` when the
    /// names carry their component already): `lora_A`/`lora_B`
    /// tensors, each layer's alpha as a 0-d `<module>.alpha` tensor when it is not `r` (read
    /// by ComfyUI and diffusers alike), and `metadata` as given. Written atomically.
    pub fn write_peft(
        path: &Path,
        component: &str,
        layers: &BTreeMap<String, LayerWeights>,
        metadata: &HashMap<String, String>,
    ) -> Result<()> {
        let mut tensors = Vec::with_capacity(layers.len() * 3);
        for (name, l) in layers {
            let base = if component.is_empty() {
                name.clone()
            } else {
                format!("{component}.{name}")
            };
            tensors.push((format!("{base}.lora_A.weight"), l.down.clone()));
            tensors.push((format!("{base}.lora_B.weight"), l.up.clone()));
            if let Some(a) = l.alpha.filter(|a| *a != l.rank() as f32) {
                tensors.push((format!("{base}.alpha"), HostTensor::new(vec![], vec![a])));
            }
        }
        dreamforge_core::export::save_safetensors(path, &tensors, metadata)
    }

    /// Writes `layers` (full kohya module names, e.g. `lora_unet_double_blocks_0_img_attn_qkv`)
    /// in kohya naming: `lora_down` / `lora_up` and a 0-d f32 `alpha` on every layer (rank
    /// when the layer has none). Written atomically.
    pub fn write_kohya(
        path: &Path,
        layers: &BTreeMap<String, LayerWeights>,
        metadata: &HashMap<String, String>,
    ) -> Result<()> {
        let mut tensors = Vec::with_capacity(layers.len() * 3);
        for (name, l) in layers {
            tensors.push((format!("{name}.lora_down.weight"), l.down.clone()));
            tensors.push((format!("{name}.lora_up.weight"), l.up.clone()));
            let a = l.alpha.unwrap_or(l.rank() as f32);
            tensors.push((format!("{name}.alpha"), HostTensor::new(vec![], vec![a])));
        }
        dreamforge_core::export::save_safetensors(path, &tensors, metadata)
    }

    /// The rank schedule of a T-LoRA file (from its `dreamforge_adapter` metadata: method
    /// `tlora`, `min_rank`, `rank_exponent`); `None` for a plain LoRA.
    pub fn schedule(&self) -> Option<RankSchedule> {
        let v: serde_json::Value = serde_json::from_str(self.metadata.get(META_KEY)?).ok()?;
        if v.get("method")?.as_str()? != "tlora" {
            return None;
        }
        Some(RankSchedule {
            min_rank: v.get("min_rank")?.as_u64()? as usize,
            exponent: v
                .get("rank_exponent")
                .and_then(|e| e.as_f64())
                .unwrap_or(1.0),
            paired: v.get("parametrization").and_then(|p| p.as_str()) == Some("orthogonal"),
        })
    }

    /// The trigger word a dreamforge-trained adapter was trained with (its metadata).
    pub fn trigger(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(self.metadata.get(META_KEY)?).ok()?;
        v.get("trigger")?
            .as_str()
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
    }

    /// The file's layer for checkpoint module `module` of the model's `component`: PEFT names
    /// with or without the component prefix, kohya names as `lora_unet_`/`lora_te_` +
    /// `module` with `.` → `_`.
    pub fn layer_for(&self, component: &str, module: &str) -> Option<(&str, &LayerWeights)> {
        let candidates = match self.format {
            Format::Peft => vec![format!("{component}.{module}"), module.to_owned()],
            Format::XLabs => Vec::new(),
            Format::Kohya => {
                let flat = module.replace('.', "_");
                // sd-scripts prefixes by model part: `lora_unet_` (UNet, FLUX transformer),
                // `lora_te_` / `lora_te1_` (the first text encoder), `lora_te2_` (SDXL's
                // second); OneTrainer writes `lora_transformer_`.
                let prefixes: &[&str] = match component {
                    "text_encoder" => &["lora_te_", "lora_te1_"],
                    "text_encoder_2" => &["lora_te2_"],
                    "transformer" => &["lora_unet_", "lora_transformer_"],
                    _ => &["lora_unet_"],
                };
                prefixes.iter().map(|p| format!("{p}{flat}")).collect()
            }
        };
        candidates
            .into_iter()
            .find_map(|c| self.layers.get_key_value(&c))
            .map(|(k, v)| (k.as_str(), v))
    }
}

/// The factors of one layer; `None` for a k×k convolution adapter (not supported).
fn pair(
    f: &SafetensorsFile,
    down: &str,
    up: &str,
    name: &str,
    alpha: Option<f32>,
) -> Result<Option<LayerWeights>> {
    if f.info(up).is_none() {
        return Err(Error::format(
            f.path(),
            format!("layer `{name}` has a down factor `{down}` but no up factor `{up}`"),
        ));
    }
    let (mut d, mut u) = (f.read_f32(down)?, f.read_f32(up)?);
    // 1×1 convolution factors (SD1 `proj_in` / `proj_out`, stored as `[r, in, 1, 1]` and
    // `[out, r, 1, 1]`) are linear maps.
    let squeeze = |t: &mut HostTensor| {
        if t.shape.len() == 4 && t.shape[2] == 1 && t.shape[3] == 1 {
            t.shape.truncate(2);
        }
    };
    squeeze(&mut d);
    squeeze(&mut u);
    if d.shape.len() == 4 || u.shape.len() == 4 {
        // A k×k convolution adapter (LoCon / LyCORIS): not applied, reported as ignored.
        return Ok(None);
    }
    if let Some((which, t)) = [("down", &d), ("up", &u)]
        .into_iter()
        .find(|(_, t)| t.data.iter().any(|v| !v.is_finite()))
    {
        let bad = t.data.iter().filter(|v| !v.is_finite()).count();
        return Err(Error::format(
            f.path(),
            format!(
                "layer `{name}`: its {which} factor holds {bad} NaN / infinite value(s) (a corrupt or diverged adapter)"
            ),
        ));
    }
    if d.shape.len() != 2 || u.shape.len() != 2 || d.shape[0] != u.shape[1] {
        return Err(Error::format(
            f.path(),
            format!(
                "layer `{name}`: down {:?} and up {:?} are not a rank-r pair ([r, in] and [out, r])",
                d.shape, u.shape
            ),
        ));
    }
    Ok(Some(LayerWeights {
        down: d,
        up: u,
        alpha,
    }))
}

/// An adapter file attached at `strength` (multiplies its `alpha / r`).
#[derive(Debug, Clone, Copy)]
pub struct FileAdapter<'a> {
    pub file: &'a AdapterFile,
    pub strength: f64,
}

/// Attaches `adapters` (slot `i` = adapter `i`) to the weights of `model` whose checkpoint
/// module names (`key_of(path)` without `.weight`) the files name, for the model part
/// `component` (`transformer`, `unet`, `text_encoder`). A layer whose factors do not fit the
/// weight is an error naming the file, the layer and both shapes. Returns the model and, per
/// adapter, the file layers that matched no weight (for a warning: a file for another model
/// part or another architecture).
pub fn attach_files<M: burn::module::Module>(
    model: M,
    component: &str,
    key_of: impl Fn(&str) -> Option<String>,
    adapters: &[FileAdapter<'_>],
) -> Result<(M, Vec<Vec<String>>)> {
    let mut used: Vec<std::collections::HashSet<String>> = vec![Default::default(); adapters.len()];
    let mut error: Option<Error> = None;
    let everything = regex::Regex::new(".*").expect("valid regex");
    let (model, _) = crate::attach::attach(
        model,
        key_of,
        &everything,
        |module, d_in, d_out, device| {
            adapters
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let (name, l) = a.file.layer_for(component, module)?;
                if l.down.shape[1] != d_in || l.up.shape[0] != d_out {
                    error.get_or_insert_with(|| {
                        Error::format(
                            &a.file.path,
                            format!(
                                "layer `{}` does not fit the model's `{module}`: down {:?} and up {:?} need a weight of [out {}, in {}], the model's is [out {d_out}, in {d_in}]",
                                a.file.source_name(name), l.down.shape, l.up.shape, l.up.shape[0], l.down.shape[1]
                            ),
                        )
                    });
                    return None;
                }
                used[i].insert(name.to_owned());
                let r = l.rank();
                let t2 = |h: &HostTensor| {
                    burn::tensor::Tensor::<2>::from_data(
                        burn::tensor::TensorData::new(h.data.clone(), [h.shape[0], h.shape[1]]),
                        device,
                    )
                };
                Some(crate::Branch {
                    down: burn::module::Param::from_tensor(t2(&l.down)),
                    up: burn::module::Param::from_tensor(t2(&l.up)),
                    lambda: None,
                    frozen: None,
                    mask: burn::module::Param::from_tensor(burn::tensor::Tensor::ones([r], device))
                        .set_require_grad(false),
                    scale: a.strength * l.scale(),
                })
            })
            .collect()
        },
    );
    if let Some(e) = error {
        return Err(e);
    }
    let unmatched = adapters
        .iter()
        .zip(&used)
        .map(|(a, u)| {
            a.file
                .layers
                .keys()
                .filter(|k| !u.contains(*k))
                .map(|k| a.file.source_name(k).to_string())
                .collect()
        })
        .collect();
    Ok((model, unmatched))
}

/// The factors of one trained branch as a file stores them, its scale folded into `up`
/// (`ΔW = up·down`), or, for an orthogonal branch, the exact rank-`2r` pair (see
/// [`META_KEY`]). The mask is not applied (a file holds the full adapter).
pub fn branch_weights(b: &crate::Branch) -> LayerWeights {
    use burn::tensor::Tensor;
    let down = b.down.val();
    let up = b.up.val();
    let (down, up) = match (&b.lambda, &b.frozen) {
        (Some(l), Some(f)) => {
            let r = l.val().dims()[0];
            let scaled = |p: Tensor<2>, l: Tensor<1>| p * l.reshape([1, r]);
            (
                Tensor::cat(vec![down, f.down.val()], 0),
                Tensor::cat(
                    vec![
                        scaled(up, l.val()) * b.scale,
                        scaled(f.up.val(), f.lambda.val()) * (-b.scale),
                    ],
                    1,
                ),
            )
        }
        (Some(l), None) => {
            let r = l.val().dims()[0];
            (down, up * l.val().reshape([1, r]) * b.scale)
        }
        _ => (down, up * b.scale),
    };
    // The scale is folded into `up`: the layer applies at scale 1 (alpha = its rank).
    LayerWeights {
        down: dreamforge_core::to_host(down),
        up: dreamforge_core::to_host(up),
        alpha: None,
    }
}

struct Collect<'a, K> {
    stack: Vec<String>,
    key_of: K,
    slot: usize,
    found: &'a mut BTreeMap<String, (Option<HostTensor>, Option<HostTensor>)>,
}

impl<K: Fn(&str) -> Option<String>> burn::module::ModuleVisitor for Collect<'_, K> {
    fn enter_module(&mut self, name: &str, _c: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _n: &str, _c: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(
        &mut self,
        param: &burn::module::Param<burn::tensor::Tensor<D>>,
    ) {
        // <weight path>.adapters.branches.<slot>.(down|up)
        let n = self.stack.len();
        if D != 2 || n < 5 || self.stack[n - 4] != "adapters" || self.stack[n - 3] != "branches" {
            return;
        }
        if self.stack[n - 2] != self.slot.to_string() {
            return;
        }
        let Some(module) = (self.key_of)(&self.stack[..n - 4].join("."))
            .and_then(|k| k.strip_suffix(".weight").map(str::to_owned))
        else {
            return;
        };
        let entry = self.found.entry(module).or_default();
        let value = dreamforge_core::to_host(param.val());
        match self.stack[n - 1].as_str() {
            "down" => entry.0 = Some(value),
            "up" => entry.1 = Some(value),
            _ => {}
        }
    }
}

/// The factors of adapter slot `slot` on every adapted weight of `model`, by checkpoint module
/// name, with `alpha` (what [`LayerWeights::scale`] divides by the rank; the attach call's
/// `alpha`, `None` for scale 1).
pub fn collect<M: burn::module::Module>(
    model: &M,
    key_of: impl Fn(&str) -> Option<String>,
    slot: usize,
    alpha: Option<f32>,
) -> BTreeMap<String, LayerWeights> {
    let mut found = BTreeMap::new();
    model.visit(&mut Collect {
        stack: Vec::new(),
        key_of,
        slot,
        found: &mut found,
    });
    found
        .into_iter()
        .filter_map(|(k, (d, u))| {
            Some((
                k,
                LayerWeights {
                    down: d?,
                    up: u?,
                    alpha,
                },
            ))
        })
        .collect()
}
