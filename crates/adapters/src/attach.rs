//! Attaching adapters: a pass over a model's parameters that gives every 2-D weight whose
//! checkpoint key matches the target pattern an [`Adapters`] reparameterization. Targets are
//! matched on **checkpoint module names** (the weight's file key without `.weight`, e.g.
//! `transformer_blocks.0.attn.to_q`), as PEFT's `target_modules` are, so presets and user
//! regexes read like the model files, whatever the Rust field names are.

use burn::module::{Module, Param, Reparameterizer};
use burn::tensor::{Device, Tensor, TensorData};
use regex::Regex;

use dreamforge_core::init::{InitKind, Initializer};

use crate::branch::{Adapters, Branch, Frozen};
use crate::rank::RankSchedule;

/// Which adapter, with its method-specific settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AdapterKind {
    /// PEFT LoRA: `A ~ U(±1/√d_in)` (PEFT's `kaiming_uniform_(a=√5)`), `B = 0`,
    /// `scale = alpha / r`, or `alpha / √r` with rsLoRA.
    Lora { alpha: f64, rslora: bool },
    /// T-LoRA: a rank mask set per step from `schedule`, scale 1. Vanilla (`--trainer_type
    /// lora`): `down ~ N(0, 1/r²)`, `up = 0`. Orthogonal (`ortho_lora`, the method the paper
    /// names T-LoRA): `Q`, `P` orthonormal frames and `λ` the smallest singular values of a
    /// `N(0, 1/r²)` matrix ([`crate::ortho`]), all trainable, minus frozen copies (`ΔW = 0`).
    TLora {
        schedule: RankSchedule,
        orthogonal: bool,
    },
}

/// A fresh adapter's definition.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdapterInit {
    pub kind: AdapterKind,
    pub rank: usize,
    /// Values depend on the seed and each weight's key only.
    pub seed: u64,
}

fn zero_up(key: &str, _shape: &[usize]) -> Option<InitKind> {
    key.ends_with(".lora_B.weight").then_some(InitKind::Zeros)
}

fn tlora_down(key: &str, shape: &[usize]) -> Option<InitKind> {
    key.ends_with(".lora_A.weight")
        .then(|| InitKind::Normal(1.0 / shape[0].max(1) as f32))
}

impl AdapterInit {
    /// A fresh branch for the weight of checkpoint module `module` (Burn layout `[d_in, d_out]`).
    /// The layer's rank is `min(rank, d_in, d_out)`, as the T-LoRA reference sizes its layers.
    pub fn branch(&self, module: &str, d_in: usize, d_out: usize, device: &Device) -> Branch {
        let r = self.rank.min(d_in).min(d_out).max(1);
        let mut init = Initializer::new(self.seed).with_rule(zero_up);
        if matches!(self.kind, AdapterKind::TLora { .. }) {
            init = init.with_rule(tlora_down);
        }
        let param = |key: String, shape: [usize; 2]| {
            let h = init.tensor(&key, &shape);
            Param::from_tensor(Tensor::<2>::from_data(
                TensorData::new(h.data, shape),
                device,
            ))
        };
        if let AdapterKind::TLora {
            orthogonal: true, ..
        } = self.kind
        {
            return self.ortho_branch(module, r, d_in, d_out, device);
        }
        let scale = match self.kind {
            AdapterKind::Lora { alpha, rslora } => {
                if rslora {
                    alpha / (r as f64).sqrt()
                } else {
                    alpha / r as f64
                }
            }
            AdapterKind::TLora { .. } => 1.0,
        };
        Branch {
            down: param(format!("{module}.lora_A.weight"), [r, d_in]),
            up: param(format!("{module}.lora_B.weight"), [d_out, r]),
            lambda: None,
            frozen: None,
            mask: Param::from_tensor(Tensor::<1>::ones([r], device)).set_require_grad(false),
            scale,
        }
    }
}

impl AdapterInit {
    fn ortho_branch(
        &self,
        module: &str,
        r: usize,
        d_in: usize,
        d_out: usize,
        device: &Device,
    ) -> Branch {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(dreamforge_core::init::key_seed(
            self.seed,
            &format!("{module}.ortho"),
        ));
        // The reference's matrix std is 1/R with R the requested rank.
        let f = crate::ortho::ortho_factors(d_in, d_out, r, 1.0 / self.rank as f64, &mut rng);
        let t2 = |v: &[f32], shape: [usize; 2]| {
            Tensor::<2>::from_data(TensorData::new(v.to_vec(), shape), device)
        };
        let t1 = |v: &[f32]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [r]), device);
        let frozen = |t: Param<Tensor<2>>| t.set_require_grad(false);
        Branch {
            down: Param::from_tensor(t2(&f.q, [r, d_in])),
            up: Param::from_tensor(t2(&f.p, [d_out, r])),
            lambda: Some(Param::from_tensor(t1(&f.lambda))),
            frozen: Some(Frozen {
                down: frozen(Param::from_tensor(t2(&f.q, [r, d_in]))),
                up: frozen(Param::from_tensor(t2(&f.p, [d_out, r]))),
                lambda: Param::from_tensor(t1(&f.lambda)).set_require_grad(false),
            }),
            mask: Param::from_tensor(Tensor::<1>::ones([r], device)).set_require_grad(false),
            scale: 1.0,
        }
    }
}

struct Attach<'a, K, F> {
    key_of: K,
    targets: &'a Regex,
    make: F,
    adapted: &'a mut Vec<String>,
}

impl<K, F> Reparameterizer for Attach<'_, K, F>
where
    K: Fn(&str) -> Option<String>,
    F: FnMut(&str, usize, usize, &Device) -> Vec<Option<Branch>>,
{
    type Reparam = Adapters;

    fn reparameterize<const D: usize>(
        &mut self,
        path: &str,
        param: Param<Tensor<D>>,
    ) -> (Param<Tensor<D>>, Option<Adapters>) {
        if D != 2 {
            return (param, None);
        }
        let Some(module) = (self.key_of)(path)
            .and_then(|k| k.strip_suffix(".weight").map(str::to_owned))
            .filter(|m| self.targets.is_match(m))
        else {
            return (param, None);
        };
        let dims = param.val().dims();
        let device = param.lazy_device();
        let branches = (self.make)(&module, dims[0], dims[1], &device);
        if branches.iter().all(Option::is_none) {
            return (param, None);
        }
        self.adapted.push(module);
        (param, Some(Adapters { branches }))
    }
}

/// Gives every 2-D weight whose checkpoint module name (`key_of(path)` without `.weight`)
/// matches `targets` the branches `make(module, d_in, d_out, device)` returns, slot `i` for
/// adapter `i` (`None` where adapter `i` skips the weight; all `None`: left alone). All adapters of a weight must be attached in one pass: attaching replaces any
/// adapters the weight had. Returns the model and the adapted module names, in model order.
pub fn attach<M: Module>(
    model: M,
    key_of: impl Fn(&str) -> Option<String>,
    targets: &Regex,
    make: impl FnMut(&str, usize, usize, &Device) -> Vec<Option<Branch>>,
) -> (M, Vec<String>) {
    let mut adapted = Vec::new();
    let model = model.apply_reparameterization(Attach {
        key_of,
        targets,
        make,
        adapted: &mut adapted,
    });
    (model, adapted)
}
