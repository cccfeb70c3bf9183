//! The original LDM (CompVis `ldm.modules.diffusionmodules.model`) AutoencoderKL key layout as
//! it sits in a single-file Stable Diffusion checkpoint under `first_stage_model.` (or `vae.`,
//! or no prefix in a standalone VAE file): the inverse of diffusers
//! `loaders/single_file_utils.py::convert_ldm_vae_checkpoint` (with
//! `update_vae_resnet_ldm_to_diffusers`, `update_vae_attentions_ldm_to_diffusers`,
//! `conv_attn_to_linear` and `DIFFUSERS_TO_LDM_MAPPING["vae"]`), expressed as a [`KeyMap`] from
//! the diffusers parameter names the model loads to LDM file keys. Also the config such a file
//! implies (diffusers `create_vae_diffusers_config_from_ldm`, with `ch` / `ch_mult` /
//! `num_res_blocks` / `z_channels` read from tensor shapes instead of the LDM YAML).

use burn::tensor::Device;

use dreamforge_core::{Error, KeyMap, KeySource, Result, WeightLoader, WeightSet};

use super::config::AutoencoderKlConfig;
use super::model::AutoencoderKL;
use crate::checkpoint::is_ldm_non_weight;

/// Prefixes an LDM VAE may sit under, most common first (diffusers `LDM_VAE_KEYS`), then a
/// standalone LDM VAE file (`vae-ft-mse-840000-ema-pruned.safetensors`) with none.
pub const LDM_VAE_PREFIXES: [&str; 3] = ["first_stage_model.", "vae.", ""];

/// The LDM group count (`Normalize` hard-codes `num_groups=32`); shapes cannot tell it.
pub const LDM_VAE_NORM_GROUPS: usize = 32;

/// The prefix under which `set` holds an LDM-layout VAE, if it holds one.
pub fn ldm_vae_prefix(set: &WeightSet) -> Option<&'static str> {
    LDM_VAE_PREFIXES.into_iter().find(|p| {
        set.contains(&format!("{p}encoder.conv_in.weight"))
            && set.contains(&format!("{p}encoder.down.0.block.0.conv1.weight"))
    })
}

/// diffusers parameter name → LDM key (relative to the VAE prefix) for a VAE of this config.
/// Names the model never asks for (a `conv_shortcut` where channels do not change) may be in
/// the map; they are harmless.
pub fn ldm_vae_key_map(cfg: &AutoencoderKlConfig) -> KeyMap {
    let mut m = KeyMap::new();
    let n = cfg.block_out_channels.len();
    let mut both = |ours: String, theirs: String| {
        for wb in ["weight", "bias"] {
            m.insert(
                format!("{ours}.{wb}"),
                KeySource::whole(format!("{theirs}.{wb}")),
            );
        }
    };
    // (diffusers resnet part, LDM resnet part)
    const RESNET: [(&str, &str); 5] = [
        ("norm1", "norm1"),
        ("conv1", "conv1"),
        ("norm2", "norm2"),
        ("conv2", "conv2"),
        ("conv_shortcut", "nin_shortcut"),
    ];
    // (diffusers attention part, LDM `attn_1` part)
    const ATTENTION: [(&str, &str); 5] = [
        ("group_norm", "norm"),
        ("to_q", "q"),
        ("to_k", "k"),
        ("to_v", "v"),
        ("to_out.0", "proj_out"),
    ];
    for side in ["encoder", "decoder"] {
        for (ours, theirs) in [
            ("conv_in", "conv_in"),
            ("conv_norm_out", "norm_out"),
            ("conv_out", "conv_out"),
        ] {
            both(format!("{side}.{ours}"), format!("{side}.{theirs}"));
        }
        for r in 0..2 {
            for (ours, theirs) in RESNET {
                both(
                    format!("{side}.mid_block.resnets.{r}.{ours}"),
                    format!("{side}.mid.block_{}.{theirs}", r + 1),
                );
            }
        }
        for (ours, theirs) in ATTENTION {
            both(
                format!("{side}.mid_block.attentions.0.{ours}"),
                format!("{side}.mid.attn_1.{theirs}"),
            );
        }
    }
    for i in 0..n {
        for j in 0..cfg.layers_per_block {
            for (ours, theirs) in RESNET {
                both(
                    format!("encoder.down_blocks.{i}.resnets.{j}.{ours}"),
                    format!("encoder.down.{i}.block.{j}.{theirs}"),
                );
            }
        }
        both(
            format!("encoder.down_blocks.{i}.downsamplers.0.conv"),
            format!("encoder.down.{i}.downsample.conv"),
        );
        // The LDM decoder numbers its levels from the lowest resolution up: diffusers
        // `up_blocks.i` is LDM `up.(n - 1 - i)`.
        let ldm = n - 1 - i;
        for j in 0..=cfg.layers_per_block {
            for (ours, theirs) in RESNET {
                both(
                    format!("decoder.up_blocks.{i}.resnets.{j}.{ours}"),
                    format!("decoder.up.{ldm}.block.{j}.{theirs}"),
                );
            }
        }
        both(
            format!("decoder.up_blocks.{i}.upsamplers.0.conv"),
            format!("decoder.up.{ldm}.upsample.conv"),
        );
    }
    for q in ["quant_conv", "post_quant_conv"] {
        both(q.to_string(), q.to_string());
    }
    m
}

