//! `scheduler` fixtures for flow matching: `table` cases (timesteps, sigmas) and `trace` cases
//! (Euler steps on stacked `x` / `model_output`).

use std::collections::BTreeMap;

use dreamforge_core::HostTensor;
use dreamforge_sampling::{FlowMatchConfig, flow_match_schedule};

use super::golden::{Fixture, Outcome};

pub fn run(fx: &Fixture) -> Result<Vec<Outcome>, String> {
    let class = fx.json["scheduler_class"].as_str().unwrap_or_default();
    if class != "FlowMatchEulerDiscreteScheduler" {
        return Err(format!("scheduler class `{class}` is not implemented"));
    }
    let cfg: FlowMatchConfig = serde_json::from_value(fx.json["scheduler_config"].clone())
        .map_err(|e| format!("scheduler_config: {e}"))?;
    let steps = fx.json["num_inference_steps"]
        .as_u64()
        .ok_or("no num_inference_steps")? as usize;
    let sigmas: Option<Vec<f64>> = fx.json.get("sigmas").and_then(|s| {
        s.as_array()
            .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
    });
    let mu = fx.json.get("mu").and_then(|m| m.as_f64());
    let sched =
        flow_match_schedule(&cfg, steps, sigmas.as_deref(), mu).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (i, case) in fx.cases.iter().enumerate() {
        let r = (|| -> Result<BTreeMap<String, HostTensor>, String> {
            if case.inputs.is_empty() {
                return Ok(BTreeMap::from([
                    (
                        "timesteps".into(),
                        HostTensor::new(vec![sched.timesteps.len()], sched.timesteps.clone()),
                    ),
                    (
                        "sigmas".into(),
                        HostTensor::new(vec![sched.sigmas.len()], sched.sigmas.clone()),
                    ),
                ]));
            }
            let x = fx.input(case, "x")?;
            let mo = fx.input(case, "model_output")?;
            let n = x.shape[0];
            if n > steps {
                return Err(format!("trace has {n} steps, schedule {steps}"));
            }
            let per: usize = x.shape[1..].iter().product();
            let mut prev = Vec::with_capacity(n * per);
            for s in 0..n {
                let dt = sched.sigmas[s + 1] - sched.sigmas[s];
                prev.extend(
                    x.data[s * per..(s + 1) * per]
                        .iter()
                        .zip(&mo.data[s * per..(s + 1) * per])
                        .map(|(x, v)| x + dt * v),
                );
            }
            Ok(BTreeMap::from([(
                "prev_sample".into(),
                HostTensor::new(x.shape.clone(), prev),
            )]))
        })();
        out.push(match r {
            Ok(c) => fx.check(i, case, &c),
            Err(e) => Outcome::case_error(&fx.name, i, e),
        });
    }
    Ok(out)
}
