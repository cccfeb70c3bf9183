//! Frozen vs trainable parameters by path: everything frozen except the parameters whose path
//! (`a.weight`, `transformer_blocks.3.attn.to_q.lora_a`, ...) matches one of the given regular
//! expressions. Frozen parameters get no gradient and the optimizer leaves them alone.

use burn::module::{Module, ParamGroup};

/// A pattern that is not a valid regular expression.
#[derive(Debug, thiserror::Error)]
#[error("trainable-parameter pattern `{pattern}` is not a valid regular expression: {reason}")]
pub struct PatternError {
    pub pattern: String,
    pub reason: String,
}

/// `model` with only the parameters matching any of `patterns` requiring gradients.
pub fn train_only<M: Module>(model: M, patterns: &[&str]) -> Result<M, PatternError> {
    let mut m = model.set_require_grad_group(ParamGroup::all(), false);
    for p in patterns {
        let group = ParamGroup::from_regex(p).map_err(|e| PatternError {
            pattern: p.to_string(),
            reason: format!("{e:?}"),
        })?;
        m = m.set_require_grad_group(group, true);
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::AdamWConfig;
    use burn::tensor::{Device, Tensor, TensorData};

    #[derive(Module, Debug)]
    struct Two {
        a: Linear,
        b: Linear,
    }

    fn vals(l: &Linear) -> Vec<f32> {
        l.weight.val().into_data().try_to_vec().unwrap()
    }

    #[test]
    fn only_matching_parameters_move() {
        let d = Device::flex().autodiff();
        let m = Two {
            a: LinearConfig::new(3, 3).init(&d),
            b: LinearConfig::new(3, 1).init(&d),
        };
        let (a0, b0) = (vals(&m.a), vals(&m.b));
        let m = train_only(m, &["^b\\."]).unwrap();
        let mut optim = AdamWConfig::new().init();
        let x = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, -2.0, 0.5], [1, 3]), &d);
        let (m, r) = crate::step::train_step(m, &mut optim, 0.1, |m| {
            m.b.forward(m.a.forward(x.clone())).sum()
        });
        assert!(r.is_ok());
        assert_eq!(vals(&m.a), a0, "frozen layer moved");
        assert_ne!(vals(&m.b), b0, "trainable layer did not move");
        let e = train_only(m, &["(unclosed"]).err().unwrap().to_string();
        assert!(e.contains("(unclosed"), "{e}");
    }
}
