//! One nano pretraining step (forward + backward + AdamW update of the FLUX-architecture
//! transformer and the CLIP text encoder, trained jointly) on the flex CPU backend, timed as
//! the real run takes it: `dreamforge_train::train_step` over `Pretrainer::loss`, which draws
//! the procedural scenes, renders and tokenizes them, samples σ and noise, and runs the model.
//! The data part alone (`draw` + `clean_latents` + `token_ids`) is timed separately so the
//! comparison can say what share of a step is data preparation: the PyTorch peer
//! (`tools/bench/nano_train_step.py`, via `tools/bench/compare.py --suite nano-train`) gets
//! random tensors instead.
//!
//! The same step is then timed as `nano pretrain` runs it on the CPU: the batch split into
//! shards whose forward + backward run on their own threads (`train_step_sharded`, shard count
//! `NANO_BENCH_SHARDS`, default the CLI's: two per thread, at least 16 samples each).
//!
//! Plain `Instant` timing (criterion's iteration model does not fit a step that consumes and
//! returns the model, and its 10-sample minimum is slow here): 2 warm-up steps, then the median
//! of `NANO_BENCH_STEPS` (default 10) steps. Threads: `RAYON_NUM_THREADS`.
//!
//! Writes `target/criterion/nano_train_step.json` (medians in seconds, batch, parameter counts,
//! FLOPs per step) and `target/criterion/nano_train_step_configs.json` (the model configs the
//! PyTorch peer builds its models from).

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;
use serde_json::json;

use dreamforge_models::dit::flux::FluxConfig;
use dreamforge_models::text::clip::ClipTextConfig;
use dreamforge_nano::model::{NanoConfig, NanoModel, init};
use dreamforge_nano::pretrain::{Batch, PretrainConfig, Pretrainer, write_tokenizer};
use dreamforge_train::run::rngs;
use dreamforge_train::{LossScale, Precision, train_step, train_step_sharded};

const WARMUP: usize = 2;

mod common;

use common::{env_usize, median};

/// Forward FLOPs of the FLUX transformer for ONE sample with `l` image and `t` text tokens.
/// A multiply-add counts 2; only matmuls (linear layers, QKᵀ, AV) are counted — norms,
/// activations, RoPE and softmax are O(tokens·d) and left out (as torch's FlopCounterMode
/// does). With d = inner dim, m = MLP hidden (4d), S = l + t, c = in_channels, p = pooled dim:
///
/// - each double block: per token of each stream, q/k/v/out 4d² + MLP 2dm (= 12d² at m = 4d),
///   so `2·(4d² + 2dm)·S`; attention over the joint sequence, QKᵀ and AV `2·2·S²·d`; the
///   per-sample modulations of both streams `2·2·(d·6d)`;
/// - each single block: per token q/k/v 3d² + proj_mlp dm + proj_out (d + m)·d (= 12d²), so
///   `2·(3d² + dm + (d + m)d)·S`; attention `2·2·S²·d`; modulation `2·(d·3d)`;
/// - embedders and output: x_embedder `2·c·d·l`, context_embedder `2·j·d·t` (j = joint dim),
///   timestep MLP `2·(256·d + d²)`, pooled-text MLP `2·(p·d + d²)`, norm_out `2·(d·2d)`,
///   proj_out `2·d·c_out·l`.
pub fn transformer_forward_flops(c: &FluxConfig, l: usize, t: usize) -> f64 {
    let d = c.inner_dim() as f64;
    let m = c.mlp_hidden_dim() as f64;
    let (l, t) = (l as f64, t as f64);
    let s = l + t;
    let attn = 2.0 * 2.0 * s * s * d;
    let double = 2.0 * (4.0 * d * d + 2.0 * d * m) * s + attn + 2.0 * 2.0 * d * 6.0 * d;
    let single = 2.0 * (3.0 * d * d + d * m + (d + m) * d) * s + attn + 2.0 * d * 3.0 * d;
    let embed = 2.0 * c.in_channels as f64 * d * l
        + 2.0 * c.joint_attention_dim as f64 * d * t
        + 2.0 * (256.0 * d + d * d)
        + 2.0 * (c.pooled_projection_dim as f64 * d + d * d);
    let out = 2.0 * d * 2.0 * d + 2.0 * d * c.out_channels() as f64 * l;
    c.num_layers as f64 * double + c.num_single_layers as f64 * single + embed + out
}

/// Forward FLOPs of the CLIP text encoder for ONE sample of `t` tokens (h = hidden, i =
/// intermediate): per layer q/k/v/out `2·4h²·t` + MLP `2·2hi·t` (= `2·12h²·t` at i = 4h) and
/// attention QKᵀ + AV `2·2·t²·h` (the causal mask saves nothing: the full product is computed).
/// Embedding lookups and the eos-row pooling are gathers (0 FLOPs); no text projection.
pub fn text_encoder_forward_flops(c: &ClipTextConfig, t: usize) -> f64 {
    let (h, i, t) = (c.hidden_size as f64, c.intermediate_size as f64, t as f64);
    let layer = 2.0 * (4.0 * h * h + 2.0 * h * i) * t + 2.0 * 2.0 * t * t * h;
    c.num_hidden_layers as f64 * layer
}

