//! The Prodigy optimizer (Mishchenko & Defazio, "Prodigy: An Expeditiously Adaptive
//! Parameter-Free Learner"): Adam whose step size `d` is estimated on the fly, so the
//! learning rate stays near 1.0. Follows `prodigyopt` 1.1.2 (`prodigyopt/prodigy.py`) for one
//! parameter group with `slice_p = 1` and no FSDP, step for step:
//!
//! - `dlr = d · lr · bc` (`bc = √(1 − β2^(k+1)) / (1 − β1^(k+1))` with `use_bias_correction`,
//!   else 1); `d_numerator ← β3 · d_numerator`.
//! - For every parameter with a gradient `g` (first seen: `p0 = p`, `s = m = v = 0`; without
//!   `decouple`, `g += weight_decay · p`), when `lr > 0`: `d_numerator += (d/d0) · dlr ·
//!   ⟨g, p0 − p⟩`, `m ← β1·m + d(1−β1)·g`, `v ← β2·v + d²(1−β2)·g²`, `s ← β3·s + (d/d0) ·
//!   (safeguard_warmup ? d : dlr) · g`, `d_denom += Σ|s|`.
//! - `d_denom == 0` (no gradient, all-zero gradients, or `lr == 0`): return without touching the
//!   parameters, `d`, `d_numerator` or `k` — the moments stay updated, as the reference does.
//! - `d̂ = d_coef · d_numerator / d_denom`; `d ← max(d, d̂)` while `d == d0`; `d_max ←
//!   max(d_max, d̂)`; `d ← min(d_max, d · growth_rate)`.
//! - Every parameter: with `decouple`, `p ← p − weight_decay · dlr · p`; then `p ← p − dlr · m
//!   / (√v + d·eps)` (new `d` in the denominator, `dlr` from the start of the step; with `β1 =
//!   0`, `p ← p − dlr · d · g / (√v + d·eps)`); `k ← k + 1`.
//!
//! Scalars (`d`, `d_max`, `d_numerator`) are kept in f64 like the reference's Python floats,
//! per-parameter state in the parameter's float type; the per-parameter dot products and
//! `Σ|s|` are read back to the host once per step, together. Per-parameter state is keyed by
//! module path (`a.weight`), not `ParamId`, so it survives a checkpoint reload into a freshly
//! built model. Per-tensor gradient clipping (`grad_clip_mode: per_tensor`), when set, clips
//! each gradient to the norm first, as Burn's optimizers do.
//!
//! Saved state: a safetensors file with `<path>.p0`, `<path>.s`, `<path>.v` (and `<path>.m`
//! when `β1 > 0`), flat f32, and `d`, `d_max`, `d_numerator`, `k` as decimal strings in its
//! metadata.

use std::collections::HashMap;
use std::path::Path;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::optim::grad_clipping::GradientClipping;
use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

fn yes() -> bool {
    true
}
fn d0() -> f64 {
    1e-6
}
fn one() -> f64 {
    1.0
}

/// Prodigy's own settings, named like `prodigyopt.Prodigy`'s arguments; `betas`, `eps` and
/// `weight_decay` are the [`OptimizerConfig`](crate::OptimizerConfig)'s `beta1` / `beta2`,
/// `eps` and `weight_decay` (whose default there, 1e-2, is not prodigyopt's 0), and `lr` is
/// the schedule's (normally a base of 1.0).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ProdigyConfig {
    /// Decay of the step-size statistics; `None`: `√β2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta3: Option<f64>,
    /// AdamW-style decoupled weight decay (else added to the gradient).
    #[serde(default = "yes")]
    pub decouple: bool,
    #[serde(default)]
    pub use_bias_correction: bool,
    /// Leave `lr` out of the `d` estimate's denominator (helps with warmup schedules).
    #[serde(default)]
    pub safeguard_warmup: bool,
    /// Initial `d`.
    #[serde(default = "d0")]
    pub d0: f64,
    /// Scales the `d` estimate (the preferred knob: 0.5–2).
    #[serde(default = "one")]
    pub d_coef: f64,
    /// Largest factor `d` may grow by per step; `None`: unbounded (prodigyopt's `inf`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub growth_rate: Option<f64>,
}

