//! The trained adapter set: one branch per adapted weight in model order (the module the
//! trainer updates and checkpoints hold — never the base weights), its module names, and the
//! pass that attaches it to a frozen base model (any model: FLUX transformer, UNet).

use std::collections::HashMap;

use burn::module::Module;
use burn::tensor::Device;

use dreamforge_adapters::{Branch, attach};
use dreamforge_core::export::ParamKeys;
use dreamforge_core::{Error, Result};

use crate::config::SubjectConfig;

/// The trained adapters, one branch per adapted weight, in model order (what checkpoints
/// hold).
#[derive(Module, Debug)]
pub struct AdapterSet {
    pub branches: Vec<Branch>,
}

/// Module names of an [`AdapterSet`]'s branches (same order).
#[derive(Debug, Clone)]
pub struct AdapterLayout {
    pub modules: Vec<String>,
    index: HashMap<String, usize>,
}

impl AdapterLayout {
    pub fn new(modules: Vec<String>) -> Self {
        let index = modules
            .iter()
            .enumerate()
            .map(|(i, m)| (m.clone(), i))
            .collect();
        Self { modules, index }
    }

    /// `base` with the set's branches attached (on `base`'s device).
    pub fn attach<M: Module>(&self, base: M, names: &ParamKeys, set: &AdapterSet) -> M {
        let all = regex::Regex::new(".*").expect("valid regex");
        attach(
            base,
            |p| names.key_of(p),
            &all,
            |module, _, _, _| vec![self.index.get(module).map(|&i| set.branches[i].clone())],
        )
        .0
    }
}

/// Fresh adapters for the weights of `base` that `cfg.adapter.target_modules` selects (matched
/// on the checkpoint module names `names` gives).
pub fn init_adapters<M: Module + Clone>(
    base: &M,
    names: &ParamKeys,
    cfg: &SubjectConfig,
    device: &Device,
) -> Result<(AdapterSet, AdapterLayout)> {
    let targets = regex::Regex::new(&cfg.adapter.target_modules).map_err(|e| {
        Error::InvalidInput(format!(
            "target modules `{}`: {e}",
            cfg.adapter.target_modules
        ))
    })?;
    let init = cfg.adapter.init();
    let mut branches = Vec::new();
    let mut seen = Vec::new();
    // A dry pass (every slot `None`: nothing is attached) that visits each targeted weight.
    let _ = attach(
        base.clone(),
        |p| names.key_of(p),
        &targets,
        |module, d_in, d_out, _| {
            branches.push(init.branch(module, d_in, d_out, device));
            seen.push(module.to_string());
            vec![None]
        },
    );
    if seen.is_empty() {
        return Err(Error::InvalidInput(format!(
            "no weight of the transformer matches the target modules `{}` (module names look like `transformer_blocks.0.attn.to_q` or `down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`)",
            cfg.adapter.target_modules
        )));
    }
    Ok((AdapterSet { branches }, AdapterLayout::new(seen)))
}
