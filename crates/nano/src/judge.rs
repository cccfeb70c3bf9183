//! The judge: a small convolutional classifier that reads a nano image and predicts the scene's
//! attributes — layout (five single-object positions, or the left/right pair), background
//! colour, and shape / colour / size of the first (single or left) object and shape / colour of
//! the right one. It turns "does the picture follow the prompt" into a number and is trained by
//! dreamforge's own trainer on freshly rendered scenes (never the same batch twice).
//!
//! Input: 64×64 RGB in [-1, 1]. Four stride-2 3×3 conv stages (32-64-96-128 channels, GELU),
//! a 512-wide hidden layer and one linear head per attribute.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::gelu;
use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::render::images;
use crate::scene::{Colour, Position, Scene, Shape, Size, sample_scene};

/// The judge's input side.
pub const SIDE: usize = 64;

/// Class counts per head: layout (5 positions + pair), background, shape 0, colour 0, size 0,
/// shape 1, colour 1.
pub const HEADS: [usize; 7] = [6, 8, 8, 8, 2, 8, 8];

/// Integer labels of a scene, one per head; `None` where the head does not apply (the second
/// object of a single-object scene, the size of a pair's objects — always small).
pub fn labels(scene: &Scene) -> [Option<usize>; 7] {
    let pair = scene.objects.len() == 2;
    let o0 = scene.objects[0];
    [
        Some(if pair { 5 } else { scene.position.index() }),
        Some(scene.background.index()),
        Some(o0.shape.index()),
        Some(o0.colour.index()),
        (!pair).then_some(o0.size.index()),
        scene.objects.get(1).map(|o| o.shape.index()),
        scene.objects.get(1).map(|o| o.colour.index()),
    ]
}

/// What the judge reads from an image.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    pub layout: usize,
    pub background: Colour,
    pub shape0: Shape,
    pub colour0: Colour,
    pub size0: Size,
    pub shape1: Shape,
    pub colour1: Colour,
}

impl Reading {
    /// The scene the reading describes.
    pub fn scene(&self) -> Scene {
        let pair = self.layout == 5;
        let mut objects = vec![crate::scene::Obj {
            shape: self.shape0,
            colour: self.colour0,
            size: if pair { Size::Small } else { self.size0 },
        }];
        if pair {
            objects.push(crate::scene::Obj {
                shape: self.shape1,
                colour: self.colour1,
                size: Size::Small,
            });
        }
        Scene {
            objects,
            position: if pair {
                Position::Center
            } else {
                Position::ALL[self.layout]
            },
            background: self.background,
        }
    }
}

/// The classifier.
#[derive(Module, Debug)]
pub struct Judge {
    pub convs: Vec<Conv2d>,
    pub hidden: Linear,
    pub heads: Vec<Linear>,
}

impl Judge {
    pub fn new(device: &Device) -> Self {
        let chans = [3, 32, 64, 96, 128];
        let convs = chans
            .windows(2)
            .map(|c| {
                Conv2dConfig::new([c[0], c[1]], [3, 3])
                    .with_stride([2, 2])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .init(device)
            })
            .collect();
        let flat = 128 * (SIDE / 16) * (SIDE / 16);
        Self {
            convs,
            hidden: LinearConfig::new(flat, 512).init(device),
            heads: HEADS
                .iter()
                .map(|&n| LinearConfig::new(512, n).init(device))
                .collect(),
        }
    }

    /// Per-head logits.
    ///
    /// # Shapes
    /// `images: [B, 3, 64, 64]` in [-1, 1] → one `[B, classes]` per head
    pub fn forward(&self, images: Tensor<4>) -> Vec<Tensor<2>> {
        let h = self.features(images);
        self.heads.iter().map(|l| l.forward(h.clone())).collect()
    }

    /// The shared 512-wide representation the heads read (subject-similarity features, the
    /// nano analogue of CLIP-I / DINO embeddings).
    ///
    /// # Shapes
    /// `images: [B, 3, 64, 64]` → `[B, 512]`
    pub fn features(&self, images: Tensor<4>) -> Tensor<2> {
        let mut x = images;
        for c in &self.convs {
            x = gelu(c.forward(x));
        }
        let [b, c, h, w] = x.dims();
        gelu(self.hidden.forward(x.reshape([b, c * h * w])))
    }

    /// The attributes the judge reads from `images`.
    pub fn read(&self, images: Tensor<4>) -> Vec<Reading> {
        let arg: Vec<Vec<usize>> = self
            .forward(images)
            .into_iter()
            .map(|l| {
                l.argmax(1)
                    .into_data()
                    .convert::<i64>()
                    .try_to_vec::<i64>()
                    .expect("indices")
                    .into_iter()
                    .map(|v| v as usize)
                    .collect()
            })
            .collect();
        (0..arg[0].len())
            .map(|i| Reading {
                layout: arg[0][i],
                background: Colour::ALL[arg[1][i]],
                shape0: Shape::ALL[arg[2][i]],
                colour0: Colour::ALL[arg[3][i]],
                size0: Size::ALL[arg[4][i]],
                shape1: Shape::ALL[arg[5][i]],
                colour1: Colour::ALL[arg[6][i]],
            })
            .collect()
    }
}