impl Default for ProdigyConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("all fields have defaults")
    }
}

/// Everything a step needs, as f64 (the reference's Python floats).
#[derive(Debug, Clone, Copy)]
struct Settings {
    beta1: f64,
    beta2: f64,
    beta3: f64,
    eps: f64,
    weight_decay: f64,
    decouple: bool,
    use_bias_correction: bool,
    safeguard_warmup: bool,
    d0: f64,
    d_coef: f64,
    growth_rate: f64,
    clip_norm: Option<f32>,
}

/// One parameter's state, flat: on the host after a load until its first step.
enum State {
    Host(HashMap<&'static str, TensorData>),
    Device(Box<Moments>),
}

struct Moments {
    p0: Tensor<1>,
    s: Tensor<1>,
    m: Option<Tensor<1>>,
    v: Tensor<1>,
}

impl Moments {
    fn parts(&self) -> Vec<(&'static str, &Tensor<1>)> {
        let mut out = vec![("p0", &self.p0), ("s", &self.s), ("v", &self.v)];
        if let Some(m) = &self.m {
            out.push(("m", m));
        }
        out
    }
}

/// The Prodigy optimizer over a whole module (see the module docs).
pub struct Prodigy {
    settings: Settings,
    d: f64,
    d_max: f64,
    d_numerator: f64,
    k: u64,
    states: HashMap<String, State>,
}

/// Prodigy's step-size estimate and its statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProdigyScalars {
    pub d: f64,
    pub d_max: f64,
    pub d_numerator: f64,
    /// Steps that updated the parameters.
    pub k: u64,
}

impl Prodigy {
    /// A fresh optimizer: `betas`, `eps`, `weight_decay` as prodigyopt takes them, and the
    /// per-tensor clipping norm, if any.
    pub fn new(
        config: &ProdigyConfig,
        betas: (f64, f64),
        eps: f64,
        weight_decay: f64,
        clip_norm: Option<f32>,
    ) -> Self {
        let settings = Settings {
            beta1: betas.0,
            beta2: betas.1,
            beta3: config.beta3.unwrap_or(betas.1.sqrt()),
            eps,
            weight_decay,
            decouple: config.decouple,
            use_bias_correction: config.use_bias_correction,
            safeguard_warmup: config.safeguard_warmup,
            d0: config.d0,
            d_coef: config.d_coef,
            growth_rate: config.growth_rate.unwrap_or(f64::INFINITY),
            clip_norm,
        };
        Self {
            settings,
            d: config.d0,
            d_max: config.d0,
            d_numerator: 0.0,
            k: 0,
            states: HashMap::new(),
        }
    }

    /// The current `d`, `d_max`, `d_numerator` and step count.
    pub fn scalars(&self) -> ProdigyScalars {
        ProdigyScalars {
            d: self.d,
            d_max: self.d_max,
            d_numerator: self.d_numerator,
            k: self.k,
        }
    }

    /// One step at learning rate `lr` with the gradients `grads` of `model`'s parameters.
    pub fn step<M: Module>(&mut self, lr: f64, model: M, mut grads: GradientsParams) -> M {
        let s = self.settings;
        let bias_correction = if s.use_bias_correction {
            let k = self.k as f64 + 1.0;
            (1.0 - s.beta2.powf(k)).sqrt() / (1.0 - s.beta1.powf(k))
        } else {
            1.0
        };
        let d = self.d;
        let dlr = d * lr * bias_correction;
        let mut gather = Gather {
            stack: Vec::new(),
            grads: &mut grads,
            states: &mut self.states,
            settings: s,
            update: lr > 0.0,
            d,
            dlr,
            dots: Vec::new(),
            sums: Vec::new(),
            touched: HashMap::new(),
        };
        model.visit(&mut gather);
        let Gather {
            dots,
            sums,
            touched,
            ..
        } = gather;
        if dots.is_empty() {
            return model;
        }
        let n = dots.len();
        let read: Vec<f32> = Tensor::cat(dots.into_iter().chain(sums).collect(), 0)
            .into_data()
            .try_into_vec_as::<f32>()
            .expect("f32 statistics");
        let delta_numerator: f64 = read[..n].iter().map(|&x| (d / s.d0) * dlr * x as f64).sum();
        let d_denom: f64 = read[n..].iter().map(|&x| x as f64).sum();
        if d_denom == 0.0 {
            return model;
        }
        let d_numerator = self.d_numerator * s.beta3 + delta_numerator;
        let d_hat = s.d_coef * d_numerator / d_denom;
        let mut d_new = d;
        if d_new == s.d0 {
            d_new = d_new.max(d_hat);
        }
        self.d_max = self.d_max.max(d_hat);
        d_new = self.d_max.min(d_new * s.growth_rate);
        self.d_numerator = d_numerator;
        self.d = d_new;
        let model = model.map(&mut Apply {
            stack: Vec::new(),
            states: &self.states,
            touched,
            settings: s,
            d: d_new,
            dlr,
        });
        self.k += 1;
        model
    }

