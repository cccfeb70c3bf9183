//! Criterion benches of one FLUX double-stream and one single-stream block (FLUX.1 width 3072,
//! 24 heads, 512 text tokens) at 256 / 1024 / 4096 image tokens, plus a square f32 matmul as
//! the machine's measured peak. Weights are random, written once as a BF16 safetensors file
//! and loaded through the real loader. `tools/bench/compare.py` times the same blocks in
//! PyTorch and writes the ratios into BENCHMARKS.md.
//!
//! Environment: `DREAMFORGE_BENCH_WIDTH` (default 3072), `DREAMFORGE_BENCH_TOKENS`
//! (comma list, default 256,1024,4096), `DREAMFORGE_BENCH_TEXT` (default 512).

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;

use burn::tensor::{Device, Distribution, Tensor};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use safetensors::{Dtype, tensor::TensorView};

use dreamforge::core::{WeightLoader, WeightSet, noise::randn};
use dreamforge::models::dit::flux::{
    Rope, double_block::DoubleBlock, rope::flux_rope, single_block::SingleBlock,
};

const HEAD_DIM: usize = 128;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn tokens() -> Vec<usize> {
    std::env::var("DREAMFORGE_BENCH_TOKENS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![256, 1024, 4096])
}

/// Parameter shapes (PyTorch layout) of one double and one single block, diffusers names.
fn shapes(d: usize) -> Vec<(String, Vec<usize>)> {
    let h = HEAD_DIM;
    let mlp = 4 * d;
    let mut v: Vec<(String, Vec<usize>)> = Vec::new();
    let mut lin = |name: String, i: usize, o: usize| {
        v.push((format!("{name}.weight"), vec![o, i]));
        v.push((format!("{name}.bias"), vec![o]));
    };
    let p = "double";
    lin(format!("{p}.norm1.linear"), d, 6 * d);
    lin(format!("{p}.norm1_context.linear"), d, 6 * d);
    for n in [
        "to_q",
        "to_k",
        "to_v",
        "add_q_proj",
        "add_k_proj",
        "add_v_proj",
        "to_out.0",
        "to_add_out",
    ] {
        lin(format!("{p}.attn.{n}"), d, d);
    }
    for ff in ["ff", "ff_context"] {
        lin(format!("{p}.{ff}.net.0.proj"), d, mlp);
        lin(format!("{p}.{ff}.net.2"), mlp, d);
    }
    let s = "single";
    lin(format!("{s}.norm.linear"), d, 3 * d);
    for n in ["to_q", "to_k", "to_v"] {
        lin(format!("{s}.attn.{n}"), d, d);
    }
    lin(format!("{s}.proj_mlp"), d, mlp);
    lin(format!("{s}.proj_out"), d + mlp, d);
    for n in ["norm_q", "norm_k", "norm_added_q", "norm_added_k"] {
        v.push((format!("{p}.attn.{n}.weight"), vec![h]));
    }
    for n in ["norm_q", "norm_k"] {
        v.push((format!("{s}.attn.{n}.weight"), vec![h]));
    }
    v
}

fn write_random_weights(path: &Path, d: usize) {
    let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (i, (name, shape)) in shapes(d).into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let fan_in = *shape.last().unwrap() as f32;
        let scale = if shape.len() == 1 {
            0.0
        } else {
            1.0 / fan_in.sqrt()
        };
        let data = randn(i as u64, &[n]).data;
        let bytes = data
            .iter()
            .flat_map(|v| {
                half::bf16::from_f32(if shape.len() == 1 {
                    1.0 + 0.1 * v
                } else {
                    v * scale
                })
                .to_le_bytes()
            })
            .collect();
        bufs.push((name, shape, bytes));
    }
    let views: HashMap<String, TensorView> = bufs
        .iter()
        .map(|(k, s, b)| {
            (
                k.clone(),
                TensorView::new(Dtype::BF16, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// Multiply-adds ×2 of one double block: linear layers of both streams + attention.
pub fn double_block_flops(d: usize, l: usize, t: usize) -> f64 {
    let (d, l, t) = (d as f64, l as f64, t as f64);
    let per_token = 2.0 * (4.0 * d * d + 2.0 * d * 4.0 * d); // qkv+out, ff
    let modulation = 2.0 * 2.0 * d * 6.0 * d;
    let attn = 2.0 * 2.0 * (l + t) * (l + t) * d;
    per_token * (l + t) + modulation + attn
}

pub fn single_block_flops(d: usize, l: usize, t: usize) -> f64 {
    let (d, s) = (d as f64, (l + t) as f64);
    let per_token = 2.0 * (3.0 * d * d + d * 4.0 * d + 5.0 * d * d);
    per_token * s + 2.0 * d * 3.0 * d + 2.0 * 2.0 * s * s * d
}

fn rope_for(l: usize, t: usize, device: &Device) -> Rope {
    let side = (l as f64).sqrt().ceil() as usize;
    let mut ids = vec![0f32; t * 3];
    for i in 0..l {
        ids.extend([0.0, (i / side) as f32, (i % side) as f32]);
    }
    flux_rope(&ids, 3, &[16, 56, 56], 10000.0, device)
}

fn benches(c: &mut Criterion) {
    let device = dreamforge::core::test_device();
    let d = env_usize("DREAMFORGE_BENCH_WIDTH", 3072);
    let t = env_usize("DREAMFORGE_BENCH_TEXT", 512);
    let heads = d / HEAD_DIM;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blocks.safetensors");
    write_random_weights(&path, d);
    let set = WeightSet::open(&path).unwrap();
    let w = WeightLoader::new(&set, &device);
    let double = DoubleBlock::load(&w, "double", d, heads, 4 * d).unwrap();
    let single = SingleBlock::load(&w, "single", d, heads, 4 * d).unwrap();

    let mut g = c.benchmark_group("matmul_peak");
    g.sample_size(10);
    let n: usize = 2048;
    let a: Tensor<2> = Tensor::random([n, n], Distribution::Normal(0.0, 1.0), &device);
    let b: Tensor<2> = Tensor::random([n, n], Distribution::Normal(0.0, 1.0), &device);
    g.throughput(Throughput::Elements((2 * n * n * n) as u64));
    g.bench_function("f32_2048", |bch| {
        bch.iter(|| black_box(a.clone().matmul(b.clone()).into_data()))
    });
    g.finish();

    for l in tokens() {
        let rope = rope_for(l, t, &device);
        let img: Tensor<3> = Tensor::random([1, l, d], Distribution::Normal(0.0, 1.0), &device);
        let txt: Tensor<3> = Tensor::random([1, t, d], Distribution::Normal(0.0, 1.0), &device);
        let temb: Tensor<2> = Tensor::random([1, d], Distribution::Normal(0.0, 1.0), &device);
        let joint = Tensor::cat(vec![txt.clone(), img.clone()], 1);
        let mut g = c.benchmark_group(format!("flux_w{d}_t{t}"));
        g.sample_size(10);
        g.throughput(Throughput::Elements(double_block_flops(d, l, t) as u64));
        g.bench_function(format!("double_{l}"), |bch| {
            bch.iter(|| {
                let (i, x) = double.forward(img.clone(), txt.clone(), temb.clone(), &rope);
                black_box((i.into_data(), x.into_data()))
            })
        });
        g.throughput(Throughput::Elements(single_block_flops(d, l, t) as u64));
        g.bench_function(format!("single_{l}"), |bch| {
            bch.iter(|| {
                black_box(
                    single
                        .forward(joint.clone(), temb.clone(), &rope)
                        .into_data(),
                )
            })
        });
        g.finish();
    }
}

criterion_group!(flux_blocks, benches);
criterion_main!(flux_blocks);
