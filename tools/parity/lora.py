"""LoRA / T-LoRA parity fixtures on the tiny FLUX.1-dev model (../flux_transformer_dev_diffusers,
rebuilt here bit-identically from the same seed):

- lora_flux_peft: a PEFT LoRA (r 4, alpha 8, attention + MLP targets) added with diffusers'
  `add_adapter`, saved by `FluxPipeline.save_lora_weights` with its adapter metadata; goldens from
  the PEFT model at user scales 1.0 and 0.5 (`LoraLayer.set_scale`).
- lora_flux_kohya: the same adapter rewritten in kohya sd-scripts naming on BFL modules (fused
  img/txt qkv and linear1 as block-diagonal pairs, alpha per module, as sd-scripts'
  `convert_to_sd_scripts_cat` writes), with the PEFT goldens: the outputs must be identical.
- lora_flux_bfl: the same adapter with PEFT keys on BFL module paths (no alpha, scale folded;
  the layout of BFL's own LoRA files), with the PEFT goldens.
- lora_unet_sd1_peft / lora_unet_sd1_kohya: a PEFT LoRA on the tiny SD1 UNet (../unet_sd1_tiny:
  attention q/k/v/out, feed-forward and the 1×1-conv proj_in / proj_out), saved by
  `StableDiffusionPipeline.save_lora_weights`, goldens at scales 1.0 and 0.5; the same adapter in
  kohya naming (diffusers module paths flattened, 1×1 factors 4-D, alpha per module).
- lora_unet_sdxl_kohya: a PEFT LoRA on the tiny SDXL UNet (../unet_sdxl_tiny) written in kohya
  naming on the original SGM module paths (`lora_unet_input_blocks_1_1_transformer_blocks_0_attn1_to_q`),
  as sd-scripts writes SDXL LoRAs.
- tlora_flux_vanilla / tlora_flux_ortho: T-LoRA on the attention projections (q/k/v/out of both
  streams), forward at three timesteps through a PyTorch reimplementation of the reference's layer
  math (ControlGenAI/T-LoRA `tlora/model/lora.py`: `LoRALinearLayer` with `sigma_mask`, and
  `OrthogonalLoRALinearLayer` = p(q(x)·λ·m) − p0(q0(x)·λ0·m)) with the FLUX rank mask
  r = ⌊((1000 − t)/1000)^α·(R − r_min)⌋ + r_min at t = 1000·σ; the file is written in dreamforge's
  documented T-LoRA format (PEFT naming + `dreamforge_adapter` metadata; orthogonal layers as the
  exact rank-2R pair).
"""

import json
import math

import torch
from diffusers import FluxPipeline
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from safetensors.torch import save_file

import flux
from common import fresh_dir, write_golden

BASE = "../flux_transformer_dev_diffusers"
TOL = {"max_abs": 1e-4, "rel_l2": 1e-5}
TARGETS = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
           "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2", "proj_mlp"]


def base_model():
    # Exactly the committed base fixture's weights (bf16-rounded), in f32.
    return flux.tiny_flux(guidance=True, head_dim=16, heads=2, axes=[4, 6, 6], seed=10).to(torch.float32)


@torch.no_grad()
def randomize_lora(m, seed):
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(m.named_parameters()):
        if "lora_" in name:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def set_scale(m, scale):
    for mod in m.modules():
        if isinstance(mod, LoraLayer):
            mod.set_scale("default", scale)


def adapter_metadata(m):
    """PEFT's config dict with `target_modules` sorted (a Python set: its order would change
    with the process's hash seed, and the fixture with it)."""
    meta = m.peft_config["default"].to_dict()
    meta["target_modules"] = sorted(meta["target_modules"])
    return meta


def scaled_cases(m, scales, run):
    """The cases `run()` computes, once per user scale (`LoraLayer.set_scale`), renumbered."""
    tensors, cases = {}, []
    i = 0
    for scale in scales:
        set_scale(m, scale)
        t, cs = run()
        for c in cs:
            names = {"inputs": {}, "outputs": {}}
            for role in ("inputs", "outputs"):
                for k, key in c[role].items():
                    new = key.replace(key.split(".")[0], f"case{i}", 1)
                    tensors[new] = t[key]
                    names[role][k] = new
            cases.append({**names, "scale": scale})
            i += 1
    set_scale(m, 1.0)
    return tensors, cases


def peft_cases(m, scales):
    return scaled_cases(m, scales, lambda: flux.cases(m, True, 3000))