    /// Writes the state to `path` (safetensors, see the module docs).
    pub fn save(&self, path: &Path) -> Result<(), String> {
        let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        for (name, state) in &self.states {
            let parts: Vec<(&str, TensorData)> = match state {
                State::Host(map) => map.iter().map(|(k, v)| (*k, v.clone())).collect(),
                State::Device(m) => m
                    .parts()
                    .into_iter()
                    .map(|(k, t)| (k, t.clone().into_data()))
                    .collect(),
            };
            for (part, data) in parts {
                let v = data
                    .try_into_vec_as::<f32>()
                    .map_err(|e| format!("{e:?}"))?;
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                bufs.push((format!("{name}.{part}"), vec![v.len()], bytes));
            }
        }
        let views = bufs
            .iter()
            .map(|(k, shape, b)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), b)
                    .map(|v| (k.clone(), v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        let meta = HashMap::from([
            ("format".to_string(), "dreamforge-prodigy".to_string()),
            ("d".to_string(), format!("{:e}", self.d)),
            ("d_max".to_string(), format!("{:e}", self.d_max)),
            ("d_numerator".to_string(), format!("{:e}", self.d_numerator)),
            ("k".to_string(), self.k.to_string()),
        ]);
        safetensors::serialize_to_file(views, Some(meta), path).map_err(|e| e.to_string())
    }

    /// Reads the state [`save`](Self::save) wrote into this (freshly built) optimizer.
    pub fn load(mut self, path: &Path) -> Result<Self, String> {
        let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| e.to_string())?;
        let (_, header) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| e.to_string())?;
        let meta = header
            .metadata()
            .as_ref()
            .ok_or("no metadata: not a Prodigy state")?;
        if meta.get("format").map(String::as_str) != Some("dreamforge-prodigy") {
            return Err(
                "not a Prodigy state (metadata `format` is not `dreamforge-prodigy`)".into(),
            );
        }
        let scalar = |k: &str| -> Result<f64, String> {
            meta.get(k)
                .ok_or_else(|| format!("metadata `{k}` is missing"))?
                .parse::<f64>()
                .map_err(|e| format!("metadata `{k}`: {e}"))
        };
        self.d = scalar("d")?;
        self.d_max = scalar("d_max")?;
        self.d_numerator = scalar("d_numerator")?;
        self.k = meta
            .get("k")
            .ok_or("metadata `k` is missing")?
            .parse()
            .map_err(|e| format!("metadata `k`: {e}"))?;
        let mut states: HashMap<String, HashMap<&'static str, TensorData>> = HashMap::new();
        for (name, view) in st.iter() {
            let (param, part) = name
                .rsplit_once('.')
                .ok_or_else(|| format!("unexpected tensor `{name}`"))?;
            let part = ["p0", "s", "m", "v"]
                .into_iter()
                .find(|p| *p == part)
                .ok_or_else(|| format!("unexpected tensor `{name}`"))?;
            if view.dtype() != safetensors::Dtype::F32 || view.shape().len() != 1 {
                return Err(format!("`{name}` is not a flat f32 tensor"));
            }
            let v: Vec<f32> = view
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let n = v.len();
            states
                .entry(param.to_string())
                .or_default()
                .insert(part, TensorData::new(v, [n]));
        }
        let needs_m = self.settings.beta1 > 0.0;
        for (name, parts) in &states {
            for p in ["p0", "s", "v"].into_iter().chain(needs_m.then_some("m")) {
                if !parts.contains_key(p) {
                    return Err(format!("`{name}.{p}` is missing"));
                }
            }
        }
        self.states = states
            .into_iter()
            .map(|(k, v)| (k, State::Host(v)))
            .collect();
        Ok(self)
    }
}

