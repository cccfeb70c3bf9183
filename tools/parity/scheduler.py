"""Scheduler fixtures.

Flow matching (`FlowMatchEulerDiscreteScheduler`): timestep / sigma tables for dynamic (exponential
and linear) and static shift, with and without the sigmas the FLUX pipeline passes, and an Euler
trace over steps.

SD family (`DDIMScheduler`, `EulerDiscreteScheduler`, `EulerAncestralDiscreteScheduler`,
`DPMSolverMultistepScheduler`): see `generate_sd`.
"""

import json

import numpy as np
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
)
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.utils.torch_utils import randn_tensor

from common import fresh_dir, seeded, write_golden, write_json

FLUX_DEV = {
    "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5,
    "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096,
}
SCHNELL = {"num_train_timesteps": 1000, "shift": 1.0, "use_dynamic_shifting": False}
SD3 = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": False}
LINEAR = dict(FLUX_DEV, time_shift_type="linear")
TERMINAL = dict(SD3, shift_terminal=0.1)


def one(name, config, steps, image_seq_len=None, pipeline_sigmas=False, trace=False):
    d = fresh_dir(name)
    sched = FlowMatchEulerDiscreteScheduler(**config)
    full_config = dict(sched.config)
    write_json(d / "scheduler_config.json", full_config)
    extra = {"scheduler_class": "FlowMatchEulerDiscreteScheduler", "scheduler_config": full_config,
             "num_inference_steps": steps}
    kwargs = {}
    if image_seq_len is not None:
        mu = calculate_shift(image_seq_len, sched.config.get("base_image_seq_len", 256),
                             sched.config.get("max_image_seq_len", 4096), sched.config.get("base_shift", 0.5),
                             sched.config.get("max_shift", 1.15))
        extra["image_seq_len"] = image_seq_len
        extra["mu"] = mu
        kwargs["mu"] = mu
    if pipeline_sigmas:
        sigmas = np.linspace(1.0, 1 / steps, steps)
        extra["sigmas"] = [float(s) for s in sigmas]
        kwargs["sigmas"] = sigmas
    sched.set_timesteps(num_inference_steps=steps, **kwargs)
    tensors = {"table.timesteps": sched.timesteps.clone(), "table.sigmas": sched.sigmas.clone()}
    cases = [{"inputs": {}, "outputs": {"timesteps": "table.timesteps", "sigmas": "table.sigmas"}}]
    if trace:
        x = seeded((1, 6, 4), 7)
        xs, outs, prevs = [x], [], []
        for i, t in enumerate(sched.timesteps):
            mo = seeded((1, 6, 4), 100 + i)
            x = sched.step(mo, t, x, return_dict=False)[0]
            outs.append(mo)
            prevs.append(x)
            xs.append(x)
        tensors["trace.x"] = torch.stack(xs[:-1])
        tensors["trace.model_output"] = torch.stack(outs)
        tensors["trace.prev_sample"] = torch.stack(prevs)
        cases.append({"inputs": {"x": "trace.x", "model_output": "trace.model_output"},
                      "outputs": {"prev_sample": "trace.prev_sample"}})
    write_golden(d, "scheduler", tensors, cases, {"max_abs": 1e-6, "rel_l2": 1e-6}, **extra)


def generate():
    one("scheduler_flowmatch_flux_dev_1024", FLUX_DEV, 28, image_seq_len=4096, pipeline_sigmas=True, trace=True)
    one("scheduler_flowmatch_flux_dev_512x768", FLUX_DEV, 7, image_seq_len=32 * 48, pipeline_sigmas=True)
    one("scheduler_flowmatch_schnell", SCHNELL, 4, pipeline_sigmas=True, trace=True)
    one("scheduler_flowmatch_static_shift_default", SD3, 10)
    one("scheduler_flowmatch_linear_shift", LINEAR, 5, image_seq_len=1000)
    one("scheduler_flowmatch_shift_terminal", TERMINAL, 6)
    generate_sd()


