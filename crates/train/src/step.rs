//! The functional train step over Burn autodiff: loss → backward → gradients by parameter →
//! optimizer update, returning the updated model and the loss value. A NaN or infinite loss
//! makes no update (the model comes back unchanged) and is reported, so the run can stop with
//! its last good checkpoint.

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{FloatDType, Tensor};

use crate::optim::ModelOptimizer;
use crate::precision::{LossScale, Precision, cast_params, grads_finite};

/// A loss that is not a finite number; no update was made.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("the loss is {0}: training stopped without applying this step")]
pub struct NonFiniteLoss(pub f32);

/// One optimizer step at learning rate `lr`; `loss` computes a scalar loss from the model.
/// Returns the updated model and the loss, or the unchanged model and the non-finite loss.
/// `optim`: what [`OptimizerConfig::build`](crate::OptimizerConfig::build) makes, or a Burn
/// `ModuleOptimizer`.
pub fn train_step<M: Module>(
    model: M,
    optim: &mut impl ModelOptimizer,
    lr: f64,
    loss: impl FnOnce(&M) -> Tensor<1>,
) -> (M, Result<f32, NonFiniteLoss>) {
    train_step_clipped(model, optim, lr, None, loss)
}

/// [`train_step`] with the gradients first scaled together to a global L2 norm of at most
/// `global_clip` (`torch.nn.utils.clip_grad_norm_` over all parameters), when given.
pub fn train_step_clipped<M: Module>(
    model: M,
    optim: &mut impl ModelOptimizer,
    lr: f64,
    global_clip: Option<f32>,
    loss: impl FnOnce(&M) -> Tensor<1>,
) -> (M, Result<f32, NonFiniteLoss>) {
    let l = loss(&model);
    let value = l.clone().into_scalar::<f32>();
    if !value.is_finite() {
        return (model, Err(NonFiniteLoss(value)));
    }
    let mut grads = GradientsParams::from_grads(l.backward(), &model);
    if let Some(max) = global_clip {
        clip_global_norm(&model, &mut grads, max);
    }
    (optim.step(lr, model, grads), Ok(value))
}

/// [`train_step_clipped`] with the forward and backward passes in `precision` (see
/// [`crate::precision`]): `loss` gets a copy of the model cast to the compute dtype (its
/// inputs must be cast to [`Precision::dtype`] too) and may return the loss in any float
/// dtype; the gradients reach the f32 `model` through the cast. With `f16` the loss is scaled
/// by `scale` before the backward pass and the gradients unscaled after it; an overflow skips
/// the update (the model comes back unchanged, the loss value is still returned) and `scale`
/// records it. `Precision::F32` is exactly [`train_step_clipped`].
pub fn train_step_mixed<M: Module>(
    model: M,
    optim: &mut impl ModelOptimizer,
    lr: f64,
    global_clip: Option<f32>,
    precision: Precision,
    scale: &mut LossScale,
    loss: impl FnOnce(&M) -> Tensor<1>,
) -> (M, Result<f32, NonFiniteLoss>) {
    if precision == Precision::F32 {
        return train_step_clipped(model, optim, lr, global_clip, loss);
    }
    let factor = loss_factor(precision, scale);
    let low = cast_params(model.clone(), precision.dtype());
    let l = loss(&low).cast(FloatDType::F32);
    drop(low);
    let value = l.clone().into_scalar::<f32>();
    if !value.is_finite() {
        return (model, Err(NonFiniteLoss(value)));
    }
    let grads = GradientsParams::from_grads((l * factor).backward(), &model);
    apply_scaled(
        model,
        optim,
        lr,
        global_clip,
        precision,
        scale,
        factor,
        grads,
        value,
    )
}

