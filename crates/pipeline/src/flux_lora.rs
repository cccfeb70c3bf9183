//! FLUX adapter files in the original BFL layout → diffusers module names, so every FLUX
//! LoRA attaches the same way whatever tool wrote it (docs/reference/flux-lora-formats.md):
//!
//! - kohya sd-scripts: `lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight` (+ `.alpha`),
//!   also with ComfyUI's `diffusion_model.` prefix instead of `lora_unet_`;
//! - BFL / PEFT on BFL paths: `double_blocks.0.img_attn.qkv.lora_A.weight` (optionally
//!   `diffusion_model.` / `transformer.` prefixed);
//! - XLabs x-flux: `double_blocks.0.processor.qkv_lora1.down.weight` (`qkv_lora1/2` = image /
//!   text qkv, `proj_lora1/2` = image / text out, single-block `qkv_lora` = the q/k/v rows of
//!   `linear1`, `proj_lora` = `linear2`).
//!
//! A fused module (`img_attn.qkv`, `txt_attn.qkv`, `linear1`) becomes one layer per diffusers
//! projection with the **same down factor and the up rows of that projection** — exactly the
//! fused `ΔW` restricted to those rows, so the result is identical whether the file's up
//! factor is dense (normal kohya training) or block-diagonal (split-qkv / converted files).
//! `final_layer.adaLN_modulation.1` → `norm_out.linear` swaps the two row halves of the up
//! factor only (BFL `shift, scale` vs diffusers `scale, shift`). The row ranges come from the
//! model's config through the same key map the weight loader uses, not hard-coded widths.

use std::collections::{BTreeMap, HashMap};

use dreamforge_adapters::{AdapterFile, Format, LayerWeights};
use dreamforge_core::HostTensor;
use dreamforge_models::dit::flux::FluxConfig;
use dreamforge_models::dit::flux::keys::bfl_key_map;

/// Where one diffusers module's weight lives in a BFL module.
#[derive(Debug, Clone)]
struct Part {
    module: String,
    rows: Option<(usize, usize)>,
    swap_halves: bool,
}

/// BFL module → the diffusers modules it holds.
fn bfl_modules(cfg: &FluxConfig) -> HashMap<String, Vec<Part>> {
    let mut out: HashMap<String, Vec<Part>> = HashMap::new();
    for (ours, src) in bfl_key_map(cfg).iter() {
        let (Some(module), Some(theirs)) = (
            ours.strip_suffix(".weight"),
            src.key.strip_suffix(".weight"),
        ) else {
            continue;
        };
        out.entry(theirs.to_string()).or_default().push(Part {
            module: module.to_string(),
            rows: src.rows,
            swap_halves: src.swap_halves,
        });
    }
    for parts in out.values_mut() {
        parts.sort_by_key(|p| p.rows.map_or(0, |r| r.0));
    }
    out
}

/// XLabs processor names → BFL module and, for `qkv_lora` of a single block, the rows it
/// covers (q, k, v of `linear1`, not the MLP).
fn xlabs_to_bfl(name: &str, inner: usize) -> Option<(String, Option<usize>)> {
    let (block, lora) = name.split_once(".processor.")?;
    let single = block.starts_with("single_blocks.");
    let (module, limit) = match (single, lora) {
        (false, "qkv_lora1") => ("img_attn.qkv", None),
        (false, "qkv_lora2") => ("txt_attn.qkv", None),
        (false, "proj_lora1") => ("img_attn.proj", None),
        (false, "proj_lora2") => ("txt_attn.proj", None),
        (true, "qkv_lora") => ("linear1", Some(3 * inner)),
        (true, "proj_lora") => ("linear2", None),
        _ => return None,
    };
    Some((format!("{block}.{module}"), limit))
}

fn slice_rows(t: &HostTensor, start: usize, len: usize) -> HostTensor {
    let cols = t.shape[1];
    HostTensor::new(
        vec![len, cols],
        t.data[start * cols..(start + len) * cols].to_vec(),
    )
}

fn swap_halves(t: &HostTensor) -> HostTensor {
    let (rows, cols) = (t.shape[0], t.shape[1]);
    let h = rows / 2 * cols;
    let mut data = t.data[h..].to_vec();
    data.extend_from_slice(&t.data[..h]);
    HostTensor::new(vec![rows, cols], data)
}

