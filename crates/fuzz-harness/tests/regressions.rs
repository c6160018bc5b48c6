//! Every kept crasher (`fuzz/regressions/<target>/`) and every seed
//! (`fuzz/corpus/<target>/`) goes through its target's harness, the same
//! shipped decoders and apply path libFuzzer drives, without libFuzzer: each
//! must come back as Ok or Err, never as a panic.

use std::path::{Path, PathBuf};
use tillsync_fuzz_harness::{Outcome, TARGETS};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

/// Files of `fuzz/<kind>/<target>/`, per target; a folder that names no
/// target is an error (a renamed target must take its fixtures along).
fn inputs(kind: &str) -> Vec<(String, PathBuf)> {
    let mut out = vec![];
    let root = fuzz_dir().join(kind);
    for dir in std::fs::read_dir(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display())) {
        let dir = dir.unwrap().path();
        let target = dir.file_name().unwrap().to_string_lossy().to_string();
        assert!(TARGETS.iter().any(|(t, _)| *t == target), "{} names no fuzz target", dir.display());
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            if f.is_file() && !f.file_name().unwrap().to_string_lossy().starts_with('.') {
                out.push((target.clone(), f));
            }
        }
    }
    out.sort();
    out
}

fn run(target: &str, file: &Path) -> std::thread::Result<Outcome> {
    let (_, harness) = TARGETS.iter().find(|(t, _)| *t == target).unwrap();
    let data = std::fs::read(file).unwrap();
    std::panic::catch_unwind(|| harness(&data))
}

#[test]
fn every_kept_crasher_returns_without_panicking() {
    let files = inputs("regressions");
    assert!(!files.is_empty(), "no regression fixtures found under fuzz/regressions");
    let mut panicked = vec![];
    for (target, f) in &files {
        if run(target, f).is_err() {
            panicked.push(f.display().to_string());
        }
    }
    assert!(panicked.is_empty(), "these inputs still panic: {panicked:#?}");
}

#[test]
fn every_seed_returns_and_every_target_has_seeds() {
    let files = inputs("corpus");
    for (target, _) in TARGETS {
        assert!(files.iter().any(|(t, _)| t == target), "fuzz target {target} has no seed in fuzz/corpus/{target}");
    }
    let mut panicked = vec![];
    for (target, f) in &files {
        if run(target, f).is_err() {
            panicked.push(f.display().to_string());
        }
    }
    assert!(panicked.is_empty(), "these seeds panic: {panicked:#?}");
}

/// The seeds are real product output: the valid ones decode and apply
/// cleanly, so the fuzzer starts from inputs that reach deep code (a seed
/// that errors early would leave the apply path unexplored).
#[test]
fn the_generated_seeds_are_accepted() {
    for (target, f) in inputs("corpus") {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        // Hand-made seeds (prefix `bad-`) are refusals on purpose.
        if name.starts_with("bad-") {
            continue;
        }
        match run(&target, &f) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("seed {} of {target} is refused: {e}", f.display()),
            Err(_) => panic!("seed {} of {target} panics", f.display()),
        }
    }
}

/// The hand-made hostile fixtures are refused, not merely survived: a
/// clock reading past `Hlc::MAX`, a backup id with `../`, a zstd body that
/// decodes past the limit, JSON nested past serde_json's depth limit.
#[test]
fn hostile_fixtures_are_refused() {
    for (target, name) in [
        ("apply_batch", "hlc-max-insert.json"),
        ("apply_batch", "hlc-max-write.json"),
        ("snapshot", "hlc-max.json"),
        ("pending_file", "hlc-max-op.json"),
        ("backup_manifest", "path-traversal-id.json"),
        ("push", "zstd-bomb.bin"),
        ("pull_page", "zstd-bomb.bin"),
        ("push", "deep-nesting.json"),
    ] {
        let f = fuzz_dir().join("regressions").join(target).join(name);
        match run(target, &f) {
            Ok(Err(_)) => {}
            Ok(Ok(())) => panic!("{} is accepted", f.display()),
            Err(_) => panic!("{} panics", f.display()),
        }
    }
}
