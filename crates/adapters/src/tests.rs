//! Adapters on a tiny two-layer model: values against host arithmetic, the T-LoRA mask per
//! step, zero delta at initialisation, and which parameters train.

use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use regex::Regex;

use crate::{AdapterInit, AdapterKind, Branch, Frozen, RankSchedule, at_step, attach};

#[derive(Module, Debug)]
struct Net {
    a: Linear,
    b: Linear,
}

const D_IN: usize = 5;
const D_OUT: usize = 4;

fn net(device: &Device) -> Net {
    Net {
        a: LinearConfig::new(D_IN, D_OUT).init(device),
        b: LinearConfig::new(D_OUT, 3).init(device),
    }
}

fn key_of(path: &str) -> Option<String> {
    Some(format!("model.{path}"))
}

fn host(t: Tensor<2>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
}

fn values(seed: u32, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (((i as u32 + 1).wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
        .collect()
}

fn t2(v: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(v, shape), device)
}

/// `x·W + b + scale · x·Aᵀ·diag(m)·Bᵀ` on the host (`W` `[d_in, d_out]`, `A` `[r, d_in]`,
/// `B` `[d_out, r]`).
fn reference(
    x: &[f32],
    n: usize,
    w: &[f32],
    bias: &[f32],
    a: &[f32],
    bm: &[f32],
    m: &[f32],
    scale: f32,
) -> Vec<f32> {
    let r = m.len();
    let mut out = vec![0f32; n * D_OUT];
    for i in 0..n {
        for o in 0..D_OUT {
            let mut s = bias[o];
            for k in 0..D_IN {
                s += x[i * D_IN + k] * w[k * D_OUT + o];
            }
            for j in 0..r {
                let mut h = 0.0;
                for k in 0..D_IN {
                    h += x[i * D_IN + k] * a[j * D_IN + k];
                }
                s += scale * bm[o * r + j] * m[j] * h;
            }
            out[i * D_OUT + o] = s;
        }
    }
    out
}

fn set_up(model: Net, up: Vec<f32>, device: &Device) -> Net {
    // Give the (zero-initialised) up projections values, as training would.
    struct SetUp<'a>(&'a [f32], Device, Vec<String>);
    impl burn::module::ModuleMapper for SetUp<'_> {
        fn enter_module(&mut self, name: &str, _c: &str) {
            self.2.push(name.into());
        }
        fn exit_module(&mut self, _n: &str, _c: &str) {
            self.2.pop();
        }
        fn map_float<const D: usize>(&mut self, p: Param<Tensor<D>>) -> Param<Tensor<D>> {
            if self.2.last().map(String::as_str) != Some("up") {
                return p;
            }
            let (v, dev) = (self.0.to_vec(), self.1.clone());
            p.map(|t| {
                // Cycle the given values over the factor's size.
                let n = t.shape().num_elements();
                let data: Vec<f32> = v.iter().copied().cycle().take(n).collect();
                Tensor::from_data(TensorData::new(data, t.shape()), &dev)
            })
        }
    }
    model.map(&mut SetUp(&up, device.clone(), Vec::new()))
}

