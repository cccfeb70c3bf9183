//! Data-driven parity harness (shared/design/PARITY.md): discovers fixture folders under
//! `tests/fixtures/parity/` and every folder in `DREAMFORGE_PARITY_DIRS`, runs each case by
//! `kind`, and prints `parity <folder> <case> max_abs=<x> rel_l2=<y> ok|FAIL` or
//! `parity <folder> - ERROR <message>`. An unknown kind is an error, not a skip.

mod clip;
mod flux;
mod flux_pipeline;
mod golden;
mod lora;
mod scheduler;
mod sd_pipeline;
mod single_file;
mod t5;
mod tokenizer;
mod unet;
mod vae;

use std::path::{Path, PathBuf};

use burn::tensor::Device;

pub use golden::{Compare, Fixture, Outcome, compare};

/// Every fixture folder to check: the committed ones plus `DREAMFORGE_PARITY_DIRS` entries
/// (each entry is a fixture folder itself or a folder of fixture folders).
pub fn discover(committed: &Path) -> Vec<PathBuf> {
    let mut roots = vec![committed.to_path_buf()];
    if let Ok(extra) = std::env::var("DREAMFORGE_PARITY_DIRS") {
        roots.extend(
            extra
                .split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
        );
    }
    let mut out = Vec::new();
    for root in roots {
        if root.join("golden.json").exists() {
            out.push(root);
            continue;
        }
        let mut dirs: Vec<PathBuf> = match std::fs::read_dir(&root) {
            Ok(rd) => rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("golden.json").exists())
                .collect(),
            Err(_) => {
                // A listed folder that cannot be read is reported by the caller as an error.
                out.push(root);
                continue;
            }
        };
        dirs.sort();
        out.extend(dirs);
    }
    out
}

/// Runs one fixture; returns one outcome per case (or one error outcome).
pub fn run_fixture(dir: &Path, device: &Device) -> Vec<Outcome> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    let fixture = match Fixture::open(dir) {
        Ok(f) => f,
        Err(e) => return vec![Outcome::error(&name, e.to_string())],
    };
    let result = match fixture.kind.as_str() {
        "flux_transformer" => flux::run(&fixture, device),
        "lora" => lora::run(&fixture, device),
        "flux_pipeline" => flux_pipeline::run(&fixture, device),
        "scheduler" => scheduler::run(&fixture),
        "sd_single_file" => single_file::run(&fixture, device),
        "sd_pipeline" => sd_pipeline::run(&fixture, device),
        "autoencoder_kl" => vae::run(&fixture, device),
        "clip_text_model" | "clip_text_model_with_projection" => clip::run(&fixture, device),
        "t5_encoder" => t5::run(&fixture, device),
        "tokenizer" => tokenizer::run(&fixture, device),
        "unet_2d_condition" => unet::run(&fixture, device),
        other => Err(format!("unknown fixture kind `{other}`")),
    };
    match result {
        Ok(outcomes) => outcomes,
        Err(e) => vec![Outcome::error(&name, e)],
    }
}
