//! What a weights file is, told from its keys and shapes (never from a flag or the file name),
//! and the component configs a single-file Stable Diffusion checkpoint implies. Follows diffusers
//! `loaders/single_file_utils.py`: `infer_diffusers_model_type` and `CHECKPOINT_KEY_NAMES` (SD1
//! / SD2 / SDXL base / refiner / inpainting detection), `create_vae_diffusers_config_from_ldm`
//! with `DIFFUSERS_TO_LDM_DEFAULT_IMAGE_SIZE_MAP`, and `create_diffusers_clip_model_from_ldm`
//! (which text encoder sits under which root); FLUX files are told by
//! [`FluxKeyFormat::detect`].
//!
//! Where diffusers keys on layer indices only full-size models have
//! (`resblocks.9`, `input_blocks.2.1`), detection here looks at the text-encoder roots first and
//! the UNet's shapes second, so it agrees with diffusers on real files and also works on tiny
//! ones.

use burn::tensor::Device;

use dreamforge_core::{Error, Result, WeightSet};

use crate::dit::flux::FluxKeyFormat;
use crate::text::clip::keys::{
    SD1_CLIP_ROOT, SD2_OPEN_CLIP_ROOT, SDXL_CLIP_L_ROOT, SDXL_OPEN_CLIP_ROOT,
    SDXL_REFINER_OPEN_CLIP_ROOT, infer_hf_clip_config, infer_open_clip_config,
};
use crate::text::clip::{ClipTextConfig, ClipTextModel};
use crate::vae::AutoencoderKlConfig;
use crate::vae::keys::{infer_ldm_vae_config, ldm_vae_prefix, no_vae_error};

/// The LDM UNet prefix of single-file SD checkpoints (diffusers `LDM_UNET_KEY`).
pub const LDM_UNET_PREFIX: &str = "model.diffusion_model.";

/// Which Stable Diffusion family a single-file checkpoint belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SdVariant {
    /// SD 1.x: CLIP-L text encoder, 768-d cross attention.
    Sd1,
    /// SD 2.x: OpenCLIP ViT-H text encoder, 1024-d cross attention.
    Sd2,
    /// SDXL base: CLIP-L + OpenCLIP bigG, text-time additional embeddings.
    Sdxl,
    /// SDXL refiner: OpenCLIP bigG only. Recognised, not supported by the pipelines.
    SdxlRefiner,
}

impl SdVariant {
    /// A stable short name (`sd1`, `sd2`, `sdxl`, `sdxl_refiner`), as parity fixtures write it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Sd1 => "sd1",
            Self::Sd2 => "sd2",
            Self::Sdxl => "sdxl",
            Self::SdxlRefiner => "sdxl_refiner",
        }
    }

    /// The name people use (`SD 1.x`, `SD 2.x`, `SDXL`, `SDXL refiner`).
    pub fn display_name(self) -> &'static str {
        match self {
            Self::Sd1 => "SD 1.x",
            Self::Sd2 => "SD 2.x",
            Self::Sdxl => "SDXL",
            Self::SdxlRefiner => "SDXL refiner",
        }
    }

    /// diffusers' VAE `scaling_factor` for the family (0.18215 for SD1/2, 0.13025 for SDXL).
    pub fn vae_scaling_factor(self) -> f64 {
        match self {
            Self::Sd1 | Self::Sd2 => 0.18215,
            Self::Sdxl | Self::SdxlRefiner => 0.13025,
        }
    }

    /// diffusers `DIFFUSERS_TO_LDM_DEFAULT_IMAGE_SIZE_MAP` (the VAE's `sample_size`).
    pub fn default_image_size(self) -> usize {
        match self {
            Self::Sd1 => 512,
            Self::Sd2 => 768,
            Self::Sdxl | Self::SdxlRefiner => 1024,
        }
    }
}

/// What a weight set holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointKind {
    /// A FLUX transformer with the original BFL keys (`double_blocks.N.img_attn.qkv`).
    FluxBfl,
    /// A FLUX transformer with diffusers keys (`transformer_blocks.N.attn.to_q`).
    FluxDiffusers,
    /// An original LDM / SGM single-file Stable Diffusion checkpoint.
    SdSingleFile {
        variant: SdVariant,
        /// The UNet takes 9 input channels (latents + mask + masked-image latents).
        inpainting: bool,
        /// A VAE is present (`first_stage_model.*` or `vae.*`).
        has_vae: bool,
        /// Every text encoder the variant needs is present.
        has_text_encoders: bool,
    },
    /// A diffusers `UNet2DConditionModel` weights file (`conv_in`, `down_blocks.N.resnets`).
    UnetDiffusers,
    Unknown,
}