fn count(set: &WeightSet, f: impl Fn(usize) -> String) -> usize {
    (0..).take_while(|&i| set.contains(&f(i))).count()
}

/// The config an LDM-layout VAE under `prefix` implies, read from shapes: `block_out_channels`
/// (`ch · ch_mult`) from each level's first resnet, `layers_per_block` (`num_res_blocks`),
/// `latent_channels` (`z_channels`), in / out channels, quant convs and mid attention present
/// or not. `norm_num_groups` is LDM's fixed 32 and `scaling_factor` diffusers' LDM default
/// 0.18215 (the caller sets the family's own); every other field is diffusers' default.
pub fn infer_ldm_vae_config(set: &WeightSet, prefix: &str) -> Result<AutoencoderKlConfig> {
    let shape = |k: &str| -> Result<Vec<usize>> {
        let key = format!("{prefix}{k}");
        set.shape(&key)
            .map(<[usize]>::to_vec)
            .ok_or_else(|| Error::MissingKey {
                path: set.origin().to_path_buf(),
                key,
                hint: Some("needed to infer the VAE config from an LDM checkpoint".into()),
            })
    };
    let dim = |k: &str, want: usize, i: usize| -> Result<usize> {
        let s = shape(k)?;
        if s.len() != want {
            return Err(Error::format(
                set.origin(),
                format!("weight `{prefix}{k}` has shape {s:?}, expected {want} dimensions"),
            ));
        }
        Ok(s[i])
    };
    let levels = count(set, |i| {
        format!("{prefix}encoder.down.{i}.block.0.conv1.weight")
    });
    if levels == 0 {
        return Err(no_vae_error(set));
    }
    let block_out_channels = (0..levels)
        .map(|i| dim(&format!("encoder.down.{i}.block.0.conv1.weight"), 4, 0))
        .collect::<Result<Vec<_>>>()?;
    let layers_per_block = count(set, |j| {
        format!("{prefix}encoder.down.0.block.{j}.conv1.weight")
    });
    let latent_channels = dim("decoder.conv_in.weight", 4, 1)?;
    let n = block_out_channels.len();
    Ok(AutoencoderKlConfig {
        in_channels: dim("encoder.conv_in.weight", 4, 1)?,
        out_channels: dim("decoder.conv_out.weight", 4, 0)?,
        down_block_types: vec!["DownEncoderBlock2D".into(); n],
        up_block_types: vec!["UpDecoderBlock2D".into(); n],
        block_out_channels,
        layers_per_block,
        latent_channels,
        norm_num_groups: LDM_VAE_NORM_GROUPS,
        use_quant_conv: set.contains(&format!("{prefix}quant_conv.weight")),
        use_post_quant_conv: set.contains(&format!("{prefix}post_quant_conv.weight")),
        mid_block_add_attention: set.contains(&format!("{prefix}encoder.mid.attn_1.q.weight")),
        ..AutoencoderKlConfig::default()
    })
}

/// The error for a checkpoint that carries no VAE.
pub fn no_vae_error(set: &WeightSet) -> Error {
    Error::format(
        set.origin(),
        "this checkpoint has no VAE (no `first_stage_model.*` keys in the LDM layout); pass one with `--vae`",
    )
}

