//! One adapter training step (forward + backward through the frozen base + AdamW update of the
//! adapter factors only) on the flex CPU backend, for LoRA, vanilla T-LoRA and orthogonal
//! T-LoRA at the same rank on the same FLUX transformer — what `dreamforge train` runs per step
//! (`AdapterLayout::attach` of the trained set onto the frozen base, the per-step rank-mask pass,
//! the forward, MSE, `train_step`). Two configs: the nano transformer (64 image + 16 text tokens)
//! and a FLUX-shaped one (FLUX.1's 3072-wide blocks, one double and one single block, 256
//! image and 64 text tokens). The PyTorch + PEFT peer is `tools/bench/adapter_train_step.py`
//! (via `tools/bench/compare.py --suite adapter-train`).
//!
//! Plain `Instant` timing as `nano_train_step`: 2 warm-up steps, then the median of
//! `ADAPTER_BENCH_STEPS` (default 5) steps; threads: `RAYON_NUM_THREADS`. Peak memory is the
//! process's `VmHWM` after each (config, method) in order, so only increases are informative;
//! a subset runs with `ADAPTER_BENCH_ONLY=<prefix>` (`nano`, `flux-shaped/lora`, ...).
//!
//! Writes `target/criterion/adapter_train_step.json` (per config and method: median step
//! seconds, trainable parameters, VmHWM) with the configs the peer builds its models from.

use std::path::PathBuf;
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use dreamforge_adapters::at_step;
use dreamforge_models::dit::flux::{FluxConfig, FluxInputs, FluxTransformer};
use dreamforge_subject::config::FLUX_ATTENTION;
use dreamforge_subject::{Method, SubjectConfig, init_adapters};
use dreamforge_train::objective::mse;
use dreamforge_train::train_step;

mod common;

use common::{env_usize, median};

fn vm_hwm_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
}

fn flux_config(v: serde_json::Value) -> FluxConfig {
    serde_json::from_value(v).expect("valid FLUX config")
}

