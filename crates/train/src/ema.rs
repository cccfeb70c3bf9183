//! An exponential moving average of a model's parameters, as diffusers' `EMAModel` keeps it:
//! after the k-th optimizer step, `ema ← d·ema + (1 − d)·θ` with `d = min(decay, (1 + s) /
//! (10 + s))`, `s = k − 1` (so the first update copies θ and the average warms up). The copy
//! lives off the autodiff graph; parameters are matched by module path.

use std::collections::HashMap;

use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::tensor::Tensor;

/// The decay used for the `k`-th update (1-based).
pub fn decay_at(decay: f64, k: u64) -> f64 {
    let s = k.saturating_sub(1);
    if s == 0 {
        0.0
    } else {
        decay.min((1 + s) as f64 / (10 + s) as f64)
    }
}

struct Collect {
    stack: Vec<String>,
    out: HashMap<String, Tensor<1>>,
}

impl ModuleVisitor for Collect {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let t = param.val();
        let n = t.shape().num_elements();
        self.out.insert(self.stack.join("."), t.reshape([n]));
    }
}

struct Blend {
    stack: Vec<String>,
    model: HashMap<String, Tensor<1>>,
    decay: f32,
}

impl ModuleMapper for Blend {
    fn enter_module(&mut self, name: &str, _: &str) {
        self.stack.push(name.to_string());
    }

    fn exit_module(&mut self, _: &str, _: &str) {
        self.stack.pop();
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        let Some(m) = self.model.remove(&self.stack.join(".")) else {
            return param;
        };
        let d = self.decay;
        param.map(|e| {
            let dims = e.dims();
            e * d + m.reshape(dims) * (1.0 - d)
        })
    }
}

/// `ema ← d·ema + (1 − d)·model` for every parameter (`model` may live on the autodiff
/// device; its values are taken off the graph).
pub fn update<M: Module>(ema: M, model: &M, d: f64) -> M {
    let mut c = Collect {
        stack: Vec::new(),
        out: HashMap::new(),
    };
    model.valid().visit(&mut c);
    ema.map(&mut Blend {
        stack: Vec::new(),
        model: c.out,
        decay: d as f32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::Linear;
    use burn::tensor::{Device, TensorData};

    fn lin(w: [f32; 2], d: &Device) -> Linear {
        Linear {
            weight: Param::from_tensor(Tensor::from_data(TensorData::new(w.to_vec(), [2, 1]), d)),
            bias: None,
        }
    }

    #[test]
    fn the_average_warms_up_like_diffusers_and_blends_by_path() {
        assert_eq!(decay_at(0.999, 1), 0.0);
        assert!((decay_at(0.999, 2) - 2.0 / 11.0).abs() < 1e-12);
        assert_eq!(decay_at(0.9, 1000), 0.9);
        let d = Device::flex();
        let ema = lin([0.0, 0.0], &d);
        let ema = update(ema, &lin([1.0, 2.0], &d), decay_at(0.9, 1));
        let v = |m: &Linear| m.weight.val().into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(v(&ema), vec![1.0, 2.0]);
        let ema = update(ema, &lin([3.0, 4.0], &d), 0.75);
        assert_eq!(v(&ema), vec![1.5, 2.5]);
    }
}
