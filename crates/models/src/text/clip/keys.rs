//! CLIP text encoders inside single-file Stable Diffusion checkpoints, following diffusers
//! `loaders/single_file_utils.py`:
//!
//! - transformers layout (`convert_ldm_clip_checkpoint`): OpenAI CLIP-L under
//!   `cond_stage_model.transformer.` (SD1) or `conditioner.embedders.0.transformer.` (SDXL),
//!   loaded by [`ClipTextModel::from_weights`] with that root;
//! - OpenCLIP layout (`convert_open_clip_checkpoint` with `DIFFUSERS_TO_LDM_MAPPING["openclip"]`):
//!   ViT-H under `cond_stage_model.model.` (SD2), bigG under `conditioner.embedders.1.model.`
//!   (SDXL) or `conditioner.embedders.0.model.` (SDXL refiner): `token_embedding.weight`,
//!   `positional_embedding`, `transformer.resblocks.N.{ln_1, attn.in_proj_weight/bias (fused
//!   q, k, v rows), attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}`, `ln_final`, and
//!   `text_projection` stored `[hidden, projection]` for `x @ W` (transposed on load).
//!
//! SD2: diffusers' SD2 text encoder has one layer fewer than the OpenCLIP tower the checkpoint
//! holds (23 of 24; LDM's `FrozenOpenCLIPEmbedder(layer="penultimate")` never runs the last
//! one) and no projection; `SD_2_TEXT_ENCODER_KEYS_TO_IGNORE` drops the last resblock and
//! `text_projection`. The same happens here under the SD2 root: those keys are ignored, not
//! "unused". SDXL keeps every bigG layer and the projection.
//!
//! Configs are inferred from shapes as diffusers' hub configs for these models have them:
//! head dim 64, `quick_gelu` for OpenAI CLIP-L and `gelu` for OpenCLIP, `layer_norm_eps` 1e-5,
//! and the legacy ids (`bos 0, eos 2, pad 1`, so pooling is at `argmax(input_ids)`, which is
//! the eos position for the real vocabulary, as in OpenCLIP itself).

use burn::tensor::Device;

use dreamforge_core::{Error, KeyMap, KeySource, Result, WeightLoader, WeightSet};

use super::config::ClipTextConfig;
use super::model::{ClipTextModel, TEXT_MODEL_PREFIX};
use crate::checkpoint::is_ldm_non_weight;

/// OpenAI CLIP-L (transformers layout) in an SD1.x single file.
pub const SD1_CLIP_ROOT: &str = "cond_stage_model.transformer.";
/// OpenAI CLIP-L (transformers layout) in an SDXL base single file.
pub const SDXL_CLIP_L_ROOT: &str = "conditioner.embedders.0.transformer.";
/// OpenCLIP ViT-H in an SD2.x single file (last layer and projection unused).
pub const SD2_OPEN_CLIP_ROOT: &str = "cond_stage_model.model.";
/// OpenCLIP bigG in an SDXL base single file.
pub const SDXL_OPEN_CLIP_ROOT: &str = "conditioner.embedders.1.model.";
/// OpenCLIP bigG in an SDXL refiner single file.
pub const SDXL_REFINER_OPEN_CLIP_ROOT: &str = "conditioner.embedders.0.model.";

/// The head dim of every Stable Diffusion text encoder (CLIP-L 768/12, ViT-H 1024/16,
/// bigG 1280/20); single files do not record the head count.
pub const SD_TEXT_HEAD_DIM: usize = 64;

/// True for the SD2 OpenCLIP root, whose last resblock and projection diffusers drops.
pub fn drops_last_open_clip_layer(root: &str) -> bool {
    root == SD2_OPEN_CLIP_ROOT
}

