//! `dreamforge models inspect PATH`: family, key format, parameters, dtypes, components.

use std::path::PathBuf;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum ModelsCommand {
    /// Show what a model file or folder holds (family, format, parameters, dtypes, components).
    Inspect {
        /// A .safetensors file, an index.json, a component folder or a diffusers pipeline folder.
        path: PathBuf,
    },
}

pub fn run(cmd: ModelsCommand) -> anyhow::Result<()> {
    match cmd {
        ModelsCommand::Inspect { path } => {
            print!("{}", dreamforge_pipeline::inspect::inspect(&path)?);
            Ok(())
        }
    }
}