/// Pass 1: gradients → moments and the `d` statistics (as device scalars, read once).
struct Gather<'a> {
    stack: Vec<String>,
    grads: &'a mut GradientsParams,
    states: &'a mut HashMap<String, State>,
    settings: Settings,
    update: bool,
    d: f64,
    dlr: f64,
    dots: Vec<Tensor<1>>,
    sums: Vec<Tensor<1>>,
    /// Parameters to update in pass 2, with their gradient when `β1 = 0` (no first moment).
    touched: HashMap<String, Option<Tensor<1>>>,
}

impl ModuleVisitor for Gather<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(g) = self.grads.remove::<D>(param.id) else {
            return;
        };
        let s = self.settings;
        let path = self.stack.join(".");
        let p = param.val().inner();
        let n = p.shape().num_elements();
        let p = p.reshape([n]);
        let mut g = g.reshape([n]);
        if let Some(c) = s.clip_norm {
            g = GradientClipping::Norm(c).clip_gradient(g);
        }
        if s.weight_decay != 0.0 && !s.decouple {
            g = g + p.clone() * s.weight_decay as f32;
        }
        let state = self.states.remove(&path);
        let mut st = match state {
            None => Moments {
                p0: p.clone(),
                s: p.zeros_like(),
                m: (s.beta1 > 0.0).then(|| p.zeros_like()),
                v: p.zeros_like(),
            },
            Some(State::Device(m)) => *m,
            Some(State::Host(mut parts)) => {
                let device = g.device();
                let mut take = |k: &str| {
                    parts
                        .remove(k)
                        .map(|data| Tensor::<1>::from_data(data, &device))
                };
                let st = Moments {
                    p0: take("p0").expect("checked on load"),
                    s: take("s").expect("checked on load"),
                    m: if s.beta1 > 0.0 {
                        Some(take("m").expect("checked on load"))
                    } else {
                        None
                    },
                    v: take("v").expect("checked on load"),
                };
                assert_eq!(
                    st.p0.shape().num_elements(),
                    n,
                    "Prodigy state `{path}` does not match the parameter's size"
                );
                st
            }
        };
        if self.update {
            let (d, d0, dlr) = (self.d, s.d0, self.dlr);
            self.dots
                .push((g.clone() * (st.p0.clone() - p)).sum().reshape([1]));
            if let Some(m) = st.m.take() {
                st.m = Some(m * s.beta1 as f32 + g.clone() * (d * (1.0 - s.beta1)) as f32);
            }
            st.v = st.v * s.beta2 as f32 + g.clone() * (d * d * (1.0 - s.beta2)) as f32 * g.clone();
            let alpha = (d / d0) * if s.safeguard_warmup { d } else { dlr };
            st.s = st.s * s.beta3 as f32 + g.clone() * alpha as f32;
            self.sums.push(st.s.clone().abs().sum().reshape([1]));
            self.touched
                .insert(path.clone(), st.m.is_none().then_some(g));
        }
        self.states.insert(path, State::Device(Box::new(st)));
    }
}

/// Pass 2: the parameter updates with the new `d`.
struct Apply<'a> {
    stack: Vec<String>,
    states: &'a HashMap<String, State>,
    touched: HashMap<String, Option<Tensor<1>>>,
    settings: Settings,
    d: f64,
    dlr: f64,
}

