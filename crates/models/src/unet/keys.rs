//! The original LDM / SGM single-file layout of the SD UNet (keys under
//! `model.diffusion_model.`), mapped from our diffusers parameter names exactly as diffusers
//! `loaders/single_file_utils.py::convert_ldm_unet_checkpoint` maps the other way, plus inference
//! of the config from the keys and shapes (the rules of `create_unet_diffusers_config_from_ldm`,
//! read from the weights instead of the original YAML).
//!
//! | diffusers (ours)                                   | LDM                                         |
//! |----------------------------------------------------|---------------------------------------------|
//! | `conv_in`                                          | `input_blocks.0.0`                          |
//! | `time_embedding.linear_1` / `linear_2`             | `time_embed.0` / `time_embed.2`             |
//! | `add_embedding.linear_1` / `linear_2` (SDXL)       | `label_emb.0.0` / `label_emb.0.2`           |
//! | `down_blocks.b.resnets.j`                          | `input_blocks.i.0`, i = 1 + Σ(L+1) + j       |
//! | `down_blocks.b.attentions.j`                       | `input_blocks.i.1`                          |
//! | `down_blocks.b.downsamplers.0.conv`                | `input_blocks.i.0.op`, i after the resnets  |
//! | `mid_block.resnets.0` / `attentions.0` / `resnets.1` | `middle_block.0` / `.1` / `.2`            |
//! | `up_blocks.u.resnets.j` / `attentions.j`           | `output_blocks.o.0` / `output_blocks.o.1`, o = Σ(L+1) + j |
//! | `up_blocks.u.upsamplers.0.conv`                    | `output_blocks.o.1.conv` (`.2.conv` after an attention), last j |
//! | `conv_norm_out` / `conv_out`                       | `out.0` / `out.2`                           |
//! | resnet `norm1, conv1, time_emb_proj, norm2, conv2, conv_shortcut` | `in_layers.0, in_layers.2, emb_layers.1, out_layers.0, out_layers.3, skip_connection` |
//!
//! Inside an attention (`norm`, `proj_in`, `transformer_blocks.k.*`, `proj_out`) the names are
//! the same in both layouts.

use std::path::Path;

use dreamforge_core::{Error, KeyMap, KeySource, Result, WeightSet};

use super::config::{DownBlockType, MidBlockType, OneOrMany, UNet2DConditionConfig, UpBlockType};

/// The prefix of the UNet's tensors in an LDM / SGM checkpoint.
pub const LDM_PREFIX: &str = "model.diffusion_model.";

const LDM_MARKER: &str = "input_blocks.0.0.weight";

/// (ours, LDM) names of a resnet's parts.
const RESNET_PARTS: &[(&str, &str)] = &[
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("time_emb_proj", "emb_layers.1"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("conv_shortcut", "skip_connection"),
];

/// The prefix under which `set` holds an LDM UNet: `model.diffusion_model.` (full checkpoints)
/// or none (UNet-only LDM files).
pub fn ldm_prefix(set: &WeightSet) -> Option<&'static str> {
    [LDM_PREFIX, ""]
        .into_iter()
        .find(|p| set.contains(&format!("{p}{LDM_MARKER}")))
}

/// True when the set holds an LDM-layout UNet (`model.diffusion_model.input_blocks.0.0.weight`,
/// or the same without the prefix).
pub fn is_ldm_unet(set: &WeightSet) -> bool {
    ldm_prefix(set).is_some()
}

/// Parameter names (suffixes) of one `Transformer2DModel` with `layers` blocks.
fn attention_params(layers: usize) -> Vec<String> {
    let mut out = Vec::new();
    for n in ["norm", "proj_in", "proj_out"] {
        out.push(format!("{n}.weight"));
        out.push(format!("{n}.bias"));
    }
    for k in 0..layers {
        let b = format!("transformer_blocks.{k}");
        for n in ["norm1", "norm2", "norm3", "ff.net.0.proj", "ff.net.2"] {
            out.push(format!("{b}.{n}.weight"));
            out.push(format!("{b}.{n}.bias"));
        }
        for a in ["attn1", "attn2"] {
            for p in ["to_q", "to_k", "to_v"] {
                out.push(format!("{b}.{a}.{p}.weight"));
            }
            out.push(format!("{b}.{a}.to_out.0.weight"));
            out.push(format!("{b}.{a}.to_out.0.bias"));
        }
    }
    out
}

