//! The embedded default: the demo dataset passes validation with every family, the default model
//! loads and tokenizes it, and `ldviz train` with the defaults (shortened) records every family.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

mod common;

use std::process::Command;

use common::{cpu_model, dataset, root};
use ldviz::data::{Family, ProbeCount, build_probe_set, split_test};
use serde_json::Value;

#[test]
fn demo_dataset_has_every_family_and_the_held_out_split() {
    let ds = dataset(&ldviz::assets::default_data_file().unwrap());
    assert_eq!(ds.format, ldviz::data::DataFormat::Probe);
    let meta: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("assets/demo_meta.json")).unwrap(),
    )
    .unwrap();
    let n_train = meta["n_train"].as_u64().unwrap() as usize;
    let n_test = meta["n_test"].as_u64().unwrap() as usize;
    assert!(n_train >= 200 && n_test >= 50);
    assert_eq!(ds.records.len(), n_train + n_test);
    let (train, test) = split_test(
        ds.records.clone(),
        ldviz::assets::demo_test_fraction().unwrap(),
    )
    .unwrap();
    assert_eq!((train.len(), test.len()), (n_train, n_test));
    for r in &ds.records {
        assert!(r.prompt.ends_with("\nAnswer:"));
        assert_ne!(r.chosen, r.rejected);
        for f in Family::ALL {
            if !matches!(f, Family::Chosen | Family::Rejected | Family::Argmax) {
                assert!(
                    r.extras.get(&f).is_some_and(|t| !t.trim().is_empty()),
                    "record {} lacks {f}",
                    r.index
                );
            }
        }
    }
    let set = build_probe_set(&train, &test, ProbeCount::N(32), 0).unwrap();
    assert_eq!(set.probes.len(), 32);
    assert_eq!(set.families, Family::ALL.to_vec());
}

#[test]
fn default_model_loads_and_covers_the_demo_text() {
    let m = cpu_model(&ldviz::assets::default_model_dir().unwrap());
    assert_eq!(m.arch(), ldviz::model::Arch::Llama);
    let ds = dataset(&ldviz::assets::default_data_file().unwrap());
    let r = &ds.records[0];
    let ids = m.tok.encode(&format!("{}{}", r.prompt, r.chosen)).unwrap();
    assert_eq!(
        m.tok.decode(&ids).unwrap(),
        format!("{}{}", r.prompt, r.chosen),
        "tokenizer round trip"
    );
    // a real tokenizer of this text: well under one token per character
    assert!(
        ids.len() * 3 < r.prompt.len() + r.chosen.len(),
        "{} tokens",
        ids.len()
    );
}

#[test]
fn train_with_defaults_records_every_family() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("demo.jsonl");
    let o = Command::new(env!("CARGO_BIN_EXE_ldviz"))
        .args([
            "train",
            "--quiet",
            "--steps",
            "2",
            "--sft-steps",
            "2",
            "--probes",
            "4",
            "--eval-every",
            "1000",
            "--out",
        ])
        .arg(&run)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = ldviz::run::read_run(&run).unwrap();
    assert_eq!(run.header.config.algo, ldviz::train::Algo::SftThenDpo);
    assert_eq!(run.header.families, Family::ALL.to_vec());
    assert_eq!(run.header.data.n_test, 64);
    assert_eq!(
        run.phases
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        vec!["sft", "dpo"]
    );
    assert_eq!(run.steps.len(), 4);
}