impl ModuleMapper for Apply<'_> {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let path = self.stack.join(".");
        let Some(grad) = self.touched.remove(&path) else {
            return param;
        };
        let Some(State::Device(st)) = self.states.get(&path) else {
            return param;
        };
        let s = self.settings;
        let (id, tensor, mapper) = param.consume();
        let autodiff = tensor.is_autodiff();
        let require_grad = tensor.is_require_grad();
        let strategy = tensor.gradient_checkpointing_strategy();
        let dims = tensor.dims();
        let n = tensor.shape().num_elements();
        let mut p = tensor.inner().reshape([n]);
        let denom = st.v.clone().sqrt() + (self.d * s.eps) as f32;
        if s.weight_decay != 0.0 && s.decouple {
            p = p.clone() + p * (-s.weight_decay * self.dlr) as f32;
        }
        p = match (&st.m, grad) {
            (Some(m), _) => p + m.clone() * (-self.dlr) as f32 / denom,
            (None, Some(g)) => p + g * (-self.dlr * self.d) as f32 / denom,
            (None, None) => unreachable!("the gradient is kept when there is no first moment"),
        };
        let updated = p.reshape(dims);
        let value = if autodiff {
            let mut t = Tensor::from_inner(updated);
            if let Some(strategy) = strategy {
                t = t.with_gradient_checkpointing_strategy(strategy);
            }
            if require_grad {
                t = t.require_grad();
            }
            t
        } else {
            updated
        };
        Param::from_mapped_value(id, value, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{ModelOptimizer, Optimizer, OptimizerConfig};
    use crate::step::train_step;
    use burn::nn::Linear;
    use burn::tensor::Device;
    use burn::tensor::activation::tanh;

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/prodigy.safetensors"
    );

    #[derive(Module, Debug)]
    struct Mlp {
        a: Linear,
        b: Linear,
    }

    impl Mlp {
        fn forward(&self, x: Tensor<2>) -> Tensor<2> {
            self.b.forward(tanh(self.a.forward(x)))
        }

        /// Every parameter in PyTorch's layout and order (`0.weight` [out, in], `0.bias`, …).
        fn torch_params(&self) -> Vec<Vec<f32>> {
            let v = |t: Tensor<2>| t.into_data().try_to_vec::<f32>().unwrap();
            let b = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
            vec![
                v(self.a.weight.val().transpose()),
                b(self.a.bias.as_ref().unwrap().val()),
                v(self.b.weight.val().transpose()),
                b(self.b.bias.as_ref().unwrap().val()),
            ]
        }
    }

    struct Fixture {
        bytes: Vec<u8>,
    }

    impl Fixture {
        fn open() -> Self {
            Self {
                bytes: std::fs::read(FIXTURE).expect("tools/parity/prodigy.py writes it"),
            }
        }

        fn get(&self, name: &str) -> (Vec<f64>, Vec<usize>) {
            let st = safetensors::SafeTensors::deserialize(&self.bytes).unwrap();
            let t = st.tensor(name).unwrap_or_else(|_| panic!("{name}"));
            let v = match t.dtype() {
                safetensors::Dtype::F32 => t
                    .data()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                safetensors::Dtype::F64 => t
                    .data()
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                other => panic!("{name}: {other:?}"),
            };
            (v, t.shape().to_vec())
        }

        fn f32s(&self, name: &str) -> Vec<f32> {
            self.get(name).0.into_iter().map(|x| x as f32).collect()
        }

        fn tensor2(&self, name: &str, d: &Device) -> Tensor<2> {
            let (v, s) = self.get(name);
            let v: Vec<f32> = v.into_iter().map(|x| x as f32).collect();
            Tensor::from_data(TensorData::new(v, [s[0], s[1]]), d)
        }

        fn meta(&self, key: &str) -> serde_json::Value {
            let (_, h) = safetensors::SafeTensors::read_metadata(&self.bytes).unwrap();
            serde_json::from_str(&h.metadata().as_ref().unwrap()[key]).unwrap()
        }

        /// The fixture's initial model (PyTorch [out, in] weights transposed to Burn's).
        fn model(&self, d: &Device) -> Mlp {
            let lin = |i: usize| Linear {
                weight: Param::from_tensor(
                    self.tensor2(&format!("init.{i}.weight"), d).transpose(),
                ),
                bias: Some(Param::from_tensor(Tensor::from_data(
                    TensorData::new(
                        self.f32s(&format!("init.{i}.bias")),
                        [self.get(&format!("init.{i}.bias")).1[0]],
                    ),
                    d,
                ))),
            };
            Mlp {
                a: lin(0),
                b: lin(2),
            }
        }
    }

    /// The run config for a case's prodigyopt keyword arguments.
    fn config(kwargs: &serde_json::Value) -> OptimizerConfig {
        let mut top = serde_json::Map::new();
        let mut prodigy = serde_json::Map::new();
        for (k, v) in kwargs.as_object().unwrap() {
            match k.as_str() {
                "weight_decay" | "eps" => {
                    top.insert(k.clone(), v.clone());
                }
                "betas" => {
                    top.insert("beta1".into(), v[0].clone());
                    top.insert("beta2".into(), v[1].clone());
                }
                _ => {
                    prodigy.insert(k.clone(), v.clone());
                }
            }
        }
        top.insert(
            "algorithm".into(),
            serde_json::json!({ "prodigy": prodigy }),
        );
        serde_json::from_value(serde_json::Value::Object(top)).unwrap()
    }

    fn scalars(o: &Optimizer) -> ProdigyScalars {
        match o {
            Optimizer::Prodigy(p) => p.scalars(),
            Optimizer::Burn(_) => panic!("not Prodigy"),
        }
    }

    fn mse(m: &Mlp, x: &Tensor<2>, y: &Tensor<2>) -> Tensor<1> {
        (m.forward(x.clone()) - y.clone()).square().mean()
    }

    /// Each case of `tools/parity/prodigy.py`, step by step through `train_step`: the weights
    /// within 1e-5 · max(1, max |w|) of prodigyopt's (max abs) and within 1e-3 of how far
    /// they moved from the start (the default d0 moves them by only ~1e-4 in 6 steps), and `d`
    /// within 1e-5 relative. Measured (`--nocapture` prints them): ≤ 3e-8 except `no_momentum`
    /// (≤ 2.4e-6 after the weights moved by up to 1.0), `d` ≤ 1e-7 relative.
    #[test]
    fn parity_with_prodigyopt() {
        let dev = Device::flex().autodiff();
        let fx = Fixture::open();
        let x = fx.tensor2("x", &dev);
        let y = fx.tensor2("y", &dev);
        let lrs = fx.get("lr").0;
        let cases = fx.meta("cases");
        let names = ["0.weight", "0.bias", "2.weight", "2.bias"];
        for (case, kwargs) in cases.as_object().unwrap() {
            let mut optim = config(kwargs).build();
            let mut m = fx.model(&dev);
            let start = m.torch_params();
            let mut line = Vec::new();
            for (i, &lr) in lrs.iter().enumerate() {
                let (next, loss) = train_step(m, &mut optim, lr, |m| mse(m, &x, &y));
                m = next;
                let want_loss = fx.get(&format!("{case}.{i}.loss")).0[0];
                assert!((loss.unwrap() as f64 - want_loss).abs() < 1e-5 * want_loss);
                let (mut diff, mut moved, mut scale) = (0.0f32, 0.0f32, 1.0f32);
                for ((got, s), n) in m.torch_params().iter().zip(&start).zip(names) {
                    let want = fx.f32s(&format!("{case}.{i}.{n}"));
                    for ((a, b), s) in got.iter().zip(&want).zip(s) {
                        diff = diff.max((a - b).abs());
                        moved = moved.max((b - s).abs());
                        scale = scale.max(b.abs());
                    }
                }
                let d = scalars(&optim).d;
                let want_d = fx.get(&format!("{case}.{i}.d")).0[0];
                let d_rel = (d - want_d).abs() / want_d;
                line.push(format!("{diff:.1e} (moved {moved:.1e}, d rel {d_rel:.1e})"));
                assert!(
                    diff <= 1e-5 * scale && diff <= 1e-3 * moved,
                    "{case} step {i}: {line:?}"
                );
                assert!(d_rel <= 1e-5, "{case} step {i}: d {d} vs {want_d}");
            }
            println!("{case}: max abs weight diff per step: {}", line.join(", "));
        }
    }

    #[test]
    fn resuming_from_a_checkpoint_continues_exactly() {
        let dev = Device::flex().autodiff();
        let fx = Fixture::open();
        let (x, y) = (fx.tensor2("x", &dev), fx.tensor2("y", &dev));
        let cfg = config(&fx.meta("cases")["bias_correction"]);
        let run = |mut m: Mlp, o: &mut Optimizer, steps: std::ops::Range<usize>| {
            for i in steps {
                let lr = 1.0 - 0.1 * i as f64;
                m = train_step(m, o, lr, |m| mse(m, &x, &y)).0;
            }
            m
        };
        let mut straight_o = cfg.build();
        let straight = run(fx.model(&dev), &mut straight_o, 0..8);

        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("ckpt");
        let mut o = cfg.build();
        let m = run(fx.model(&dev), &mut o, 0..4);
        assert_eq!(o.state_file(), "optim.safetensors");
        crate::checkpoint::save(&ck, &m, &o, &serde_json::json!({"step": 4})).unwrap();
        assert!(ck.join("optim.safetensors").exists() && !ck.join("optim.bpk").exists());
        let before = scalars(&o);
        drop((m, o));
        // A fresh process: new parameter ids, a freshly built optimizer.
        let (m, mut o, _): (Mlp, _, serde_json::Value) =
            crate::checkpoint::load(&ck, fx.model(&dev), cfg.build()).unwrap();
        assert_eq!(scalars(&o), before);
        let resumed = run(m, &mut o, 4..8);
        assert_eq!(scalars(&o), scalars(&straight_o));
        assert_eq!(resumed.torch_params(), straight.torch_params());
        // An AdamW state is not a Prodigy state.
        let adamw = OptimizerConfig::default().build();
        let p = dir.path().join("adamw.bpk");
        adamw.save_state(&p).unwrap();
        let e = cfg.build().load_state(&p).err().unwrap();
        assert!(!e.is_empty());
    }

    #[test]
    fn all_zero_gradients_make_no_update() {
        let dev = Device::flex().autodiff();
        let fx = Fixture::open();
        let (x, y) = (fx.tensor2("x", &dev), fx.tensor2("y", &dev));
        let mut o = config(&fx.meta("cases")["plain"]).build();
        let fresh = scalars(&o);
        let m = fx.model(&dev);
        let start = m.torch_params();
        let (m, r) = train_step(m, &mut o, 1.0, |m| mse(m, &x, &y) * 0.0);
        assert!(r.is_ok());
        assert_eq!(m.torch_params(), start);
        assert_eq!(scalars(&o), fresh);
        // A zero learning rate is the same (prodigyopt skips the statistics), and the
        // parameters keep their autodiff flags: the next real step trains.
        let (m, _) = train_step(m, &mut o, 0.0, |m| mse(m, &x, &y));
        assert_eq!((m.torch_params(), scalars(&o)), (start.clone(), fresh));
        let (m, _) = train_step(m, &mut o, 1.0, |m| mse(m, &x, &y));
        assert_ne!(m.torch_params(), start);
        assert_eq!(scalars(&o).k, 1);
    }

    #[test]
    fn a_large_per_tensor_clip_changes_nothing_and_a_small_one_changes_the_steps() {
        let dev = Device::flex().autodiff();
        let fx = Fixture::open();
        let (x, y) = (fx.tensor2("x", &dev), fx.tensor2("y", &dev));
        let base = config(&fx.meta("cases")["coupled"]);
        let go = |clip: Option<f32>| {
            let mut o = OptimizerConfig {
                grad_clip_norm: clip,
                ..base
            }
            .build();
            let mut m = fx.model(&dev);
            for _ in 0..3 {
                m = train_step(m, &mut o, 1.0, |m| mse(m, &x, &y)).0;
            }
            (m.torch_params(), scalars(&o))
        };
        assert_eq!(go(None), go(Some(1e6)));
        assert_ne!(go(None).1, go(Some(1e-3)).1);
    }
}
