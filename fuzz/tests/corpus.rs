//! Every seed and saved regression input in `fuzz/corpus/<target>/` still passes its target.

use std::path::Path;

use edgeshare_fuzz::{engine, targets};

#[test]
fn every_corpus_input_passes_its_target() {
    engine::install_panic_hook();
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let mut failures = Vec::new();
    for name in targets::NAMES {
        let mut target = targets::make(name).unwrap_or_else(|| panic!("no target {name}"));
        let seeds = engine::seeds(&corpus, name);
        assert!(!seeds.is_empty(), "no corpus for {name}");
        for (file, input) in seeds {
            if let Err(crash) = engine::run_one(target.as_mut(), &input) {
                failures.push(format!("{name}/{file}: {crash}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
