//! Criterion benches of the Stable Diffusion UNet on the CPU, f32: `ResnetBlock2D` with a
//! timestep embedding, `Transformer2DModel` (spatial transformer with self- and cross-attention)
//! and one full `UNet2DConditionModel` forward with the SD1.5 config, plus a square f32 matmul
//! as the machine's measured peak. Weights are random (seeded), written as F16 safetensors and
//! loaded through the real loaders (`ResnetBlock2D::load`, `Transformer2DModel::load`,
//! `UNet2DConditionModel::from_weights`, strict: every written key must be consumed), all under
//! `target/bench-weights/`: the blocks' small file on every run, the full UNet's (~1.7 GB for
//! SD1.5) once, then reused. `tools/bench/compare.py --suite unet` times the same units in
//! PyTorch / diffusers with the same weight files (strict `load_state_dict`).
//!
//! Each run also writes `target/criterion/unet_blocks_cases.json`: per case its criterion id,
//! analytic FLOPs (multiply-add = 2), parameter count and input + output activation bytes.
//!
//! Environment (defaults are SD1.5 at 512 px for the blocks, a 256-px CFG step for the UNet):
//! - `DREAMFORGE_BENCH_UNET_RESNETS`: `CxS` list, channels × square side (`320x64,640x32`)
//! - `DREAMFORGE_BENCH_UNET_TEMB`: timestep-embedding width of the resnets (1280)
//! - `DREAMFORGE_BENCH_UNET_TRANSFORMERS`: `C:heads:side:layers:context_dim:conv|linear` list
//!   (`320:8:64:1:768:conv,640:10:32:2:2048:linear`: SD1.5 level 1 and SDXL level 2)
//! - `DREAMFORGE_BENCH_UNET_TEXT`: context tokens (77)
//! - `DREAMFORGE_BENCH_UNET_CHANNELS`: the UNet's `block_out_channels` (`320,640,1280,1280`;
//!   `none` skips the full UNet)
//! - `DREAMFORGE_BENCH_UNET_SIDE` (32), `DREAMFORGE_BENCH_UNET_BATCH` (2),
//!   `DREAMFORGE_BENCH_UNET_CROSS` (768), `DREAMFORGE_BENCH_UNET_HEADS` (8): latent side, batch,
//!   `cross_attention_dim`, `attention_head_dim` (= heads for SD1.x)
//! - `DREAMFORGE_BENCH_UNET_MATMUL`: side of the peak matmul (2048)
//! - `DREAMFORGE_BENCH_UNET_BLOCK_BATCH`: batch of the block benches (1)
//!
//! Sampling: 10 samples in criterion's flat mode (one or more iterations each, the same count in
//! every sample), so the full UNet costs about 10 forwards + one warm-up.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

use burn::tensor::{Device, Distribution, Tensor};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use safetensors::{Dtype, tensor::TensorView};

use dreamforge::core::{WeightLoader, WeightSet, noise::randn};
use dreamforge::models::unet::resnet::{ResnetBlock2D, ResnetSpec};
use dreamforge::models::unet::transformer::{Transformer2DModel, TransformerSpec};
use dreamforge::models::unet::{OneOrMany, UNet2DConditionConfig, UNet2DConditionModel};

const GROUPS: usize = 32;
const RESNET_EPS: f64 = 1e-5;

fn env_str(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

fn list(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|p| !p.is_empty())
}

fn parse_num(s: &str, what: &str) -> usize {
    s.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{what}: `{s}` is not a number"))
}

/// One `ResnetBlock2D` case: `channels → channels` at `side × side`.
#[derive(Debug, Clone, Copy)]
struct ResnetCase {
    channels: usize,
    side: usize,
}

impl ResnetCase {
    fn parse(s: &str) -> Self {
        let (c, side) = s
            .split_once('x')
            .unwrap_or_else(|| panic!("resnet case `{s}`: expected CxS"));
        Self {
            channels: parse_num(c, "resnet channels"),
            side: parse_num(side, "resnet side"),
        }
    }

    fn name(&self) -> String {
        format!("c{}_s{}", self.channels, self.side)
    }
}

/// One `Transformer2DModel` case.
#[derive(Debug, Clone, Copy)]
struct TransformerCase {
    channels: usize,
    heads: usize,
    side: usize,
    layers: usize,
    context_dim: usize,
    linear: bool,
}

