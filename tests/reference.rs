//! Sequence log-probs of our models against Hugging Face transformers (fixtures made by
//! tools/make_fixtures.py with torch + transformers; committed, so this needs no Python).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

mod common;

use common::{chosen_seqs, cpu_model, encode_pair, fixture_model, fixtures, prefs};
use ldviz::probe::logprob;
use serde_json::Value;

fn check(name: &str) {
    let dir = fixtures().join(name);
    let model = cpu_model(&dir);
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let ds = prefs();
    let recs = expected["records"].as_array().unwrap();
    assert_eq!(recs.len(), ds.records.len());
    let mut worst = 0f64;
    for (r, e) in ds.records.iter().zip(recs) {
        let ids = |k: &str| -> Vec<u32> {
            e[k].as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect()
        };
        let (c, j) = encode_pair(&model, r);
        assert_eq!(
            c.prompt,
            ids("prompt_ids"),
            "{name} record {}: prompt tokens",
            r.index
        );
        assert_eq!(
            c.response,
            ids("chosen_ids"),
            "{name} record {}: chosen tokens",
            r.index
        );
        assert_eq!(
            j.response,
            ids("rejected_ids"),
            "{name} record {}: rejected tokens",
            r.index
        );
        let got = logprob::score(&model, &[c, j], 8).unwrap();
        for (g, k) in got.iter().zip(["chosen", "rejected"]) {
            let want = e[k].as_f64().unwrap();
            let err = (g - want).abs();
            worst = worst.max(err);
            assert!(
                err < 1e-4,
                "{name} record {} {k}: ours {g} vs transformers {want}",
                r.index
            );
        }
    }
    eprintln!("{name}: max |Δ| vs transformers = {worst:.2e}");
}

#[test]
fn llama_matches_transformers() {
    check("llama");
}

#[test]
fn llama_tied_matches_transformers() {
    check("llama_tied");
}

#[test]
fn llama_sharded_loads_and_matches() {
    check("llama_sharded");
}

#[test]
fn qwen2_matches_transformers() {
    check("qwen2");
}

#[test]
fn gpt_neox_matches_transformers() {
    check("gpt_neox");
}

#[test]
fn gpt2_matches_transformers() {
    check("gpt2");
}

/// Padding must not change a row's score: score every record alone and in one padded batch.
#[test]
fn padded_batch_equals_single_rows() {
    let model = fixture_model("llama");
    let seqs = chosen_seqs(&model, &prefs().records);
    let batched = logprob::score(&model, &seqs, 64).unwrap();
    for (s, b) in seqs.iter().zip(&batched) {
        let single = logprob::score(&model, std::slice::from_ref(s), 1).unwrap()[0];
        assert!((single - b).abs() < 1e-4, "{single} vs {b}");
    }
}

/// Weights saved back to safetensors reload to the same model (same log-probs, same tensors),
/// with the `{"format": "pt"}` metadata transformers expects.
#[test]
fn save_and_reload_round_trip() {
    for name in ["llama_tied", "gpt2", "gpt_neox"] {
        let model = fixture_model(name);
        let dir = tempfile::tempdir().unwrap();
        model.save(dir.path()).unwrap();
        let again = cpu_model(dir.path());
        assert_eq!(model.fingerprint, again.fingerprint, "{name}");
        let bytes = std::fs::read(dir.path().join("model.safetensors")).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        assert_eq!(
            meta.metadata()
                .as_ref()
                .unwrap()
                .get("format")
                .map(String::as_str),
            Some("pt")
        );
        // a tied model stays tied: no lm_head in the file
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        if name == "llama_tied" {
            assert!(st.tensor("lm_head.weight").is_err());
        }
        let seqs = chosen_seqs(&model, &prefs().records);
        assert_eq!(
            logprob::score(&model, &seqs, 16).unwrap(),
            logprob::score(&again, &seqs, 16).unwrap()
        );
    }
}