/// transformers parameter name (no `text_model.` tower) → OpenCLIP key (relative to the root)
/// for `layers` layers of width `hidden`.
pub fn open_clip_key_map(hidden: usize, layers: usize) -> KeyMap {
    let mut m = KeyMap::new();
    let mut whole = |ours: String, theirs: String| {
        m.insert(ours, KeySource::whole(theirs));
    };
    whole(
        "embeddings.token_embedding.weight".into(),
        "token_embedding.weight".into(),
    );
    whole(
        "embeddings.position_embedding.weight".into(),
        "positional_embedding".into(),
    );
    for wb in ["weight", "bias"] {
        whole(format!("final_layer_norm.{wb}"), format!("ln_final.{wb}"));
        for i in 0..layers {
            let o = format!("encoder.layers.{i}");
            let t = format!("transformer.resblocks.{i}");
            for (ours, theirs) in [
                ("layer_norm1", "ln_1"),
                ("layer_norm2", "ln_2"),
                ("self_attn.out_proj", "attn.out_proj"),
                ("mlp.fc1", "mlp.c_fc"),
                ("mlp.fc2", "mlp.c_proj"),
            ] {
                whole(format!("{o}.{ours}.{wb}"), format!("{t}.{theirs}.{wb}"));
            }
        }
    }
    for i in 0..layers {
        for (j, q) in ["q_proj", "k_proj", "v_proj"].into_iter().enumerate() {
            for (wb, fused) in [("weight", "in_proj_weight"), ("bias", "in_proj_bias")] {
                m.insert(
                    format!("encoder.layers.{i}.self_attn.{q}.{wb}"),
                    KeySource::rows(
                        format!("transformer.resblocks.{i}.attn.{fused}"),
                        j * hidden,
                        hidden,
                    ),
                );
            }
        }
    }
    m.insert(
        "text_projection.weight".into(),
        KeySource::transposed("text_projection"),
    );
    m
}

fn shape_of(set: &WeightSet, key: &str, what: &str) -> Result<Vec<usize>> {
    set.shape(key)
        .map(<[usize]>::to_vec)
        .ok_or_else(|| Error::MissingKey {
            path: set.origin().to_path_buf(),
            key: key.to_string(),
            hint: Some(what.to_string()),
        })
}

fn matrix(set: &WeightSet, key: &str, what: &str) -> Result<(usize, usize)> {
    match shape_of(set, key, what)?[..] {
        [a, b] => Ok((a, b)),
        ref s => Err(Error::format(
            set.origin(),
            format!("weight `{key}` has shape {s:?}, expected a matrix"),
        )),
    }
}

fn heads_for(set: &WeightSet, hidden: usize) -> Result<usize> {
    if hidden == 0 || !hidden.is_multiple_of(SD_TEXT_HEAD_DIM) {
        return Err(Error::format(
            set.origin(),
            format!(
                "cannot infer the text encoder's head count: hidden size {hidden} is not a multiple of {SD_TEXT_HEAD_DIM}; pass its config"
            ),
        ));
    }
    Ok(hidden / SD_TEXT_HEAD_DIM)
}

fn count(set: &WeightSet, f: impl Fn(usize) -> String) -> usize {
    (0..).take_while(|&i| set.contains(&f(i))).count()
}

/// The config diffusers' hub repos give the CLIP text encoder stored under `root`, with the
/// sizes read from shapes.
fn sd_config(
    vocab: usize,
    hidden: usize,
    inner: usize,
    layers: usize,
    heads: usize,
    max_pos: usize,
    act: &str,
    projection_dim: Option<usize>,
) -> ClipTextConfig {
    ClipTextConfig {
        architectures: Some(vec![
            if projection_dim.is_some() {
                "CLIPTextModelWithProjection"
            } else {
                "CLIPTextModel"
            }
            .into(),
        ]),
        vocab_size: vocab,
        hidden_size: hidden,
        intermediate_size: inner,
        projection_dim,
        num_hidden_layers: layers,
        num_attention_heads: heads,
        max_position_embeddings: max_pos,
        hidden_act: act.into(),
        layer_norm_eps: 1e-5,
        bos_token_id: Some(0),
        eos_token_id: 2,
        pad_token_id: Some(1),
    }
}

