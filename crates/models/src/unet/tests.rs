//! Unit tests: config parsing (int-or-list fields, unsupported types and options), LDM config
//! inference on the real SD1.5 / SD1.5-inpainting / SD2.1 / SDXL key shapes (from an
//! independent LDM layout writer, plus a sparse-file checkpoint for the public entry point),
//! the LDM key map's coverage, strict loading and the forward's input checks on the tiny
//! parity fixtures.

use crate::test_util::write_tensors;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use burn::tensor::{Tensor, TensorData};
use dreamforge_core::{Error, HostTensor, WeightSet, test_device, to_host};

use super::embeddings::timestep_embedding_tensor;
use super::keys::{LDM_PREFIX, infer_from_shapes, ldm_key_map};
use super::{AddedCondition, UNet2DConditionConfig, UNet2DConditionModel, infer_ldm_config};
use crate::layers::timestep_embedding;

// ---------------------------------------------------------------------------------------------
// Real upstream configs (diffusers `unet/config.json` of the published checkpoints).

const SD15: &str = r#"{"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.6.0",
  "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
  "center_input_sample": false, "cross_attention_dim": 768,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
  "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
  "out_channels": 4, "sample_size": 64,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}"#;

const SD21: &str = r#"{"_class_name": "UNet2DConditionModel", "_diffusers_version": "0.10.0.dev0",
  "act_fn": "silu", "attention_head_dim": [5, 10, 20, 20], "block_out_channels": [320, 640, 1280, 1280],
  "center_input_sample": false, "cross_attention_dim": 1024,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1, "dual_cross_attention": false, "flip_sin_to_cos": true, "freq_shift": 0,
  "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05,
  "norm_num_groups": 32, "num_class_embeds": null, "only_cross_attention": false, "out_channels": 4,
  "sample_size": 96, "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
  "use_linear_projection": true, "upcast_attention": true}"#;

const SDXL: &str = r#"{"act_fn": "silu", "addition_embed_type": "text_time",
  "addition_embed_type_num_heads": 64, "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
  "attention_type": "default", "block_out_channels": [320, 640, 1280], "center_input_sample": false,
  "class_embed_type": null, "class_embeddings_concat": false, "conv_in_kernel": 3, "conv_out_kernel": 3,
  "cross_attention_dim": 2048, "cross_attention_norm": null,
  "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
  "downsample_padding": 1, "dropout": 0.0, "dual_cross_attention": false, "encoder_hid_dim": null,
  "encoder_hid_dim_type": null, "flip_sin_to_cos": true, "freq_shift": 0, "in_channels": 4,
  "layers_per_block": 2, "mid_block_only_cross_attention": null, "mid_block_scale_factor": 1,
  "mid_block_type": "UNetMidBlock2DCrossAttn", "norm_eps": 1e-05, "norm_num_groups": 32,
  "num_attention_heads": null, "num_class_embeds": null, "only_cross_attention": false, "out_channels": 4,
  "projection_class_embeddings_input_dim": 2816, "resnet_out_scale_factor": 1.0,
  "resnet_skip_time_act": false, "resnet_time_scale_shift": "default",
  "reverse_transformer_layers_per_block": null, "sample_size": 128, "time_cond_proj_dim": null,
  "time_embedding_act_fn": null, "time_embedding_dim": null, "time_embedding_type": "positional",
  "timestep_post_act": null, "transformer_layers_per_block": [1, 2, 10],
  "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
  "upcast_attention": null, "use_linear_projection": true}"#;

fn parse(text: &str) -> UNet2DConditionConfig {
    UNet2DConditionConfig::from_json(text).unwrap()
}

/// `base` with `patch`'s fields replaced.
fn with(base: &str, patch: serde_json::Value) -> Result<UNet2DConditionConfig, String> {
    let mut v: serde_json::Value = serde_json::from_str(base).unwrap();
    for (k, x) in patch.as_object().unwrap() {
        v[k] = x.clone();
    }
    UNet2DConditionConfig::from_json(&v.to_string())
}

