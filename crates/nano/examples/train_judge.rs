//! Trains the judge on fresh nano scenes with dreamforge's trainer and reports its accuracy on
//! fresh ground truth (a seed range never used in training), e.g.
//! `cargo run --release -p dreamforge-nano --example train_judge -- STEPS BATCH`.
use std::time::Instant;

use burn::module::Module;
use burn::tensor::Device;
use dreamforge_nano::judge::{Judge, accuracy, batch, loss};
use dreamforge_train::{LrSchedule, OptimizerConfig, ScheduleKind, train_step};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let steps: u64 = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(600);
    let bs: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(64);
    let d = Device::flex().autodiff();
    let mut judge = Judge::new(&d);
    let mut optim = OptimizerConfig::default().build();
    let sched = LrSchedule {
        kind: ScheduleKind::Cosine,
        warmup_steps: steps / 20,
        stable_steps: 0,
        total_steps: steps,
        min_lr_ratio: 0.05,
    };
    let t0 = Instant::now();
    for step in 0..steps {
        let (x, scenes) = batch(step * bs as u64, bs, &d);
        let (j, r) = train_step(judge, &mut optim, sched.lr(2e-3, step), |m| {
            loss(m, x, &scenes)
        });
        judge = j;
        let l = r.expect("finite loss");
        if step % 50 == 0 || step + 1 == steps {
            println!(
                "step {step} loss {l:.4} ({:.1}s)",
                t0.elapsed().as_secs_f32()
            );
        }
    }
    let judge = judge.valid();
    let (x, scenes) = batch(1 << 40, 1000, &Device::flex());
    let (all, per) = accuracy(&judge, x, &scenes);
    println!(
        "fresh ground truth (1000 scenes): all attributes right {:.1}%",
        100.0 * all
    );
    println!("per head (layout, background, shape0, colour0, size0, shape1, colour1): {per:.3?}");
}