#[test]
fn lora_attaches_by_checkpoint_name_and_matches_peft_math() {
    let device = Device::flex();
    let base = net(&device);
    let init = AdapterInit {
        kind: AdapterKind::Lora {
            alpha: 4.0,
            rslora: false,
        },
        rank: 2,
        seed: 3,
    };
    let targets = Regex::new(r"^model\.a$").unwrap();
    let (model, adapted) = attach(base.clone(), key_of, &targets, |m, i, o, d| {
        vec![Some(init.branch(m, i, o, d))]
    });
    assert_eq!(adapted, vec!["model.a".to_string()]);
    assert!(
        model
            .b
            .weight
            .reparameterization::<crate::Adapters>()
            .is_none()
    );
    let n = 3;
    let x = t2(values(1, n * D_IN), [n, D_IN], &device);
    // B = 0 at init: the adapted model computes exactly the base model.
    assert_eq!(
        host(model.a.forward(x.clone())),
        host(base.a.forward(x.clone()))
    );
    // With B set, the output is x·W + b + (alpha/r)·x·Aᵀ·Bᵀ.
    let up = values(7, D_OUT * 2);
    let model = set_up(model, up.clone(), &device);
    let br = &model
        .a
        .weight
        .reparameterization::<crate::Adapters>()
        .unwrap()
        .branches[0]
        .as_ref()
        .unwrap();
    let a = host(br.down.val());
    // PEFT init of A: U(±1/√d_in).
    assert!(a.iter().all(|v| v.abs() <= 1.0 / (D_IN as f32).sqrt()) && a.iter().any(|v| *v != 0.0));
    let got = host(model.a.forward(x.clone()));
    let want = reference(
        &host(x),
        n,
        &host(base.a.weight.val()),
        &base
            .a
            .bias
            .as_ref()
            .unwrap()
            .val()
            .into_data()
            .try_into_vec::<f32>()
            .unwrap(),
        &a,
        &up,
        &[1.0, 1.0],
        2.0,
    );
    for (g, w) in got.iter().zip(&want) {
        assert!((g - w).abs() < 1e-5, "{g} vs {w}");
    }
}

#[test]
fn tlora_mask_follows_the_step() {
    let device = Device::flex();
    let base = net(&device);
    let schedule = RankSchedule {
        min_rank: 1,
        exponent: 1.0,
        paired: false,
    };
    let init = AdapterInit {
        kind: AdapterKind::TLora {
            schedule,
            orthogonal: false,
        },
        rank: 4,
        seed: 5,
    };
    let targets = Regex::new(r"^model\.a$").unwrap();
    let (model, _) = attach(base.clone(), key_of, &targets, |m, i, o, d| {
        vec![Some(init.branch(m, i, o, d))]
    });
    let up = values(9, D_OUT * 4);
    let model = set_up(model, up.clone(), &device);
    let a = host(
        model
            .a
            .weight
            .reparameterization::<crate::Adapters>()
            .unwrap()
            .branches[0]
            .as_ref()
            .unwrap()
            .down
            .val(),
    );
    // vanilla T-LoRA down ~ N(0, 1/r²): small values, not all equal.
    assert!(a.iter().all(|v| v.abs() < 6.0 / 4.0) && a.iter().any(|v| *v != a[0]));
    let n = 2;
    let x = t2(values(2, n * D_IN), [n, D_IN], &device);
    let w = host(base.a.weight.val());
    let b: Vec<f32> = base
        .a
        .bias
        .as_ref()
        .unwrap()
        .val()
        .into_data()
        .try_into_vec()
        .unwrap();
    for (progress, mask) in [
        (0.0, [1.0, 0.0, 0.0, 0.0]), // pure noise: r_min = 1
        (0.5, [1.0, 1.0, 0.0, 0.0]), // ⌊0.5·3⌋ + 1 = 2
        (1.0, [1.0, 1.0, 1.0, 1.0]), // clean end: all 4
    ] {
        let m = at_step(model.clone(), &[Some(schedule)], progress);
        let got = host(m.a.forward(x.clone()));
        let want = reference(&host(x.clone()), n, &w, &b, &a, &up, &mask, 1.0);
        for (g, e) in got.iter().zip(&want) {
            assert!((g - e).abs() < 1e-5, "progress {progress}: {g} vs {e}");
        }
    }
    // A plain-LoRA schedule slot leaves the masks alone.
    let m = at_step(model.clone(), &[None], 0.0);
    assert_eq!(host(m.a.forward(x.clone())), host(model.a.forward(x)));
}