impl CheckpointKind {
    /// One phrase for messages: "expected a FLUX transformer but found {describe()}".
    pub fn describe(&self) -> String {
        match self {
            Self::FluxBfl => "a FLUX transformer checkpoint (BFL single-file layout)".into(),
            Self::FluxDiffusers => "a FLUX transformer checkpoint (diffusers layout)".into(),
            Self::SdSingleFile {
                variant,
                inpainting,
                has_vae,
                has_text_encoders,
            } => {
                let mut notes = Vec::new();
                if !has_vae {
                    notes.push("no VAE");
                }
                if !has_text_encoders {
                    notes.push("no text encoders");
                }
                if *variant == SdVariant::SdxlRefiner {
                    notes.push("the refiner is recognised but not supported");
                }
                let notes: String = notes.iter().map(|n| format!("; {n}")).collect();
                format!(
                    "an {}{} single-file checkpoint (LDM layout{notes})",
                    variant.display_name(),
                    if *inpainting { " inpainting" } else { "" }
                )
            }
            Self::UnetDiffusers => "a diffusers UNet2DConditionModel checkpoint".into(),
            Self::Unknown => "an unrecognised checkpoint (no FLUX, Stable Diffusion single-file or diffusers UNet keys)".into(),
        }
    }
}

fn hf_clip_at(set: &WeightSet, root: &str) -> bool {
    set.contains(&format!(
        "{root}text_model.embeddings.token_embedding.weight"
    )) || set.contains(&format!("{root}embeddings.token_embedding.weight"))
}

fn open_clip_at(set: &WeightSet, root: &str) -> bool {
    set.contains(&format!("{root}token_embedding.weight"))
}

/// Tells what `set` holds from its keys and shapes.
pub fn detect(set: &WeightSet) -> CheckpointKind {
    match FluxKeyFormat::detect(set) {
        Some(FluxKeyFormat::Bfl { .. }) => return CheckpointKind::FluxBfl,
        Some(FluxKeyFormat::Diffusers { .. }) => return CheckpointKind::FluxDiffusers,
        None => {}
    }
    let keys = set.keys();
    let sd_roots = [
        LDM_UNET_PREFIX,
        "first_stage_model.",
        "cond_stage_model.",
        "conditioner.embedders.",
    ];
    if keys
        .iter()
        .any(|k| sd_roots.iter().any(|r| k.starts_with(r)))
    {
        let (variant, has_text_encoders) =
            if open_clip_at(set, SDXL_OPEN_CLIP_ROOT) || hf_clip_at(set, SDXL_CLIP_L_ROOT) {
                (
                    SdVariant::Sdxl,
                    open_clip_at(set, SDXL_OPEN_CLIP_ROOT) && hf_clip_at(set, SDXL_CLIP_L_ROOT),
                )
            } else if open_clip_at(set, SDXL_REFINER_OPEN_CLIP_ROOT) {
                (SdVariant::SdxlRefiner, true)
            } else if open_clip_at(set, SD2_OPEN_CLIP_ROOT) {
                (SdVariant::Sd2, true)
            } else if hf_clip_at(set, SD1_CLIP_ROOT) {
                (SdVariant::Sd1, true)
            } else {
                (unet_variant(set, &keys), false)
            };
        let inpainting = set
            .shape(&format!("{LDM_UNET_PREFIX}input_blocks.0.0.weight"))
            .is_some_and(|s| s.len() == 4 && s[1] == 9);
        let has_vae = ldm_vae_prefix(set).is_some_and(|p| !p.is_empty());
        return CheckpointKind::SdSingleFile {
            variant,
            inpainting,
            has_vae,
            has_text_encoders,
        };
    }
    if set.contains("conv_in.weight")
        && keys
            .iter()
            .any(|k| k.starts_with("down_blocks.") && k.contains(".resnets."))
    {
        return CheckpointKind::UnetDiffusers;
    }
    CheckpointKind::Unknown
}

/// The family of a single file without text encoders, from its UNet: SDXL's `label_emb`
/// (2816 inputs for the base, 2560 for the refiner), else the cross-attention width (1024 for
/// SD2, as diffusers' `v2` check), else SD1.
fn unet_variant(set: &WeightSet, keys: &[&str]) -> SdVariant {
    if let Some(s) = set.shape(&format!("{LDM_UNET_PREFIX}label_emb.0.0.weight")) {
        return if s.get(1) == Some(&2560) {
            SdVariant::SdxlRefiner
        } else {
            SdVariant::Sdxl
        };
    }
    let context = keys
        .iter()
        .find(|k| k.starts_with(LDM_UNET_PREFIX) && k.ends_with(".attn2.to_k.weight"))
        .and_then(|k| set.shape(k))
        .and_then(|s| s.last().copied());
    match context {
        Some(1024) => SdVariant::Sd2,
        _ => SdVariant::Sd1,
    }
}