struct MapBuilder(KeyMap);

impl MapBuilder {
    /// `ours.{weight,bias}` → `theirs.{weight,bias}`.
    fn wb(&mut self, ours: &str, theirs: &str) {
        for s in ["weight", "bias"] {
            self.0.insert(
                format!("{ours}.{s}"),
                KeySource::whole(format!("{theirs}.{s}")),
            );
        }
    }

    fn resnet(&mut self, ours: &str, theirs: &str) {
        for (o, t) in RESNET_PARTS {
            self.wb(&format!("{ours}.{o}"), &format!("{theirs}.{t}"));
        }
    }

    fn attention(&mut self, ours: &str, theirs: &str, layers: usize) {
        for p in attention_params(layers) {
            self.0.insert(
                format!("{ours}.{p}"),
                KeySource::whole(format!("{theirs}.{p}")),
            );
        }
    }
}

/// diffusers parameter name → LDM key (without the `model.diffusion_model.` prefix; the loader
/// adds it with `WeightLoader::with_prefix`), for every parameter the config implies.
pub fn ldm_key_map(cfg: &UNet2DConditionConfig) -> KeyMap {
    let n = cfg.levels();
    let mut m = MapBuilder(KeyMap::new());
    m.wb("conv_in", "input_blocks.0.0");
    m.wb("time_embedding.linear_1", "time_embed.0");
    m.wb("time_embedding.linear_2", "time_embed.2");
    m.wb("add_embedding.linear_1", "label_emb.0.0");
    m.wb("add_embedding.linear_2", "label_emb.0.2");
    m.wb("conv_norm_out", "out.0");
    m.wb("conv_out", "out.2");

    let mut i = 1;
    for b in 0..n {
        let attn = cfg.down_block_types[b]
            .has_attention()
            .then(|| cfg.down_transformer_layers(b));
        for j in 0..cfg.layers(b) {
            m.resnet(
                &format!("down_blocks.{b}.resnets.{j}"),
                &format!("input_blocks.{i}.0"),
            );
            if let Some(layers) = &attn {
                m.attention(
                    &format!("down_blocks.{b}.attentions.{j}"),
                    &format!("input_blocks.{i}.1"),
                    layers[j],
                );
            }
            i += 1;
        }
        if b + 1 < n {
            m.wb(
                &format!("down_blocks.{b}.downsamplers.0.conv"),
                &format!("input_blocks.{i}.0.op"),
            );
            i += 1;
        }
    }

    m.resnet("mid_block.resnets.0", "middle_block.0");
    m.attention(
        "mid_block.attentions.0",
        "middle_block.1",
        cfg.mid_transformer_layers(),
    );
    m.resnet("mid_block.resnets.1", "middle_block.2");

    let mut o = 0;
    for u in 0..n {
        let attn = cfg.up_block_types[u]
            .has_attention()
            .then(|| cfg.up_transformer_layers(u));
        let layers = cfg.layers(n - 1 - u) + 1;
        for j in 0..layers {
            m.resnet(
                &format!("up_blocks.{u}.resnets.{j}"),
                &format!("output_blocks.{o}.0"),
            );
            if let Some(t) = &attn {
                m.attention(
                    &format!("up_blocks.{u}.attentions.{j}"),
                    &format!("output_blocks.{o}.1"),
                    t[j],
                );
            }
            if j + 1 == layers && u + 1 < n {
                let slot = if attn.is_some() { 2 } else { 1 };
                m.wb(
                    &format!("up_blocks.{u}.upsamplers.0.conv"),
                    &format!("output_blocks.{o}.{slot}.conv"),
                );
            }
            o += 1;
        }
    }
    m.0
}