impl AutoencoderKL {
    /// Loads the VAE of an original LDM-layout checkpoint: a single-file SD/SDXL checkpoint
    /// (`first_stage_model.*`, or `vae.*`) or a standalone LDM VAE file, detected from the keys.
    /// Strict like [`Self::from_weights`]: every key under the VAE prefix must be consumed
    /// except known non-weight tensors (EMA copies, schedule tables, see
    /// [`is_ldm_non_weight`]), and every shape must match `config`.
    pub fn from_single_file(
        set: &WeightSet,
        config: AutoencoderKlConfig,
        device: &Device,
    ) -> Result<Self> {
        let prefix = ldm_vae_prefix(set).ok_or_else(|| no_vae_error(set))?;
        config
            .validate()
            .map_err(|r| Error::config(set.origin(), r))?;
        let w = WeightLoader::new(set, device)
            .with_prefix(prefix)
            .with_key_map(ldm_vae_key_map(&config))
            .with_ignored(is_ldm_non_weight);
        let model = Self::from_loader(&w, config)?;
        w.finish()?;
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::test_support::{Entry, f16, ldm_extras, ldm_vae_keys, open_sparse};

    #[test]
    fn key_map_covers_every_ldm_vae_key_once() {
        let cfg = AutoencoderKlConfig {
            block_out_channels: vec![128, 256, 512, 512],
            down_block_types: vec!["DownEncoderBlock2D".into(); 4],
            up_block_types: vec!["UpDecoderBlock2D".into(); 4],
            layers_per_block: 2,
            ..AutoencoderKlConfig::default()
        };
        let map = ldm_vae_key_map(&cfg);
        let keys = ldm_vae_keys(&cfg.block_out_channels, 2, 4);
        // SD1.5's VAE has 248 tensors.
        assert_eq!(keys.len(), 248);
        let targets: std::collections::HashSet<&str> =
            map.values().map(|s| s.key.as_str()).collect();
        for (k, _) in &keys {
            assert!(targets.contains(k.as_str()), "no parameter maps to `{k}`");
        }
        // The decoder level order is reversed; nin_shortcut is diffusers' conv_shortcut.
        assert_eq!(
            map["decoder.up_blocks.0.resnets.2.conv1.weight"].key,
            "decoder.up.3.block.2.conv1.weight"
        );
        assert_eq!(
            map["decoder.up_blocks.3.upsamplers.0.conv.bias"].key,
            "decoder.up.0.upsample.conv.bias"
        );
        assert_eq!(
            map["encoder.down_blocks.1.resnets.0.conv_shortcut.weight"].key,
            "encoder.down.1.block.0.nin_shortcut.weight"
        );
        assert_eq!(
            map["encoder.mid_block.attentions.0.to_out.0.weight"].key,
            "encoder.mid.attn_1.proj_out.weight"
        );
    }

    fn tiny_config(set: &WeightSet) -> AutoencoderKlConfig {
        let mut cfg = infer_ldm_vae_config(set, ldm_vae_prefix(set).unwrap()).unwrap();
        cfg.norm_num_groups = 8;
        cfg
    }

    fn tiny(prefix: &str) -> Vec<Entry> {
        let mut v = f16(prefix, ldm_vae_keys(&[8, 16], 1, 4));
        v.extend(ldm_extras());
        v
    }

    #[test]
    fn loads_under_each_prefix_ignoring_non_weights() {
        for prefix in LDM_VAE_PREFIXES {
            let set = open_sparse(&format!("vae_prefix_{}", prefix.len()), &tiny(prefix));
            assert_eq!(ldm_vae_prefix(&set), Some(prefix));
            let cfg = tiny_config(&set);
            assert_eq!(cfg.block_out_channels, vec![8, 16]);
            assert_eq!((cfg.layers_per_block, cfg.latent_channels), (1, 4));
            let m = AutoencoderKL::from_single_file(&set, cfg, &Device::default()).unwrap();
            assert_eq!(m.downscale_factor(), 2);
        }
    }

    #[test]
    fn wrong_shapes_and_stray_keys_are_named() {
        let mut v = tiny("first_stage_model.");
        let k = "first_stage_model.decoder.up.0.block.1.conv2.weight";
        let e = v.iter_mut().find(|e| e.0 == k).unwrap();
        e.1 = vec![8, 8, 1, 1];
        let set = open_sparse("vae_bad_shape", &v);
        let err = AutoencoderKL::from_single_file(&set, tiny_config(&set), &Device::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(k) && err.contains("[8, 8, 1, 1]") && err.contains("[8, 8, 3, 3]"),
            "{err}"
        );

        let mut v = tiny("first_stage_model.");
        v.push((
            "first_stage_model.encoder.mid.attn_2.q.weight".into(),
            vec![16, 16, 1, 1],
            "F16",
        ));
        let set = open_sparse("vae_stray", &v);
        let err = AutoencoderKL::from_single_file(&set, tiny_config(&set), &Device::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("1 unused") && err.contains("attn_2.q.weight"),
            "{err}"
        );

        let mut v = tiny("first_stage_model.");
        let k = "first_stage_model.decoder.up.1.upsample.conv.bias";
        v.retain(|e| e.0 != k);
        let set = open_sparse("vae_missing", &v);
        let err = AutoencoderKL::from_single_file(&set, tiny_config(&set), &Device::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(k) && err.contains("decoder.up_blocks.0.upsamplers.0.conv.bias"),
            "{err}"
        );

        // A diffusers-layout VAE is not an LDM VAE.
        let v: Vec<Entry> = vec![("encoder.conv_in.weight".into(), vec![8, 3, 3, 3], "F16")];
        let set = open_sparse("vae_diffusers", &v);
        assert_eq!(ldm_vae_prefix(&set), None);
    }
}