/// Non-weight tensors real single files carry, which diffusers' converters skip: the DDPM
/// schedule tables (`betas`, `alphas_cumprod*`, `sqrt_*`, `log_one_minus_alphas_cumprod`,
/// `posterior_*`, `lvlb_weights`, `logvar`), EMA copies and counters (`model_ema.*`), SGM
/// denoiser tables (`denoiser.sigmas`), `position_ids` buffers, OpenCLIP's `logit_scale` and
/// `attn_mask`, and VAE training-loss modules (`first_stage_model.loss.*`).
pub fn is_ldm_non_weight(key: &str) -> bool {
    const TABLES: &[&str] = &[
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
        "lvlb_weights",
        "logvar",
    ];
    const PREFIXES: &[&str] = &[
        "model_ema.",
        "denoiser.",
        "first_stage_model.loss.",
        "loss.",
    ];
    const LAST: &[&str] = &["position_ids", "logit_scale", "attn_mask"];
    TABLES.contains(&key)
        || PREFIXES.iter().any(|p| key.starts_with(p))
        || LAST.contains(&key.rsplit('.').next().unwrap_or(key))
}

/// The VAE config a single-file checkpoint implies when none is given: sizes from the LDM
/// VAE's shapes (see [`infer_ldm_vae_config`]), the family's `scaling_factor` (0.18215 SD1/2,
/// 0.13025 SDXL) and `sample_size`, `force_upcast` as diffusers' SD configs (true). Errors,
/// suggesting `--vae`, when the checkpoint holds no VAE.
pub fn sd_single_file_vae_config(
    set: &WeightSet,
    variant: SdVariant,
) -> Result<AutoencoderKlConfig> {
    let prefix = ldm_vae_prefix(set).ok_or_else(|| no_vae_error(set))?;
    let mut cfg = infer_ldm_vae_config(set, prefix)?;
    cfg.scaling_factor = variant.vae_scaling_factor();
    cfg.sample_size = variant.default_image_size();
    cfg.force_upcast = true;
    Ok(cfg)
}

/// How a CLIP text tower is stored in a single file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipLayout {
    /// transformers names (`text_model.encoder.layers.N.self_attn.q_proj`).
    Transformers,
    /// OpenCLIP names (`transformer.resblocks.N.attn.in_proj_weight`).
    OpenClip,
}

/// One text encoder of a single-file SD checkpoint, with its inferred config.
#[derive(Debug, Clone)]
pub struct SdTextEncoder {
    /// The diffusers pipeline component it becomes: `text_encoder` or `text_encoder_2`.
    pub component: &'static str,
    /// The key prefix it is stored under.
    pub root: &'static str,
    pub layout: ClipLayout,
    pub config: ClipTextConfig,
}

impl SdTextEncoder {
    /// Loads it (strictly: unknown keys under the root are errors).
    pub fn load(&self, set: &WeightSet, device: &Device) -> Result<ClipTextModel> {
        match self.layout {
            ClipLayout::Transformers => {
                ClipTextModel::from_weights(set, self.root, self.config.clone(), device)
            }
            ClipLayout::OpenClip => {
                ClipTextModel::from_open_clip(set, self.root, self.config.clone(), device)
            }
        }
    }
}

/// The text encoders a single-file checkpoint of `variant` holds, in diffusers pipeline
/// order, with configs inferred from shapes: SD1 CLIP-L (`text_encoder`); SD2 ViT-H without its
/// last layer (`text_encoder`); SDXL CLIP-L (`text_encoder`) and bigG with projection
/// (`text_encoder_2`); the refiner's bigG (`text_encoder_2`). A missing one is an error.
pub fn sd_single_file_text_encoders(
    set: &WeightSet,
    variant: SdVariant,
) -> Result<Vec<SdTextEncoder>> {
    sd_single_file_text_encoders_with(set, variant, |_| None)
}

/// As [`sd_single_file_text_encoders`], with a config supplied per component (`text_encoder`,
/// `text_encoder_2`) by `given` — e.g. from a diffusers folder, as diffusers'
/// `from_single_file(config=...)` does — instead of being inferred from shapes.
pub fn sd_single_file_text_encoders_with(
    set: &WeightSet,
    variant: SdVariant,
    mut given: impl FnMut(&str) -> Option<ClipTextConfig>,
) -> Result<Vec<SdTextEncoder>> {
    use ClipLayout::{OpenClip, Transformers};
    let wanted: &[(&'static str, &'static str, ClipLayout)] = match variant {
        SdVariant::Sd1 => &[("text_encoder", SD1_CLIP_ROOT, Transformers)],
        SdVariant::Sd2 => &[("text_encoder", SD2_OPEN_CLIP_ROOT, OpenClip)],
        SdVariant::Sdxl => &[
            ("text_encoder", SDXL_CLIP_L_ROOT, Transformers),
            ("text_encoder_2", SDXL_OPEN_CLIP_ROOT, OpenClip),
        ],
        SdVariant::SdxlRefiner => &[("text_encoder_2", SDXL_REFINER_OPEN_CLIP_ROOT, OpenClip)],
    };
    wanted
        .iter()
        .map(|&(component, root, layout)| {
            let present = match layout {
                Transformers => hf_clip_at(set, root),
                OpenClip => open_clip_at(set, root),
            };
            if !present {
                return Err(Error::format(
                    set.origin(),
                    format!(
                        "this {} checkpoint has no `{component}` (no `{root}*` keys); pass the text encoder separately",
                        variant.display_name()
                    ),
                ));
            }
            let config = match (given(component), layout) {
                (Some(c), _) => c,
                (None, Transformers) => infer_hf_clip_config(set, root)?,
                (None, OpenClip) => infer_open_clip_config(set, root)?,
            };
            Ok(SdTextEncoder {
                component,
                root,
                layout,
                config,
            })
        })
        .collect()
}

