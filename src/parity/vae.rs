//! `autoencoder_kl` fixtures: load the folder (config.json + weights), then run each case —
//! an encode case (input `sample`) compares `latent_mean` / `latent_logvar`, a decode case
//! (input `latent`) compares `sample`.

use std::collections::BTreeMap;

use burn::tensor::Device;

use dreamforge_core::to_host;
use dreamforge_models::vae::AutoencoderKL;

use super::golden::{Fixture, Outcome};

pub fn run(fx: &Fixture, device: &Device) -> Result<Vec<Outcome>, String> {
    let model = AutoencoderKL::load(&fx.dir, device).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (i, case) in fx.cases.iter().enumerate() {
        let r = (|| -> Result<BTreeMap<String, _>, String> {
            if let Some(x) = fx.input_opt(case, "sample")? {
                let (mean, logvar) = model.encode(x.to_device(device));
                Ok(BTreeMap::from([
                    ("latent_mean".to_string(), to_host(mean)),
                    ("latent_logvar".to_string(), to_host(logvar)),
                ]))
            } else if let Some(z) = fx.input_opt(case, "latent")? {
                let y = model.decode(z.to_device(device));
                Ok(BTreeMap::from([("sample".to_string(), to_host(y))]))
            } else {
                Err("case has neither a `sample` (encode) nor a `latent` (decode) input".into())
            }
        })();
        out.push(match r {
            Ok(computed) => fx.check(i, case, &computed),
            Err(e) => Outcome::case_error(&fx.name, i, e),
        });
    }
    Ok(out)
}