/// What the attention at one LDM block position looks like.
struct AttnInfo {
    layers: usize,
    cross_dim: usize,
    linear: bool,
}

/// Reads keys and shapes relative to the UNet prefix.
struct Shapes<'a> {
    origin: &'a Path,
    prefix: &'a str,
    shape: &'a dyn Fn(&str) -> Option<Vec<usize>>,
}

impl Shapes<'_> {
    fn get(&self, key: &str) -> Option<Vec<usize>> {
        (self.shape)(&format!("{}{key}", self.prefix))
    }

    fn need(&self, key: &str) -> Result<Vec<usize>> {
        self.get(key).ok_or_else(|| Error::MissingKey {
            path: self.origin.to_path_buf(),
            key: format!("{}{key}", self.prefix),
            hint: Some("needed to infer the UNet config from an LDM checkpoint".into()),
        })
    }

    fn dim(&self, key: &str, axis: usize) -> Result<usize> {
        let s = self.need(key)?;
        s.get(axis).copied().ok_or_else(|| {
            Error::format(
                self.origin,
                format!(
                    "`{}{key}` has shape {s:?}, expected at least {} dims",
                    self.prefix,
                    axis + 1
                ),
            )
        })
    }

    /// The attention at `block` (`input_blocks.3.1`, `middle_block.1`, ...), if any.
    fn attention(&self, block: &str) -> Result<Option<AttnInfo>> {
        let Some(proj) = self.get(&format!("{block}.proj_in.weight")) else {
            return Ok(None);
        };
        let mut layers = 0;
        while self
            .get(&format!(
                "{block}.transformer_blocks.{layers}.attn1.to_q.weight"
            ))
            .is_some()
        {
            layers += 1;
        }
        if layers == 0 {
            return Err(Error::format(
                self.origin,
                format!(
                    "{}{block} has a proj_in but no transformer_blocks",
                    self.prefix
                ),
            ));
        }
        Ok(Some(AttnInfo {
            layers,
            cross_dim: self.dim(
                &format!("{block}.transformer_blocks.0.attn2.to_k.weight"),
                1,
            )?,
            linear: proj.len() == 2,
        }))
    }

    /// The output channels of the resnet at `block`, if there is one.
    fn resnet(&self, block: &str) -> Result<Option<usize>> {
        if self.get(&format!("{block}.in_layers.0.weight")).is_none() {
            return Ok(None);
        }
        Ok(Some(self.dim(&format!("{block}.out_layers.3.weight"), 0)?))
    }
}

/// One resolution level as read from the LDM blocks.
#[derive(Default)]
struct Level {
    channels: usize,
    resnets: usize,
    /// Transformer layers per resnet (down path); empty without attention.
    down_attn: Vec<usize>,
    /// Transformer layers per resnet (up path); empty without attention.
    up_attn: Vec<usize>,
}

/// One count per level when every layer of the level agrees, else per-layer lists.
fn collapse(v: &[usize]) -> OneOrMany<usize> {
    match v.first() {
        Some(&f) if v.iter().all(|&x| x == f) => OneOrMany::One(f),
        _ => OneOrMany::Many(v.to_vec()),
    }
}

fn collapse_levels<T: Clone + PartialEq>(v: Vec<T>) -> OneOrMany<T> {
    match v.first() {
        Some(f) if v.iter().all(|x| x == f) => OneOrMany::One(f.clone()),
        _ => OneOrMany::Many(v),
    }
}

/// Everything the weights determine: channels, levels, resnets per level, which levels attend,
/// transformer depths, text width, projection kind, the SDXL `text_time` embedding, in/out
/// channels and kernels. What weights cannot tell is set to the SD defaults (GroupNorm 32,
/// `flip_sin_to_cos`, no shift, `addition_time_embed_dim` 256) and the head count to one per
/// level; [`infer_ldm_config`] adds the head counts by the SD rules.
pub fn infer_ldm_structure(set: &WeightSet) -> Result<UNet2DConditionConfig> {
    let prefix = ldm_prefix(set).ok_or_else(|| {
        Error::format(
            set.origin(),
            format!("not an LDM UNet checkpoint: no `{LDM_PREFIX}{LDM_MARKER}`"),
        )
    })?;
    let shape = |k: &str| set.shape(k).map(<[usize]>::to_vec);
    infer_from_shapes(set.origin(), prefix, &shape)
}

