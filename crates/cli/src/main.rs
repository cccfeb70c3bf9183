//! `dreamforge`: the command-line tool. A thin clap layer, one file per subcommand; library
//! errors map to exit codes (0 ok, 1 bad input or config, 2 runtime / I/O, 130 interrupted).

mod builtin;
mod eval;
mod lora;
mod models;
mod nano;
mod render;
mod sample;
mod train;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "dreamforge",
    version,
    about = "Personalize text-to-image diffusion models and render with them"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images from a prompt.
    Sample(Box<sample::SampleArgs>),
    /// Render a manifest of jobs (JSONL / TOML), sharded over a fleet, resumable.
    Render(Box<render::RenderArgs>),
    /// Inspect model files and folders.
    Models {
        #[command(subcommand)]
        command: models::ModelsCommand,
    },
    /// Adapter files (LoRA, T-LoRA).
    Lora {
        #[command(subcommand)]
        command: lora::LoraCommand,
    },
    /// Fine-tune an adapter (LoRA / T-LoRA) on a few photos of a subject.
    Train(Box<train::TrainArgs>),
    /// Nano metrics for a folder of images: prompt fidelity, subject similarity, judge accuracy.
    Eval(eval::EvalArgs),
    /// The built-in nano model and world.
    Nano {
        #[command(subcommand)]
        command: nano::NanoCommand,
    },
}

fn main() -> ExitCode {
    keep_freed_memory();
    // Usage errors are bad input (exit 1), not clap's default 2, which here means "a runtime
    // failure a rerun may not meet".
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 1 } else { 0 });
        }
    };
    let result = match cli.command {
        Command::Sample(args) => sample::run(*args),
        Command::Render(args) => render::run(*args),
        Command::Models { command } => models::run(command),
        Command::Nano { command } => nano::run(command),
        Command::Eval(a) => eval::run(a),
        Command::Train(a) => train::run(*a),
        Command::Lora { command } => lora::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let code = exit_code(&e);
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(code)
        }
    }
}

/// Tells glibc's malloc to keep freed memory for reuse instead of handing it back to the kernel.
/// The CPU backend allocates a fresh buffer for every tensor; with glibc's defaults, large ones
/// are `mmap`ed and unmapped each time, so every step page-faults its working set in again
/// (measured on the nano training step: page faults and page clearing ≈ 10% of the time, the
/// step 10% faster with this). Peak memory is unchanged: freed blocks are reused.
#[allow(unsafe_code)]
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

/// 1 for bad input, 2 for runtime failures, 130 for Ctrl-C; `render --status` answers 3 for "not done yet".
fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(render::ExitWith(code, _)) = e.downcast_ref::<render::ExitWith>() {
        return *code;
    }
    match e.downcast_ref::<dreamforge_core::Error>() {
        Some(dreamforge_core::Error::Interrupted) => 130,
        Some(err) if err.is_input_error() => 1,
        Some(_) => 2,
        None if e.downcast_ref::<std::io::Error>().is_some() => 2,
        None => 1,
    }
}

/// The error and its causes on one line.
pub(crate) fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string().replace('\n', " ");
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ")
}
