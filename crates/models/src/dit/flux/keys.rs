//! Weight-key map for FLUX: the model's parameters carry diffusers names; this maps them onto
//! the original BFL single-file layout (`double_blocks.N.img_attn.qkv`, `single_blocks.N.linear1`,
//! ...), following diffusers `convert_flux_transformer_checkpoint_to_diffusers`, with the fused
//! qkv / linear1 splits taken from the config (not hard-coded widths) and the final layer's
//! `shift, scale` halves swapped to diffusers' `scale, shift`.

use dreamforge_core::{KeyMap, KeySource};

use super::config::FluxConfig;

fn rows(key: String, start: usize, len: usize) -> KeySource {
    KeySource {
        key,
        rows: Some((start, len)),
        ..KeySource::default()
    }
}

/// diffusers parameter name → BFL file key (without any file prefix).
pub fn bfl_key_map(cfg: &FluxConfig) -> KeyMap {
    let inner = cfg.inner_dim();
    let mlp = cfg.mlp_hidden_dim();
    let mut m = KeyMap::new();
    let mut whole = |ours: String, theirs: String| {
        m.insert(ours, KeySource::whole(theirs));
    };
    for wb in ["weight", "bias"] {
        for (ours, theirs) in [
            (
                "time_text_embed.timestep_embedder.linear_1",
                "time_in.in_layer",
            ),
            (
                "time_text_embed.timestep_embedder.linear_2",
                "time_in.out_layer",
            ),
            (
                "time_text_embed.guidance_embedder.linear_1",
                "guidance_in.in_layer",
            ),
            (
                "time_text_embed.guidance_embedder.linear_2",
                "guidance_in.out_layer",
            ),
            (
                "time_text_embed.text_embedder.linear_1",
                "vector_in.in_layer",
            ),
            (
                "time_text_embed.text_embedder.linear_2",
                "vector_in.out_layer",
            ),
            ("context_embedder", "txt_in"),
            ("x_embedder", "img_in"),
            ("proj_out", "final_layer.linear"),
        ] {
            whole(format!("{ours}.{wb}"), format!("{theirs}.{wb}"));
        }
        for i in 0..cfg.num_layers {
            let o = format!("transformer_blocks.{i}");
            let t = format!("double_blocks.{i}");
            for (ours, theirs) in [
                ("norm1.linear", "img_mod.lin"),
                ("norm1_context.linear", "txt_mod.lin"),
                ("ff.net.0.proj", "img_mlp.0"),
                ("ff.net.2", "img_mlp.2"),
                ("ff_context.net.0.proj", "txt_mlp.0"),
                ("ff_context.net.2", "txt_mlp.2"),
                ("attn.to_out.0", "img_attn.proj"),
                ("attn.to_add_out", "txt_attn.proj"),
            ] {
                whole(format!("{o}.{ours}.{wb}"), format!("{t}.{theirs}.{wb}"));
            }
        }
        for i in 0..cfg.num_single_layers {
            whole(
                format!("single_transformer_blocks.{i}.norm.linear.{wb}"),
                format!("single_blocks.{i}.modulation.lin.{wb}"),
            );
            whole(
                format!("single_transformer_blocks.{i}.proj_out.{wb}"),
                format!("single_blocks.{i}.linear2.{wb}"),
            );
        }
    }
    for i in 0..cfg.num_layers {
        let o = format!("transformer_blocks.{i}.attn");
        let t = format!("double_blocks.{i}");
        for (side, names) in [
            ("img", ["to_q", "to_k", "to_v"]),
            ("txt", ["add_q_proj", "add_k_proj", "add_v_proj"]),
        ] {
            for (j, name) in names.iter().enumerate() {
                for wb in ["weight", "bias"] {
                    m.insert(
                        format!("{o}.{name}.{wb}"),
                        rows(format!("{t}.{side}_attn.qkv.{wb}"), j * inner, inner),
                    );
                }
            }
        }
        for (ours, theirs) in [
            ("norm_q", "img_attn.norm.query_norm"),
            ("norm_k", "img_attn.norm.key_norm"),
            ("norm_added_q", "txt_attn.norm.query_norm"),
            ("norm_added_k", "txt_attn.norm.key_norm"),
        ] {
            m.insert(
                format!("{o}.{ours}.weight"),
                KeySource::whole(format!("{t}.{theirs}.scale")),
            );
        }
    }
    for i in 0..cfg.num_single_layers {
        let o = format!("single_transformer_blocks.{i}");
        let t = format!("single_blocks.{i}");
        for (j, (name, len)) in [
            ("attn.to_q", inner),
            ("attn.to_k", inner),
            ("attn.to_v", inner),
            ("proj_mlp", mlp),
        ]
        .into_iter()
        .enumerate()
        {
            for wb in ["weight", "bias"] {
                m.insert(
                    format!("{o}.{name}.{wb}"),
                    rows(format!("{t}.linear1.{wb}"), j * inner, len),
                );
            }
        }
        m.insert(
            format!("{o}.attn.norm_q.weight"),
            KeySource::whole(format!("{t}.norm.query_norm.scale")),
        );
        m.insert(
            format!("{o}.attn.norm_k.weight"),
            KeySource::whole(format!("{t}.norm.key_norm.scale")),
        );
    }
    for wb in ["weight", "bias"] {
        m.insert(
            format!("norm_out.linear.{wb}"),
            KeySource {
                key: format!("final_layer.adaLN_modulation.1.{wb}"),
                rows: None,
                swap_halves: true,
                ..KeySource::default()
            },
        );
    }
    m
}