/// [`infer_ldm_structure`] plus the head counts (which no weight shape reveals), by the rules
/// diffusers' own LDM configs follow: SD1.x (768-wide text, 1x1-conv projections) uses 8 heads at
/// every level; SD2.x and SDXL use 64-channel heads (`attention_head_dim` = channels / 64 per
/// level). A UNet outside both rules is a config error asking for a config.
pub fn infer_ldm_config(set: &WeightSet) -> Result<UNet2DConditionConfig> {
    let mut cfg = infer_ldm_structure(set)?;
    apply_head_rule(&mut cfg).map_err(|r| Error::config(set.origin(), r))?;
    cfg.validate().map_err(|r| Error::config(set.origin(), r))?;
    Ok(cfg)
}

/// Sets `attention_head_dim` by the SD1 / SD2+SDXL rules (see [`infer_ldm_config`]).
pub(crate) fn apply_head_rule(cfg: &mut UNet2DConditionConfig) -> std::result::Result<(), String> {
    let n = cfg.levels();
    if cfg.cross_attention_dim == OneOrMany::One(768) && !cfg.use_linear_projection {
        cfg.attention_head_dim = OneOrMany::One(8);
        return Ok(());
    }
    let attends = |i: usize| {
        cfg.down_block_types[i].has_attention()
            || cfg.up_block_types[n - 1 - i].has_attention()
            || (i + 1 == n && cfg.mid_block_type.is_some())
    };
    let off_grid = |i: usize| !cfg.block_out_channels[i].is_multiple_of(64);
    if let Some(i) = (0..n).find(|&i| attends(i) && off_grid(i)) {
        return Err(format!(
            "cannot infer the attention head count: level {i} has {} channels, not a multiple of the 64-channel heads of SD2 / SDXL (and the UNet is not SD1-shaped); pass the model's config.json",
            cfg.block_out_channels[i]
        ));
    }
    cfg.attention_head_dim = OneOrMany::Many(
        cfg.block_out_channels
            .iter()
            .map(|c| (c / 64).max(1))
            .collect(),
    );
    Ok(())
}

