//! `ldviz pretrain` on a short schedule is deterministic, and the shipped assets/model is what
//! the documented command (`ldviz pretrain`, all defaults) produces from the shipped corpus.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

mod common;

use std::path::Path;
use std::process::Command;

use common::{cpu_model, root};
use ldviz::pretrain::{PretrainConfig, PretrainReport, hf_config, read_documents, train_tokenizer};

fn run_short(out: &Path, corpus: &Path, heldout: &Path) -> PretrainReport {
    let o = Command::new(env!("CARGO_BIN_EXE_ldviz"))
        .args([
            "pretrain",
            "--quiet",
            "--vocab",
            "320",
            "--hidden",
            "32",
            "--layers",
            "1",
            "--heads",
            "2",
            "--kv-heads",
            "1",
        ])
        .args([
            "--intermediate",
            "64",
            "--seq-len",
            "32",
            "--batch-size",
            "2",
            "--steps",
            "3",
            "--warmup",
            "1",
        ])
        .arg("--corpus")
        .arg(corpus)
        .arg("--heldout")
        .arg(heldout)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn short_pretrain_is_deterministic_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    // a small slice of the shipped corpus keeps this fast
    let corpus = dir.path().join("corpus.txt");
    let heldout = dir.path().join("heldout.txt");
    let text = std::fs::read_to_string(root().join("assets/corpus.txt")).unwrap();
    std::fs::write(&corpus, &text[..text.char_indices().nth(60_000).unwrap().0]).unwrap();
    let held = std::fs::read_to_string(root().join("assets/corpus_heldout.txt")).unwrap();
    std::fs::write(
        &heldout,
        &held[..held.char_indices().nth(20_000).unwrap().0],
    )
    .unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let ra = run_short(&a, &corpus, &heldout);
    let rb = run_short(&b, &corpus, &heldout);
    for f in [
        "model.safetensors",
        "tokenizer.json",
        "config.json",
        "pretrain.json",
    ] {
        assert_eq!(
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
            "{f} differs between two runs"
        );
    }
    assert_eq!(ra.final_train_loss, rb.final_train_loss);
    assert_eq!(ra.weights_sha256, rb.weights_sha256);
    assert_eq!(
        ra.weights_sha256,
        ldviz::data::fingerprint_bytes(&std::fs::read(a.join("model.safetensors")).unwrap())
    );
    assert!(ra.heldout_perplexity.is_finite() && ra.heldout_perplexity > 1.0);
    assert!(ra.heldout_mean_entropy > 0.0 && ra.heldout_mean_entropy <= ra.uniform_entropy + 1e-6);
    // the folder is a model ldviz (and transformers) can load
    let m = cpu_model(&a);
    assert_eq!(m.vocab_size(), 320);
    assert_eq!(m.eos_id(), 0);
    assert_eq!(
        m.tok
            .encode("Question: What is it?\nAnswer:")
            .unwrap()
            .iter()
            .filter(|&&t| t == 0)
            .count(),
        0
    );
}

/// The shipped model's recorded recipe is the documented default, its corpus is the shipped
/// corpus, and its tokenizer and config are exactly what that recipe makes.
#[test]
fn shipped_model_is_the_documented_recipe() {
    let dir = root().join("assets/model");
    let report: PretrainReport =
        serde_json::from_str(&std::fs::read_to_string(dir.join("pretrain.json")).unwrap()).unwrap();
    assert_eq!(
        report.config,
        PretrainConfig::default(),
        "assets/model was not made by `ldviz pretrain` with its defaults"
    );
    let sha = |p: &str| ldviz::data::fingerprint_bytes(&std::fs::read(root().join(p)).unwrap());
    assert_eq!(
        report.corpus_sha256,
        sha("assets/corpus.txt"),
        "assets/corpus.txt changed since the model was made"
    );
    assert_eq!(report.heldout_sha256, sha("assets/corpus_heldout.txt"));
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg, hf_config(&PretrainConfig::default()));
    let docs = read_documents(&root().join("assets/corpus.txt")).unwrap();
    let tok = train_tokenizer(&docs, PretrainConfig::default().vocab_size).unwrap();
    let shipped = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    assert_eq!(
        tok.get_vocab(true),
        shipped.get_vocab(true),
        "the shipped tokenizer is not what the recipe trains"
    );
    let w = std::fs::metadata(dir.join("model.safetensors"))
        .unwrap()
        .len();
    assert!(w <= 25 * 1024 * 1024, "model.safetensors is {w} bytes");
    assert_eq!(w, report.weights_bytes);
    // The weights are, byte for byte, the ones the recorded run wrote.
    assert_eq!(
        sha("assets/model/model.safetensors"),
        report.weights_sha256,
        "assets/model/model.safetensors is not the file `ldviz pretrain` wrote"
    );
    let m = cpu_model(&dir);
    assert_eq!(m.n_params(), report.params);
}