/// Training FLOPs of one step: ≈ 3× the forward (backward = grads w.r.t. activations and
/// weights, each about one forward) of both models, times the batch. The AdamW update
/// (O(parameters)) is left out.
pub fn step_flops(m: &NanoConfig, batch: usize) -> (f64, f64) {
    let l = (m.latent_side() / 2).pow(2);
    let t = m.max_tokens();
    let fwd = transformer_forward_flops(&m.transformer, l, t)
        + text_encoder_forward_flops(&m.text_encoder, t);
    (fwd * batch as f64, 3.0 * fwd * batch as f64)
}

fn out_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("criterion")
}

fn main() {
    let steps = env_usize("NANO_BENCH_STEPS", 10).max(1);
    let threads = std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "default".into());
    let device = Device::flex().autodiff();
    let cfg = PretrainConfig::new(100);
    let tok = tempfile::tempdir().expect("temp dir");
    write_tokenizer(tok.path(), &cfg.model).expect("tokenizer");
    let (mut model, _keys) = init(&cfg.model, 0, &device).expect("nano model");
    let p = Pretrainer::new(cfg.clone(), tok.path(), &model, &device).expect("pretrainer");
    let mut optim = cfg.optimizer.build();
    let mut rs = rngs(1, 2);
    let lr = cfg.lr;

    // Full steps.
    let mut times = Vec::with_capacity(steps);
    let mut last_loss = f32::NAN;
    for i in 0..WARMUP + steps {
        let t0 = Instant::now();
        let (next, loss) = train_step(model, &mut optim, lr, |m| p.loss(m, &mut rs, &device));
        model = next;
        let dt = t0.elapsed().as_secs_f64();
        last_loss = loss.expect("finite loss");
        if i >= WARMUP {
            times.push(dt);
        }
    }
    let step = median(times);

    // The sharded step, as `nano pretrain` takes it on the CPU.
    let workers = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let shards = env_usize(
        "NANO_BENCH_SHARDS",
        (2 * workers).min(cfg.batch_size / 16).max(1),
    )
    .max(1);
    let global_clip = cfg.optimizer.global_clip();
    let mut scale = LossScale::default();
    let loss = |m: &NanoModel, b: Batch| p.batch_loss(m, b);
    let mut stimes = Vec::with_capacity(steps);
    for i in 0..WARMUP + steps {
        let t0 = Instant::now();
        let batch = p.sharded_batch(&mut rs, &device, shards);
        let (next, l) = train_step_sharded(
            model,
            &mut optim,
            lr,
            global_clip,
            Precision::F32,
            &mut scale,
            batch,
            &loss,
        );
        model = next;
        let dt = t0.elapsed().as_secs_f64();
        last_loss = l.expect("finite loss");
        if i >= WARMUP {
            stimes.push(dt);
        }
    }
    let sharded_step = median(stimes);

    // The data part alone (same calls as Pretrainer::loss makes before the model runs).
    let mut data_rngs = rngs(1, 2);
    let mut dtimes = Vec::with_capacity(steps);
    for i in 0..WARMUP + steps {
        let t0 = Instant::now();
        let (scenes, captions) = p.draw(&mut data_rngs.data);
        let x0 = p.clean_latents(&scenes, &device);
        let texts: Vec<&str> = captions.iter().map(String::as_str).collect();
        let ids = p.token_ids(&texts, &device).expect("tokenize");
        // Flex runs ops eagerly, but read back to be sure the work is done.
        let _ = (x0.into_data(), ids.into_data());
        let dt = t0.elapsed().as_secs_f64();
        if i >= WARMUP {
            dtimes.push(dt);
        }
    }
    let data = median(dtimes);

    let m = &cfg.model;
    let (fwd, train) = step_flops(m, cfg.batch_size);
    let l = (m.latent_side() / 2).pow(2);
    let out = json!({
        "steps": steps,
        "warmup": WARMUP,
        "threads": threads,
        "batch": cfg.batch_size,
        "image_tokens": l,
        "text_tokens": m.max_tokens(),
        "step_median_s": step,
        "shards": shards,
        "sharded_step_median_s": sharded_step,
        "data_median_s": data,
        "data_share": data / step,
        "last_loss": last_loss,
        "params_transformer": model.transformer.num_params(),
        "params_text_encoder": model.text_encoder.num_params(),
        "flops_forward": fwd,
        "flops_step": train,
        "gflops_per_s": train / step / 1e9,
    });
    let configs = json!({
        "transformer": m.transformer,
        "text_encoder": m.text_encoder,
        "batch": cfg.batch_size,
        "image_tokens": l,
        "text_tokens": m.max_tokens(),
        "latent_side": m.latent_side() / 2,
        "lr": cfg.lr,
        "optimizer": cfg.optimizer,
    });
    let dir = out_dir();
    std::fs::create_dir_all(&dir).expect("target/criterion");
    let write = |name: &str, v: &serde_json::Value| {
        std::fs::write(dir.join(name), format!("{v:#}\n")).expect("write json");
    };
    write("nano_train_step.json", &out);
    write("nano_train_step_configs.json", &configs);
    println!("{out}");
}