/// [`infer_ldm_structure`] over any key → shape lookup (keys carry `prefix`).
pub(crate) fn infer_from_shapes(
    origin: &Path,
    prefix: &str,
    shape: &dyn Fn(&str) -> Option<Vec<usize>>,
) -> Result<UNet2DConditionConfig> {
    let s = Shapes {
        origin,
        prefix,
        shape,
    };
    let bad = |msg: String| Error::format(origin, format!("LDM UNet checkpoint: {msg}"));
    let conv_in = s.need("input_blocks.0.0.weight")?;
    let conv_out = s.need("out.2.weight")?;
    if conv_in.len() != 4 || conv_out.len() != 4 {
        return Err(bad(format!(
            "conv_in {conv_in:?} / conv_out {conv_out:?} are not 4-D convs"
        )));
    }

    // Every attention's text width and projection kind, checked for agreement below.
    let mut attn_info: Vec<AttnInfo> = Vec::new();

    // Down path: resnets (+ attention) per level, a downsampler `op` between levels.
    let mut levels: Vec<Level> = Vec::new();
    let mut cur = Level::default();
    let mut i = 1;
    loop {
        if s.get(&format!("input_blocks.{i}.0.op.weight")).is_some() {
            if cur.resnets == 0 {
                return Err(bad(format!(
                    "input_blocks.{i} downsamples a level without resnets"
                )));
            }
            levels.push(std::mem::take(&mut cur));
        } else if let Some(c) = s.resnet(&format!("input_blocks.{i}.0"))? {
            if cur.resnets > 0 && c != cur.channels {
                return Err(bad(format!(
                    "input_blocks.{i} has {c} channels inside a {}-channel level",
                    cur.channels
                )));
            }
            cur.channels = c;
            cur.resnets += 1;
            if let Some(a) = s.attention(&format!("input_blocks.{i}.1"))? {
                cur.down_attn.push(a.layers);
                attn_info.push(a);
            }
        } else {
            break;
        }
        i += 1;
    }
    if cur.resnets == 0 {
        return Err(bad("no resnets found after the last downsampler".into()));
    }
    levels.push(cur);
    let n = levels.len();

    let mut note = |a: AttnInfo| -> usize {
        let l = a.layers;
        attn_info.push(a);
        l
    };
    for (b, lv) in levels.iter().enumerate() {
        if !lv.down_attn.is_empty() && lv.down_attn.len() != lv.resnets {
            return Err(bad(format!(
                "level {b}: {} of {} resnets have an attention",
                lv.down_attn.len(),
                lv.resnets
            )));
        }
    }

    // Middle block.
    let mid = match s.resnet("middle_block.0")? {
        None => None,
        Some(_) => match s.attention("middle_block.1")? {
            Some(a) => Some(note(a)),
            None => {
                return Err(bad(
                    "a middle block without attention (UNetMidBlock2D) is not supported".into(),
                ));
            }
        },
    };

    // Up path: level n−1−u has its down count + 1 resnets.
    let mut o = 0;
    for u in 0..n {
        let lv = n - 1 - u;
        for j in 0..levels[lv].resnets + 1 {
            if s.resnet(&format!("output_blocks.{o}.0"))?.is_none() {
                return Err(bad(format!(
                    "output_blocks.{o} (up block {u}, resnet {j}) is missing or not a resnet"
                )));
            }
            if let Some(a) = s.attention(&format!("output_blocks.{o}.1"))? {
                let l = note(a);
                levels[lv].up_attn.push(l);
            }
            o += 1;
        }
        let lvl = &levels[lv];
        if !lvl.up_attn.is_empty() && lvl.up_attn.len() != lvl.resnets + 1 {
            return Err(bad(format!(
                "up block {u}: {} of {} resnets have an attention",
                lvl.up_attn.len(),
                lvl.resnets + 1
            )));
        }
    }
    if s.get(&format!("output_blocks.{o}.0.in_layers.0.weight"))
        .is_some()
    {
        return Err(bad(format!(
            "output_blocks.{o} is beyond the {n} levels the input blocks define"
        )));
    }

    // Text width and projection kind must agree across every attention.
    let cross_dim = match attn_info.first() {
        Some(a) => {
            if let Some(b) = attn_info.iter().find(|b| b.cross_dim != a.cross_dim) {
                return Err(bad(format!(
                    "attentions disagree on the text width ({} vs {})",
                    a.cross_dim, b.cross_dim
                )));
            }
            a.cross_dim
        }
        None => 768,
    };
    let linear = attn_info.first().is_some_and(|a| a.linear);
    if attn_info.iter().any(|a| a.linear != linear) {
        return Err(bad(
            "attentions mix linear and 1x1-conv proj_in / proj_out".into()
        ));
    }

    let (transformer_layers_per_block, reverse) = transformer_layers(&levels, mid).map_err(bad)?;

    let c0 = conv_in[0];
    let temb = s.dim("time_embed.0.weight", 0)?;
    let text_time = match s.get("label_emb.0.0.weight") {
        Some(shape) if shape.len() == 2 => Some(shape[1]),
        Some(shape) => return Err(bad(format!("label_emb.0.0.weight has shape {shape:?}"))),
        None => None,
    };

    let mut cfg = UNet2DConditionConfig {
        sample_size: Some(OneOrMany::One(if text_time.is_some() { 128 } else { 64 })),
        in_channels: conv_in[1],
        out_channels: conv_out[0],
        down_block_types: levels
            .iter()
            .map(|l| {
                if l.down_attn.is_empty() {
                    DownBlockType::DownBlock2D
                } else {
                    DownBlockType::CrossAttnDownBlock2D
                }
            })
            .collect(),
        mid_block_type: mid.map(|_| MidBlockType::UNetMidBlock2DCrossAttn),
        up_block_types: levels
            .iter()
            .rev()
            .map(|l| {
                if l.up_attn.is_empty() {
                    UpBlockType::UpBlock2D
                } else {
                    UpBlockType::CrossAttnUpBlock2D
                }
            })
            .collect(),
        block_out_channels: levels.iter().map(|l| l.channels).collect(),
        layers_per_block: collapse_levels(levels.iter().map(|l| l.resnets).collect()),
        cross_attention_dim: OneOrMany::One(cross_dim),
        transformer_layers_per_block,
        reverse_transformer_layers_per_block: reverse,
        attention_head_dim: OneOrMany::Many(vec![1; n]),
        use_linear_projection: linear,
        time_embedding_dim: (temb != 4 * c0).then_some(temb),
        conv_in_kernel: conv_in[2],
        conv_out_kernel: conv_out[2],
        ..UNet2DConditionConfig::default()
    };
    if let Some(p) = text_time {
        cfg.addition_embed_type = Some("text_time".into());
        cfg.addition_time_embed_dim = Some(256);
        cfg.projection_class_embeddings_input_dim = Some(p);
    }
    if levels[0].channels != c0 {
        return Err(bad(format!(
            "conv_in has {c0} output channels but the first level has {}",
            levels[0].channels
        )));
    }
    Ok(cfg)
}

