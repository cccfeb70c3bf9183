"""T5 encoder fixtures (transformers `T5EncoderModel`, as FLUX and SD3 use it).

1. `t5_encoder_tiny_gated`: T5 v1.1 style (gated-gelu FF = `gelu_new` tanh approximation),
   BF16 weights in one `model.safetensors` as FLUX ships T5 (transformers saves the tied
   embedding once, as `shared.weight`). Two cases: no mask, and a batch of 2 whose second row
   is padded at the tail with an `attention_mask`. Sequence length 40 so many relative-position
   buckets (exact and logarithmic, both directions) are used.
2. `t5_encoder_tiny_sharded_embed_tokens`: original-T5 style (`relu`, non-gated `wi`), saved
   sharded (`model.safetensors.index.json` + shards) and rewritten so the embedding lives under
   `encoder.embed_tokens.weight` instead of `shared.weight` (index fixed accordingly).
"""

import json

import torch
from safetensors.torch import load_file, save_file
from transformers import T5Config, T5EncoderModel

from common import fresh_dir, perturb, round_to, sanitize_config_file, write_golden

TOL = {"max_abs": 1e-4, "rel_l2": 1e-5}


def tiny_t5(seed, **cfg):
    torch.manual_seed(seed)
    config = T5Config(**cfg)
    m = T5EncoderModel(config).eval()
    perturb(m, seed + 1)
    return round_to(m, torch.bfloat16)


def ids(shape, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, shape, generator=g, dtype=torch.int64)


@torch.no_grad()
def make_cases(m, specs, vocab, seed):
    """specs: list of (batch, seq_len, per-row valid lengths or None for no mask)."""
    tensors, cases = {}, []
    for i, (b, t, valid) in enumerate(specs):
        inp = {"input_ids": ids((b, t), vocab, seed + i)}
        if valid is not None:
            mask = torch.zeros(b, t, dtype=torch.int64)
            for r, n in enumerate(valid):
                mask[r, :n] = 1
            inp["input_ids"] = inp["input_ids"] * mask  # pad id 0 in the padded tail, as tokenizers do
            inp["attention_mask"] = mask
        out = m(**inp).last_hidden_state
        names = {}
        for k, v in inp.items():
            tensors[f"case{i}.{k}"] = v
            names[k] = f"case{i}.{k}"
        tensors[f"case{i}.last_hidden_state"] = out
        cases.append({"inputs": names, "outputs": {"last_hidden_state": f"case{i}.last_hidden_state"}})
    return tensors, cases


def generate():
    # 1. T5 v1.1 (gated-gelu), single BF16 file with only `shared.weight`.
    d = fresh_dir("t5_encoder_tiny_gated")
    cfg = dict(
        vocab_size=200, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
        relative_attention_num_buckets=32, relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu", dropout_rate=0.0, layer_norm_epsilon=1e-6,
    )
    m = tiny_t5(30, **cfg)
    m.to(torch.bfloat16).save_pretrained(d, safe_serialization=True)
    m.to(torch.float32)
    sanitize_config_file(d / "config.json")
    keys = sorted(load_file(str(d / "model.safetensors")).keys())
    assert "shared.weight" in keys and "encoder.embed_tokens.weight" not in keys, keys
    tensors, cs = make_cases(m, [(1, 40, None), (2, 40, [40, 23])], cfg["vocab_size"], 3000)
    write_golden(d, "t5_encoder", tensors, cs, TOL, weights="model.safetensors")

    # 2. Original T5 (relu, non-gated), sharded, embedding under `encoder.embed_tokens.weight`.
    d = fresh_dir("t5_encoder_tiny_sharded_embed_tokens")
    cfg = dict(
        vocab_size=150, d_model=24, d_kv=6, num_heads=3, d_ff=48, num_layers=3,
        relative_attention_num_buckets=16, relative_attention_max_distance=20,
        feed_forward_proj="relu", dropout_rate=0.0, layer_norm_epsilon=1e-5,
    )
    m = tiny_t5(40, **cfg)
    m.to(torch.bfloat16).save_pretrained(d, safe_serialization=True, max_shard_size="8KB")
    m.to(torch.float32)
    sanitize_config_file(d / "config.json")
    index_path = d / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    wm = index["weight_map"]
    assert len(set(wm.values())) >= 2, wm
    shard = wm.pop("shared.weight")
    sd = load_file(str(d / shard))
    sd["encoder.embed_tokens.weight"] = sd.pop("shared.weight")
    save_file(sd, str(d / shard), metadata={"format": "pt"})
    wm["encoder.embed_tokens.weight"] = shard
    index["weight_map"] = dict(sorted(wm.items()))
    index_path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    tensors, cs = make_cases(m, [(2, 30, [30, 11]), (1, 33, None)], cfg["vocab_size"], 4000)
    write_golden(d, "t5_encoder", tensors, cs, TOL)


if __name__ == "__main__":
    generate()