impl TransformerCase {
    fn parse(s: &str) -> Self {
        let f: Vec<&str> = s.split(':').map(str::trim).collect();
        assert!(
            f.len() == 6 && (f[5] == "conv" || f[5] == "linear"),
            "transformer case `{s}`: expected C:heads:side:layers:context_dim:conv|linear"
        );
        Self {
            channels: parse_num(f[0], "transformer channels"),
            heads: parse_num(f[1], "transformer heads"),
            side: parse_num(f[2], "transformer side"),
            layers: parse_num(f[3], "transformer layers"),
            context_dim: parse_num(f[4], "transformer context_dim"),
            linear: f[5] == "linear",
        }
    }

    fn name(&self) -> String {
        format!(
            "c{}_h{}_s{}_l{}_x{}_{}",
            self.channels,
            self.heads,
            self.side,
            self.layers,
            self.context_dim,
            if self.linear { "linear" } else { "conv" }
        )
    }

    fn spec(&self) -> TransformerSpec {
        TransformerSpec {
            heads: self.heads,
            cross_dim: self.context_dim,
            only_cross: false,
            layers: self.layers,
            linear_projection: self.linear,
            groups: GROUPS,
        }
    }
}

/// Parameter names and shapes (PyTorch layout, diffusers names).
#[derive(Default)]
struct Shapes(Vec<(String, Vec<usize>)>);

impl Shapes {
    fn put(&mut self, name: String, shape: Vec<usize>) {
        self.0.push((name, shape));
    }

    fn norm(&mut self, p: &str, c: usize) {
        self.put(format!("{p}.weight"), vec![c]);
        self.put(format!("{p}.bias"), vec![c]);
    }

    fn linear(&mut self, p: &str, d_in: usize, d_out: usize, bias: bool) {
        self.put(format!("{p}.weight"), vec![d_out, d_in]);
        if bias {
            self.put(format!("{p}.bias"), vec![d_out]);
        }
    }

    fn conv(&mut self, p: &str, c_in: usize, c_out: usize, k: usize) {
        self.put(format!("{p}.weight"), vec![c_out, c_in, k, k]);
        self.put(format!("{p}.bias"), vec![c_out]);
    }

    fn resnet(&mut self, p: &str, c_in: usize, c_out: usize, temb: usize) {
        self.norm(&format!("{p}.norm1"), c_in);
        self.conv(&format!("{p}.conv1"), c_in, c_out, 3);
        self.linear(&format!("{p}.time_emb_proj"), temb, c_out, true);
        self.norm(&format!("{p}.norm2"), c_out);
        self.conv(&format!("{p}.conv2"), c_out, c_out, 3);
        if c_in != c_out {
            self.conv(&format!("{p}.conv_shortcut"), c_in, c_out, 1);
        }
    }

    fn attention(&mut self, p: &str, c: usize, kv: usize) {
        self.linear(&format!("{p}.to_q"), c, c, false);
        self.linear(&format!("{p}.to_k"), kv, c, false);
        self.linear(&format!("{p}.to_v"), kv, c, false);
        self.linear(&format!("{p}.to_out.0"), c, c, true);
    }

    fn transformer(&mut self, p: &str, c: usize, context: usize, layers: usize, linear: bool) {
        self.norm(&format!("{p}.norm"), c);
        for proj in ["proj_in", "proj_out"] {
            if linear {
                self.linear(&format!("{p}.{proj}"), c, c, true);
            } else {
                self.conv(&format!("{p}.{proj}"), c, c, 1);
            }
        }
        for k in 0..layers {
            let b = format!("{p}.transformer_blocks.{k}");
            for n in ["norm1", "norm2", "norm3"] {
                self.norm(&format!("{b}.{n}"), c);
            }
            self.attention(&format!("{b}.attn1"), c, c);
            self.attention(&format!("{b}.attn2"), c, context);
            self.linear(&format!("{b}.ff.net.0.proj"), c, 8 * c, true);
            self.linear(&format!("{b}.ff.net.2"), 4 * c, c, true);
        }
    }

    fn params(&self) -> usize {
        self.0
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }
}