/// [`train_step_mixed`] over a batch split into shards whose forward and backward passes run
/// concurrently, one thread each: `shards` holds each shard's weight (its share of the batch;
/// the weights sum to 1) and its data, `loss(m, shard)` is that shard's mean loss. Every
/// thread works on its own autodiff graph (the parameters re-entered as fresh leaves, ids
/// kept), and the gradients of `weight · loss` are summed in shard order, so the update equals
/// the unsharded step on the whole batch up to float summation order.
///
/// Why: on the CPU backend the element-wise ops run on the calling thread while matmuls use
/// the thread pool, so one graph leaves cores idle; shards put a calling thread on each.
pub fn train_step_sharded<M, S>(
    model: M,
    optim: &mut impl ModelOptimizer,
    lr: f64,
    global_clip: Option<f32>,
    precision: Precision,
    scale: &mut LossScale,
    shards: Vec<(f32, S)>,
    loss: &(impl Fn(&M, S) -> Tensor<1> + Sync),
) -> (M, Result<f32, NonFiniteLoss>)
where
    M: Module,
    S: Send,
{
    let factor = loss_factor(precision, scale);
    let parts: Vec<(f32, Option<GradientsParams>)> = std::thread::scope(|sc| {
        let handles: Vec<_> = shards
            .into_iter()
            .map(|(weight, shard)| {
                let local = model.clone().map(&mut FreshLeaves);
                sc.spawn(move || {
                    let l = if precision == Precision::F32 {
                        loss(&local, shard)
                    } else {
                        let low = cast_params(local.clone(), precision.dtype());
                        loss(&low, shard).cast(FloatDType::F32)
                    } * weight;
                    let value = l.clone().into_scalar::<f32>();
                    if !value.is_finite() {
                        return (value, None);
                    }
                    let grads = GradientsParams::from_grads((l * factor).backward(), &local);
                    (value, Some(grads))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    });
    let value: f32 = parts.iter().map(|(v, _)| v).sum();
    let mut acc = burn::optim::GradientsAccumulator::<M>::new();
    for (_, grads) in parts {
        match grads {
            Some(g) => acc.accumulate(&model, g),
            None => return (model, Err(NonFiniteLoss(value))),
        }
    }
    let grads = acc.grads();
    apply_scaled(
        model,
        optim,
        lr,
        global_clip,
        precision,
        scale,
        factor,
        grads,
        value,
    )
}

/// The loss multiplier of this step: the dynamic scale for f16, else 1.
fn loss_factor(precision: Precision, scale: &LossScale) -> f32 {
    if precision.scales_loss() {
        scale.scale
    } else {
        1.0
    }
}

/// The tail of a (mixed-precision) step: gradients of `factor · loss` are unscaled (an f16
/// overflow skips the update and is recorded in `scale`), clipped, and applied.
#[allow(clippy::too_many_arguments)]
fn apply_scaled<M: Module>(
    model: M,
    optim: &mut impl ModelOptimizer,
    lr: f64,
    global_clip: Option<f32>,
    precision: Precision,
    scale: &mut LossScale,
    factor: f32,
    mut grads: GradientsParams,
    value: f32,
) -> (M, Result<f32, NonFiniteLoss>) {
    if precision.scales_loss() {
        let finite = grads_finite(&model, &grads);
        scale.update(!finite);
        if !finite {
            return (model, Ok(value));
        }
        scale_grads(&model, &mut grads, 1.0 / factor);
    }
    if let Some(max) = global_clip {
        clip_global_norm(&model, &mut grads, max);
    }
    (optim.step(lr, model, grads), Ok(value))
}

/// Re-enters every trainable parameter as a fresh autodiff leaf (same id and value), so a
/// copy of the model records its own graph.
struct FreshLeaves;

impl ModuleMapper for FreshLeaves {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.map(|t| {
            if t.is_require_grad() {
                t.detach().require_grad()
            } else {
                t
            }
        })
    }
}

struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    total: f64,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            self.total += g.square().sum().into_scalar::<f32>() as f64;
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    factor: f32,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            self.grads.register(param.id, g * self.factor);
        }
    }
}

/// Scales every gradient of `model` by `max_norm / (norm + 1e-6)` when their global L2 norm
/// exceeds `max_norm` (torch's `clip_grad_norm_`); returns the norm before clipping.
pub fn clip_global_norm<M: Module>(model: &M, grads: &mut GradientsParams, max_norm: f32) -> f32 {
    let mut n = SquaredNorm { grads, total: 0.0 };
    model.visit(&mut n);
    let norm = n.total.sqrt() as f32;
    let factor = max_norm / (norm + 1e-6);
    if factor < 1.0 {
        scale_grads(model, grads, factor);
    }
    norm
}