/// Scenes `seed .. seed + n` rendered at [`SIDE`] as `[n, 3, 64, 64]` in [-1, 1], with labels.
pub fn batch(seed: u64, n: usize, device: &Device) -> (Tensor<4>, Vec<Scene>) {
    let scenes: Vec<Scene> = (0..n as u64)
        .map(|i| sample_scene(seed + i, None))
        .collect();
    (images(&scenes, SIDE, device), scenes)
}

/// The summed cross-entropy over the heads that apply to each sample.
pub fn loss(judge: &Judge, images: Tensor<4>, scenes: &[Scene]) -> Tensor<1> {
    let device = images.device();
    let logits = judge.forward(images);
    let ce = CrossEntropyLossConfig::new().init(&device);
    let lab: Vec<[Option<usize>; 7]> = scenes.iter().map(labels).collect();
    let mut total: Option<Tensor<1>> = None;
    for (h, l) in logits.into_iter().enumerate() {
        let rows: Vec<usize> = (0..scenes.len()).filter(|&i| lab[i][h].is_some()).collect();
        if rows.is_empty() {
            continue;
        }
        let idx: Vec<i64> = rows.iter().map(|&i| i as i64).collect();
        let targets: Vec<i64> = rows.iter().map(|&i| lab[i][h].unwrap() as i64).collect();
        let n = rows.len();
        let sel = l.select(
            0,
            Tensor::<1, Int>::from_data(TensorData::new(idx, [n]), &device),
        );
        let t = Tensor::<1, Int>::from_data(TensorData::new(targets, [n]), &device);
        let term = ce.forward(sel, t);
        total = Some(match total {
            Some(acc) => acc + term,
            None => term,
        });
    }
    total.expect("at least one head applies")
}

/// Fraction of scenes whose every applicable attribute the judge reads right, and per-head
/// accuracies.
pub fn accuracy(judge: &Judge, images: Tensor<4>, scenes: &[Scene]) -> (f64, [f64; 7]) {
    let readings = judge.read(images);
    let mut right = 0usize;
    let mut per = [(0usize, 0usize); 7];
    for (r, s) in readings.iter().zip(scenes) {
        let got = [
            r.layout,
            r.background.index(),
            r.shape0.index(),
            r.colour0.index(),
            r.size0.index(),
            r.shape1.index(),
            r.colour1.index(),
        ];
        let mut all = true;
        for (h, want) in labels(s).iter().enumerate() {
            if let Some(w) = want {
                per[h].1 += 1;
                if got[h] == *w {
                    per[h].0 += 1;
                } else {
                    all = false;
                }
            }
        }
        right += usize::from(all);
    }
    let acc = per.map(|(r, n)| if n == 0 { 1.0 } else { r as f64 / n as f64 });
    (right as f64 / scenes.len() as f64, acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_cover_every_scene_and_reading_round_trips() {
        for seed in 0..500 {
            let s = sample_scene(seed, None);
            let l = labels(&s);
            assert_eq!(l[0] == Some(5), s.objects.len() == 2);
            for (h, v) in l.iter().enumerate() {
                if let Some(v) = v {
                    assert!(*v < HEADS[h]);
                }
            }
            let r = Reading {
                layout: l[0].unwrap(),
                background: s.background,
                shape0: s.objects[0].shape,
                colour0: s.objects[0].colour,
                size0: s.objects[0].size,
                shape1: s.objects.get(1).map_or(Shape::Circle, |o| o.shape),
                colour1: s.objects.get(1).map_or(Colour::Red, |o| o.colour),
            };
            let back = r.scene();
            assert_eq!(back.objects, s.objects);
            assert_eq!(back.background, s.background);
        }
    }

    #[test]
    fn a_few_trainer_steps_reduce_the_judge_loss() {
        let d = Device::flex().autodiff();
        let mut judge = Judge::new(&d);
        let mut optim = dreamforge_train::OptimizerConfig::default().build();
        let (x, scenes) = batch(0, 32, &d);
        let first = loss(&judge, x.clone(), &scenes).into_scalar::<f32>();
        for _ in 0..15 {
            let (j, r) = dreamforge_train::train_step(judge, &mut optim, 1e-3, |m| {
                loss(m, x.clone(), &scenes)
            });
            judge = j;
            r.unwrap();
        }
        let last = loss(&judge, x, &scenes).into_scalar::<f32>();
        assert!(last < 0.7 * first, "{first} → {last}");
    }
}