#[test]
fn real_configs_parse_with_per_level_values() {
    let sd15 = parse(SD15);
    let defaults = UNet2DConditionConfig::default();
    assert_eq!(
        (
            defaults.cross_attention_dim.at(0),
            defaults.layers(0),
            defaults.heads(0)
        ),
        (1280, 2, 8),
        "diffusers' constructor defaults"
    );
    assert_eq!((0..4).map(|i| sd15.heads(i)).collect::<Vec<_>>(), [8; 4]);
    assert_eq!(sd15.down_transformer_layers(0), [1, 1]);
    assert_eq!(sd15.up_transformer_layers(3), [1, 1, 1]);
    assert_eq!(sd15.time_embed_dim(), 1280);

    let sd21 = parse(SD21);
    assert_eq!(
        (0..4).map(|i| sd21.heads(i)).collect::<Vec<_>>(),
        [5, 10, 20, 20]
    );
    assert!(sd21.use_linear_projection && sd21.upcast_attention == Some(true));

    let xl = parse(SDXL);
    assert!(xl.is_text_time());
    assert_eq!(xl.down_transformer_layers(2), [10, 10]);
    assert_eq!(xl.up_transformer_layers(0), [10, 10, 10]);
    assert_eq!(xl.up_transformer_layers(1), [2, 2, 2]);
    assert_eq!(xl.mid_transformer_layers(), 10);
    assert_eq!((xl.heads(0), xl.heads(2), xl.cross_dim(1)), (5, 20, 2048));
}