#[test]
fn orthogonal_tlora_is_zero_at_init_for_every_mask() {
    let device = Device::flex();
    let r = 3;
    let q = t2(values(4, r * D_IN), [r, D_IN], &device);
    let p = t2(values(5, D_OUT * r), [D_OUT, r], &device);
    let l = Tensor::<1>::from_data(TensorData::new(vec![0.5f32, 0.2, 0.1], [r]), &device);
    let branch = |lambda: Tensor<1>, mask: Vec<f32>| Branch {
        down: Param::from_tensor(q.clone()),
        up: Param::from_tensor(p.clone()),
        lambda: Some(Param::from_tensor(lambda)),
        frozen: Some(Frozen {
            up: Param::from_tensor(p.clone()),
            down: Param::from_tensor(q.clone()),
            lambda: Param::from_tensor(l.clone()),
        }),
        mask: Param::from_tensor(Tensor::from_data(TensorData::new(mask, [r]), &device)),
        scale: 1.0,
    };
    for mask in [vec![1.0, 0.0, 0.0], vec![1.0, 1.0, 1.0]] {
        let d = host(branch(l.clone(), mask).delta());
        assert!(d.iter().all(|v| v.abs() < 1e-7));
    }
    // Moving λ₂ only changes ΔW when the mask lets component 2 through:
    // ΔW_burn[k][o] = Σ_j Q[j][k]·(λ_j − λ0_j)·m_j·P[o][j].
    let moved = Tensor::<1>::from_data(TensorData::new(vec![0.5f32, 0.2, 0.4], [r]), &device);
    let d = host(branch(moved.clone(), vec![1.0, 1.0, 0.0]).delta());
    assert!(d.iter().all(|v| v.abs() < 1e-7));
    let d = host(branch(moved, vec![1.0, 1.0, 1.0]).delta());
    let (qh, ph) = (host(q), host(p));
    for k in 0..D_IN {
        for o in 0..D_OUT {
            let want = qh[2 * D_IN + k] * 0.3 * ph[o * r + 2];
            assert!((d[k * D_OUT + o] - want).abs() < 1e-6);
        }
    }
}

#[test]
fn only_adapter_factors_train() {
    let device = Device::flex().autodiff();
    let targets = Regex::new(r"^model\.(a|b)$").unwrap();
    for orthogonal in [false, true] {
        let base = net(&device).no_grad();
        let init = AdapterInit {
            kind: AdapterKind::TLora {
                schedule: RankSchedule {
                    min_rank: 1,
                    exponent: 1.0,
                    paired: false,
                },
                orthogonal,
            },
            rank: 2,
            seed: 1,
        };
        let (model, adapted) = attach(base.clone(), key_of, &targets, |m, i, o, d| {
            vec![Some(init.branch(m, i, o, d))]
        });
        assert_eq!(adapted.len(), 2);
        let x = t2(values(3, 2 * D_IN), [2, D_IN], &device);
        // The orthogonal init is ΔW = 0 at every mask, like the vanilla one (up = 0).
        for progress in [0.0, 1.0] {
            let m = at_step(
                model.clone(),
                &[Some(RankSchedule {
                    min_rank: 1,
                    exponent: 1.0,
                    paired: false,
                })],
                progress,
            );
            let got = host(m.b.forward(m.a.forward(x.clone())));
            let want = host(base.b.forward(base.a.forward(x.clone())));
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-6, "orthogonal {orthogonal}: {g} vs {w}");
            }
        }
        let loss = model.b.forward(model.a.forward(x)).square().sum();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        // down and up (and λ) of each adapted layer; no base weight, bias, mask or frozen
        // copy.
        assert_eq!(
            grads.len(),
            if orthogonal { 6 } else { 4 },
            "orthogonal {orthogonal}"
        );
    }
}

mod files {
    use super::*;
    use crate::{AdapterFile, FileAdapter, Format, attach_files, collect};
    use dreamforge_core::HostTensor;
    use std::collections::{BTreeMap, HashMap};

    /// One adapter file on a clone of `base`, as the `transformer` component.
    fn attach_one(
        base: &Net,
        f: &AdapterFile,
        strength: f64,
    ) -> dreamforge_core::Result<(Net, Vec<Vec<String>>)> {
        attach_files(
            base.clone(),
            "transformer",
            key_of,
            &[FileAdapter { file: f, strength }],
        )
    }