/// `transformer_layers_per_block` (and, for asymmetric UNets, the reverse list) for the levels
/// read from the checkpoint. Levels without attention get 1 (the last one the mid block's depth,
/// which upstream takes from the last entry).
#[allow(clippy::type_complexity)]
fn transformer_layers(
    levels: &[Level],
    mid: Option<usize>,
) -> std::result::Result<(OneOrMany<OneOrMany<usize>>, Option<Vec<OneOrMany<usize>>>), String> {
    let n = levels.len();
    let filler = |i: usize| if i + 1 == n { mid.unwrap_or(1) } else { 1 };
    // Symmetric form: one count per level shared by the down and up path.
    let simple: Option<Vec<usize>> = (0..n)
        .map(|i| {
            let l = &levels[i];
            let down = collapse(&l.down_attn);
            let up = collapse(&l.up_attn);
            let v = match (l.down_attn.is_empty(), l.up_attn.is_empty(), down, up) {
                (true, true, ..) => filler(i),
                (false, true, OneOrMany::One(d), _) => d,
                (true, false, _, OneOrMany::One(u)) => u,
                (false, false, OneOrMany::One(d), OneOrMany::One(u)) if d == u => d,
                _ => return None,
            };
            (i + 1 != n || mid.is_none_or(|m| m == v)).then_some(v)
        })
        .collect();
    if let Some(v) = simple {
        let per_level = collapse_levels(v.into_iter().map(OneOrMany::One).collect());
        return Ok((per_level, None));
    }
    // Asymmetric form: per-layer lists for both paths.
    let down: Vec<OneOrMany<usize>> = (0..n)
        .map(|i| {
            let l = &levels[i];
            if l.down_attn.is_empty() {
                OneOrMany::Many(vec![filler(i); l.resnets])
            } else {
                OneOrMany::Many(l.down_attn.clone())
            }
        })
        .collect();
    if let (Some(m), OneOrMany::Many(last)) = (mid, &down[n - 1])
        && last.first() != Some(&m)
    {
        return Err(format!(
            "the mid block has {m} transformer layers but the last level's first has {:?}; upstream cannot express that",
            last.first()
        ));
    }
    let reverse = (0..n)
        .rev()
        .map(|i| {
            let l = &levels[i];
            if l.up_attn.is_empty() {
                OneOrMany::Many(vec![1; l.resnets + 1])
            } else {
                OneOrMany::Many(l.up_attn.clone())
            }
        })
        .collect();
    Ok((OneOrMany::Many(down), Some(reverse)))
}
