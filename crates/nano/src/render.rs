//! Rasterizing a nano scene: each object is an exact geometric region (disc, square, triangle,
//! five-point star, ring, cross, diamond, hexagon) in unit coordinates; every pixel averages a
//! 4×4 grid of sub-samples, so edges are anti-aliased and the image is a pure function of the
//! scene and the size (no RNG, identical on every machine).

use burn::tensor::{Device, Tensor, TensorData};

use crate::scene::{Scene, Shape, Size};

/// Object radius as a fraction of the image side.
pub fn radius(size: Size) -> f32 {
    match size {
        Size::Small => 0.14,
        Size::Large => 0.24,
    }
}

fn polygon(n: usize, r: f32, inner: Option<f32>, rot: f32) -> Vec<(f32, f32)> {
    let k = if inner.is_some() { 2 * n } else { n };
    (0..k)
        .map(|i| {
            let a = rot + i as f32 * std::f32::consts::TAU / k as f32;
            let rr = match inner {
                Some(ir) if i % 2 == 1 => ir,
                _ => r,
            };
            (rr * a.cos(), rr * a.sin())
        })
        .collect()
}

/// Even-odd point-in-polygon.
fn inside_polygon(x: f32, y: f32, poly: &[(f32, f32)]) -> bool {
    let mut inside = false;
    let mut j = poly.len() - 1;
    for i in 0..poly.len() {
        let (xi, yi) = poly[i];
        let (xj, yj) = poly[j];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// True when the offset `(x, y)` from the centre lies in `shape` of radius `r`.
pub fn inside(shape: Shape, x: f32, y: f32, r: f32) -> bool {
    let up = -std::f32::consts::FRAC_PI_2;
    match shape {
        Shape::Circle => x * x + y * y <= r * r,
        Shape::Square => x.abs().max(y.abs()) <= 0.8 * r,
        Shape::Triangle => inside_polygon(x, y + 0.15 * r, &polygon(3, 1.1 * r, None, up)),
        Shape::Star => inside_polygon(x, y, &polygon(5, 1.1 * r, Some(0.45 * r), up)),
        Shape::Ring => {
            let d = x * x + y * y;
            d <= r * r && d >= (0.55 * r) * (0.55 * r)
        }
        Shape::Cross => {
            let (ax, ay) = (x.abs(), y.abs());
            (ax <= 0.3 * r && ay <= r) || (ay <= 0.3 * r && ax <= r)
        }
        Shape::Diamond => x.abs() + 0.8 * y.abs() <= r,
        Shape::Hexagon => inside_polygon(x, y, &polygon(6, r, None, 0.0)),
    }
}

/// `side`×`side` 8-bit RGB (row-major HWC) of the colour function `colour(u, v)` over unit
/// image coordinates, each pixel the mean of a 4×4 grid of sub-samples.
pub fn supersample(side: usize, colour: impl Fn(f32, f32) -> [f32; 3]) -> Vec<u8> {
    const SUB: usize = 4;
    let mut out = Vec::with_capacity(side * side * 3);
    for py in 0..side {
        for px in 0..side {
            let mut acc = [0f32; 3];
            for sy in 0..SUB {
                for sx in 0..SUB {
                    let u = (px as f32 + (sx as f32 + 0.5) / SUB as f32) / side as f32;
                    let v = (py as f32 + (sy as f32 + 0.5) / SUB as f32) / side as f32;
                    let c = colour(u, v);
                    for k in 0..3 {
                        acc[k] += c[k];
                    }
                }
            }
            out.extend(acc.map(|a| (a / (SUB * SUB) as f32).round() as u8));
        }
    }
    out
}

/// The scene as `side`×`side` 8-bit RGB, row-major HWC.
pub fn render(scene: &Scene, side: usize) -> Vec<u8> {
    let bg = scene.background.rgb().map(f32::from);
    let centres = scene.centres();
    supersample(side, |u, v| {
        let mut c = bg;
        for (o, &(cx, cy)) in scene.objects.iter().zip(&centres) {
            if inside(o.shape, u - cx, v - cy, radius(o.size)) {
                c = o.colour.rgb().map(f32::from);
            }
        }
        c
    })
}

/// Scenes rendered at `side` as `[n, 3, side, side]` in [-1, 1].
pub fn images(scenes: &[Scene], side: usize, device: &Device) -> Tensor<4> {
    let plane = side * side;
    let mut data = Vec::with_capacity(scenes.len() * 3 * plane);
    for s in scenes {
        let px = render(s, side);
        for c in 0..3 {
            data.extend((0..plane).map(|i| px[i * 3 + c] as f32 / 127.5 - 1.0));
        }
    }
    Tensor::from_data(TensorData::new(data, [scenes.len(), 3, side, side]), device)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scene::{Colour, Obj, Position, sample_scene};

    fn px(img: &[u8], side: usize, u: f32, v: f32) -> [u8; 3] {
        let (x, y) = ((u * side as f32) as usize, (v * side as f32) as usize);
        let i = (y * side + x) * 3;
        [img[i], img[i + 1], img[i + 2]]
    }

    #[test]
    fn objects_sit_where_the_caption_says_in_their_colour() {
        for (i, &shape) in Shape::ALL.iter().enumerate() {
            let s = Scene {
                objects: vec![Obj {
                    shape,
                    colour: Colour::Red,
                    size: Size::Large,
                }],
                position: Position::ALL[i % Position::ALL.len()],
                background: Colour::Blue,
            };
            let img = render(&s, 64);
            let (cx, cy) = s.position.centre();
            // The ring's centre is background; every other shape covers its centre.
            let at_centre = px(&img, 64, cx, cy);
            if shape == Shape::Ring {
                assert_eq!(at_centre, Colour::Blue.rgb(), "{shape:?}");
                assert_eq!(
                    px(&img, 64, cx + 0.8 * radius(Size::Large), cy),
                    Colour::Red.rgb()
                );
            } else {
                assert_eq!(at_centre, Colour::Red.rgb(), "{shape:?}");
            }
            // Far from the object: background.
            let far = if s.position == Position::TopLeft {
                0.98
            } else {
                0.02
            };
            assert_eq!(px(&img, 64, far, far), Colour::Blue.rgb(), "{shape:?}");
            let covered = img.chunks(3).filter(|p| *p == Colour::Red.rgb()).count();
            assert!((60..1400).contains(&covered), "{shape:?}: {covered} px");
        }
    }

    #[test]
    fn shapes_are_distinct_and_rendering_is_pure() {
        let masks: Vec<Vec<bool>> = Shape::ALL
            .iter()
            .map(|&shape| {
                let s = Scene {
                    objects: vec![Obj {
                        shape,
                        colour: Colour::White,
                        size: Size::Large,
                    }],
                    position: Position::Center,
                    background: Colour::Black,
                };
                render(&s, 32).chunks(3).map(|p| p[0] > 128).collect()
            })
            .collect();
        for i in 0..masks.len() {
            for j in i + 1..masks.len() {
                let d = masks[i]
                    .iter()
                    .zip(&masks[j])
                    .filter(|(a, b)| a != b)
                    .count();
                assert!(
                    d >= 12,
                    "{:?} vs {:?} differ in {d} px",
                    Shape::ALL[i],
                    Shape::ALL[j]
                );
            }
        }
        let s = sample_scene(11, None);
        assert_eq!(render(&s, 32), render(&s, 32));
    }
}