# --- SD-family schedulers (DDIM, Euler, Euler ancestral, DPM-Solver++ 2M) ----------------------
#
# Each fixture names the dreamforge sampler (`sampler`), the diffusers class, and the config the
# class was built from with `<Class>.from_config(scheduler_config, **overrides)` — the file a user
# has (SD1.5's own PNDMScheduler config leaves `timestep_spacing` unset, so each class applies its
# default: `leading` for DDIM, `linspace` for Euler / DPM-Solver). `scheduler_resolved_config` is
# the config diffusers ended up with. Table outputs: `timesteps`, `sigmas` (not for DDIM),
# `init_noise_sigma` [1] and for some DDIM tables `alphas_cumprod`. Trace cases run the sampler
# loop from `x[0]` the way StableDiffusionPipeline does (`scale_model_input`, `step`), with seeded
# random model outputs; they also record `model_input` (what the model receives). An img2img case
# (`strength`) starts from `add_noise(init_latents, init_noise, timesteps[t_start])` after the
# pipeline's `get_timesteps` / `set_begin_index`, and records `noisy_latents` too.

# runwayml / stable-diffusion-v1-5 scheduler/scheduler_config.json, verbatim.
SD15 = {
    "_class_name": "PNDMScheduler", "_diffusers_version": "0.6.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
    "clip_sample": False,
}
# The same with the spacing the original SD releases used made explicit (as SDXL's file does).
SD15_LEADING = dict(SD15, timestep_spacing="leading")
# An SD2.x v-prediction model fine-tuned for zero terminal SNR (arXiv 2305.08891): DDIM config
# with rescaled betas and trailing spacing.
SD2_VPRED_ZSNR = {
    "_class_name": "DDIMScheduler", "_diffusers_version": "0.8.0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "num_train_timesteps": 1000, "prediction_type": "v_prediction", "set_alpha_to_one": False,
    "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None,
    "rescale_betas_zero_snr": True, "timestep_spacing": "trailing",
}
# stabilityai / stable-diffusion-xl-base-1.0 scheduler/scheduler_config.json, verbatim.
SDXL = {
    "_class_name": "EulerDiscreteScheduler", "_diffusers_version": "0.19.0.dev0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
    "interpolation_type": "linear", "num_train_timesteps": 1000, "prediction_type": "epsilon",
    "sample_max_value": 1.0, "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "timestep_spacing": "leading", "trained_betas": None, "use_karras_sigmas": False,
}
COSINE = {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 1000}