#[test]
fn int_or_list_fields_and_nested_transformer_layers() {
    let c = with(
        SDXL,
        serde_json::json!({"layers_per_block": [1, 2, 3], "num_attention_heads": 4,
            "transformer_layers_per_block": [[1], [2, 3], [4, 5, 6]],
            "reverse_transformer_layers_per_block": [[7, 8, 9, 10], [11, 12, 13], [14, 15]]}),
    )
    .unwrap();
    assert_eq!((c.layers(0), c.layers(2)), (1, 3));
    assert_eq!(
        c.heads(1),
        4,
        "num_attention_heads overrides attention_head_dim"
    );
    assert_eq!(c.down_transformer_layers(1), [2, 3]);
    assert_eq!(c.down_transformer_layers(2), [4, 5, 6]);
    assert_eq!(c.up_transformer_layers(0), [7, 8, 9, 10]);
    assert_eq!(c.up_transformer_layers(2), [14, 15]);
    assert_eq!(c.mid_transformer_layers(), 4);

    let e = with(
        SDXL,
        serde_json::json!({"transformer_layers_per_block": [[1, 1], [2, 3], [4, 5]]}),
    )
    .unwrap_err();
    assert!(e.contains("reverse_transformer_layers_per_block"), "{e}");
    let e = with(SD15, serde_json::json!({"attention_head_dim": [8, 8]})).unwrap_err();
    assert!(
        e.contains("attention_head_dim has 2 entries for 4 levels"),
        "{e}"
    );
    let e = with(SD15, serde_json::json!({"attention_head_dim": 7})).unwrap_err();
    assert!(e.contains("320 channels cannot be split into 7"), "{e}");
    let c = with(
        SD15,
        serde_json::json!({"mid_block_type": null, "only_cross_attention": [false, true, false, false]}),
    )
    .unwrap();
    assert!(c.mid_block_type.is_none() && c.only_cross(1) && !c.only_cross(0));
    let c = with(
        SD15,
        serde_json::json!({"down_block_types": ["UNetResCrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]}),
    )
    .unwrap();
    assert_eq!(c, parse(SD15), "the UNetRes prefix is accepted as upstream");
}

#[test]
fn unsupported_types_and_options_name_the_field_and_value() {
    for (patch, needles) in [
        (
            serde_json::json!({"down_block_types": ["AttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]}),
            ["down_block_types", "AttnDownBlock2D"],
        ),
        (
            serde_json::json!({"up_block_types": ["UpBlock2D", "SimpleCrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]}),
            ["up_block_types", "SimpleCrossAttnUpBlock2D"],
        ),
        (
            serde_json::json!({"mid_block_type": "UNetMidBlock2D"}),
            ["mid_block_type", "UNetMidBlock2D"],
        ),
        (serde_json::json!({"act_fn": "gelu"}), ["act_fn", "gelu"]),
        (
            serde_json::json!({"resnet_time_scale_shift": "scale_shift"}),
            ["resnet_time_scale_shift", "scale_shift"],
        ),
        (
            serde_json::json!({"addition_embed_type": "text"}),
            ["addition_embed_type", "text"],
        ),
        (
            serde_json::json!({"class_embed_type": "projection"}),
            ["class_embed_type", "projection"],
        ),
        (
            serde_json::json!({"time_embedding_type": "fourier"}),
            ["time_embedding_type", "fourier"],
        ),
        (
            serde_json::json!({"time_cond_proj_dim": 256}),
            ["time_cond_proj_dim", "256"],
        ),
        (
            serde_json::json!({"dual_cross_attention": true}),
            ["dual_cross_attention", "true"],
        ),
        (
            serde_json::json!({"attention_type": "gated"}),
            ["attention_type", "gated"],
        ),
        (
            serde_json::json!({"norm_num_groups": null}),
            ["norm_num_groups", "null"],
        ),
    ] {
        let e = with(SD15, patch.clone()).unwrap_err();
        for n in needles {
            assert!(e.contains(n), "{patch}: {e}");
        }
    }
    let e = with(
        SDXL,
        serde_json::json!({"projection_class_embeddings_input_dim": null}),
    )
    .unwrap_err();
    assert!(e.contains("text_time"), "{e}");
    let dir = temp_dir("bad-config");
    std::fs::write(dir.join("config.json"), r#"{"act_fn": "relu"}"#).unwrap();
    let e = UNet2DConditionConfig::from_file(&dir.join("config.json")).unwrap_err();
    assert!(matches!(e, Error::Config { .. }) && e.to_string().contains("config.json"));
}

// ---------------------------------------------------------------------------------------------
// An LDM layout writer written after the original `openaimodel.UNetModel` constructor (not after
// keys.rs), producing the key → shape table of a real checkpoint.

struct Ldm {
    in_ch: usize,
    model_ch: usize,
    mult: Vec<usize>,
    res_blocks: usize,
    /// Transformer depth per level, 0 for levels without attention.
    depth: Vec<usize>,
    mid_depth: usize,
    context: usize,
    linear: bool,
    adm: Option<usize>,
}

/// The key → shape table being written.
struct Table<'a> {
    s: &'a Ldm,
    t: HashMap<String, Vec<usize>>,
}

impl Table<'_> {
    fn put(&mut self, k: String, v: Vec<usize>) {
        assert!(self.t.insert(k.clone(), v).is_none(), "{k} written twice");
    }

    /// `{p}.weight` of `shape` and `{p}.bias` of `[shape[0]]`.
    fn wb(&mut self, p: &str, shape: Vec<usize>) {
        let out = shape[0];
        self.put(format!("{p}.weight"), shape);
        self.put(format!("{p}.bias"), vec![out]);
    }

    /// `ResBlock(cin → cout)`.
    fn res(&mut self, p: &str, cin: usize, cout: usize) {
        let temb = 4 * self.s.model_ch;
        self.wb(&format!("{p}.in_layers.0"), vec![cin]);
        self.wb(&format!("{p}.in_layers.2"), vec![cout, cin, 3, 3]);
        self.wb(&format!("{p}.emb_layers.1"), vec![cout, temb]);
        self.wb(&format!("{p}.out_layers.0"), vec![cout]);
        self.wb(&format!("{p}.out_layers.3"), vec![cout, cout, 3, 3]);
        if cin != cout {
            self.wb(&format!("{p}.skip_connection"), vec![cout, cin, 1, 1]);
        }
    }

    /// `SpatialTransformer(c, depth)`.
    fn st(&mut self, p: &str, c: usize, depth: usize) {
        let proj = if self.s.linear {
            vec![c, c]
        } else {
            vec![c, c, 1, 1]
        };
        self.wb(&format!("{p}.norm"), vec![c]);
        self.wb(&format!("{p}.proj_in"), proj.clone());
        self.wb(&format!("{p}.proj_out"), proj);
        for k in 0..depth {
            let b = format!("{p}.transformer_blocks.{k}");
            for n in ["norm1", "norm2", "norm3"] {
                self.wb(&format!("{b}.{n}"), vec![c]);
            }
            for (a, kv) in [("attn1", c), ("attn2", self.s.context)] {
                self.put(format!("{b}.{a}.to_q.weight"), vec![c, c]);
                self.put(format!("{b}.{a}.to_k.weight"), vec![c, kv]);
                self.put(format!("{b}.{a}.to_v.weight"), vec![c, kv]);
                self.wb(&format!("{b}.{a}.to_out.0"), vec![c, c]);
            }
            self.wb(&format!("{b}.ff.net.0.proj"), vec![8 * c, c]);
            self.wb(&format!("{b}.ff.net.2"), vec![c, 4 * c]);
        }
    }
}

fn ldm_shapes(s: &Ldm) -> HashMap<String, Vec<usize>> {
    let mut t = Table {
        s,
        t: HashMap::new(),
    };
    let m = s.model_ch;
    t.wb("time_embed.0", vec![4 * m, m]);
    t.wb("time_embed.2", vec![4 * m, 4 * m]);
    if let Some(adm) = s.adm {
        t.wb("label_emb.0.0", vec![4 * m, adm]);
        t.wb("label_emb.0.2", vec![4 * m, 4 * m]);
    }
    t.wb("input_blocks.0.0", vec![m, s.in_ch, 3, 3]);
    let (mut ch, mut chans, mut i) = (m, vec![m], 1);
    for (level, mult) in s.mult.iter().enumerate() {
        for _ in 0..s.res_blocks {
            t.res(&format!("input_blocks.{i}.0"), ch, mult * m);
            ch = mult * m;
            if s.depth[level] > 0 {
                t.st(&format!("input_blocks.{i}.1"), ch, s.depth[level]);
            }
            chans.push(ch);
            i += 1;
        }
        if level + 1 < s.mult.len() {
            t.wb(&format!("input_blocks.{i}.0.op"), vec![ch, ch, 3, 3]);
            chans.push(ch);
            i += 1;
        }
    }
    t.res("middle_block.0", ch, ch);
    t.st("middle_block.1", ch, s.mid_depth);
    t.res("middle_block.2", ch, ch);
    let mut o = 0;
    for (level, mult) in s.mult.iter().enumerate().rev() {
        for k in 0..=s.res_blocks {
            let skip = chans.pop().expect("one skip per output block");
            t.res(&format!("output_blocks.{o}.0"), ch + skip, mult * m);
            ch = mult * m;
            let attn = s.depth[level] > 0;
            if attn {
                t.st(&format!("output_blocks.{o}.1"), ch, s.depth[level]);
            }
            if level > 0 && k == s.res_blocks {
                let slot = if attn { 2 } else { 1 };
                t.wb(
                    &format!("output_blocks.{o}.{slot}.conv"),
                    vec![ch, ch, 3, 3],
                );
            }
            o += 1;
        }
    }
    t.wb("out.0", vec![m]);
    t.wb("out.2", vec![4, m, 3, 3]);
    t.t
}

fn sd15_ldm(in_ch: usize) -> Ldm {
    Ldm {
        in_ch,
        model_ch: 320,
        mult: vec![1, 2, 4, 4],
        res_blocks: 2,
        depth: vec![1, 1, 1, 0],
        mid_depth: 1,
        context: 768,
        linear: false,
        adm: None,
    }
}

fn sd21_ldm() -> Ldm {
    Ldm {
        context: 1024,
        linear: true,
        ..sd15_ldm(4)
    }
}

fn sdxl_ldm() -> Ldm {
    Ldm {
        in_ch: 4,
        model_ch: 320,
        mult: vec![1, 2, 4],
        res_blocks: 2,
        depth: vec![0, 2, 10],
        mid_depth: 10,
        context: 2048,
        linear: true,
        adm: Some(2816),
    }
}

fn infer(shapes: &HashMap<String, Vec<usize>>) -> dreamforge_core::Result<UNet2DConditionConfig> {
    let lookup = |k: &str| shapes.get(k).cloned();
    let mut cfg = infer_from_shapes(Path::new("test.safetensors"), "", &lookup)?;
    super::keys::apply_head_rule(&mut cfg).map_err(|r| Error::config("test", r))?;
    cfg.validate().map_err(|r| Error::config("test", r))?;
    Ok(cfg)
}

#[test]
fn ldm_inference_reproduces_the_real_configs() {
    let sd15 = ldm_shapes(&sd15_ldm(4));
    assert_eq!(sd15.len(), 686, "a real SD1.5 UNet has 686 tensors");
    assert_eq!(infer(&sd15).unwrap(), parse(SD15));

    let inpaint = infer(&ldm_shapes(&sd15_ldm(9))).unwrap();
    assert_eq!(inpaint.in_channels, 9);
    assert_eq!(
        UNet2DConditionConfig {
            in_channels: 4,
            ..inpaint
        },
        parse(SD15)
    );

    let sd21 = infer(&ldm_shapes(&sd21_ldm())).unwrap();
    // The sample size (512 vs 768 training) and fp16 upcasting are not in the weights.
    let mut expected = parse(SD21);
    expected.sample_size = sd21.sample_size.clone();
    expected.upcast_attention = None;
    assert_eq!(sd21, expected);

    let sdxl = ldm_shapes(&sdxl_ldm());
    assert_eq!(sdxl.len(), 1680, "a real SDXL UNet has 1680 tensors");
    assert_eq!(infer(&sdxl).unwrap(), parse(SDXL));
}

#[test]
fn ldm_key_map_covers_exactly_the_real_keys() {
    for (ldm, cfg) in [
        (sd15_ldm(4), parse(SD15)),
        (sd21_ldm(), parse(SD21)),
        (sdxl_ldm(), parse(SDXL)),
    ] {
        let shapes = ldm_shapes(&ldm);
        let map = ldm_key_map(&cfg);
        let mut hit = HashSet::new();
        for src in map.values() {
            if shapes.contains_key(&src.key) {
                assert!(hit.insert(src.key.clone()), "{} mapped twice", src.key);
            }
        }
        let missing: Vec<_> = shapes.keys().filter(|k| !hit.contains(*k)).collect();
        assert!(missing.is_empty(), "unmapped LDM keys: {missing:?}");
    }
}

#[test]
fn ldm_inference_refuses_inconsistent_layouts() {
    let mut s = ldm_shapes(&sd15_ldm(4));
    s.remove("output_blocks.4.0.in_layers.0.weight");
    let e = infer(&s).unwrap_err().to_string();
    assert!(e.contains("output_blocks.4"), "{e}");
    let mut s = ldm_shapes(&sd15_ldm(4));
    s.insert(
        "input_blocks.2.1.proj_in.weight".into(),
        vec![320, 320, 1, 1],
    );
    s.remove("input_blocks.1.1.proj_in.weight");
    let e = infer(&s).unwrap_err().to_string();
    assert!(e.contains("1 of 2 resnets"), "{e}");
    let mut s = ldm_shapes(&sd15_ldm(4));
    s.remove("input_blocks.0.0.weight");
    let e = infer(&s).unwrap_err().to_string();
    assert!(e.contains("input_blocks.0.0.weight"), "{e}");
}

/// A safetensors file whose header declares `tensors` (F16) over a sparse data section.
fn write_sparse(path: &Path, tensors: &[(String, Vec<usize>)]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for (name, shape) in tensors {
        let len = 2 * shape.iter().product::<usize>();
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F16", "shape": shape, "data_offsets": [offset, offset + len]}),
        );
        offset += len;
    }
    let mut h = serde_json::to_string(&header).unwrap().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend(&h);
    std::fs::write(path, &bytes).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len((bytes.len() + offset) as u64)
        .unwrap();
}

#[test]
fn sparse_sdxl_single_file_infers_through_the_public_api() {
    let dir = temp_dir("sparse-sdxl");
    let path = dir.join("sd_xl_base_1.0.safetensors");
    let mut tensors: Vec<(String, Vec<usize>)> = ldm_shapes(&sdxl_ldm())
        .into_iter()
        .map(|(k, v)| (format!("{LDM_PREFIX}{k}"), v))
        .collect();
    tensors.push(("conditioner.embedders.1.model.logit_scale".into(), vec![]));
    tensors.push(("first_stage_model.decoder.conv_out.bias".into(), vec![3]));
    tensors.sort();
    write_sparse(&path, &tensors);
    let set = WeightSet::open(&path).unwrap();
    assert!(super::is_ldm_unet(&set));
    assert_eq!(infer_ldm_config(&set).unwrap(), parse(SDXL));
    // A UNet-only LDM file (no prefix) is recognised too.
    let bare = dir.join("unet_only.safetensors");
    let unprefixed: Vec<_> = ldm_shapes(&sd15_ldm(4)).into_iter().collect();
    write_sparse(&bare, &unprefixed);
    let set = WeightSet::open(&bare).unwrap();
    assert_eq!(infer_ldm_config(&set).unwrap(), parse(SD15));
    drop(set);
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------
// Loading and forward checks on the committed tiny fixtures.

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/parity")
        .join(name)
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "dreamforge-unet-test-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A copy of the sd1 fixture folder with its weights edited by `edit`.
fn edited_sd1(name: &str, edit: impl FnOnce(&mut Vec<(String, HostTensor)>)) -> PathBuf {
    let src = fixture("unet_sd1_tiny");
    let set = WeightSet::open(&src).unwrap();
    let mut tensors: Vec<(String, HostTensor)> = set
        .keys()
        .into_iter()
        .map(|k| (k.to_string(), set.read_f32(k).unwrap()))
        .collect();
    edit(&mut tensors);
    let dir = temp_dir(name);
    std::fs::copy(src.join("config.json"), dir.join("config.json")).unwrap();
    write_tensors(&dir.join("diffusion_pytorch_model.safetensors"), &tensors);
    dir
}

#[test]
fn loading_is_strict_about_missing_unused_and_misshapen_weights() {
    let dev = test_device();
    let dir = edited_sd1("missing", |t| {
        t.retain(|(k, _)| k != "up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k.weight")
    });
    let e = UNet2DConditionModel::load(&dir, &dev)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "missing weight `up_blocks.1.attentions.1.transformer_blocks.0.attn2.to_k.weight`"
        ),
        "{e}"
    );
    let dir = edited_sd1("unused", |t| {
        t.push((
            "mid_block.resnets.2.norm1.weight".into(),
            HostTensor::new(vec![1], vec![0.0]),
        ))
    });
    let e = UNet2DConditionModel::load(&dir, &dev)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("1 unused") && e.contains("mid_block.resnets.2.norm1.weight"),
        "{e}"
    );
    let dir = edited_sd1("shape", |_| {});
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    cfg["cross_attention_dim"] = serde_json::json!(16);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let e = UNet2DConditionModel::load(&dir, &dev)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("attn2.to_k.weight") && e.contains("[8, 12]") && e.contains("[8, 16]"),
        "{e}"
    );
}

#[test]
fn tiny_ldm_file_needs_its_config_for_the_head_count() {
    let dev = test_device();
    let dir = fixture("unet_sd1_inpaint_ldm_tiny");
    let file = dir.join("sd15_inpaint_tiny.safetensors");
    // 8-channel levels fit neither SD head rule, so inference asks for the config.
    let e = UNet2DConditionModel::load(&file, &dev)
        .unwrap_err()
        .to_string();
    assert!(e.contains("head count") && e.contains("config.json"), "{e}");
    // A folder of config.json + LDM file loads, and non-UNet tensors are left alone.
    let copy = temp_dir("ldm-folder");
    std::fs::copy(dir.join("config.json"), copy.join("config.json")).unwrap();
    std::fs::copy(&file, copy.join("model.safetensors")).unwrap();
    let m = UNet2DConditionModel::load(&copy, &dev).unwrap();
    assert_eq!(m.config.in_channels, 9);
    // A diffusers file given alone is refused with a hint.
    let e = UNet2DConditionModel::load(
        &fixture("unet_sd1_tiny").join("diffusion_pytorch_model.safetensors"),
        &dev,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("config.json"), "{e}");
}

fn randn<const D: usize>(shape: [usize; D], seed: u32) -> Tensor<D> {
    let n: usize = shape.iter().product();
    let data: Vec<f32> = (0..n)
        .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    Tensor::from_data(TensorData::new(data, shape), &test_device())
}

#[test]
fn forward_checks_its_inputs_and_broadcasts_one_timestep() {
    let dev = test_device();
    let m = UNet2DConditionModel::load(&fixture("unet_sd1_tiny"), &dev).unwrap();
    let x = randn([2, 4, 8, 8], 1);
    let ctx = randn([2, 3, 12], 2);
    let one = to_host(m.forward(x.clone(), &[500.0], ctx.clone(), None).unwrap());
    let two = to_host(
        m.forward(x.clone(), &[500.0, 500.0], ctx.clone(), None)
            .unwrap(),
    );
    assert_eq!(one, two);
    assert_eq!(one.shape, [2, 4, 8, 8]);
    for (e, needle) in [
        (
            m.forward(x.clone(), &[1.0, 2.0, 3.0], ctx.clone(), None),
            "3 UNet timesteps for batch 2",
        ),
        (
            m.forward(x.clone(), &[1.0], randn([2, 3, 16], 3), None),
            "16 wide",
        ),
        (
            m.forward(x.clone(), &[1.0], randn([1, 3, 12], 3), None),
            "batch 1",
        ),
        (
            m.forward(randn([2, 9, 8, 8], 4), &[1.0], ctx.clone(), None),
            "9 channels",
        ),
    ] {
        let e = e.unwrap_err().to_string();
        assert!(e.contains(needle), "{e}");
    }

    let xl = UNet2DConditionModel::load(&fixture("unet_sdxl_tiny"), &dev).unwrap();
    let ctx = randn([2, 3, 16], 5);
    let e = xl
        .forward(x.clone(), &[1.0], ctx.clone(), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("text_embeds and time_ids"), "{e}");
    let added = AddedCondition {
        text_embeds: randn([2, 8], 6),
        time_ids: randn([2, 5], 7),
    };
    let e = xl
        .forward(x.clone(), &[1.0], ctx.clone(), Some(added))
        .unwrap_err()
        .to_string();
    assert!(e.contains("expects 32"), "{e}");
    let added = AddedCondition {
        text_embeds: randn([2, 8], 6),
        time_ids: randn([2, 6], 7),
    };
    assert!(xl.forward(x, &[1.0], ctx, Some(added)).is_ok());
}

#[test]
fn device_timestep_embedding_matches_the_host_one() {
    let dev = test_device();
    let t = [0.0f32, 1.5, 999.0, 1024.0, 37.25];
    for (dim, flip, shift) in [(8, true, 0.0), (7, false, 1.0), (256, true, 0.0)] {
        let host = to_host(timestep_embedding(&t, dim, flip, shift, &dev));
        let tt: Tensor<1> = Tensor::from_data(TensorData::new(t.to_vec(), [t.len()]), &dev);
        let device = to_host(timestep_embedding_tensor(tt, dim, flip, shift));
        assert_eq!(host.shape, device.shape);
        let worst = host
            .data
            .iter()
            .zip(&device.data)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-6, "dim {dim}: {worst}");
    }
}
