//! `scheduler` fixtures, dispatched on golden.json `scheduler_class`.
//!
//! - `FlowMatchEulerDiscreteScheduler`: `table` cases (timesteps, sigmas) and `trace` cases (Euler
//!   steps on stacked `x` / `model_output`).
//! - `DDIMScheduler`, `EulerDiscreteScheduler`, `EulerAncestralDiscreteScheduler`,
//!   `DPMSolverMultistepScheduler` (the SD-family samplers; golden.json `sampler` names the
//!   dreamforge sampler, else it follows from the class): `table` cases (timesteps, sigmas,
//!   init_noise_sigma, alphas_cumprod), `trace` cases run by `sample_sd` from `x[0]` with the
//!   stacked `model_output` rows and `noise_<i>` (outputs `prev_sample` and `model_input`
//!   stacked), and img2img cases (case `strength`: inputs `init_latents`, `init_noise`; outputs
//!   `noisy_latents` too) that start where `img2img_start` says.

use std::cell::RefCell;
use std::collections::BTreeMap;

use burn::tensor::{Device, Tensor};

use dreamforge_core::{HostTensor, to_host};
use dreamforge_sampling::{
    DdpmConfig, FlowMatchConfig, SamplerKind, SdSchedule, add_noise, flow_match_schedule,
    img2img_start, sample_sd, sd_schedule,
};

use super::golden::{Case, Fixture, Outcome};

pub fn run(fx: &Fixture) -> Result<Vec<Outcome>, String> {
    let class = fx.json["scheduler_class"].as_str().unwrap_or_default();
    match class {
        "FlowMatchEulerDiscreteScheduler" => run_flow_match(fx),
        "DDIMScheduler"
        | "EulerDiscreteScheduler"
        | "EulerAncestralDiscreteScheduler"
        | "DPMSolverMultistepScheduler" => run_sd(fx, class),
        _ => Err(format!("scheduler class `{class}` is not implemented")),
    }
}