/// `file` with its BFL-layout layers renamed and split into diffusers modules (PEFT naming
/// under `transformer.`); a file with none is returned unchanged. Layers that are not BFL
/// paths stay as they are (they may be diffusers names already).
pub fn to_diffusers_layout(file: &AdapterFile, cfg: &FluxConfig) -> AdapterFile {
    let modules = bfl_modules(cfg);
    let flat: HashMap<String, &String> = modules.keys().map(|k| (k.replace('.', "_"), k)).collect();
    let inner = cfg.inner_dim();
    let mut layers = BTreeMap::new();
    let mut source_names = BTreeMap::new();
    let mut converted = false;
    for (name, l) in &file.layers {
        // The BFL module this layer names, and a row limit (XLabs single-block qkv).
        let bfl: Option<(String, Option<usize>)> = match file.format {
            Format::Kohya => name
                .strip_prefix("lora_unet_")
                .and_then(|n| flat.get(n).map(|m| ((*m).clone(), None)))
                .or_else(|| {
                    name.strip_prefix("diffusion_model.")
                        .filter(|n| modules.contains_key(*n))
                        .map(|n| (n.to_string(), None))
                }),
            Format::Peft => {
                let n = name
                    .strip_prefix("diffusion_model.")
                    .or_else(|| name.strip_prefix("transformer."))
                    .unwrap_or(name);
                modules.contains_key(n).then(|| (n.to_string(), None))
            }
            Format::XLabs => {
                let n = name.strip_prefix("diffusion_model.").unwrap_or(name);
                xlabs_to_bfl(n, inner)
            }
        };
        let Some((bfl, limit)) = bfl else {
            layers.insert(name.clone(), l.clone());
            continue;
        };
        let Some(parts) = modules.get(&bfl) else {
            layers.insert(name.clone(), l.clone());
            continue;
        };
        converted = true;
        for p in parts {
            let (start, len) = p.rows.unwrap_or((0, l.up.shape[0]));
            if limit.is_some_and(|lim| start + len > lim) || start + len > l.up.shape[0] {
                // XLabs single-block qkv does not cover the MLP rows; a short up factor
                // cannot be split (the attach reports the shape error on the whole layer).
                if limit.is_none() {
                    layers.insert(name.clone(), l.clone());
                }
                continue;
            }
            let up = if p.rows.is_some() {
                slice_rows(&l.up, start, len)
            } else {
                l.up.clone()
            };
            if p.rows.is_some() && up.data.iter().all(|&v| v == 0.0) {
                // A split the adapter does not touch (zero rows of a fused up factor).
                continue;
            }
            let up = if p.swap_halves { swap_halves(&up) } else { up };
            let new = format!("transformer.{}", p.module);
            source_names.insert(new.clone(), name.clone());
            layers.insert(
                new,
                LayerWeights {
                    down: l.down.clone(),
                    up,
                    alpha: l.alpha,
                },
            );
        }
    }
    if !converted {
        return file.clone();
    }
    AdapterFile {
        path: file.path.clone(),
        format: Format::Peft,
        layers,
        metadata: file.metadata.clone(),
        ignored: file.ignored.clone(),
        source_names,
    }
}

