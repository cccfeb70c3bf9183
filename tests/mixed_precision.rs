//! Mixed-precision training steps on the test device (`DREAMFORGE_TEST_DEVICE`, default the
//! CPU): the nano model's pretraining loss in bf16 / f16 with f32 master weights
//! (`dreamforge_train::train_step_mixed`) against the same steps in f32. On the CPU backend half
//! precision is emulated; CI also runs this file on wgpu (lavapipe, whose Vulkan has
//! shaderFloat16: real f16 kernels; bf16 is refused there), and it ran on an H100 through
//! wgpu/Vulkan (docs/NANO.md, "Pretraining"):
//!
//! ```sh
//! DREAMFORGE_TEST_DEVICE=wgpu cargo test --release --features wgpu --test mixed_precision -- --nocapture
//! ```

use burn::module::Module;
use burn::tensor::Tensor;
use dreamforge_nano::model::{NanoConfig, init};
use dreamforge_nano::pretrain::{PretrainConfig, Pretrainer, write_tokenizer};
use dreamforge_train::OptimizerConfig;
use dreamforge_train::run::rngs;

/// Mixed precision: ten steps on one batch follow the f32 run's loss curve (within 3 %), the master
/// weights stay f32; an f16 run keeps a sane loss scale. Runs on `DREAMFORGE_TEST_DEVICE` (CPU by
/// default, where half precision is emulated; `wgpu` with `--features wgpu` for a GPU): a
/// precision the device cannot compute (bf16 on wgpu) must be refused by `check_precision`
/// instead, and at least one half precision must really run.
#[test]
fn mixed_precision_steps_train_f32_master_weights() {
    use burn::module::{ModuleVisitor, Param};
    use burn::tensor::DType;
    use dreamforge_train::run::check_precision;
    use dreamforge_train::{LossScale, Precision, train_step_mixed};

    struct Dtypes(Vec<DType>);
    impl ModuleVisitor for Dtypes {
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<D>>) {
            self.0.push(p.val().dtype());
        }
    }
    let d = dreamforge_core::test_device().autodiff();
    eprintln!("device: {d:?}");
    let dir = tempfile::tempdir().unwrap();
    let tok = dir.path().join("tok");
    let mut base = PretrainConfig::new(10);
    base.model = NanoConfig::tiny();
    base.batch_size = 8;
    write_tokenizer(&tok, &base.model).unwrap();
    // Ten steps on one fixed batch; returns the losses, the model and the loss scale.
    let run = |precision: Precision| {
        let mut cfg = base.clone();
        cfg.precision = precision;
        let (mut model, _) = init(&cfg.model, 0, &d).unwrap();
        let p = Pretrainer::new(cfg, &tok, &model, &d).unwrap();
        let mut optim = OptimizerConfig::default().build();
        let mut scale = LossScale::default();
        let mut losses = Vec::new();
        for _ in 0..10 {
            let mut batch = rngs(1, 2);
            let (m, l) =
                train_step_mixed(model, &mut optim, 3e-3, None, precision, &mut scale, |m| {
                    p.loss(m, &mut batch, &d)
                });
            model = m;
            losses.push(l.unwrap());
        }
        (losses, model, scale, p)
    };
    let (reference, _, _, _) = run(Precision::F32);
    assert!(reference[9] < reference[0], "f32 learns: {reference:?}");
    let (probe, _) = init(&base.model, 0, &d).unwrap();
    let mut ran = 0;
    for precision in [Precision::Bf16, Precision::F16] {
        if !d.supports_dtype(precision.dtype()) {
            let e = check_precision(&probe, precision).unwrap_err().to_string();
            eprintln!("{precision:?} refused on {d:?}: {e}");
            assert!(e.contains(precision.name()), "{e}");
            continue;
        }
        check_precision(&probe, precision).unwrap();
        ran += 1;
        let t = std::time::Instant::now();
        let (losses, model, scale, _) = run(precision);
        eprintln!("{precision:?}: 10 steps in {:.2?}", t.elapsed());
        eprintln!("{precision:?}: {losses:?}\nf32: {reference:?}");
        // The half-precision path really ran (the weights start adaLN-Zero, so step 0's
        // prediction is exactly 0 in any precision; later steps differ by rounding).
        assert!(
            losses[1..] != reference[1..],
            "{precision:?} computed in f32?"
        );
        for (i, (a, b)) in losses.iter().zip(&reference).enumerate() {
            assert!(
                (a - b).abs() < 0.03 * b,
                "{precision:?} step {i}: loss {a} vs f32 {b}"
            );
        }
        let mut v = Dtypes(Vec::new());
        model.visit(&mut v);
        assert!(v.0.iter().all(|t| *t == DType::F32), "{:?}", v.0);
        if precision == Precision::F16 {
            assert_eq!(scale.scale, 65536.0, "no overflow on this problem");
            assert_eq!(scale.good_steps, 10);
        } else {
            assert_eq!(scale, LossScale::default(), "bf16 does not scale");
        }
    }
    assert!(ran > 0, "no half precision computable on {d:?}");
}