/// The diffusers parameter list of a `UNet2DConditionModel` (SD1.x / SD2.x structure: the
/// config's block types, `transformer_layers_per_block` 1, no SDXL `add_embedding`).
fn unet_shapes(c: &UNet2DConditionConfig) -> Shapes {
    let n = c.levels();
    let ch = &c.block_out_channels;
    let temb = c.time_embed_dim();
    let linear = c.use_linear_projection;
    let mut s = Shapes::default();
    s.conv("conv_in", c.in_channels, ch[0], c.conv_in_kernel);
    s.linear("time_embedding.linear_1", ch[0], temb, true);
    s.linear("time_embedding.linear_2", temb, temb, true);
    for b in 0..n {
        let p = format!("down_blocks.{b}");
        let c_in = if b == 0 { ch[0] } else { ch[b - 1] };
        for j in 0..c.layers(b) {
            let cin = if j == 0 { c_in } else { ch[b] };
            s.resnet(&format!("{p}.resnets.{j}"), cin, ch[b], temb);
            if c.down_block_types[b].has_attention() {
                let t = c.down_transformer_layers(b)[j];
                s.transformer(
                    &format!("{p}.attentions.{j}"),
                    ch[b],
                    c.cross_dim(b),
                    t,
                    linear,
                );
            }
        }
        if b + 1 < n {
            s.conv(&format!("{p}.downsamplers.0.conv"), ch[b], ch[b], 3);
        }
    }
    if c.mid_block_type.is_some() {
        let m = ch[n - 1];
        s.resnet("mid_block.resnets.0", m, m, temb);
        s.transformer(
            "mid_block.attentions.0",
            m,
            c.cross_dim(n - 1),
            c.mid_transformer_layers(),
            linear,
        );
        s.resnet("mid_block.resnets.1", m, m, temb);
    }
    for u in 0..n {
        let level = n - 1 - u;
        let p = format!("up_blocks.{u}");
        let c_out = ch[level];
        let c_prev = if u == 0 { ch[n - 1] } else { ch[level + 1] };
        let c_in = ch[level.saturating_sub(1)];
        let layers = c.layers(level) + 1;
        for j in 0..layers {
            let res_in = if j == 0 { c_prev } else { c_out };
            let skip = if j + 1 == layers { c_in } else { c_out };
            s.resnet(&format!("{p}.resnets.{j}"), res_in + skip, c_out, temb);
            if c.up_block_types[u].has_attention() {
                let t = c.up_transformer_layers(u)[j];
                s.transformer(
                    &format!("{p}.attentions.{j}"),
                    c_out,
                    c.cross_dim(level),
                    t,
                    linear,
                );
            }
        }
        if u + 1 < n {
            s.conv(&format!("{p}.upsamplers.0.conv"), c_out, c_out, 3);
        }
    }
    s.norm("conv_norm_out", ch[0]);
    s.conv("conv_out", ch[0], c.out_channels, c.conv_out_kernel);
    s
}

