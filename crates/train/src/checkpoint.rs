//! Trainer checkpoints: a folder holding the model parameters (`model.bpk`, Burn's burnpack
//! record), the optimizer state (`optim.bpk`, Burn's record, for AdamW or any Burn
//! `ModuleOptimizer`; `optim.safetensors` for Prodigy, see [`crate::prodigy`]) and
//! `state.json` (step, RNG positions, the run config as JSON). Written into a temporary sibling
//! folder and renamed over the previous one, so a crash or a kill mid-write leaves the previous
//! checkpoint intact.

use std::path::{Path, PathBuf};

use burn::module::Module;
use serde::{Serialize, de::DeserializeOwned};

use crate::optim::ModelOptimizer;

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Format { path: PathBuf, reason: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn format(path: &Path, reason: impl ToString) -> CheckpointError {
    CheckpointError::Format {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// Writes `model`, `optim` and `state` to the folder `dir`, replacing it atomically.
pub fn save<M: Module + Clone, S: Serialize>(
    dir: &Path,
    model: &M,
    optim: &impl ModelOptimizer,
    state: &S,
) -> Result<(), CheckpointError> {
    save_with(dir, model, None, optim, state)
}

/// [`save`] plus a second module of the same type stored as `<name>.bpk` (e.g. the EMA copy),
/// in the same atomic swap.
pub fn save_with<M: Module + Clone, S: Serialize>(
    dir: &Path,
    model: &M,
    extra: Option<(&str, &M)>,
    optim: &impl ModelOptimizer,
    state: &S,
) -> Result<(), CheckpointError> {
    let name = dir
        .file_name()
        .ok_or_else(|| format(dir, "not a folder name"))?
        .to_string_lossy()
        .into_owned();
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    model
        .clone()
        .save_file(tmp.join("model.bpk"))
        .map_err(|e| format(&tmp.join("model.bpk"), format!("{e:?}")))?;
    let optim_file = optim.state_file();
    optim
        .save_state(&tmp.join(optim_file))
        .map_err(|e| format(&tmp.join(optim_file), e))?;
    let mut files = vec![
        "model.bpk".to_string(),
        optim_file.into(),
        "state.json".into(),
    ];
    if let Some((name, m)) = extra {
        let p = tmp.join(format!("{name}.bpk"));
        m.clone()
            .save_file(&p)
            .map_err(|e| format(&p, format!("{e:?}")))?;
        files.push(format!("{name}.bpk"));
    }
    let json = serde_json::to_vec_pretty(state).map_err(|e| format(&tmp, e))?;
    let state_path = tmp.join("state.json");
    std::fs::write(&state_path, json).map_err(io(&state_path))?;
    for f in &files {
        let p = tmp.join(f);
        std::fs::File::open(&p)
            .and_then(|h| h.sync_all())
            .map_err(io(&p))?;
    }
    // Swap: previous → .old, new → dir, drop .old. A crash between the renames leaves either
    // the previous checkpoint (as `.old`) or the new one complete.
    let old = parent.join(format!(".{name}.old"));
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        std::fs::rename(dir, &old).map_err(io(dir))?;
    }
    std::fs::rename(&tmp, dir).map_err(io(dir))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(io(&old))?;
    }
    Ok(())
}

/// Reads a checkpoint written by [`save`] into `model` / `optim` (fresh instances of the same
/// architecture and optimizer config).
pub fn load<M: Module, O: ModelOptimizer, S: DeserializeOwned>(
    dir: &Path,
    model: M,
    optim: O,
) -> Result<(M, O, S), CheckpointError> {
    for f in ["model.bpk", optim.state_file(), "state.json"] {
        let p = dir.join(f);
        if !p.exists() {
            return Err(format(
                dir,
                format!("not a dreamforge checkpoint: `{f}` is missing"),
            ));
        }
    }
    let mp = dir.join("model.bpk");
    let model = model
        .try_load_file(&mp)
        .map_err(|e| format(&mp, format!("cannot load the model: {e:?}")))?;
    let op = dir.join(optim.state_file());
    let optim = optim
        .load_state(&op)
        .map_err(|e| format(&op, format!("cannot load the optimizer state: {e}")))?;
    Ok((model, optim, read_state(dir)?))
}

/// Reads only a checkpoint's `state.json` (e.g. to compare its run config before loading).
pub fn read_state<S: DeserializeOwned>(dir: &Path) -> Result<S, CheckpointError> {
    let sp = dir.join("state.json");
    let text = std::fs::read_to_string(&sp).map_err(io(&sp))?;
    serde_json::from_str(&text).map_err(|e| format(&sp, e))
}

/// Reads the extra module `<name>.bpk` a checkpoint was saved with into `template`.
pub fn load_extra<M: Module>(dir: &Path, name: &str, template: M) -> Result<M, CheckpointError> {
    let p = dir.join(format!("{name}.bpk"));
    if !p.exists() {
        return Err(format(
            dir,
            format!("`{name}.bpk` is missing (the run was started without it)"),
        ));
    }
    template
        .try_load_file(&p)
        .map_err(|e| format(&p, format!("cannot load {name}: {e:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::{Linear, LinearConfig};
    use burn::optim::AdamWConfig;
    use burn::tensor::Device;

    fn weights(m: &Linear) -> Vec<f32> {
        m.weight.val().into_data().try_to_vec::<f32>().unwrap()
    }

    #[test]
    fn a_killed_write_leaves_the_previous_checkpoint_and_bad_folders_are_named() {
        let d = Device::flex().autodiff();
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("ckpt");
        let optim = AdamWConfig::new().init();
        let a = LinearConfig::new(3, 2).init(&d);
        save(&ck, &a, &optim, &serde_json::json!({"step": 1})).unwrap();
        // A write killed half-way: the temporary folder holds a partial model, no state.
        let tmp = dir.path().join(format!(".ckpt.tmp-{}", 4_000_000));
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::write(tmp.join("model.bpk"), b"partial").unwrap();
        let fresh = LinearConfig::new(3, 2).init(&d);
        assert_ne!(weights(&fresh), weights(&a));
        let (loaded, _, st): (Linear, _, serde_json::Value) =
            load(&ck, fresh.clone(), AdamWConfig::new().init()).unwrap();
        assert_eq!(weights(&loaded), weights(&a));
        assert_eq!(st["step"], 1);
        // A later save replaces it whole.
        save(&ck, &fresh, &optim, &serde_json::json!({"step": 2})).unwrap();
        let (_, _, st): (Linear, _, serde_json::Value) =
            load(&ck, fresh.clone(), AdamWConfig::new().init()).unwrap();
        assert_eq!(st["step"], 2);
        // Missing and corrupt parts are named.
        let err = |r: Result<
            (Linear, burn::optim::ModuleOptimizer, serde_json::Value),
            CheckpointError,
        >| match r {
            Ok(_) => panic!("loaded a bad checkpoint"),
            Err(e) => e.to_string(),
        };
        let e = err(load(&tmp, fresh.clone(), AdamWConfig::new().init()));
        assert!(e.contains("optim.bpk") && e.contains("missing"), "{e}");
        std::fs::write(ck.join("model.bpk"), b"garbage").unwrap();
        let e = err(load(&ck, fresh, AdamWConfig::new().init()));
        assert!(
            e.contains("model.bpk") && e.contains("cannot load the model"),
            "{e}"
        );
    }
}