/// Header-only safetensors files with real key layouts, for tests that need shapes but no data.
#[cfg(test)]
pub(crate) mod test_support {
    use std::path::{Path, PathBuf};

    pub type Entry = (String, Vec<usize>, &'static str);

    pub fn temp_path(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "dreamforge-checkpoint-test-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d.join(format!("{name}.safetensors"))
    }

    fn dtype_size(d: &str) -> usize {
        match d {
            "F32" | "I32" => 4,
            "F16" | "BF16" => 2,
            "I64" | "F64" => 8,
            other => panic!("dtype {other}"),
        }
    }

    /// Writes a valid safetensors file whose data section is a sparse run of zeros.
    pub fn write_sparse(path: &Path, entries: &[Entry]) {
        let mut header = serde_json::Map::new();
        let mut offset = 0usize;
        for (k, shape, dtype) in entries {
            let n = shape.iter().product::<usize>() * dtype_size(dtype);
            header.insert(
                k.clone(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}),
            );
            offset += n;
        }
        let mut h = serde_json::to_string(&header).unwrap().into_bytes();
        while !h.len().is_multiple_of(8) {
            h.push(b' ');
        }
        let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
        bytes.extend(h);
        let total = bytes.len() + offset;
        std::fs::write(path, &bytes).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .unwrap()
            .set_len(total as u64)
            .unwrap();
    }

    /// Writes `entries` sparsely, opens them, and unlinks the file (the map stays valid).
    pub fn open_sparse(name: &str, entries: &[Entry]) -> dreamforge_core::WeightSet {
        let p = temp_path(name);
        write_sparse(&p, entries);
        let set = dreamforge_core::WeightSet::open(&p).unwrap();
        let _ = std::fs::remove_file(&p);
        let _ = std::fs::remove_dir(p.parent().unwrap());
        set
    }

    pub fn f16(prefix: &str, list: Vec<(String, Vec<usize>)>) -> Vec<Entry> {
        list.into_iter()
            .map(|(k, s)| (format!("{prefix}{k}"), s, "F16"))
            .collect()
    }

    /// Every LDM key of a VAE, named as the original `ldm` code names its modules (written
    /// independently of `vae::keys::ldm_vae_key_map`).
    pub fn ldm_vae_keys(ch: &[usize], layers: usize, z: usize) -> Vec<(String, Vec<usize>)> {
        let mut convs: Vec<(String, usize, usize, usize)> = Vec::new();
        let mut norms: Vec<(String, usize)> = Vec::new();
        let resnet =
            |p: String, cin: usize, cout: usize, convs: &mut Vec<_>, norms: &mut Vec<_>| {
                norms.push((format!("{p}.norm1"), cin));
                convs.push((format!("{p}.conv1"), cout, cin, 3));
                norms.push((format!("{p}.norm2"), cout));
                convs.push((format!("{p}.conv2"), cout, cout, 3));
                if cin != cout {
                    convs.push((format!("{p}.nin_shortcut"), cout, cin, 1));
                }
            };
        let n = ch.len();
        convs.push(("encoder.conv_in".to_string(), ch[0], 3, 3));
        let mut c = ch[0];
        for (i, &co) in ch.iter().enumerate() {
            for j in 0..layers {
                resnet(
                    format!("encoder.down.{i}.block.{j}"),
                    c,
                    co,
                    &mut convs,
                    &mut norms,
                );
                c = co;
            }
            if i + 1 < n {
                convs.push((format!("encoder.down.{i}.downsample.conv"), c, c, 3));
            }
        }
        for side in ["encoder", "decoder"] {
            let c = ch[n - 1];
            resnet(format!("{side}.mid.block_1"), c, c, &mut convs, &mut norms);
            resnet(format!("{side}.mid.block_2"), c, c, &mut convs, &mut norms);
            norms.push((format!("{side}.mid.attn_1.norm"), c));
            for q in ["q", "k", "v", "proj_out"] {
                convs.push((format!("{side}.mid.attn_1.{q}"), c, c, 1));
            }
        }
        norms.push(("encoder.norm_out".to_string(), ch[n - 1]));
        convs.push(("encoder.conv_out".to_string(), 2 * z, ch[n - 1], 3));
        convs.push(("quant_conv".to_string(), 2 * z, 2 * z, 1));
        convs.push(("post_quant_conv".to_string(), z, z, 1));
        convs.push(("decoder.conv_in".to_string(), ch[n - 1], z, 3));
        let mut c = ch[n - 1];
        for level in (0..n).rev() {
            let co = ch[level];
            for j in 0..=layers {
                resnet(
                    format!("decoder.up.{level}.block.{j}"),
                    c,
                    co,
                    &mut convs,
                    &mut norms,
                );
                c = co;
            }
            if level > 0 {
                convs.push((format!("decoder.up.{level}.upsample.conv"), c, c, 3));
            }
        }
        norms.push(("decoder.norm_out".to_string(), ch[0]));
        convs.push(("decoder.conv_out".to_string(), 3, ch[0], 3));
        let mut out = Vec::new();
        for (k, o, i, ks) in convs {
            out.push((format!("{k}.weight"), vec![o, i, ks, ks]));
            out.push((format!("{k}.bias"), vec![o]));
        }
        for (k, c) in norms {
            out.push((format!("{k}.weight"), vec![c]));
            out.push((format!("{k}.bias"), vec![c]));
        }
        out
    }