    fn trained(device: &Device) -> (Net, Net) {
        let base = net(device);
        let init = AdapterInit {
            kind: AdapterKind::Lora {
                alpha: 4.0,
                rslora: false,
            },
            rank: 2,
            seed: 3,
        };
        let (m, _) = attach(
            base.clone(),
            key_of,
            &Regex::new(r"^model\.(a|b)$").unwrap(),
            |m, i, o, d| vec![Some(init.branch(m, i, o, d))],
        );
        (base, set_up(m, values(11, 8), device))
    }

    #[test]
    fn a_trained_lora_round_trips_through_peft_and_kohya_files() {
        let device = Device::flex();
        let (base, model) = trained(&device);
        let x = t2(values(4, 3 * D_IN), [3, D_IN], &device);
        let want = host(model.b.forward(model.a.forward(x.clone())));
        let layers = collect(&model, key_of, 0, Some(4.0));
        assert_eq!(layers.keys().collect::<Vec<_>>(), ["model.a", "model.b"]);
        let dir = tempfile::tempdir().unwrap();
        let peft = dir.path().join("peft.safetensors");
        AdapterFile::write_peft(&peft, "transformer", &layers, &HashMap::new()).unwrap();
        // kohya naming of the same factors, alpha as 0-d tensors.
        let kohya = dir.path().join("kohya.safetensors");
        let mut t = Vec::new();
        for (name, l) in &layers {
            let k = format!("lora_unet_{}", name.replace('.', "_"));
            t.push((format!("{k}.lora_down.weight"), l.down.clone()));
            t.push((format!("{k}.lora_up.weight"), l.up.clone()));
            t.push((format!("{k}.alpha"), HostTensor::new(vec![], vec![4.0])));
        }
        dreamforge_core::export::save_safetensors(&kohya, &t, &HashMap::new()).unwrap();
        for (path, format) in [(&peft, Format::Peft), (&kohya, Format::Kohya)] {
            let f = AdapterFile::read(path).unwrap();
            assert_eq!(f.format, format);
            let (m, unmatched) = attach_one(&base, &f, 1.0).unwrap();
            assert!(unmatched.iter().all(Vec::is_empty), "{unmatched:?}");
            let got = host(m.b.forward(m.a.forward(x.clone())));
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-5, "{format:?}: {g} vs {w}");
            }
            // Strength 0 is the base model; two copies at 0.5 each are one at 1.
            let (m0, _) = attach_one(&base, &f, 0.0).unwrap();
            assert_eq!(
                host(m0.a.forward(x.clone())),
                host(base.a.forward(x.clone()))
            );
            let half = FileAdapter {
                file: &f,
                strength: 0.5,
            };
            let (m2, _) = attach_files(base.clone(), "transformer", key_of, &[half, half]).unwrap();
            let got = host(m2.b.forward(m2.a.forward(x.clone())));
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn bad_adapter_files_are_named() {
        let device = Device::flex();
        let (base, model) = trained(&device);
        let dir = tempfile::tempdir().unwrap();
        // Factors for another model: layer `model.a` with the wrong input width.
        let mut layers: BTreeMap<String, crate::LayerWeights> = collect(&model, key_of, 0, None);
        let l = layers.get_mut("model.a").unwrap();
        l.down = HostTensor::new(vec![2, D_IN + 1], vec![0.0; 2 * (D_IN + 1)]);
        let p = dir.path().join("wrong.safetensors");
        AdapterFile::write_peft(&p, "transformer", &layers, &HashMap::new()).unwrap();
        let f = AdapterFile::read(&p).unwrap();
        let e = attach_one(&base, &f, 1.0).unwrap_err().to_string();
        assert!(
            e.contains("wrong.safetensors") && e.contains("model.a") && e.contains("[out 4, in 5]"),
            "{e}"
        );
        // A file of another component: nothing matches, reported per adapter.
        let ok = collect(&model, key_of, 0, None);
        let q = dir.path().join("te.safetensors");
        AdapterFile::write_peft(&q, "text_encoder", &ok, &HashMap::new()).unwrap();
        let f = AdapterFile::read(&q).unwrap();
        let (_, unmatched) = attach_one(&base, &f, 1.0).unwrap();
        assert_eq!(unmatched[0].len(), 2);
        // Non-finite factors (a diverged or corrupt adapter) are refused, naming the layer.
        let mut nan = collect(&model, key_of, 0, None);
        nan.get_mut("model.b").unwrap().up.data[1] = f32::NAN;
        let p = dir.path().join("nan.safetensors");
        AdapterFile::write_peft(&p, "transformer", &nan, &HashMap::new()).unwrap();
        let e = AdapterFile::read(&p).unwrap_err().to_string();
        assert!(
            e.contains("nan.safetensors") && e.contains("model.b") && e.contains("1 NaN"),
            "{e}"
        );
        // 1×1 convolution factors read as linear ones; k×k convolution layers are ignored.
        let c = dir.path().join("conv.safetensors");
        dreamforge_core::export::save_safetensors(
            &c,
            &[
                (
                    "m.p.lora_A.weight".into(),
                    HostTensor::new(vec![1, 2, 1, 1], vec![1.0; 2]),
                ),
                (
                    "m.p.lora_B.weight".into(),
                    HostTensor::new(vec![3, 1, 1, 1], vec![1.0; 3]),
                ),
                (
                    "m.k.lora_A.weight".into(),
                    HostTensor::new(vec![1, 2, 3, 3], vec![1.0; 18]),
                ),
                (
                    "m.k.lora_B.weight".into(),
                    HostTensor::new(vec![3, 1, 1, 1], vec![1.0; 3]),
                ),
            ],
            &HashMap::new(),
        )
        .unwrap();
        let f = AdapterFile::read(&c).unwrap();
        assert_eq!(f.layers["m.p"].down.shape, vec![1, 2]);
        assert_eq!(f.layers["m.p"].up.shape, vec![3, 1]);
        assert!(!f.layers.contains_key("m.k"));
        assert_eq!(f.ignored.len(), 2, "{:?}", f.ignored);
        // A down without its up, and a file without LoRA keys.
        let d = dir.path().join("half.safetensors");
        dreamforge_core::export::save_safetensors(
            &d,
            &[(
                "x.lora_A.weight".into(),
                HostTensor::new(vec![1, 2], vec![0.0; 2]),
            )],
            &HashMap::new(),
        )
        .unwrap();
        let e = AdapterFile::read(&d).unwrap_err().to_string();
        assert!(
            e.contains("half.safetensors") && e.contains("no up factor"),
            "{e}"
        );
        let n = dir.path().join("none.safetensors");
        dreamforge_core::export::save_safetensors(
            &n,
            &[("w".into(), HostTensor::new(vec![1], vec![0.0]))],
            &HashMap::new(),
        )
        .unwrap();
        let e = AdapterFile::read(&n).unwrap_err().to_string();
        assert!(e.contains("no LoRA layers found"), "{e}");
    }

    #[test]
    fn peft_alpha_comes_from_diffusers_metadata() {
        let device = Device::flex();
        let (_, model) = trained(&device);
        let layers = collect(&model, key_of, 0, None);
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        let meta = HashMap::from([(
            "lora_adapter_metadata".to_string(),
            r#"{"transformer.r": 2, "transformer.lora_alpha": 8}"#.to_string(),
        )]);
        AdapterFile::write_peft(&p, "transformer", &layers, &meta).unwrap();
        let f = AdapterFile::read(&p).unwrap();
        assert!(
            f.layers
                .values()
                .all(|l| l.alpha == Some(8.0) && l.scale() == 4.0)
        );
    }
}