def diffusers_lora_to_kohya_bfl(sd, alpha, cfg):
    """sd: PEFT keys `transformer.<module>.lora_A/B.weight` (all layers rank r, one alpha) →
    kohya BFL names with fused qkv / linear1 (block-diagonal up, stacked down, alpha = n·r with
    each split's scale alpha/r folded into its up rows)."""
    mods = {}
    for k, v in sd.items():
        m = k[len("transformer."):].rsplit(".lora_", 1)[0]
        mods.setdefault(m, {})["A" if ".lora_A." in k else "B"] = v
    r = next(iter(mods.values()))["A"].shape[0]
    s = alpha / r
    out = {}

    def put(name, a, b, al):
        out[f"lora_unet_{name}.lora_down.weight"] = a.contiguous()
        out[f"lora_unet_{name}.lora_up.weight"] = b.contiguous()
        out[f"lora_unet_{name}.alpha"] = torch.tensor(float(al))

    def fused(name, parts, rows):
        present = [(p, mods.pop(p)) for p in parts if p in mods]
        if not present:
            return
        a = torch.cat([ab["A"] for _, ab in present], 0)
        up = torch.zeros(sum(rows), r * len(present))
        offsets = [sum(rows[:j]) for j in range(len(rows))]
        for c, (p, ab) in enumerate(present):
            j = parts.index(p)
            up[offsets[j]:offsets[j] + rows[j], c * r:(c + 1) * r] = ab["B"] * s
        put(name, a, up, r * len(present))

    d = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    for i in range(cfg["num_layers"]):
        o, t = f"transformer_blocks.{i}", f"double_blocks_{i}"
        fused(f"{t}_img_attn_qkv", [f"{o}.attn.to_q", f"{o}.attn.to_k", f"{o}.attn.to_v"], [d] * 3)
        fused(f"{t}_txt_attn_qkv", [f"{o}.attn.add_q_proj", f"{o}.attn.add_k_proj", f"{o}.attn.add_v_proj"], [d] * 3)
        for a, b in [("attn.to_out.0", "img_attn_proj"), ("attn.to_add_out", "txt_attn_proj"),
                     ("ff.net.0.proj", "img_mlp_0"), ("ff.net.2", "img_mlp_2")]:
            if f"{o}.{a}" in mods:
                ab = mods.pop(f"{o}.{a}")
                put(f"{t}_{b}", ab["A"], ab["B"], alpha)
    for i in range(cfg["num_single_layers"]):
        o, t = f"single_transformer_blocks.{i}", f"single_blocks_{i}"
        fused(f"{t}_linear1", [f"{o}.attn.to_q", f"{o}.attn.to_k", f"{o}.attn.to_v", f"{o}.proj_mlp"],
              [d, d, d, 4 * d])
    assert not mods, f"unconverted: {sorted(mods)}"
    return out


def kohya_to_bfl_peft(kohya):
    """kohya BFL names → PEFT keys on BFL paths (`double_blocks.0.img_attn.qkv.lora_A.weight`), no
    alpha: the scale alpha/r is folded into up."""
    out = {}
    names = {k.rsplit(".lora_down", 1)[0] for k in kohya if k.endswith(".lora_down.weight")}
    for n in names:
        a, b = kohya[f"{n}.lora_down.weight"], kohya[f"{n}.lora_up.weight"]
        s = float(kohya[f"{n}.alpha"]) / a.shape[0]
        path = n[len("lora_unet_"):]
        for blk in ("double_blocks_", "single_blocks_"):
            if path.startswith(blk):
                idx, rest = path[len(blk):].split("_", 1)
                rest = {"img_attn_qkv": "img_attn.qkv", "txt_attn_qkv": "txt_attn.qkv", "img_attn_proj": "img_attn.proj",
                        "txt_attn_proj": "txt_attn.proj", "img_mlp_0": "img_mlp.0", "img_mlp_2": "img_mlp.2",
                        "linear1": "linear1"}[rest]
                path = f"{blk[:-1]}.{idx}.{rest}"
        out[f"{path}.lora_A.weight"] = a.contiguous()
        out[f"{path}.lora_B.weight"] = (b * s).contiguous()
    return out


def write_lora_fixture(name, adapter_name, tensors_file, metadata, tensors, cases, base=BASE,
                       base_kind="flux_transformer"):
    d = fresh_dir(name)
    save_file(tensors_file, str(d / adapter_name), metadata=metadata)
    write_golden(d, "lora", tensors, cases, TOL, base=base, base_kind=base_kind, adapter=adapter_name)


# --- T-LoRA: the reference's layer math -------------------------------------------------------

def rank_mask(rank, min_rank, alpha, sigma):
    t = 1000.0 * sigma  # FLUX: timestep = 1000·σ
    r = int(((1000.0 - t) / 1000.0) ** alpha * (rank - min_rank)) + min_rank
    m = torch.zeros(rank)
    m[:r] = 1.0
    return m