fn main() {
    let steps = env_usize("ADAPTER_BENCH_STEPS", 5);
    let rank = env_usize("ADAPTER_BENCH_RANK", 16);
    let only = std::env::var("ADAPTER_BENCH_ONLY").ok();
    let configs = [
        (
            "nano",
            flux_config(
                serde_json::to_value(dreamforge_nano::model::NanoConfig::default().transformer)
                    .unwrap(),
            ),
            64usize,
            16usize,
        ),
        (
            "flux-shaped",
            flux_config(json!({
                "patch_size": 1, "in_channels": 64, "num_layers": 1, "num_single_layers": 1,
                "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
                "pooled_projection_dim": 768, "guidance_embeds": true, "axes_dims_rope": [16, 56, 56]
            })),
            256,
            64,
        ),
    ];
    let d = Device::flex().autodiff();
    let mut results = Vec::new();
    for (name, cfg, l, t) in &configs {
        let (base, names) = FluxTransformer::init(cfg.clone(), 0, &d).expect("init");
        // adaLN-Zero makes the fresh model an identity: perturb every weight so the adapters'
        // gradients flow through real activations.
        let base = perturb(base).no_grad();
        for method in ["lora", "tlora", "tlora-ortho"] {
            let key = format!("{name}/{method}");
            if only.as_ref().is_some_and(|o| !key.starts_with(o.as_str())) {
                continue;
            }
            let m = if method == "lora" {
                Method::Lora
            } else {
                Method::Tlora
            };
            let mut sc = SubjectConfig::flux_defaults(m, "sks", "thing", 64);
            sc.adapter.rank = rank;
            sc.adapter.alpha = rank as f64;
            sc.adapter.min_rank = 1;
            sc.adapter.orthogonal = method == "tlora-ortho";
            sc.adapter.target_modules = FLUX_ATTENTION.to_string();
            let (mut set, layout) = init_adapters(&base, &names, &sc, &d).expect("adapters");
            let trainable = trainable_params(&set);
            let schedule = sc.adapter.schedule();
            let mut optim = sc.optimizer.build();
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            let mut randn = |shape: Vec<usize>| {
                let n: usize = shape.iter().product();
                let v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
                TensorData::new(v, shape)
            };
            let c = cfg.in_channels;
            let x = Tensor::<3>::from_data(randn(vec![1, *l, c]), &d);
            let target = Tensor::<3>::from_data(randn(vec![1, *l, c]), &d);
            let ctx = Tensor::<3>::from_data(randn(vec![1, *t, cfg.joint_attention_dim]), &d);
            let pooled = Tensor::<2>::from_data(randn(vec![1, cfg.pooled_projection_dim]), &d);
            let side = (*l as f64).sqrt() as usize;
            let ids: Vec<f32> = (0..*l)
                .flat_map(|i| [0.0, (i / side) as f32, (i % side) as f32])
                .collect();
            let rope = base.rope(&vec![0.0; t * 3], &ids, &d);
            let guidance = cfg.guidance_embeds.then(|| vec![1.0]);
            let mut times = Vec::new();
            for s in 0..steps + 2 {
                let t0 = Instant::now();
                let (next, r) = train_step(set, &mut optim, 1e-4, |set| {
                    let m = layout.attach(base.clone(), &names, set);
                    let m = at_step(m, &[schedule], 0.5);
                    let y = m
                        .forward(
                            FluxInputs {
                                hidden_states: x.clone(),
                                encoder_hidden_states: ctx.clone(),
                                pooled_projections: pooled.clone(),
                                timestep: vec![0.5],
                                guidance: guidance.clone(),
                            },
                            &rope,
                        )
                        .expect("forward");
                    mse(y, target.clone())
                });
                r.expect("finite loss");
                set = next;
                if s >= 2 {
                    times.push(t0.elapsed().as_secs_f64());
                }
            }
            let med = median(times);
            let hwm = vm_hwm_bytes();
            println!(
                "{key}: {med:.4} s/step (median of {steps}), {trainable} trainable parameters, VmHWM {:.0} MiB",
                hwm.unwrap_or(0) as f64 / (1 << 20) as f64
            );
            results.push(json!({
                "config": name, "method": method, "step_median_s": med, "trainable": trainable,
                "rank": rank, "vm_hwm_bytes": hwm, "image_tokens": l, "text_tokens": t,
                "transformer": cfg,
            }));
        }
    }
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/criterion");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(
        out.join("adapter_train_step.json"),
        serde_json::to_string_pretty(&results).unwrap(),
    )
    .unwrap();
}

/// Parameters that require gradients (frozen orthogonal copies and masks excluded).
fn trainable_params<M: Module>(m: &M) -> usize {
    struct Count(usize);
    impl burn::module::ModuleVisitor for Count {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
            if param.is_require_grad() {
                self.0 += param.lazy_shape().num_elements();
            }
        }
    }
    let mut c = Count(0);
    m.visit(&mut c);
    c.0
}

/// Every float parameter plus seeded uniform noise in ±0.035.
fn perturb(m: FluxTransformer) -> FluxTransformer {
    struct Noise(ChaCha8Rng);
    impl burn::module::ModuleMapper for Noise {
        fn map_float<const D: usize>(
            &mut self,
            param: burn::module::Param<Tensor<D>>,
        ) -> burn::module::Param<Tensor<D>> {
            let rng = &mut self.0;
            param.map(|t| {
                let n = t.shape().num_elements();
                let v: Vec<f32> = (0..n).map(|_| rng.random_range(-0.035f32..0.035)).collect();
                let noise = Tensor::<D>::from_data(TensorData::new(v, t.shape()), &t.device());
                t + noise
            })
        }
    }
    m.map(&mut Noise(ChaCha8Rng::seed_from_u64(5)))
}