/// `file` (diffusers module names, after [`to_diffusers_layout`]) in kohya sd-scripts naming
/// on BFL modules (`lora_unet_double_blocks_0_img_attn_qkv`), the most widely read FLUX LoRA
/// layout (ComfyUI, diffusers, sd-scripts, Forge). Split projections are fused as sd-scripts'
/// `convert_to_sd_scripts_cat` does, generalised to unequal ranks and absent splits: down =
/// the splits' downs stacked, up = block-diagonal (each split's `alpha / r` folded into its
/// rows), alpha = the fused rank (scale 1); absent splits are zero rows. `norm_out.linear`'s up
/// halves are swapped back. Layers that are not FLUX transformer modules are an error.
pub fn to_kohya_bfl(
    file: &AdapterFile,
    cfg: &FluxConfig,
) -> Result<BTreeMap<String, LayerWeights>, String> {
    let file = to_diffusers_layout(file, cfg);
    let modules = bfl_modules(cfg);
    // diffusers module → (BFL module, its part).
    let mut owner: HashMap<&str, (&String, &Part)> = HashMap::new();
    for (bfl, parts) in &modules {
        for p in parts {
            owner.insert(p.module.as_str(), (bfl, p));
        }
    }
    let mut groups: BTreeMap<&String, Vec<(&Part, &LayerWeights)>> = BTreeMap::new();
    for (name, l) in &file.layers {
        let m = name.strip_prefix("transformer.").unwrap_or(name);
        let Some((bfl, part)) = owner.get(m) else {
            return Err(format!(
                "layer `{name}` is not a FLUX transformer module (kohya FLUX files hold transformer layers only)"
            ));
        };
        groups.entry(bfl).or_default().push((part, l));
    }
    let mut out = BTreeMap::new();
    for (bfl, present) in groups {
        let name = format!("lora_unet_{}", bfl.replace('.', "_"));
        let parts = &modules[bfl];
        if parts.len() == 1 && parts[0].rows.is_none() {
            let (p, l) = present[0];
            let up = if p.swap_halves {
                swap_halves(&l.up)
            } else {
                l.up.clone()
            };
            out.insert(
                name,
                LayerWeights {
                    down: l.down.clone(),
                    up,
                    alpha: Some(l.alpha.unwrap_or(l.rank() as f32)),
                },
            );
            continue;
        }
        let d_in = present[0].1.down.shape[1];
        let rows: usize = parts.iter().map(|p| p.rows.map_or(0, |r| r.1)).sum();
        let rank: usize = present.iter().map(|(_, l)| l.rank()).sum();
        let mut down = Vec::with_capacity(rank * d_in);
        let mut up = vec![0f32; rows * rank];
        let mut col = 0;
        for (p, l) in &present {
            let (start, len) = p.rows.expect("fused parts have row ranges");
            let r = l.rank();
            let s = l.scale() as f32;
            down.extend_from_slice(&l.down.data);
            for i in 0..len {
                for j in 0..r {
                    up[(start + i) * rank + col + j] = l.up.data[i * r + j] * s;
                }
            }
            col += r;
        }
        out.insert(
            name,
            LayerWeights {
                down: HostTensor::new(vec![rank, d_in], down),
                up: HostTensor::new(vec![rows, rank], up),
                alpha: Some(rank as f32),
            },
        );
    }
    Ok(out)
}