class TLoraLinear(torch.nn.Module):
    """base(x) + Δ(x): vanilla `up(down(x)·m)`, orthogonal `p(q(x)·λ·m) − p0(q0(x)·λ0·m)`."""

    def __init__(self, base, rank, ortho, g):
        super().__init__()
        self.base, self.ortho = base, ortho
        i, o = base.in_features, base.out_features
        self.down = torch.randn(rank, i, generator=g) * 0.3
        self.up = torch.randn(o, rank, generator=g) * 0.3
        if ortho:
            # Trained-looking values: frozen copies differ from the current factors.
            self.lam = torch.rand(rank, generator=g) + 0.5
            self.down0 = torch.randn(rank, i, generator=g) * 0.3
            self.up0 = torch.randn(o, rank, generator=g) * 0.3
            self.lam0 = torch.rand(rank, generator=g) + 0.5
        self.mask = torch.ones(rank)

    def forward(self, x):
        y = self.base(x)
        if self.ortho:
            d = ((x @ self.down.T) * self.lam * self.mask) @ self.up.T
            d0 = ((x @ self.down0.T) * self.lam0 * self.mask) @ self.up0.T
            return y + d - d0
        return y + ((x @ self.down.T) * self.mask) @ self.up.T

    def file_layers(self):
        if self.ortho:
            # dreamforge's exact rank-2R pair: down [Q; Q0], up [P·λ, −P0·λ0].
            return torch.cat([self.down, self.down0], 0), torch.cat([self.up * self.lam, -self.up0 * self.lam0], 1)
        return self.down, self.up


TLORA_TARGETS = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                 "attn.add_v_proj", "attn.to_add_out"]


def tlora_fixture(name, ortho, rank=4, min_rank=1, alpha=1.0):
    m = base_model()
    g = torch.Generator().manual_seed(77 if ortho else 55)
    layers = {}
    for mod_name, mod in sorted(m.named_modules()):
        for t in TLORA_TARGETS:
            if mod_name.endswith(t) and isinstance(mod, torch.nn.Linear):
                parent_name, child = mod_name.rsplit(".", 1)
                parent = m.get_submodule(parent_name)
                wrapped = TLoraLinear(mod, rank, ortho, g)
                if child.isdigit():
                    parent[int(child)] = wrapped
                else:
                    setattr(parent, child, wrapped)
                layers[mod_name] = wrapped
    tensors, cases = {}, []
    sigmas = [0.9, 0.5, 0.1]
    for i, sigma in enumerate(sigmas):
        for l in layers.values():
            l.mask = rank_mask(rank, min_rank, alpha, sigma)
        t, cs = flux.cases(m, True, 4000 + i)
        c = cs[0]
        t[c["inputs"]["timestep"]] = torch.tensor([sigma])
        with torch.no_grad():
            inp = {k: t[v] for k, v in c["inputs"].items()}
            out = m(**inp, return_dict=False)[0]
        names = {"inputs": {}, "outputs": {}}
        for k, v in c["inputs"].items():
            names["inputs"][k] = f"case{i}.{k}"
            tensors[f"case{i}.{k}"] = t[v]
        names["outputs"]["sample"] = f"case{i}.sample"
        tensors[f"case{i}.sample"] = out
        cases.append({**names, "scale": 1.0})
    file_tensors = {}
    for mod_name, l in layers.items():
        down, up = l.file_layers()
        file_tensors[f"transformer.{mod_name}.lora_A.weight"] = down.contiguous()
        file_tensors[f"transformer.{mod_name}.lora_B.weight"] = up.contiguous()
    stored_rank = 2 * rank if ortho else rank
    meta = {
        "format": "pt",
        "lora_adapter_metadata": json.dumps({"transformer.r": stored_rank, "transformer.lora_alpha": stored_rank}),
        "dreamforge_adapter": json.dumps({"method": "tlora", "parametrization": "orthogonal" if ortho else "vanilla",
                                          "rank": rank, "min_rank": min_rank, "rank_exponent": alpha}),
    }
    write_lora_fixture(name, "tlora.safetensors", file_tensors, meta, tensors, cases)


UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"]


def unet_peft(base_seed, kw, seed):
    import unet

    m = unet.tiny_unet(base_seed, **kw)
    unet.round_to(m, torch.float16)
    m.to(torch.float32)
    m.add_adapter(LoraConfig(r=2, lora_alpha=3, target_modules=UNET_TARGETS, init_lora_weights=True))
    randomize_lora(m, seed)
    return m


def unet_cases(m, specs, seed, text_time=None):
    import unet

    return scaled_cases(m, (1.0, 0.5), lambda: unet.run_cases(m, specs, seed, text_time))