fn run_flow_match(fx: &Fixture) -> Result<Vec<Outcome>, String> {
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
                    ("timesteps".into(), host1(&sched.timesteps)),
                    ("sigmas".into(), host1(&sched.sigmas)),
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

fn host1(v: &[f32]) -> HostTensor {
    HostTensor::new(vec![v.len()], v.to_vec())
}

fn run_sd(fx: &Fixture, class: &str) -> Result<Vec<Outcome>, String> {
    let cfg: DdpmConfig = serde_json::from_value(fx.json["scheduler_config"].clone())
        .map_err(|e| format!("scheduler_config: {e}"))?;
    let kind = match fx.json.get("sampler").and_then(|s| s.as_str()) {
        Some(name) => SamplerKind::parse(name).map_err(|e| e.to_string())?,
        None => match class {
            "DDIMScheduler" => SamplerKind::Ddim,
            "EulerDiscreteScheduler" => SamplerKind::Euler,
            "EulerAncestralDiscreteScheduler" => SamplerKind::EulerAncestral,
            _ if cfg.use_karras_sigmas => SamplerKind::DpmPp2mKarras,
            _ => SamplerKind::DpmPp2m,
        },
    };
    if kind.diffusers_class() != class {
        return Err(format!(
            "sampler `{kind}` is `{}`, the fixture says `{class}`",
            kind.diffusers_class()
        ));
    }
    let steps = fx.json["num_inference_steps"]
        .as_u64()
        .ok_or("no num_inference_steps")? as usize;
    let eta = fx.json.get("eta").and_then(|e| e.as_f64()).unwrap_or(0.0) as f32;
    let param = cfg.parameterization().map_err(|e| e.to_string())?;
    let sched = sd_schedule(kind, &cfg, steps).map_err(|e| e.to_string())?;
    let device = dreamforge_core::test_device();
    let mut out = Vec::new();
    for (i, case) in fx.cases.iter().enumerate() {
        let r = if case.inputs.is_empty() {
            Ok(sd_table(&sched))
        } else {
            sd_trace(fx, case, kind, &sched, param, eta, &device)
        };
        out.push(match r {
            Ok(c) => fx.check(i, case, &c),
            Err(e) => Outcome::case_error(&fx.name, i, e),
        });
    }
    Ok(out)
}

fn sd_table(sched: &SdSchedule) -> BTreeMap<String, HostTensor> {
    let mut m = BTreeMap::from([
        ("timesteps".to_string(), host1(&sched.timesteps)),
        ("sigmas".to_string(), host1(&sched.sigmas)),
        (
            "init_noise_sigma".to_string(),
            host1(&[sched.init_noise_sigma]),
        ),
    ]);
    m.insert("alphas_cumprod".into(), host1(sched.alphas_cumprod()));
    m
}

/// One trace / img2img case through `sample_sd`.
fn sd_trace(
    fx: &Fixture,
    case: &Case,
    kind: SamplerKind,
    sched: &SdSchedule,
    param: dreamforge_sampling::Parameterization,
    eta: f32,
    device: &Device,
) -> Result<BTreeMap<String, HostTensor>, String> {
    let mo = fx.input(case, "model_output")?;
    if mo.shape.len() != 5 {
        return Err(format!(
            "model_output must be [steps, B, C, H, W], got {:?}",
            mo.shape
        ));
    }
    let sample_shape = mo.shape[1..].to_vec();
    let per: usize = sample_shape.iter().product();
    let n = sched.timesteps.len();
    let to_dev = |h: HostTensor| -> Tensor<4> { h.to_device::<4>(device) };
    let mut computed = BTreeMap::new();
    let strength = case.extra.get("strength").and_then(|s| s.as_f64());
    let (start, x) = match strength {
        None => {
            let x = fx.input(case, "x")?;
            (0, to_dev(x.rows(0, 1).reshaped(&sample_shape)?))
        }
        Some(s) => {
            let start = img2img_start(n, s as f32);
            if let Some(want) = case.extra.get("start").and_then(|v| v.as_u64())
                && want as usize != start
            {
                return Err(format!("img2img_start gave {start}, diffusers {want}"));
            }
            let init = to_dev(fx.input(case, "init_latents")?);
            let noise = to_dev(fx.input(case, "init_noise")?);
            let x = add_noise(kind, sched, init, noise, start);
            computed.insert("noisy_latents".to_string(), to_host(x.clone()));
            (start, x)
        }
    };
    let rows = mo.shape[0];
    if rows != n - start {
        return Err(format!(
            "{rows} model outputs for steps {start}..{n} of the schedule"
        ));
    }
    let mut noises = BTreeMap::new();
    for (name, key) in &case.inputs {
        if let Some(i) = name.strip_prefix("noise_") {
            let i: usize = i.parse().map_err(|_| format!("bad input `{name}`"))?;
            noises.insert(i, fx.tensor(key)?);
        }
    }
    let missing = RefCell::new(None);
    let mut inputs = Vec::with_capacity(rows * per);
    let mut prevs = Vec::with_capacity(rows * per);
    let result = sample_sd(
        kind,
        sched,
        param,
        eta,
        start,
        x,
        |input: Tensor<4>, _t, i| -> Result<Tensor<4>, String> {
            inputs.extend(to_host(input).data);
            let row = mo.rows(i - start, 1).reshaped(&sample_shape)?;
            Ok(to_dev(row))
        },
        |i| match noises.get(&i) {
            Some(h) => to_dev(h.clone()),
            None => {
                missing.borrow_mut().get_or_insert(i);
                Tensor::zeros(sample_shape.clone(), device)
            }
        },
        |_, x| {
            prevs.extend(to_host(x.clone()).data);
            Some(x)
        },
    )?;
    if result.is_none() {
        return Err("the sampler was cancelled".into());
    }
    if let Some(i) = missing.into_inner() {
        return Err(format!(
            "step {i} draws noise but the case has no `noise_{i}`"
        ));
    }
    let mut stacked = vec![rows];
    stacked.extend(&sample_shape);
    computed.insert(
        "prev_sample".into(),
        HostTensor::new(stacked.clone(), prevs),
    );
    computed.insert("model_input".into(), HostTensor::new(stacked, inputs));
    Ok(computed)
}

trait Reshaped: Sized {
    fn reshaped(self, shape: &[usize]) -> Result<Self, String>;
}

impl Reshaped for HostTensor {
    fn reshaped(self, shape: &[usize]) -> Result<Self, String> {
        if shape.iter().product::<usize>() != self.data.len() {
            return Err(format!("{:?} cannot be read as {shape:?}", self.shape));
        }
        Ok(HostTensor::new(shape.to_vec(), self.data))
    }
}