DPMPP = {"algorithm_type": "dpmsolver++", "solver_order": 2}
SD_SAMPLERS = {
    "ddim": (DDIMScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "euler-a": (EulerAncestralDiscreteScheduler, {}),
    "dpmpp-2m": (DPMSolverMultistepScheduler, dict(DPMPP, use_karras_sigmas=False)),
    "dpmpp-2m-karras": (DPMSolverMultistepScheduler, dict(DPMPP, use_karras_sigmas=True)),
}

# Tables: timesteps exact; sigmas within one f32 ulp (PyTorch takes sqrt from MKL, which is not
# always correctly rounded), Euler-Karras timesteps within a few ulps (NumPy's SIMD float32 log).
# Traces: f32 rounding accumulated over the steps, relative to values up to init_noise_sigma.
TABLE_TOL = {"max_abs": 1e-5, "rel_l2": 1e-6}
TRACE_TOL = {"max_abs": 1e-4, "rel_l2": 1e-5}
# Zero terminal SNR: σ_max = √((1 − 2⁻²⁴)/2⁻²⁴) ≈ 4096 lies next to a rounding tie; MKL rounds it
# up to 4096.0, the correctly rounded value is one ulp (2.4e-4) below. The Euler samplers' first
# step `x + d·(σ₁ − σ₀)` carries that ulp into every later sample (~1.3e-5 relative).
ZSNR_TABLE_TOL = {"max_abs": 5e-4, "rel_l2": 1e-6}
ZSNR_TRACE_TOL = {"max_abs": 1e-3, "rel_l2": 3e-5}


def _new(sampler, source):
    cls, overrides = SD_SAMPLERS[sampler]
    return cls.from_config(source, **overrides)


def _noise(shape, seed):
    """The noise a scheduler draws from `torch.Generator().manual_seed(seed)`, checked equal."""
    n = randn_tensor(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    assert torch.equal(n, seeded(shape, seed))
    return n


def _run(sched, sampler, x, timesteps, first, seed, shape, eta, prefix, tensors):
    """Runs the pipeline loop over `timesteps` (absolute indices from `first`); returns inputs."""
    ins, outs, mos, prevs = [], [], [], []
    noise_keys = {}
    for k, t in enumerate(timesteps):
        i = first + k
        mi = sched.scale_model_input(x, t)
        mo = seeded(shape, seed + i)
        kwargs = {}
        if sampler == "ddim":
            kwargs["eta"] = eta or 0.0
            if eta:
                kwargs["variance_noise"] = _noise(shape, 1000 + i)
                noise_keys[f"noise_{i}"] = kwargs["variance_noise"]
        elif sampler == "euler-a":
            kwargs["generator"] = torch.Generator().manual_seed(1000 + i)
            noise_keys[f"noise_{i}"] = _noise(shape, 1000 + i)
        ins.append(x)
        outs.append(mi)
        mos.append(mo)
        x = sched.step(mo, t, x, return_dict=False, **kwargs)[0]
        prevs.append(x)
    inputs = {"model_output": f"{prefix}.model_output"}
    tensors[f"{prefix}.model_output"] = torch.stack(mos)
    tensors[f"{prefix}.prev_sample"] = torch.stack(prevs)
    if sampler in ("euler", "euler-a"):
        tensors[f"{prefix}.model_input"] = torch.stack(outs)
    else:
        assert all(torch.equal(a, b) for a, b in zip(outs, ins))  # scale_model_input is the identity
    for key, n in noise_keys.items():
        tensors[f"{prefix}.{key}"] = n
        inputs[key] = f"{prefix}.{key}"
    return inputs, torch.stack(ins)


def _trace_outputs(prefix, tensors):
    out = {"prev_sample": f"{prefix}.prev_sample"}
    if f"{prefix}.model_input" in tensors:
        out["model_input"] = f"{prefix}.model_input"
    return out


def sd_one(name, sampler, source, steps, trace=True, shape=(1, 4, 2, 2), eta=None, strength=None,
           alphas_cumprod=False, tolerances=(TABLE_TOL, TRACE_TOL)):
    d = fresh_dir(name)
    cls, _ = SD_SAMPLERS[sampler]
    sched = _new(sampler, source)
    sched.set_timesteps(steps)
    write_json(d / "scheduler_config.json", source)
    resolved = {k: v for k, v in sched.config.items() if k != "_use_default_values"}
    extra = {"scheduler_class": cls.__name__, "sampler": sampler, "scheduler_config": source,
             "scheduler_resolved_config": resolved, "num_inference_steps": steps}
    if eta is not None:
        extra["eta"] = eta
    init_sigma = float(sched.init_noise_sigma)
    tensors = {"table.timesteps": sched.timesteps.clone(),
               "table.init_noise_sigma": torch.tensor([init_sigma], dtype=torch.float32)}
    outputs = {"timesteps": "table.timesteps", "init_noise_sigma": "table.init_noise_sigma"}
    if sampler != "ddim":
        tensors["table.sigmas"] = sched.sigmas.clone()
        outputs["sigmas"] = "table.sigmas"
    if alphas_cumprod:
        tensors["table.alphas_cumprod"] = sched.alphas_cumprod.clone()
        outputs["alphas_cumprod"] = "table.alphas_cumprod"
    cases = [{"inputs": {}, "outputs": outputs}]
    if trace:
        x = seeded(shape, 7) * sched.init_noise_sigma
        inputs, xs = _run(sched, sampler, x, sched.timesteps, 0, 100, shape, eta, "trace", tensors)
        tensors["trace.x"] = xs
        cases.append({"inputs": dict(inputs, x="trace.x"),
                      "outputs": _trace_outputs("trace", tensors)})
    if strength is not None:
        # StableDiffusionImg2ImgPipeline: get_timesteps, set_begin_index, add_noise, loop.
        sched = _new(sampler, source)
        sched.set_timesteps(steps)
        init_timestep = min(int(steps * strength), steps)
        t_start = max(steps - init_timestep, 0)
        timesteps = sched.timesteps[t_start * sched.order:]
        if hasattr(sched, "set_begin_index"):
            sched.set_begin_index(t_start * sched.order)
        init, noise = seeded(shape, 11), seeded(shape, 12)
        x = sched.add_noise(init, noise, timesteps[:1])
        tensors["img2img.init_latents"] = init
        tensors["img2img.init_noise"] = noise
        tensors["img2img.noisy_latents"] = x
        inputs, _ = _run(sched, sampler, x, timesteps, t_start, 300, shape, eta, "img2img", tensors)
        cases.append({"strength": strength, "start": t_start,
                      "inputs": dict(inputs, init_latents="img2img.init_latents",
                                     init_noise="img2img.init_noise"),
                      "outputs": dict(_trace_outputs("img2img", tensors),
                                      noisy_latents="img2img.noisy_latents")})
    tol = tolerances[1] if len(cases) > 1 else tolerances[0]
    write_golden(d, "scheduler", tensors, cases, tol, **extra)


def sd_fixture_name(sampler, tag, steps):
    return f"scheduler_{sampler.replace('-', '_')}_{tag}_{steps}"


def generate_sd():
    for s in SD_SAMPLERS:
        # SD1.5's own file, 20 steps: tables, traces, img2img at strength 0.6.
        sd_one(sd_fixture_name(s, "sd15", 20), s, SD15, 20, strength=0.6,
               alphas_cumprod=(s == "ddim"))
        # Explicit leading spacing, 7 steps (Euler's √(σ_max²+1) init sigma, DPM leading spacing),
        # on a batch of two.
        sd_one(sd_fixture_name(s, "sd15_leading", 7), s, SD15_LEADING, 7, shape=(2, 4, 3, 3))
        # v-prediction + zero terminal SNR + trailing, 12 steps (1000/12 is not an integer).
        sd_one(sd_fixture_name(s, "vpred_zsnr_trailing", 12), s, SD2_VPRED_ZSNR, 12,
               tolerances=(ZSNR_TABLE_TOL, ZSNR_TRACE_TOL))
    # DDIM with η > 0 (the variance noise is an input).
    sd_one("scheduler_ddim_sd15_eta_7", "ddim", SD15, 7, eta=0.6)
    # DPM-Solver with final_sigmas_type sigma_min: the last step is second order from 15 steps on.
    sd_one("scheduler_dpmpp_2m_sigma_min_20", "dpmpp-2m", dict(SD15, final_sigmas_type="sigma_min"), 20)
    sd_one("scheduler_dpmpp_2m_sigma_min_7", "dpmpp-2m", dict(SD15, final_sigmas_type="sigma_min"), 7)
    # Euler with use_karras_sigmas from the config (SDXL's file with it switched on).
    sd_one("scheduler_euler_sdxl_karras_9", "euler", dict(SDXL, use_karras_sigmas=True), 9)
    # squaredcos_cap_v2 betas: DPM Karras timesteps are truncated, not rounded.
    sd_one("scheduler_dpmpp_2m_karras_cosine_10", "dpmpp-2m-karras", COSINE, 10, trace=False)
    # Continuous-time v-prediction Euler: timesteps are 0.25·log σ.
    sd_one("scheduler_euler_vpred_continuous_10", "euler",
           dict(SDXL, prediction_type="v_prediction", timestep_type="continuous"), 10, trace=False)