def peft_to_kohya(sd, alpha, rename):
    """PEFT `unet.<module>.lora_A/B.weight` → kohya `lora_unet_<rename(module) with _>` + alpha."""
    out = {}
    for k, v in sd.items():
        module, which = k[len("unet."):].rsplit(".lora_", 1)
        name = "lora_unet_" + rename(module).replace(".", "_")
        out[f"{name}.lora_down.weight" if which.startswith("A") else f"{name}.lora_up.weight"] = v.contiguous()
        out[f"{name}.alpha"] = torch.tensor(float(alpha))
    return out


def generate_unet():
    import unet
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    specs = [(2, 8, 12, [999.0, 1.5], 5), (1, 7, 9, [500.25], 3)]
    m = unet_peft(50, unet.sd1(), 15)
    tensors, cases = unet_cases(m, specs, 5500)
    sd = {k: v.contiguous() for k, v in get_peft_model_state_dict(m).items()}
    d = fresh_dir("lora_unet_sd1_peft")
    StableDiffusionPipeline.save_lora_weights(d, unet_lora_layers=sd,
                                              unet_lora_adapter_metadata=adapter_metadata(m))
    write_golden(d, "lora", tensors, cases, TOL, base="../unet_sd1_tiny", base_kind="unet_2d_condition",
                 adapter="pytorch_lora_weights.safetensors")
    kohya = peft_to_kohya({f"unet.{k}": v for k, v in sd.items()}, 3.0, lambda mod: mod)
    write_lora_fixture("lora_unet_sd1_kohya", "lora_kohya.safetensors", kohya, {"format": "pt"}, tensors, cases,
                       base="../unet_sd1_tiny", base_kind="unet_2d_condition")

    ids0 = [[1024.0, 1024.0, 0.0, 0.0, 1024.0, 1024.0], [768.0, 512.0, 16.0, 32.0, 1024.0, 1024.0]]
    ids1 = [[832.0, 1216.0, 8.0, 0.0, 896.0, 1152.0]]
    specs = [(2, 8, 8, [999.0, 1.5], 4), (1, 6, 10, [333.0], 5)]
    m = unet_peft(70, unet.sdxl(pooled=8, time_dim=4), 17)
    tensors, cases = unet_cases(m, specs, 7700, text_time=[(8, ids0), (8, ids1)])
    sd = {k: v.contiguous() for k, v in get_peft_model_state_dict(m).items()}
    # diffusers module → SGM module, from the state-dict converter the base fixtures use.
    base_sd = {k: v for k, v in m.state_dict().items() if "lora_" not in k and "base_layer" not in k}
    base_sd.update({k.replace(".base_layer", ""): v for k, v in m.state_dict().items() if ".base_layer." in k})
    ldm = unet.to_ldm(base_sd, dict(m.config))
    by_tensor = {}
    for k in base_sd:
        by_tensor.setdefault(id(base_sd[k]), k)
    inverse = {}
    for lk, v in ldm.items():
        inverse[by_tensor[id(v)]] = lk
    rename = lambda mod: inverse[f"{mod}.weight"][: -len(".weight")]
    kohya = peft_to_kohya({f"unet.{k}": v for k, v in sd.items()}, 3.0, rename)
    write_lora_fixture("lora_unet_sdxl_kohya", "lora_kohya.safetensors", kohya, {"format": "pt"}, tensors, cases,
                       base="../unet_sdxl_tiny", base_kind="unet_2d_condition")


def generate():
    generate_unet()
    m = base_model()
    cfg = dict(m.config)
    m.add_adapter(LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, init_lora_weights=True))
    randomize_lora(m, 5)
    tensors, cases = peft_cases(m, [1.0, 0.5])
    from peft.utils import get_peft_model_state_dict

    sd = {k: v.contiguous() for k, v in get_peft_model_state_dict(m).items()}
    d = fresh_dir("lora_flux_peft")
    FluxPipeline.save_lora_weights(d, transformer_lora_layers=sd,
                                   transformer_lora_adapter_metadata=adapter_metadata(m))
    write_golden(d, "lora", tensors, cases, TOL, base=BASE, base_kind="flux_transformer",
                 adapter="pytorch_lora_weights.safetensors")

    prefixed = {f"transformer.{k}": v for k, v in sd.items()}
    kohya = diffusers_lora_to_kohya_bfl(prefixed, 8.0, cfg)
    write_lora_fixture("lora_flux_kohya", "lora_kohya.safetensors", kohya, {"format": "pt"}, tensors, cases)
    write_lora_fixture("lora_flux_bfl", "lora_bfl.safetensors", kohya_to_bfl_peft(kohya), {"format": "pt"},
                       tensors, cases)

    tlora_fixture("tlora_flux_vanilla", ortho=False)
    tlora_fixture("tlora_flux_ortho", ortho=True)


if __name__ == "__main__":
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    generate()
