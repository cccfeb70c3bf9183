"""Flow-matching scheduler fixtures (`FlowMatchEulerDiscreteScheduler`): timestep / sigma tables
for dynamic (exponential and linear) and static shift, with and without the sigmas the FLUX
pipeline passes, and an Euler trace over steps."""

import json

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift

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