    /// A transformers-layout CLIP text tower (`text_model.` tower when `tower`, plus the
    /// `position_ids` buffer real SD1 files carry).
    pub fn hf_clip_keys(
        tower: bool,
        vocab: usize,
        d: usize,
        inner: usize,
        layers: usize,
        max_pos: usize,
    ) -> Vec<(String, Vec<usize>)> {
        let t = if tower { "text_model." } else { "" };
        let mut v = vec![
            (
                format!("{t}embeddings.token_embedding.weight"),
                vec![vocab, d],
            ),
            (
                format!("{t}embeddings.position_embedding.weight"),
                vec![max_pos, d],
            ),
            (format!("{t}final_layer_norm.weight"), vec![d]),
            (format!("{t}final_layer_norm.bias"), vec![d]),
        ];
        for i in 0..layers {
            let p = format!("{t}encoder.layers.{i}");
            for n in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                v.push((format!("{p}.self_attn.{n}.weight"), vec![d, d]));
                v.push((format!("{p}.self_attn.{n}.bias"), vec![d]));
            }
            for n in ["layer_norm1", "layer_norm2"] {
                v.push((format!("{p}.{n}.weight"), vec![d]));
                v.push((format!("{p}.{n}.bias"), vec![d]));
            }
            v.push((format!("{p}.mlp.fc1.weight"), vec![inner, d]));
            v.push((format!("{p}.mlp.fc1.bias"), vec![inner]));
            v.push((format!("{p}.mlp.fc2.weight"), vec![d, inner]));
            v.push((format!("{p}.mlp.fc2.bias"), vec![d]));
        }
        v
    }

    /// An OpenCLIP text tower as `FrozenOpenCLIPEmbedder` saves it (with `logit_scale`).
    pub fn open_clip_keys(
        vocab: usize,
        d: usize,
        inner: usize,
        layers: usize,
        max_pos: usize,
        projection: usize,
    ) -> Vec<(String, Vec<usize>)> {
        let mut v = vec![
            ("token_embedding.weight".to_string(), vec![vocab, d]),
            ("positional_embedding".to_string(), vec![max_pos, d]),
            ("ln_final.weight".to_string(), vec![d]),
            ("ln_final.bias".to_string(), vec![d]),
            ("text_projection".to_string(), vec![d, projection]),
            ("logit_scale".to_string(), vec![]),
        ];
        for i in 0..layers {
            let p = format!("transformer.resblocks.{i}");
            v.push((format!("{p}.attn.in_proj_weight"), vec![3 * d, d]));
            v.push((format!("{p}.attn.in_proj_bias"), vec![3 * d]));
            v.push((format!("{p}.attn.out_proj.weight"), vec![d, d]));
            v.push((format!("{p}.attn.out_proj.bias"), vec![d]));
            for n in ["ln_1", "ln_2"] {
                v.push((format!("{p}.{n}.weight"), vec![d]));
                v.push((format!("{p}.{n}.bias"), vec![d]));
            }
            v.push((format!("{p}.mlp.c_fc.weight"), vec![inner, d]));
            v.push((format!("{p}.mlp.c_fc.bias"), vec![inner]));
            v.push((format!("{p}.mlp.c_proj.weight"), vec![d, inner]));
            v.push((format!("{p}.mlp.c_proj.bias"), vec![d]));
        }
        v
    }

    /// The UNet keys detection looks at (the CHECKPOINT_KEY_NAMES ones and the SDXL label_emb),
    /// with real shapes: input channels, cross-attention width, SDXL `adm_in_channels`.
    pub fn unet_keys(in_ch: usize, context: usize, adm: Option<usize>) -> Vec<Entry> {
        let p = super::LDM_UNET_PREFIX;
        let mut v: Vec<Entry> = vec![
            (
                format!("{p}input_blocks.0.0.weight"),
                vec![320, in_ch, 3, 3],
                "F16",
            ),
            (format!("{p}time_embed.0.weight"), vec![1280, 320], "F16"),
            (
                format!("{p}output_blocks.11.0.skip_connection.weight"),
                vec![320, 640, 1, 1],
                "F16",
            ),
        ];
        let attn_block = if adm.is_some() {
            "input_blocks.4.1"
        } else {
            "input_blocks.2.1"
        };
        v.push((
            format!("{p}{attn_block}.transformer_blocks.0.attn2.to_k.weight"),
            vec![if adm.is_some() { 640 } else { 320 }, context],
            "F16",
        ));
        if let Some(adm) = adm {
            v.push((format!("{p}label_emb.0.0.weight"), vec![1280, adm], "F16"));
        }
        v
    }

    /// The non-weight tensors of a real SD1.5 "full" checkpoint.
    pub fn ldm_extras() -> Vec<Entry> {
        let mut v: Vec<Entry> = [
            "betas",
            "alphas_cumprod",
            "alphas_cumprod_prev",
            "sqrt_alphas_cumprod",
            "sqrt_one_minus_alphas_cumprod",
            "log_one_minus_alphas_cumprod",
            "sqrt_recip_alphas_cumprod",
            "sqrt_recipm1_alphas_cumprod",
            "posterior_variance",
            "posterior_log_variance_clipped",
            "posterior_mean_coef1",
            "posterior_mean_coef2",
        ]
        .iter()
        .map(|k| (k.to_string(), vec![1000], "F32"))
        .collect();
        v.push(("model_ema.decay".into(), vec![], "F32"));
        v.push(("model_ema.num_updates".into(), vec![], "I32"));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::*;
    use super::*;

    fn open(name: &str, entries: &[Entry]) -> WeightSet {
        open_sparse(name, entries)
    }

    fn sd_vae() -> Vec<Entry> {
        f16(
            "first_stage_model.",
            ldm_vae_keys(&[128, 256, 512, 512], 2, 4),
        )
    }

    fn clip_l(root: &str, tower: bool) -> Vec<Entry> {
        let mut v = f16(root, hf_clip_keys(tower, 49408, 768, 3072, 12, 77));
        let t = if tower { "text_model." } else { "" };
        v.push((
            format!("{root}{t}embeddings.position_ids"),
            vec![1, 77],
            "I64",
        ));
        v
    }

    fn sd15(tower: bool, in_ch: usize) -> Vec<Entry> {
        let mut v = unet_keys(in_ch, 768, None);
        v.extend(sd_vae());
        v.extend(clip_l(SD1_CLIP_ROOT, tower));
        v.extend(ldm_extras());
        v
    }

    fn sd(variant: SdVariant, inpainting: bool, vae: bool, te: bool) -> CheckpointKind {
        CheckpointKind::SdSingleFile {
            variant,
            inpainting,
            has_vae: vae,
            has_text_encoders: te,
        }
    }

    #[test]
    fn sd15_with_and_without_the_text_model_tower() {
        for tower in [true, false] {
            let set = open(&format!("sd15_{tower}"), &sd15(tower, 4));
            let kind = detect(&set);
            assert_eq!(kind, sd(SdVariant::Sd1, false, true, true));
            assert_eq!(
                kind.describe(),
                "an SD 1.x single-file checkpoint (LDM layout)"
            );
            let vae = sd_single_file_vae_config(&set, SdVariant::Sd1).unwrap();
            assert_eq!(vae.block_out_channels, vec![128, 256, 512, 512]);
            assert_eq!(vae.layers_per_block, 2);
            assert_eq!(vae.latent_channels, 4);
            assert_eq!(vae.norm_num_groups, 32);
            assert_eq!(vae.scaling_factor, 0.18215);
            assert!(vae.use_quant_conv && vae.use_post_quant_conv);
            assert!(vae.mid_block_add_attention && vae.force_upcast);
            assert_eq!(vae.sample_size, 512);
            assert!(vae.validate().is_ok());
            let te = sd_single_file_text_encoders(&set, SdVariant::Sd1).unwrap();
            assert_eq!(te.len(), 1);
            let c = &te[0].config;
            assert_eq!(
                (te[0].component, te[0].root),
                ("text_encoder", SD1_CLIP_ROOT)
            );
            assert_eq!(te[0].layout, ClipLayout::Transformers);
            assert_eq!(
                (c.vocab_size, c.hidden_size, c.intermediate_size),
                (49408, 768, 3072)
            );
            assert_eq!((c.num_hidden_layers, c.num_attention_heads), (12, 12));
            assert_eq!(
                (c.max_position_embeddings, c.hidden_act.as_str()),
                (77, "quick_gelu")
            );
            assert!(!c.declares_projection() && c.legacy_pooling());
        }
    }

    #[test]
    fn sd15_inpainting_has_nine_input_channels() {
        let set = open("sd15_inpaint", &sd15(true, 9));
        let kind = detect(&set);
        assert_eq!(kind, sd(SdVariant::Sd1, true, true, true));
        assert!(
            kind.describe().contains("SD 1.x inpainting"),
            "{}",
            kind.describe()
        );
    }

    #[test]
    fn sd21_open_clip_drops_its_last_layer() {
        let mut v = unet_keys(4, 1024, None);
        v.extend(sd_vae());
        v.extend(f16(
            SD2_OPEN_CLIP_ROOT,
            open_clip_keys(49408, 1024, 4096, 24, 77, 1024),
        ));
        v.extend(ldm_extras());
        let set = open("sd21", &v);
        assert_eq!(detect(&set), sd(SdVariant::Sd2, false, true, true));
        let te = sd_single_file_text_encoders(&set, SdVariant::Sd2).unwrap();
        let c = &te[0].config;
        assert_eq!(te[0].layout, ClipLayout::OpenClip);
        assert_eq!(
            (c.hidden_size, c.num_hidden_layers, c.num_attention_heads),
            (1024, 23, 16)
        );
        assert_eq!((c.intermediate_size, c.hidden_act.as_str()), (4096, "gelu"));
        assert!(!c.declares_projection() && c.projection_dim.is_none());
        // Only the UNet: the 1024-d cross attention says SD2 (diffusers' `v2` check).
        let set = open("sd21_unet_only", &unet_keys(4, 1024, None));
        assert_eq!(detect(&set), sd(SdVariant::Sd2, false, false, false));
        assert!(detect(&set).describe().contains("no VAE; no text encoders"));
    }

    fn sdxl_base() -> Vec<Entry> {
        let mut v = unet_keys(4, 2048, Some(2816));
        v.extend(f16(
            "first_stage_model.",
            ldm_vae_keys(&[128, 256, 512, 512], 2, 4),
        ));
        v.extend(clip_l(SDXL_CLIP_L_ROOT, true));
        v.extend(f16(
            SDXL_OPEN_CLIP_ROOT,
            open_clip_keys(49408, 1280, 5120, 32, 77, 1280),
        ));
        v
    }

    #[test]
    fn sdxl_base_has_two_text_encoders() {
        let set = open("sdxl", &sdxl_base());
        let kind = detect(&set);
        assert_eq!(kind, sd(SdVariant::Sdxl, false, true, true));
        assert_eq!(
            kind.describe(),
            "an SDXL single-file checkpoint (LDM layout)"
        );
        let vae = sd_single_file_vae_config(&set, SdVariant::Sdxl).unwrap();
        assert_eq!((vae.scaling_factor, vae.sample_size), (0.13025, 1024));
        let te = sd_single_file_text_encoders(&set, SdVariant::Sdxl).unwrap();
        assert_eq!(te.len(), 2);
        assert_eq!(
            (te[0].component, te[1].component),
            ("text_encoder", "text_encoder_2")
        );
        assert_eq!(te[0].config.hidden_size, 768);
        let g = &te[1].config;
        assert_eq!(
            (g.hidden_size, g.num_hidden_layers, g.num_attention_heads),
            (1280, 32, 20)
        );
        assert_eq!(g.projection_dim, Some(1280));
        assert!(g.declares_projection());
    }

    #[test]
    fn sdxl_refiner_is_recognised() {
        let mut v = unet_keys(4, 1280, Some(2560));
        v.extend(f16(
            SDXL_REFINER_OPEN_CLIP_ROOT,
            open_clip_keys(49408, 1280, 5120, 32, 77, 1280),
        ));
        let set = open("refiner", &v);
        let kind = detect(&set);
        assert_eq!(kind, sd(SdVariant::SdxlRefiner, false, false, true));
        assert!(
            kind.describe().contains("not supported"),
            "{}",
            kind.describe()
        );
        let te = sd_single_file_text_encoders(&set, SdVariant::SdxlRefiner).unwrap();
        assert_eq!(te[0].component, "text_encoder_2");
        // Without its text encoder the label_emb width still tells the refiner.
        let set = open("refiner_unet", &unet_keys(4, 1280, Some(2560)));
        assert_eq!(
            detect(&set),
            sd(SdVariant::SdxlRefiner, false, false, false)
        );
        let set = open("sdxl_unet", &unet_keys(4, 2048, Some(2816)));
        assert_eq!(detect(&set), sd(SdVariant::Sdxl, false, false, false));
    }

    #[test]
    fn flux_and_diffusers_unet_and_unknown() {
        for prefix in ["", "model.diffusion_model."] {
            let v: Vec<Entry> = vec![
                (format!("{prefix}img_in.weight"), vec![3072, 64], "BF16"),
                (
                    format!("{prefix}double_blocks.0.img_attn.qkv.weight"),
                    vec![9216, 3072],
                    "BF16",
                ),
                (
                    format!("{prefix}double_blocks.0.img_attn.norm.key_norm.scale"),
                    vec![128],
                    "BF16",
                ),
                (
                    format!("{prefix}single_blocks.0.linear1.weight"),
                    vec![21504, 3072],
                    "BF16",
                ),
            ];
            let set = open(&format!("flux_bfl_{}", prefix.len()), &v);
            assert_eq!(detect(&set), CheckpointKind::FluxBfl);
            assert!(detect(&set).describe().contains("FLUX"));
        }
        let v: Vec<Entry> = vec![
            (
                "transformer_blocks.0.attn.to_q.weight".into(),
                vec![64, 64],
                "BF16",
            ),
            ("x_embedder.weight".into(), vec![64, 16], "BF16"),
        ];
        assert_eq!(
            detect(&open("flux_diffusers", &v)),
            CheckpointKind::FluxDiffusers
        );
        let v: Vec<Entry> = vec![
            ("conv_in.weight".into(), vec![320, 4, 3, 3], "F16"),
            (
                "time_embedding.linear_1.weight".into(),
                vec![1280, 320],
                "F16",
            ),
            (
                "down_blocks.0.resnets.0.conv1.weight".into(),
                vec![320, 320, 3, 3],
                "F16",
            ),
            (
                "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight".into(),
                vec![320, 320],
                "F16",
            ),
        ];
        let kind = detect(&open("unet_diffusers", &v));
        assert_eq!(kind, CheckpointKind::UnetDiffusers);
        assert!(kind.describe().contains("UNet2DConditionModel"));
        let v: Vec<Entry> = vec![("shared.weight".into(), vec![32, 8], "F32")];
        assert_eq!(detect(&open("t5", &v)), CheckpointKind::Unknown);
    }

    #[test]
    fn a_file_without_vae_says_so_and_suggests_vae_flag() {
        let mut v = unet_keys(4, 768, None);
        v.extend(clip_l(SD1_CLIP_ROOT, true));
        let set = open("no_vae", &v);
        let kind = detect(&set);
        assert_eq!(kind, sd(SdVariant::Sd1, false, false, true));
        assert!(kind.describe().contains("no VAE"));
        let e = sd_single_file_vae_config(&set, SdVariant::Sd1)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no VAE") && e.contains("first_stage_model.*") && e.contains("--vae"),
            "{e}"
        );
        let cfg = AutoencoderKlConfig::default();
        let e =
            crate::vae::AutoencoderKL::from_single_file(&set, cfg, &Device::default()).unwrap_err();
        assert!(e.is_input_error());
        let e = e.to_string();
        assert!(
            e.contains("no_vae.safetensors")
                && e.contains("first_stage_model.*")
                && e.contains("--vae"),
            "{e}"
        );
        // Missing text encoders are named too.
        let set = open("no_te", &unet_keys(4, 2048, Some(2816)));
        let e = sd_single_file_text_encoders(&set, SdVariant::Sdxl)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("text_encoder") && e.contains(SDXL_CLIP_L_ROOT),
            "{e}"
        );
    }

    #[test]
    fn a_truncated_single_file_is_refused_by_name() {
        let p = temp_path("truncated");
        write_sparse(&p, &sd15(true, 4));
        let len = std::fs::metadata(&p).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&p)
            .unwrap()
            .set_len(len - 1)
            .unwrap();
        let e = WeightSet::open(&p).unwrap_err();
        let _ = std::fs::remove_file(&p);
        let _ = std::fs::remove_dir(p.parent().unwrap());
        assert!(e.is_input_error());
        let e = e.to_string();
        assert!(
            e.contains("truncated.safetensors") && e.contains("truncated"),
            "{e}"
        );
    }

    #[test]
    fn non_weight_keys() {
        for k in [
            "alphas_cumprod",
            "betas",
            "posterior_mean_coef2",
            "model_ema.decay",
            "model_ema.diffusion_modelinput_blocks00weight",
            "cond_stage_model.transformer.text_model.embeddings.position_ids",
            "cond_stage_model.model.logit_scale",
            "conditioner.embedders.1.model.attn_mask",
            "denoiser.sigmas",
            "first_stage_model.loss.logvar",
        ] {
            assert!(is_ldm_non_weight(k), "{k}");
        }
        for k in [
            "model.diffusion_model.input_blocks.0.0.weight",
            "first_stage_model.encoder.conv_in.weight",
            "cond_stage_model.model.text_projection",
            "cond_stage_model.model.positional_embedding",
            "model.diffusion_model.out.2.bias",
        ] {
            assert!(!is_ldm_non_weight(k), "{k}");
        }
    }
}