/// Infers the config of a transformers-layout CLIP text encoder under `root` (with or without
/// the `text_model.` tower): OpenAI CLIP-L conventions (`quick_gelu`), sizes from shapes, a
/// projection when `text_projection.weight` is present.
pub fn infer_hf_clip_config(set: &WeightSet, root: &str) -> Result<ClipTextConfig> {
    let tower = if set.contains(&format!(
        "{root}{TEXT_MODEL_PREFIX}embeddings.token_embedding.weight"
    )) {
        TEXT_MODEL_PREFIX
    } else {
        ""
    };
    let p = format!("{root}{tower}");
    let what = "needed to infer the CLIP text encoder config";
    let (vocab, hidden) = matrix(set, &format!("{p}embeddings.token_embedding.weight"), what)?;
    let (max_pos, _) = matrix(
        set,
        &format!("{p}embeddings.position_embedding.weight"),
        what,
    )?;
    let layers = count(set, |i| format!("{p}encoder.layers.{i}.layer_norm1.weight"));
    let (inner, _) = matrix(set, &format!("{p}encoder.layers.0.mlp.fc1.weight"), what)?;
    let projection = match set.shape(&format!("{root}text_projection.weight")) {
        Some(&[p, _]) => Some(p),
        _ => None,
    };
    Ok(sd_config(
        vocab,
        hidden,
        inner,
        layers,
        heads_for(set, hidden)?,
        max_pos,
        "quick_gelu",
        projection,
    ))
}

/// Infers the config of an OpenCLIP text tower under `root`: `gelu`, sizes from shapes; under
/// the SD2 root one layer fewer than the file holds and no projection (as diffusers' SD2 text
/// encoder), elsewhere every layer and the `text_projection` width.
pub fn infer_open_clip_config(set: &WeightSet, root: &str) -> Result<ClipTextConfig> {
    let what = "needed to infer the OpenCLIP text encoder config";
    let (vocab, hidden) = matrix(set, &format!("{root}token_embedding.weight"), what)?;
    let (max_pos, _) = matrix(set, &format!("{root}positional_embedding"), what)?;
    let in_file = count(set, |i| {
        format!("{root}transformer.resblocks.{i}.ln_1.weight")
    });
    let (inner, _) = matrix(
        set,
        &format!("{root}transformer.resblocks.0.mlp.c_fc.weight"),
        what,
    )?;
    let (layers, projection) = if drops_last_open_clip_layer(root) {
        if in_file < 2 {
            return Err(Error::format(
                set.origin(),
                format!(
                    "the SD2 text encoder under `{root}` has {in_file} layer(s); it uses all but the last, so it needs at least 2"
                ),
            ));
        }
        (in_file - 1, None)
    } else {
        let projection = match set.shape(&format!("{root}text_projection")) {
            Some(&[_, p]) => Some(p),
            _ => None,
        };
        (in_file, projection)
    };
    Ok(sd_config(
        vocab,
        hidden,
        inner,
        layers,
        heads_for(set, hidden)?,
        max_pos,
        "gelu",
        projection,
    ))
}

