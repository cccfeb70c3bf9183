//! Writes a grid of nano scenes with their captions (for eyeballing the world):
//! `cargo run -p dreamforge-nano --example grid -- OUT.ppm [N] [SIDE]`.
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let out = args.get(1).cloned().unwrap_or_else(|| "grid.ppm".into());
    let n: usize = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(16);
    let side: usize = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(64);
    let cols = (n as f32).sqrt().ceil() as usize;
    let rows = n.div_ceil(cols);
    let (w, h) = (cols * side, rows * side);
    let mut img = vec![0u8; w * h * 3];
    for i in 0..n {
        let s = dreamforge_nano::sample_scene(i as u64, None);
        println!("{i:3}: {}", dreamforge_nano::caption(&s));
        let tile = dreamforge_nano::render(&s, side);
        let (ox, oy) = ((i % cols) * side, (i / cols) * side);
        for y in 0..side {
            let dst = ((oy + y) * w + ox) * 3;
            img[dst..dst + side * 3].copy_from_slice(&tile[y * side * 3..(y + 1) * side * 3]);
        }
    }
    let mut bytes = format!("P6\n{w} {h}\n255\n").into_bytes();
    bytes.extend(img);
    std::fs::write(&out, bytes).expect("write the grid");
}
