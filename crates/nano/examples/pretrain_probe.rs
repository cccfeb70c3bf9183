//! Times nano pretraining steps for a model size, to choose the shipped config:
//! `cargo run --release -p dreamforge-nano --example pretrain_probe -- STEPS BATCH WIDTH DOUBLE SINGLE`.
use std::time::Instant;

use burn::tensor::Device;
use dreamforge_nano::model::init;
use dreamforge_nano::pretrain::{PretrainConfig, Pretrainer, write_tokenizer};
use dreamforge_train::{OptimizerConfig, run::rngs, train_step};

fn main() {
    let a: Vec<usize> = std::env::args()
        .skip(1)
        .map(|v| v.parse().expect("numbers"))
        .collect();
    let (steps, bs, width, double, single) = (a[0], a[1], a[2], a[3], a[4]);
    let mut cfg = PretrainConfig::new(steps as u64);
    cfg.batch_size = bs;
    cfg.model.transformer.num_attention_heads = width / cfg.model.transformer.attention_head_dim;
    cfg.model.transformer.num_layers = double;
    cfg.model.transformer.num_single_layers = single;
    let d = Device::flex().autodiff();
    let dir = std::env::temp_dir().join("nano-probe-tok");
    write_tokenizer(&dir, &cfg.model).unwrap();
    let (mut model, _) = init(&cfg.model, 0, &d).unwrap();
    let p = Pretrainer::new(cfg.clone(), &dir, &model, &d).unwrap();
    parts(&p, &model, &d);
    parts(&p, &model, &d);
    let mut optim = OptimizerConfig::default().build();
    let mut r = rngs(1, 2);
    let t0 = Instant::now();
    for step in 0..steps {
        let t = Instant::now();
        let (m, l) = train_step(model, &mut optim, 1e-3, |m| p.loss(m, &mut r, &d));
        model = m;
        println!(
            "step {step} loss {:.4} {:.2}s",
            l.unwrap(),
            t.elapsed().as_secs_f32()
        );
    }
    println!(
        "mean {:.2}s/step",
        t0.elapsed().as_secs_f32() / steps as f32
    );
}

#[allow(dead_code)]
fn parts(p: &Pretrainer, model: &dreamforge_nano::model::NanoModel, d: &Device) {
    let mut r = rngs(1, 2);
    let t = Instant::now();
    let (scenes, _) = p.draw(&mut r.data);
    let x0 = p.clean_latents(&scenes, d);
    let _ = x0.into_data();
    println!("data {:.3}s", t.elapsed().as_secs_f32());
    let t = Instant::now();
    let l = p.loss(model, &mut r, d);
    let _ = l.clone().into_scalar::<f32>();
    println!("forward {:.3}s", t.elapsed().as_secs_f32());
    let t = Instant::now();
    let g = l.backward();
    drop(g);
    println!("backward {:.3}s", t.elapsed().as_secs_f32());
}
