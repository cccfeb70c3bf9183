//! Runs every parity fixture (committed + `DREAMFORGE_PARITY_DIRS`) on the test device
//! (`DREAMFORGE_TEST_DEVICE`, default cpu). `DREAMFORGE_PARITY_FILTER` (substring, `|`-separated
//! alternatives) limits the run, e.g. to a subset on a slow software GPU.

use std::path::Path;

#[test]
fn parity_fixtures() {
    let device = dreamforge::core::test_device();
    let committed = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/parity");
    let filter = std::env::var("DREAMFORGE_PARITY_FILTER").ok();
    let dirs: Vec<_> = dreamforge::parity::discover(&committed)
        .into_iter()
        .filter(|d| match &filter {
            Some(f) => f.split('|').any(|p| d.to_string_lossy().contains(p)),
            None => true,
        })
        .collect();
    assert!(!dirs.is_empty(), "no parity fixtures found");
    let mut failures = Vec::new();
    for dir in &dirs {
        for outcome in dreamforge::parity::run_fixture(dir, &device) {
            println!("{outcome}");
            if !outcome.ok {
                failures.push(outcome.to_string());
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} parity failure(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
