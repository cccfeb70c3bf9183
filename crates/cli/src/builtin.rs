//! Where the built-in nano model lives (`models/nano` of the source tree, a diffusers FLUX
//! pipeline folder, and its judge in `models/nano-judge`): `$DREAMFORGE_MODELS/nano`, then
//! `models/` beside the executable or up to three folders above it (a `target/release` build
//! inside the checkout), then the checkout the binary was compiled from.

use std::path::{Path, PathBuf};

use dreamforge_core::Error;

fn candidates(name: &str) -> Vec<PathBuf> {
    let mut c = Vec::new();
    if let Some(d) = std::env::var_os("DREAMFORGE_MODELS") {
        c.push(PathBuf::from(d).join(name));
    }
    if let Ok(exe) = std::env::current_exe() {
        let mut dir = exe.parent().map(Path::to_path_buf);
        for _ in 0..4 {
            let Some(d) = dir else { break };
            c.push(d.join("models").join(name));
            dir = d.parent().map(Path::to_path_buf);
        }
    }
    c.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../models")
            .join(name),
    );
    c
}

fn find(name: &str, marker: &str) -> Result<PathBuf, Error> {
    let c = candidates(name);
    c.iter()
        .find(|p| p.join(marker).exists())
        .cloned()
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "the built-in model `{name}` was not found (looked in {}); set DREAMFORGE_MODELS to the folder holding it or pass --model",
                c.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// The nano pipeline folder.
pub fn nano_model() -> Result<PathBuf, Error> {
    find("nano", "model_index.json")
}

/// The nano judge's weights.
pub fn nano_judge() -> Result<PathBuf, Error> {
    find("nano-judge", "judge.safetensors").map(|d| d.join("judge.safetensors"))
}