/// Multiplies every gradient of `model` in `grads` by `factor`.
pub fn scale_grads<M: Module>(model: &M, grads: &mut GradientsParams, factor: f32) {
    model.visit(&mut Scale { grads, factor });
}

/// One optimizer step over `micro_batches` micro-batches (gradient accumulation): `loss(m, i)`
/// is micro-batch `i`'s loss; gradients of `loss / micro_batches` are summed, so with mean
/// losses over equal micro-batches the update equals one step on the whole batch. Returns the
/// mean loss; any non-finite micro-batch loss makes no update.
pub fn train_step_accumulated<M: Module>(
    model: M,
    optim: &mut impl ModelOptimizer,
    lr: f64,
    micro_batches: usize,
    mut loss: impl FnMut(&M, usize) -> Tensor<1>,
) -> (M, Result<f32, NonFiniteLoss>) {
    let k = micro_batches.max(1);
    let mut acc = burn::optim::GradientsAccumulator::<M>::new();
    let mut total = 0.0f32;
    for i in 0..k {
        let l = loss(&model, i) / k as f32;
        let value = l.clone().into_scalar::<f32>();
        if !value.is_finite() {
            return (model, Err(NonFiniteLoss(value * k as f32)));
        }
        total += value;
        acc.accumulate(&model, GradientsParams::from_grads(l.backward(), &model));
    }
    let grads = acc.grads();
    (optim.step(lr, model, grads), Ok(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::AdamWConfig;
    use burn::tensor::Device;
    use serde::{Deserialize, Serialize};

    #[derive(Module, Debug)]
    struct Mlp {
        a: Linear,
        b: Linear,
    }

    /// Host-seeded values (the device RNG is shared by concurrently running tests).
    fn host_randn(seed: u64, n: usize, scale: f32) -> Vec<f32> {
        use rand::SeedableRng;
        use rand_distr::{Distribution, StandardNormal};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| {
                let z: f32 = StandardNormal.sample(&mut rng);
                z * scale
            })
            .collect()
    }

    fn linear(d_in: usize, d_out: usize, seed: u64, device: &Device) -> Linear {
        let mut l = LinearConfig::new(d_in, d_out).init(device);
        let w = host_randn(seed, d_in * d_out, (1.0 / d_in as f32).sqrt());
        l.weight = burn::module::Param::from_tensor(Tensor::from_data(
            burn::tensor::TensorData::new(w, [d_in, d_out]),
            device,
        ));
        l.bias = Some(burn::module::Param::from_tensor(Tensor::from_data(
            burn::tensor::TensorData::new(host_randn(seed + 50, d_out, 0.1), [d_out]),
            device,
        )));
        l
    }

    impl Mlp {
        fn new(device: &Device, seed: u64) -> Self {
            Self {
                a: linear(4, 16, seed, device),
                b: linear(16, 1, seed + 1, device),
            }
        }
        fn forward(&self, x: Tensor<2>) -> Tensor<2> {
            self.b
                .forward(burn::tensor::activation::gelu(self.a.forward(x)))
        }
    }

    fn data(device: &Device, i: u64) -> (Tensor<2>, Tensor<2>) {
        let x = Tensor::<2>::from_data(
            burn::tensor::TensorData::new(host_randn(100 + i, 32 * 4, 1.0), [32, 4]),
            device,
        );
        let y = x.clone().sin().sum_dim(1);
        (x, y)
    }

    fn run(
        model: Mlp,
        optim: &mut impl ModelOptimizer,
        from: u64,
        to: u64,
        d: &Device,
    ) -> (Mlp, Vec<f32>) {
        let mut m = model;
        let mut losses = Vec::new();
        for i in from..to {
            let (x, y) = data(d, i);
            let (next, l) = train_step(m, optim, 1e-2, |m| (m.forward(x) - y).square().mean());
            m = next;
            losses.push(l.expect("finite"));
        }
        (m, losses)
    }

    #[test]
    fn a_non_finite_loss_makes_no_update() {
        let d = Device::flex().autodiff();
        let mut optim = AdamWConfig::new().init();
        let m = Mlp::new(&d, 5);
        let before: Vec<f32> = m.a.weight.val().into_data().try_to_vec().unwrap();
        let (x, _) = data(&d, 0);
        let (m, r) = train_step(m, &mut optim, 1e-2, |m| m.forward(x).mean() / 0.0);
        let after: Vec<f32> = m.a.weight.val().into_data().try_to_vec().unwrap();
        assert!(matches!(r, Err(NonFiniteLoss(v)) if !v.is_finite()));
        assert_eq!(before, after);
        assert!(r.unwrap_err().to_string().contains("training stopped"));
    }

    #[test]
    fn accumulating_two_half_batches_equals_one_full_batch_step() {
        let d = Device::flex().autodiff();
        let (x, y) = data(&d, 7);
        // Plain SGD: its update is proportional to the gradient, so a wrong scale (e.g. not
        // dividing by the micro-batch count) would show; Adam's first step would hide it.
        let mut o1 = burn::optim::SgdConfig::new().init();
        let (full, l1) = train_step(Mlp::new(&d, 11), &mut o1, 1e-2, |m| {
            (m.forward(x.clone()) - y.clone()).square().mean()
        });
        let mut o2 = burn::optim::SgdConfig::new().init();
        let (acc, l2) = train_step_accumulated(Mlp::new(&d, 11), &mut o2, 1e-2, 2, |m, i| {
            let r = i * 16..(i + 1) * 16;
            let xs = x.clone().slice([r.clone(), 0..4]);
            let ys = y.clone().slice([r, 0..1]);
            (m.forward(xs) - ys).square().mean()
        });
        assert!((l1.unwrap() - l2.unwrap()).abs() < 1e-5);
        let w = |m: &Mlp| -> Vec<f32> { m.a.weight.val().into_data().try_to_vec().unwrap() };
        let moved: f32 = w(&full)
            .iter()
            .zip(&w(&Mlp::new(&d, 11)))
            .map(|(a, b)| (a - b).abs())
            .sum();
        assert!(moved > 1e-4, "the step moved the weights ({moved})");
        for (a, b) in w(&full).iter().zip(&w(&acc)) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    /// Rows `r` of a batch, as a shard: its share of the batch and its data.
    fn shard(
        x: &Tensor<2>,
        y: &Tensor<2>,
        r: std::ops::Range<usize>,
    ) -> (f32, (Tensor<2>, Tensor<2>)) {
        let n = x.dims()[0];
        let xs = x.clone().slice([r.clone(), 0..4]);
        let ys = y.clone().slice([r.clone(), 0..1]);
        (r.len() as f32 / n as f32, (xs, ys))
    }

    #[test]
    fn concurrent_unequal_shards_equal_the_whole_batch_step_over_several_steps() {
        let d = Device::flex().autodiff();
        let w = |m: &Mlp| -> Vec<f32> {
            let mut v: Vec<f32> = m.a.weight.val().into_data().try_to_vec().unwrap();
            v.extend(m.b.weight.val().into_data().try_to_vec::<f32>().unwrap());
            v
        };
        let loss = |m: &Mlp, (x, y): (Tensor<2>, Tensor<2>)| (m.forward(x) - y).square().mean();
        // The second layer frozen: a shard's fresh leaves must keep it frozen.
        let init = || Mlp {
            b: Mlp::new(&d, 11).b.no_grad(),
            ..Mlp::new(&d, 11)
        };
        let (mut whole, mut sharded) = (init(), init());
        let mut o1 = AdamWConfig::new().init();
        let mut o2 = AdamWConfig::new().init();
        let (mut s1, mut s2) = (LossScale::default(), LossScale::default());
        for i in 0..4 {
            let (x, y) = data(&d, 20 + i);
            let (m, l1) = train_step_mixed(
                whole,
                &mut o1,
                1e-2,
                Some(1.0),
                Precision::F32,
                &mut s1,
                |m| loss(m, (x.clone(), y.clone())),
            );
            whole = m;
            // 32 rows as 8 + 13 + 11: unequal weights.
            let shards = vec![
                shard(&x, &y, 0..8),
                shard(&x, &y, 8..21),
                shard(&x, &y, 21..32),
            ];
            let (m, l2) = train_step_sharded(
                sharded,
                &mut o2,
                1e-2,
                Some(1.0),
                Precision::F32,
                &mut s2,
                shards,
                &loss,
            );
            sharded = m;
            let (l1, l2) = (l1.unwrap(), l2.unwrap());
            assert!(
                (l1 - l2).abs() < 1e-5 * l1.abs().max(1.0),
                "step {i}: loss {l1} vs {l2}"
            );
        }
        let start = w(&init());
        let moved: f32 = w(&whole)
            .iter()
            .zip(&start)
            .map(|(a, b)| (a - b).abs())
            .sum();
        assert!(moved > 1e-3, "the steps moved the weights ({moved})");
        for (a, b) in w(&whole).iter().zip(&w(&sharded)) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        let frozen: Vec<f32> = sharded.b.weight.val().into_data().try_to_vec().unwrap();
        let frozen0: Vec<f32> = init().b.weight.val().into_data().try_to_vec().unwrap();
        assert_eq!(frozen, frozen0, "a frozen parameter moved");
    }

    #[test]
    fn a_non_finite_shard_makes_no_update() {
        let d = Device::flex().autodiff();
        let (x, y) = data(&d, 3);
        let before: Vec<f32> = Mlp::new(&d, 5)
            .a
            .weight
            .val()
            .into_data()
            .try_to_vec()
            .unwrap();
        let mut optim = AdamWConfig::new().init();
        let shards = vec![shard(&x, &y, 0..16), shard(&x, &y, 16..32)];
        let first = x.clone().slice([0..1, 0..4]).into_data();
        let (m, r) = train_step_sharded(
            Mlp::new(&d, 5),
            &mut optim,
            1e-2,
            None,
            Precision::F32,
            &mut LossScale::default(),
            shards,
            &|m: &Mlp, (xs, ys): (Tensor<2>, Tensor<2>)| {
                let l = (m.forward(xs.clone()) - ys).square().mean();
                // Poison the second shard only.
                if xs.slice([0..1, 0..4]).into_data() == first {
                    l
                } else {
                    l / 0.0
                }
            },
        );
        assert!(matches!(r, Err(NonFiniteLoss(v)) if !v.is_finite()));
        let after: Vec<f32> = m.a.weight.val().into_data().try_to_vec().unwrap();
        assert_eq!(before, after);
    }

    #[test]
    fn global_clipping_scales_all_gradients_together_like_torch() {
        let d = Device::flex().autodiff();
        let (x, y) = data(&d, 2);
        let loss = |m: &Mlp| (m.forward(x.clone()) - y.clone()).square().mean() * 100.0;
        // SGD's update is lr · gradient: compare the clipped step with the raw one.
        let w = |m: &Mlp| -> Vec<f32> {
            let mut v: Vec<f32> = m.a.weight.val().into_data().try_to_vec().unwrap();
            v.extend(m.b.weight.val().into_data().try_to_vec::<f32>().unwrap());
            v
        };
        let start = w(&Mlp::new(&d, 4));
        let delta = |m: &Mlp| -> Vec<f32> { w(m).iter().zip(&start).map(|(a, b)| a - b).collect() };
        let mut o = burn::optim::SgdConfig::new().init();
        let (raw, _) = train_step_clipped(Mlp::new(&d, 4), &mut o, 1.0, None, loss);
        let mut o = burn::optim::SgdConfig::new().init();
        let (clipped, _) = train_step_clipped(Mlp::new(&d, 4), &mut o, 1.0, Some(0.5), loss);
        let (dr, dc) = (delta(&raw), delta(&clipped));
        let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        // The weights carry most of the gradient (biases add a little): the raw step is long,
        // the clipped one is the same direction scaled by one factor.
        assert!(norm(&dr) > 1.0, "raw step {}", norm(&dr));
        let k = norm(&dc) / norm(&dr);
        assert!(
            k < 0.5 / norm(&dr) + 1e-3,
            "clipped to at most the bound: {k}"
        );
        for (a, b) in dr.iter().zip(&dc) {
            assert!((a * k - b).abs() < 1e-5, "{a} · {k} vs {b}");
        }
    }

    #[derive(Serialize, Deserialize)]
    struct State {
        step: u64,
    }

    #[test]
    fn loss_decreases_and_resume_continues_exactly() {
        let d = Device::flex().autodiff();
        let mut optim = AdamWConfig::new().init();
        let (_, straight) = run(Mlp::new(&d, 3), &mut optim, 0, 60, &d);
        assert!(
            straight[59] < 0.3 * straight[0],
            "{} → {}",
            straight[0],
            straight[59]
        );

        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("ckpt");
        let mut optim = AdamWConfig::new().init();
        let (m, first) = run(Mlp::new(&d, 3), &mut optim, 0, 30, &d);
        crate::checkpoint::save(&ck, &m, &optim, &State { step: 30 }).unwrap();
        drop((m, optim));
        // A fresh process would build a new model (new parameter ids) and optimizer.
        let fresh = Mlp::new(&d, 999);
        let (m, mut optim, st): (Mlp, _, State) =
            crate::checkpoint::load(&ck, fresh, AdamWConfig::new().init()).unwrap();
        assert_eq!(st.step, 30);
        let (_, second) = run(m, &mut optim, 30, 60, &d);
        let resumed: Vec<f32> = first.into_iter().chain(second).collect();
        for (i, (a, b)) in straight.iter().zip(&resumed).enumerate() {
            assert!(
                (a - b).abs() <= 1e-6 * a.abs().max(1.0),
                "step {i}: {a} vs {b}"
            );
        }
    }

    /// f16 loss scaling: a scale that overflows the half-precision gradients skips the update
    /// (weights unchanged) and halves; once the scaled gradients fit, the step applies and
    /// equals the f32 step within f16 rounding.
    #[test]
    fn f16_overflow_skips_the_step_and_backs_off() {
        use crate::precision::{LossScale, Precision};
        let d = Device::flex().autodiff();
        let (x, y) = data(&d, 0);
        // A loss of ~1e2 · scale 2^16 puts the scaled gradients far past f16's 65504.
        let loss = |m: &Mlp| {
            let x = x.clone().cast(burn::tensor::FloatDType::F16);
            ((m.forward(x).cast(burn::tensor::FloatDType::F32) - y.clone()) * 10.0)
                .square()
                .mean()
        };
        let weights = |m: &Mlp| m.a.weight.val().into_data().try_to_vec::<f32>().unwrap();
        let mut optim = AdamWConfig::new().init();
        let mut scale = LossScale::default();
        let mut step = |m: Mlp, scale: &mut LossScale| {
            train_step_mixed(m, &mut optim, 1e-2, None, Precision::F16, scale, loss)
        };
        let model = Mlp::new(&d, 7);
        let w0 = weights(&model);
        let (model, l) = step(model, &mut scale);
        assert!(l.unwrap().is_finite());
        assert_eq!(scale.scale, 32768.0, "overflow halves the scale");
        assert_eq!(weights(&model), w0, "and skips the update");
        let mut model = model;
        let mut skipped = 1;
        while weights(&model) == w0 {
            let (m, _) = step(model, &mut scale);
            model = m;
            skipped += 1;
            assert!(skipped < 17, "the scale never fit: {scale:?}");
        }
        assert!(scale.scale < 65536.0 && scale.good_steps == 1, "{scale:?}");
        // The applied step matches the same step in f32.
        let mut optim32 = AdamWConfig::new().init();
        let reference = Mlp::new(&d, 7);
        let (reference, _) = train_step(reference, &mut optim32, 1e-2, |m: &Mlp| {
            ((m.forward(x.clone()) - y.clone()) * 10.0).square().mean()
        });
        let (a, b) = (weights(&model), weights(&reference));
        let max = a
            .iter()
            .zip(&b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0f32, f32::max);
        assert!(max < 1e-3, "f16 step vs f32 step differ by {max}");
        assert!(a != w0);
    }
}
