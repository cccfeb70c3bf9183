//! `dreamforge lora inspect PATH`: what an adapter file holds — naming format, method (LoRA or
//! T-LoRA and its rank schedule), layers with their ranks and shapes, alphas, metadata.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Subcommand;
use dreamforge_adapters::file::META_KEY;
use dreamforge_adapters::{AdapterFile, Format};

#[derive(Subcommand)]
pub enum LoraCommand {
    /// Show what an adapter file holds (format, method, layers, ranks, alphas, metadata).
    Inspect {
        /// A LoRA / T-LoRA .safetensors file.
        path: PathBuf,
        /// List every layer, not a summary.
        #[arg(long)]
        layers: bool,
    },
}

pub fn run(cmd: LoraCommand) -> anyhow::Result<()> {
    match cmd {
        LoraCommand::Inspect { path, layers } => {
            print!("{}", inspect(&AdapterFile::read(&path)?, layers));
            Ok(())
        }
    }
}

fn inspect(f: &AdapterFile, all: bool) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let format = match f.format {
        Format::Peft => "PEFT / diffusers (lora_A / lora_B)",
        Format::Kohya => "kohya (lora_down / lora_up / alpha)",
    };
    let _ = writeln!(s, "file:    {}", f.path.display());
    let _ = writeln!(s, "format:  {format}");
    let method = match f.schedule() {
        Some(r) => format!(
            "T-LoRA (rank mask per step: min rank {}, exponent {})",
            r.min_rank, r.exponent
        ),
        None => "LoRA".to_string(),
    };
    let _ = writeln!(s, "method:  {method}");
    let mut ranks: BTreeMap<usize, usize> = BTreeMap::new();
    let mut scales: BTreeMap<String, usize> = BTreeMap::new();
    let mut params = 0usize;
    let mut components: BTreeMap<&str, usize> = BTreeMap::new();
    for (name, l) in &f.layers {
        *ranks.entry(l.rank()).or_default() += 1;
        *scales.entry(format!("{:.4}", l.scale())).or_default() += 1;
        params += l.down.data.len() + l.up.data.len();
        let c = match f.format {
            Format::Peft => name.split('.').next().unwrap_or(""),
            Format::Kohya => name.split('_').take(2).last().unwrap_or(""),
        };
        *components.entry(c).or_default() += 1;
    }
    let list = |m: &BTreeMap<String, usize>| {
        m.iter()
            .map(|(k, n)| format!("{k} ({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        s,
        "layers:  {} in {}; {params} parameters",
        f.layers.len(),
        components
            .iter()
            .map(|(c, n)| format!("{c} ({n})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        s,
        "ranks:   {}",
        list(&ranks.iter().map(|(r, n)| (r.to_string(), *n)).collect())
    );
    let _ = writeln!(
        s,
        "scale (alpha / rank; 1 without alpha):  {}",
        list(&scales)
    );
    if all {
        for (name, l) in &f.layers {
            let _ = writeln!(
                s,
                "  {name}  down {:?}  up {:?}  alpha {}",
                l.down.shape,
                l.up.shape,
                l.alpha.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
            );
        }
    } else if let Some((name, _)) = f.layers.iter().next() {
        let _ = writeln!(s, "  e.g. {name}  (--layers lists all)");
    }
    let mut keys: Vec<&String> = f.metadata.keys().collect();
    keys.sort();
    for k in keys {
        let v = &f.metadata[k];
        let shown = if v.len() > 200 && k != META_KEY {
            format!("{}… ({} chars)", &v[..v.floor_char_boundary(200)], v.len())
        } else {
            v.clone()
        };
        let _ = writeln!(s, "metadata {k}: {shown}");
    }
    s
}