/// Writes `shapes` as F16 safetensors: matrices and conv kernels N(0, 1/fan_in), norm scales
/// 1 + 0.1·N(0, 1), biases 0.1·N(0, 1); tensor `i` is drawn with seed `i`.
fn write_random_weights(path: &Path, shapes: &Shapes) {
    let bufs: Vec<(String, Vec<usize>, Vec<u8>)> = shapes
        .0
        .iter()
        .enumerate()
        .map(|(i, (name, shape))| {
            let n: usize = shape.iter().product();
            let fan_in: usize = shape[1..].iter().product();
            let (scale, offset) = match (shape.len(), name.ends_with(".weight")) {
                (1, true) => (0.1, 1.0),
                (1, false) => (0.1, 0.0),
                _ => (1.0 / (fan_in as f32).sqrt(), 0.0),
            };
            let bytes = randn(i as u64, &[n])
                .data
                .iter()
                .flat_map(|v| half::f16::from_f32(offset + scale * v).to_le_bytes())
                .collect();
            (name.clone(), shape.clone(), bytes)
        })
        .collect();
    let views: HashMap<String, TensorView> = bufs
        .iter()
        .map(|(k, s, b)| {
            (
                k.clone(),
                TensorView::new(Dtype::F16, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
}

/// FLOPs of one `ResnetBlock2D` forward (convs, time projection, 1x1 shortcut).
fn resnet_flops(b: usize, c_in: usize, c_out: usize, hw: usize, temb: usize) -> f64 {
    let (b, ci, co, hw, te) = (b as f64, c_in as f64, c_out as f64, hw as f64, temb as f64);
    let shortcut = if c_in != c_out {
        2.0 * ci * co * hw
    } else {
        0.0
    };
    b * (2.0 * ci * co * 9.0 * hw + 2.0 * co * co * 9.0 * hw + 2.0 * te * co + shortcut)
}

/// FLOPs of one `Transformer2DModel` forward over `s` tokens with `t` context tokens of width
/// `ctx`: proj_in/out, per block q/k/v/out of self-attention, QKᵀ + AV (4·S²·C), q/out of
/// cross-attention, k/v on the context, 4·S·T·C, GEGLU feed-forward (C→8C, 4C→C).
fn transformer_flops(b: usize, c: usize, s: usize, t: usize, ctx: usize, layers: usize) -> f64 {
    let (b, c, s, t, ctx) = (b as f64, c as f64, s as f64, t as f64, ctx as f64);
    let proj = 2.0 * 2.0 * c * c * s;
    let self_attn = 2.0 * 4.0 * c * c * s + 4.0 * s * s * c;
    let cross_attn = 2.0 * 2.0 * c * c * s + 2.0 * 2.0 * ctx * c * t + 4.0 * s * t * c;
    let ff = 2.0 * (8.0 * c * c + 4.0 * c * c) * s;
    b * (proj + layers as f64 * (self_attn + cross_attn + ff))
}

/// FLOPs of one full UNet forward at a `side × side` latent (side divisible by 2^(levels−1)).
fn unet_flops(c: &UNet2DConditionConfig, b: usize, side: usize, t: usize) -> f64 {
    let n = c.levels();
    let ch = &c.block_out_channels;
    let temb = c.time_embed_dim();
    let hw = |level: usize| (side >> level) * (side >> level);
    let conv = |ci: usize, co: usize, k: usize, hw: usize| (2 * b * ci * co * k * k * hw) as f64;
    let mut f = conv(c.in_channels, ch[0], c.conv_in_kernel, hw(0));
    f += (2 * b * (ch[0] * temb + temb * temb)) as f64;
    for l in 0..n {
        let c_in = if l == 0 { ch[0] } else { ch[l - 1] };
        for j in 0..c.layers(l) {
            let cin = if j == 0 { c_in } else { ch[l] };
            f += resnet_flops(b, cin, ch[l], hw(l), temb);
            if c.down_block_types[l].has_attention() {
                let k = c.down_transformer_layers(l)[j];
                f += transformer_flops(b, ch[l], hw(l), t, c.cross_dim(l), k);
            }
        }
        if l + 1 < n {
            f += conv(ch[l], ch[l], 3, hw(l + 1));
        }
    }
    if c.mid_block_type.is_some() {
        let m = ch[n - 1];
        f += 2.0 * resnet_flops(b, m, m, hw(n - 1), temb);
        let k = c.mid_transformer_layers();
        f += transformer_flops(b, m, hw(n - 1), t, c.cross_dim(n - 1), k);
    }
    for u in 0..n {
        let level = n - 1 - u;
        let c_out = ch[level];
        let c_prev = if u == 0 { ch[n - 1] } else { ch[level + 1] };
        let c_in = ch[level.saturating_sub(1)];
        let layers = c.layers(level) + 1;
        for j in 0..layers {
            let res_in = if j == 0 { c_prev } else { c_out };
            let skip = if j + 1 == layers { c_in } else { c_out };
            f += resnet_flops(b, res_in + skip, c_out, hw(level), temb);
            if c.up_block_types[u].has_attention() {
                let k = c.up_transformer_layers(u)[j];
                f += transformer_flops(b, c_out, hw(level), t, c.cross_dim(level), k);
            }
        }
        if u + 1 < n {
            f += conv(c_out, c_out, 3, hw(level - 1));
        }
    }
    f + conv(ch[0], c.out_channels, c.conv_out_kernel, hw(0))
}

/// The SD1.5 UNet config (diffusers' defaults with `cross_attention_dim` 768) with the given
/// widths.
fn unet_config(channels: Vec<usize>, cross: usize, heads: usize) -> UNet2DConditionConfig {
    let c = UNet2DConditionConfig {
        block_out_channels: channels,
        cross_attention_dim: OneOrMany::One(cross),
        attention_head_dim: OneOrMany::One(heads),
        ..UNet2DConditionConfig::default()
    };
    c.validate().unwrap();
    c
}

/// Loads the UNet from its cached random-weight file under `target/bench-weights/`, writing
/// the file first when it is missing or does not load.
fn load_unet(config: &UNet2DConditionConfig, device: &Device) -> UNet2DConditionModel {
    let ch = &config.block_out_channels;
    let tag = ch
        .iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join("-");
    let dir = target_dir().join("bench-weights");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!(
        "unet_c{tag}_x{}_h{}_f16.safetensors",
        config.cross_dim(0),
        config.heads(0)
    ));
    let load = || -> dreamforge::core::Result<UNet2DConditionModel> {
        let set = WeightSet::open(&path)?;
        UNet2DConditionModel::from_weights(&set, "", config.clone(), device)
    };
    if path.exists() {
        match load() {
            Ok(m) => return m,
            Err(e) => eprintln!("{}: {e}; rewriting it", path.display()),
        }
    }
    let shapes = unet_shapes(config);
    eprintln!(
        "writing {} random UNet parameters (F16) to {}",
        shapes.params(),
        path.display()
    );
    let tmp = path.with_extension("tmp");
    write_random_weights(&tmp, &shapes);
    std::fs::rename(&tmp, &path).unwrap();
    load().unwrap()
}

/// A criterion group of 10 flat samples (the same iteration count in each, at least one).
fn group<'a>(
    c: &'a mut Criterion,
    name: &str,
    measure_s: u64,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(measure_s));
    g
}

fn benches(c: &mut Criterion) {
    let device = dreamforge::core::test_device();
    let temb = env_usize("DREAMFORGE_BENCH_UNET_TEMB", 1280);
    let text = env_usize("DREAMFORGE_BENCH_UNET_TEXT", 77);
    let block_batch = env_usize("DREAMFORGE_BENCH_UNET_BLOCK_BATCH", 1);
    let resnets: Vec<ResnetCase> = list(&env_str("DREAMFORGE_BENCH_UNET_RESNETS", "320x64,640x32"))
        .map(ResnetCase::parse)
        .collect();
    let transformers: Vec<TransformerCase> = list(&env_str(
        "DREAMFORGE_BENCH_UNET_TRANSFORMERS",
        "320:8:64:1:768:conv,640:10:32:2:2048:linear",
    ))
    .map(TransformerCase::parse)
    .collect();
    let channels = env_str("DREAMFORGE_BENCH_UNET_CHANNELS", "320,640,1280,1280");
    let unet_channels: Option<Vec<usize>> = (channels.trim() != "none").then(|| {
        list(&channels)
            .map(|s| parse_num(s, "UNet channels"))
            .collect()
    });
    let side = env_usize("DREAMFORGE_BENCH_UNET_SIDE", 32);
    let batch = env_usize("DREAMFORGE_BENCH_UNET_BATCH", 2);
    let cross = env_usize("DREAMFORGE_BENCH_UNET_CROSS", 768);
    let heads = env_usize("DREAMFORGE_BENCH_UNET_HEADS", 8);
    let mm = env_usize("DREAMFORGE_BENCH_UNET_MATMUL", 2048);

    // Every case: (criterion id, FLOPs, parameters, input + output activation bytes).
    let mut cases: Vec<(String, f64, usize, usize)> = Vec::new();

    // The blocks: one F16 file, loaded strictly.
    let mut shapes = Shapes::default();
    for (i, r) in resnets.iter().enumerate() {
        shapes.resnet(&format!("resnet{i}"), r.channels, r.channels, temb);
    }
    for (i, t) in transformers.iter().enumerate() {
        shapes.transformer(
            &format!("transformer{i}"),
            t.channels,
            t.context_dim,
            t.layers,
            t.linear,
        );
    }
    let dir = target_dir().join("bench-weights");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("unet_blocks_f16.safetensors");
    write_random_weights(&path, &shapes);
    let set = WeightSet::open(&path).unwrap();
    let w = WeightLoader::new(&set, &device);
    let spec = ResnetSpec {
        groups: GROUPS,
        eps: RESNET_EPS,
        temb,
    };
    let resnet_blocks: Vec<ResnetBlock2D> = resnets
        .iter()
        .enumerate()
        .map(|(i, r)| {
            ResnetBlock2D::load(&w, &format!("resnet{i}"), r.channels, r.channels, spec, 1.0)
                .unwrap()
        })
        .collect();
    let transformer_blocks: Vec<Transformer2DModel> = transformers
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Transformer2DModel::load(&w, &format!("transformer{i}"), t.channels, t.spec()).unwrap()
        })
        .collect();
    w.finish().unwrap();

    let mut g = group(c, "unet_matmul_peak", 5);
    let a: Tensor<2> = Tensor::random([mm, mm], Distribution::Normal(0.0, 1.0), &device);
    let b: Tensor<2> = Tensor::random([mm, mm], Distribution::Normal(0.0, 1.0), &device);
    let f = 2.0 * (mm as f64).powi(3);
    g.throughput(Throughput::Elements(f as u64));
    g.bench_function(format!("f32_{mm}"), |bch| {
        bch.iter(|| black_box(a.clone().matmul(b.clone()).into_data()))
    });
    g.finish();
    cases.push((format!("unet_matmul_peak/f32_{mm}"), f, 0, 3 * mm * mm * 4));

    let mut g = group(c, "unet_resnet", 5);
    for (r, block) in resnets.iter().zip(&resnet_blocks) {
        let hw = r.side * r.side;
        let x: Tensor<4> = Tensor::random(
            [block_batch, r.channels, r.side, r.side],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let t: Tensor<2> =
            Tensor::random([block_batch, temb], Distribution::Normal(0.0, 1.0), &device);
        let f = resnet_flops(block_batch, r.channels, r.channels, hw, temb);
        g.throughput(Throughput::Elements(f as u64));
        g.bench_function(r.name(), |bch| {
            bch.iter(|| black_box(block.forward(x.clone(), &t).into_data()))
        });
        let mut s = Shapes::default();
        s.resnet("r", r.channels, r.channels, temb);
        let act = 2 * block_batch * r.channels * hw * 4;
        cases.push((format!("unet_resnet/{}", r.name()), f, s.params(), act));
    }
    g.finish();

    let mut g = group(c, "unet_transformer", 5);
    for (t, block) in transformers.iter().zip(&transformer_blocks) {
        let hw = t.side * t.side;
        let x: Tensor<4> = Tensor::random(
            [block_batch, t.channels, t.side, t.side],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let ctx: Tensor<3> = Tensor::random(
            [block_batch, text, t.context_dim],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let f = transformer_flops(block_batch, t.channels, hw, text, t.context_dim, t.layers);
        g.throughput(Throughput::Elements(f as u64));
        g.bench_function(t.name(), |bch| {
            bch.iter(|| black_box(block.forward(x.clone(), &ctx).into_data()))
        });
        let mut s = Shapes::default();
        s.transformer("t", t.channels, t.context_dim, t.layers, t.linear);
        let act = block_batch * (2 * t.channels * hw + text * t.context_dim) * 4;
        cases.push((format!("unet_transformer/{}", t.name()), f, s.params(), act));
    }
    g.finish();
    drop((resnet_blocks, transformer_blocks, set));

    if let Some(channels) = unet_channels {
        let config = unet_config(channels, cross, heads);
        let tag = config
            .block_out_channels
            .iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join("-");
        let name = format!("c{tag}_s{side}_b{batch}");
        let unet = load_unet(&config, &device);
        let sample: Tensor<4> = Tensor::random(
            [batch, config.in_channels, side, side],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        let ctx: Tensor<3> = Tensor::random(
            [batch, text, cross],
            Distribution::Normal(0.0, 1.0),
            &device,
        );
        // One forward outside the timing: checks the random network stays finite.
        let out = unet
            .forward(sample.clone(), &[500.0], ctx.clone(), None)
            .unwrap()
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        assert!(
            out.iter().all(|v| v.is_finite()),
            "UNet output is not finite"
        );
        let f = unet_flops(&config, batch, side, text);
        let mut g = group(c, "unet_full", 20);
        g.throughput(Throughput::Elements(f as u64));
        g.bench_function(&name, |bch| {
            bch.iter(|| {
                black_box(
                    unet.forward(sample.clone(), &[500.0], ctx.clone(), None)
                        .unwrap()
                        .into_data(),
                )
            })
        });
        g.finish();
        let act = batch * (2 * config.in_channels * side * side + text * cross) * 4;
        cases.push((
            format!("unet_full/{name}"),
            f,
            unet_shapes(&config).params(),
            act,
        ));
    }

    let json: Vec<serde_json::Value> = cases
        .into_iter()
        .map(|(id, flops, params, act)| {
            serde_json::json!({"id": id, "flops": flops, "params": params, "act_bytes": act})
        })
        .collect();
    let out = target_dir().join("criterion");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("unet_blocks_cases.json"),
        serde_json::to_string_pretty(&json).unwrap(),
    )
    .unwrap();
}

criterion_group!(unet_blocks, benches);
criterion_main!(unet_blocks);