/// A FLUX config good enough to map BFL module names for `file` when no model is at hand:
/// the inner width from an attention projection's input, the MLP width as FLUX's 4×, block
/// counts from the highest indices named.
pub fn infer_config(file: &AdapterFile) -> Option<FluxConfig> {
    let mut inner = None;
    let (mut double, mut single) = (0usize, 0usize);
    for (name, l) in &file.layers {
        let n = name.replace('_', ".");
        let idx = |key: &str| -> Option<usize> {
            let rest = &n[n.find(key)? + key.len()..];
            rest.split('.').next()?.parse().ok()
        };
        if let Some(i) = idx("double.blocks.").or_else(|| idx("double_blocks.")) {
            double = double.max(i + 1);
        }
        if let Some(i) = idx("single.blocks.").or_else(|| idx("single_blocks.")) {
            single = single.max(i + 1);
        }
        if let Some(i) = idx("transformer.blocks.").filter(|_| !n.contains("single")) {
            double = double.max(i + 1);
        }
        if let Some(i) = idx("single.transformer.blocks.") {
            single = single.max(i + 1);
        }
        if n.contains("attn.proj")
            || n.contains("attn.to.out")
            || n.contains("to.add.out")
            || n.contains("proj.lora") && !n.contains("single")
        {
            inner.get_or_insert(l.down.shape[1]);
        }
    }
    let inner = inner?;
    serde_json::from_value(serde_json::json!({
        "patch_size": 1, "in_channels": 64, "num_layers": double, "num_single_layers": single,
        "attention_head_dim": inner, "num_attention_heads": 1, "joint_attention_dim": 4096,
        "pooled_projection_dim": 768, "guidance_embeds": false, "axes_dims_rope": [inner]
    }))
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, Tensor, TensorData};
    use dreamforge_adapters::{FileAdapter, attach_files};
    use dreamforge_models::dit::flux::{FluxInputs, FluxTransformer};
    use rand::{Rng, SeedableRng};

    /// The committed tiny FLUX.1-dev parity model (perturbed weights: every layer matters).
    fn fixture() -> std::path::PathBuf {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/parity/flux_transformer_dev_diffusers")
    }

    fn config() -> FluxConfig {
        FluxConfig::from_file(&fixture().join("config.json")).unwrap()
    }

    fn host(rng: &mut impl Rng, shape: [usize; 2]) -> HostTensor {
        let n = shape[0] * shape[1];
        HostTensor::new(
            shape.to_vec(),
            (0..n).map(|_| rng.random_range(-0.5..0.5)).collect(),
        )
    }

    fn file(format: Format, layers: BTreeMap<String, LayerWeights>) -> AdapterFile {
        AdapterFile {
            path: "test.safetensors".into(),
            format,
            layers,
            metadata: HashMap::new(),
            ignored: Vec::new(),
            source_names: BTreeMap::new(),
        }
    }

    /// A PEFT adapter with different ranks and alphas on attention projections of both block
    /// kinds, the final modulation (halves swapped in BFL) and an MLP.
    fn peft(cfg: &FluxConfig) -> AdapterFile {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let (d, mlp) = (cfg.inner_dim(), cfg.mlp_hidden_dim());
        let mut layers = BTreeMap::new();
        let mut add = |m: &str, d_in: usize, d_out: usize, r: usize, alpha: Option<f32>| {
            layers.insert(
                format!("transformer.{m}"),
                LayerWeights {
                    down: host(&mut rng, [r, d_in]),
                    up: host(&mut rng, [d_out, r]),
                    alpha,
                },
            );
        };
        for b in 0..2 {
            for (m, r) in [
                ("to_q", 2),
                ("to_k", 3),
                ("to_v", 2),
                ("add_k_proj", 2),
                ("to_out.0", 4),
            ] {
                add(
                    &format!("transformer_blocks.{b}.attn.{m}"),
                    d,
                    d,
                    r,
                    Some(3.0),
                );
            }
            add(
                &format!("single_transformer_blocks.{b}.attn.to_q"),
                d,
                d,
                2,
                None,
            );
            add(
                &format!("single_transformer_blocks.{b}.attn.to_v"),
                d,
                d,
                3,
                Some(1.5),
            );
            add(
                &format!("single_transformer_blocks.{b}.proj_mlp"),
                d,
                mlp,
                2,
                None,
            );
        }
        add("transformer_blocks.1.ff.net.2", mlp, d, 2, Some(4.0));
        add("norm_out.linear", d, 2 * d, 3, None);
        file(Format::Peft, layers)
    }

    fn forward(cfg: &FluxConfig, f: &AdapterFile) -> Vec<f32> {
        let device = Device::flex();
        let (base, names) = FluxTransformer::load_named(
            &fixture().join("diffusion_pytorch_model.safetensors"),
            Some(cfg.clone()),
            &device,
        )
        .unwrap();
        let f = to_diffusers_layout(f, cfg);
        let (m, unmatched) = attach_files(
            base,
            "transformer",
            |p| names.key_of(p),
            &[FileAdapter {
                file: &f,
                strength: 0.7,
            }],
        )
        .unwrap();
        assert!(unmatched[0].is_empty(), "{:?}", unmatched[0]);
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let mut t = |shape: Vec<usize>| {
            let n: usize = shape.iter().product();
            let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            TensorData::new(v, shape)
        };
        let (l, txt) = (4, 3);
        let ids: Vec<f32> = (0..l)
            .flat_map(|i| [0.0, (i / 2) as f32, (i % 2) as f32])
            .collect();
        let rope = m.rope(&vec![0.0; txt * 3], &ids, &device);
        let y = m
            .forward(
                FluxInputs {
                    hidden_states: Tensor::from_data(t(vec![1, l, 16]), &device),
                    encoder_hidden_states: Tensor::from_data(t(vec![1, txt, 32]), &device),
                    pooled_projections: Tensor::from_data(t(vec![1, 24]), &device),
                    timestep: vec![0.4],
                    guidance: Some(vec![3.5]),
                },
                &rope,
            )
            .unwrap();
        y.into_data().try_to_vec().unwrap()
    }

    fn assert_close(a: &[f32], b: &[f32], what: &str) {
        let max = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        assert!(max < 1e-4, "{what}: max |Δ| = {max}");
    }

    /// One adapter written as PEFT (diffusers modules), kohya on BFL modules (fused, block
    /// diagonal), BFL-named PEFT keys and ComfyUI-prefixed kohya keys gives the same output;
    /// so does a dense kohya layer (shared down) against its split equivalent.
    #[test]
    fn bfl_layouts_give_the_same_output_as_diffusers_names() {
        let cfg = config();
        let base = forward(&cfg, &file(Format::Peft, BTreeMap::new()));
        let p = peft(&cfg);
        let want = forward(&cfg, &p);
        assert!(
            want.iter().zip(&base).any(|(a, b)| (a - b).abs() > 1e-3),
            "the adapter changes the output"
        );
        let kohya = to_kohya_bfl(&p, &cfg).unwrap();
        assert!(kohya.contains_key("lora_unet_double_blocks_0_img_attn_qkv"));
        assert_eq!(kohya["lora_unet_double_blocks_0_img_attn_qkv"].rank(), 7);
        assert!(kohya.contains_key("lora_unet_final_layer_adaLN_modulation_1"));
        assert_close(
            &forward(&cfg, &file(Format::Kohya, kohya.clone())),
            &want,
            "kohya",
        );
        let comfy: BTreeMap<_, _> = kohya
            .iter()
            .map(|(k, v)| {
                let bfl = modules_flat(&cfg)[k.strip_prefix("lora_unet_").unwrap()].clone();
                (format!("diffusion_model.{bfl}"), v.clone())
            })
            .collect();
        assert_close(
            &forward(&cfg, &file(Format::Kohya, comfy.clone())),
            &want,
            "comfy",
        );
        let bfl_peft: BTreeMap<_, _> = comfy
            .into_iter()
            .map(|(k, v)| (k.replace("diffusion_model.", ""), v))
            .collect();
        assert_close(
            &forward(&cfg, &file(Format::Peft, bfl_peft)),
            &want,
            "BFL PEFT",
        );

        // Dense fused layer (normal kohya training): one down shared by q, k, v.
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
        let d = cfg.inner_dim();
        let dense = LayerWeights {
            down: host(&mut rng, [4, d]),
            up: host(&mut rng, [3 * d, 4]),
            alpha: Some(2.0),
        };
        let fused = BTreeMap::from([(
            "lora_unet_double_blocks_1_txt_attn_qkv".to_string(),
            dense.clone(),
        )]);
        let split: BTreeMap<_, _> = ["add_q_proj", "add_k_proj", "add_v_proj"]
            .iter()
            .enumerate()
            .map(|(j, m)| {
                (
                    format!("transformer.transformer_blocks.1.attn.{m}"),
                    LayerWeights {
                        down: dense.down.clone(),
                        up: slice_rows(&dense.up, j * d, d),
                        alpha: Some(2.0),
                    },
                )
            })
            .collect();
        assert_close(
            &forward(&cfg, &file(Format::Kohya, fused)),
            &forward(&cfg, &file(Format::Peft, split)),
            "dense kohya",
        );

        // XLabs: qkv_lora1/2, proj_lora1/2 and single-block qkv_lora (q/k/v rows only).
        let att: BTreeMap<_, _> = p
            .layers
            .iter()
            .filter(|(k, _)| {
                !k.contains("proj_mlp") && !k.contains("norm_out") && !k.contains("ff.")
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let want_att = forward(&cfg, &file(Format::Peft, att.clone()));
        let xlabs: BTreeMap<_, _> = to_kohya_bfl(&file(Format::Peft, att), &cfg)
            .unwrap()
            .into_iter()
            .map(|(k, mut v)| {
                let k = k
                    .replace("lora_unet_double_blocks_", "double_blocks.")
                    .replace("lora_unet_single_blocks_", "single_blocks.");
                let dot = k.find('.').unwrap();
                let (block, rest) = k.split_at(dot + k[dot..].find('_').unwrap());
                let name = match rest {
                    "_img_attn_qkv" => "qkv_lora1",
                    "_txt_attn_qkv" => "qkv_lora2",
                    "_img_attn_proj" => "proj_lora1",
                    "_txt_attn_proj" => "proj_lora2",
                    "_linear1" => "qkv_lora",
                    other => panic!("{other}"),
                };
                if name == "qkv_lora" {
                    v.up = slice_rows(&v.up, 0, 3 * d);
                }
                // XLabs has no alpha: fold the scale.
                let s = v.scale() as f32;
                v.up.data.iter_mut().for_each(|x| *x *= s);
                v.alpha = None;
                (format!("{block}.processor.{name}"), v)
            })
            .collect();
        assert_close(
            &forward(&cfg, &file(Format::XLabs, xlabs)),
            &want_att,
            "XLabs",
        );
    }

    fn modules_flat(cfg: &FluxConfig) -> HashMap<String, String> {
        bfl_modules(cfg)
            .into_keys()
            .map(|k| (k.replace('.', "_"), k))
            .collect()
    }
}