impl ClipTextModel {
    /// Loads an OpenCLIP-layout text tower stored under `root` (e.g. `cond_stage_model.model.`)
    /// as a transformers CLIP text model with `config`. The fused `in_proj` must be exactly
    /// `[3 · hidden, hidden]`. A projection is loaded when the config declares one
    /// (`CLIPTextModelWithProjection`) or, outside the SD2 root, when the file holds
    /// `text_projection`. Under the SD2 root the file's last resblock and `text_projection` are
    /// ignored when the config does not use them; any other key left under `root` is an error,
    /// except known non-weight buffers (`attn_mask`, `logit_scale`, ...).
    pub fn from_open_clip(
        set: &WeightSet,
        root: &str,
        config: ClipTextConfig,
        device: &Device,
    ) -> Result<Self> {
        config
            .validate()
            .map_err(|r| Error::config(set.origin(), r))?;
        if !set.contains(&format!("{root}token_embedding.weight")) {
            return Err(Error::MissingKey {
                path: set.origin().to_path_buf(),
                key: format!("{root}token_embedding.weight"),
                hint: Some("not an OpenCLIP text encoder".into()),
            });
        }
        let d = config.hidden_size;
        for i in 0..config.num_hidden_layers {
            for (name, want) in [
                ("in_proj_weight", vec![3 * d, d]),
                ("in_proj_bias", vec![3 * d]),
            ] {
                let key = format!("{root}transformer.resblocks.{i}.attn.{name}");
                if let Some(found) = set.shape(&key)
                    && found != want.as_slice()
                {
                    return Err(Error::ShapeMismatch {
                        path: set.origin().to_path_buf(),
                        key,
                        expected: want,
                        found: found.to_vec(),
                    });
                }
            }
        }
        let sd2 = drops_last_open_clip_layer(root);
        let proj_key = format!("{root}text_projection");
        let projection_dim = if config.declares_projection() || (!sd2 && set.contains(&proj_key)) {
            match (config.projection_dim, set.shape(&proj_key)) {
                (Some(p), _) => Some(p),
                (None, Some(&[_, p])) => Some(p),
                _ => {
                    return Err(Error::config(
                        set.origin(),
                        "the model has a text projection but the config has no projection_dim",
                    ));
                }
            }
        } else {
            None
        };
        // `text_projection` is stored `[hidden, projection]`; say so in its own terms.
        if let (Some(p), Some(found)) = (projection_dim, set.shape(&proj_key))
            && found != [d, p]
        {
            return Err(Error::ShapeMismatch {
                path: set.origin().to_path_buf(),
                key: proj_key,
                expected: vec![d, p],
                found: found.to_vec(),
            });
        }
        let w = WeightLoader::new(set, device)
            .with_prefix(root)
            .with_key_map(open_clip_key_map(d, config.num_hidden_layers))
            .with_ignored(is_ldm_non_weight);
        let model = Self::from_loader(&w, "", config, projection_dim)?.with_names(&w, "");
        let in_file = count(set, |i| {
            format!("{root}transformer.resblocks.{i}.ln_1.weight")
        });
        let dropped = format!("{root}transformer.resblocks.{}.", in_file.saturating_sub(1));
        let unused: Vec<String> = w
            .unused()
            .into_iter()
            .filter(|k| !(sd2 && (k.starts_with(&dropped) || *k == proj_key)))
            .collect();
        if !unused.is_empty() {
            return Err(Error::UnusedKeys {
                path: set.origin().to_path_buf(),
                count: unused.len(),
                examples: unused.into_iter().take(5).collect(),
            });
        }
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::test_support::{Entry, f16, open_clip_keys, open_sparse};

    fn tower(root: &str, layers: usize) -> Vec<Entry> {
        let mut v = f16(root, open_clip_keys(100, 64, 96, layers, 16, 32));
        v.push((format!("{root}attn_mask"), vec![16, 16], "F32"));
        v
    }

    #[test]
    fn sd2_ignores_its_last_layer_and_projection() {
        let set = open_sparse("openclip_sd2", &tower(SD2_OPEN_CLIP_ROOT, 3));
        let cfg = infer_open_clip_config(&set, SD2_OPEN_CLIP_ROOT).unwrap();
        assert_eq!((cfg.num_hidden_layers, cfg.num_attention_heads), (2, 1));
        assert_eq!((cfg.vocab_size, cfg.max_position_embeddings), (100, 16));
        assert_eq!(cfg.intermediate_size, 96);
        let m = ClipTextModel::from_open_clip(
            &set,
            SD2_OPEN_CLIP_ROOT,
            cfg.clone(),
            &Device::default(),
        )
        .unwrap();
        assert_eq!(m.layers.len(), 2);
        assert!(!m.has_projection());
        // One layer fewer than diffusers' choice leaves a layer nobody ignores.
        let short = ClipTextConfig {
            num_hidden_layers: 1,
            ..cfg
        };
        let e = ClipTextModel::from_open_clip(&set, SD2_OPEN_CLIP_ROOT, short, &Device::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("unused") && e.contains("resblocks.1."), "{e}");
    }

    #[test]
    fn sdxl_keeps_every_layer_and_the_transposed_projection() {
        let set = open_sparse("openclip_sdxl", &tower(SDXL_OPEN_CLIP_ROOT, 3));
        let cfg = infer_open_clip_config(&set, SDXL_OPEN_CLIP_ROOT).unwrap();
        assert_eq!((cfg.num_hidden_layers, cfg.projection_dim), (3, Some(32)));
        let m = ClipTextModel::from_open_clip(
            &set,
            SDXL_OPEN_CLIP_ROOT,
            cfg.clone(),
            &Device::default(),
        )
        .unwrap();
        assert_eq!(m.layers.len(), 3);
        // Burn's Linear stores [in, out]: the file's [hidden, projection] as is.
        assert_eq!(m.text_projection.as_ref().unwrap().weight.dims(), [64, 32]);
        // Outside SD2 the last layer is not ignored.
        let short = ClipTextConfig {
            num_hidden_layers: 2,
            ..cfg
        };
        let e = ClipTextModel::from_open_clip(&set, SDXL_OPEN_CLIP_ROOT, short, &Device::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("unused") && e.contains("resblocks.2."), "{e}");
    }

    #[test]
    fn bad_shapes_name_the_key_and_both_shapes() {
        let mut v = tower(SDXL_OPEN_CLIP_ROOT, 2);
        let k = format!("{SDXL_OPEN_CLIP_ROOT}transformer.resblocks.1.attn.in_proj_weight");
        v.iter_mut().find(|e| e.0 == k).unwrap().1 = vec![256, 64];
        let set = open_sparse("openclip_bad_qkv", &v);
        let cfg = ClipTextConfig {
            num_hidden_layers: 2,
            ..infer_open_clip_config(&set, SDXL_OPEN_CLIP_ROOT).unwrap()
        };
        let e = ClipTextModel::from_open_clip(&set, SDXL_OPEN_CLIP_ROOT, cfg, &Device::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&k) && e.contains("[256, 64]") && e.contains("[192, 64]"),
            "{e}"
        );

        let mut v = tower(SDXL_OPEN_CLIP_ROOT, 2);
        let k = format!("{SDXL_OPEN_CLIP_ROOT}text_projection");
        v.iter_mut().find(|e| e.0 == k).unwrap().1 = vec![32, 64];
        let set = open_sparse("openclip_bad_proj", &v);
        let cfg = ClipTextConfig {
            projection_dim: Some(32),
            ..infer_open_clip_config(&set, SDXL_OPEN_CLIP_ROOT).unwrap()
        };
        let e = ClipTextModel::from_open_clip(&set, SDXL_OPEN_CLIP_ROOT, cfg, &Device::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&k) && e.contains("[32, 64]") && e.contains("[64, 32]"),
            "{e}"
        );

        // Hidden sizes that are not a multiple of 64 cannot give a head count.
        let set = open_sparse(
            "openclip_odd",
            &f16("m.", open_clip_keys(10, 48, 96, 1, 8, 8)),
        );
        let e = infer_open_clip_config(&set, "m.").unwrap_err().to_string();
        assert!(e.contains("48") && e.contains("64"), "{e}");
        let e = ClipTextModel::from_open_clip(
            &set,
            "x.",
            ClipTextConfig::default(),
            &Device::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("x.token_embedding.weight"), "{e}");
    }
}
