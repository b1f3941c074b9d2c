//! Helpers shared by the integration tests (each test file that uses them says `mod common;`):
//! where the repository, the fixtures and the sample runs are, the fixture models and dataset
//! loaded as the tests use them, copies of model folders, and the training options of the
//! tests' short runs.
#![allow(dead_code)] // not every test file uses every helper

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::Device;
use ldviz::data::{Dataset, PreferenceRecord, load_dataset};
use ldviz::model::Model;
use ldviz::probe::{Lengths, Seq};
use ldviz::train::{Algo, OptimKind, TrainOptions};

/// The repository root (where this crate was built).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `tests/fixtures` (model folders, datasets and reference values made by tools/make_fixtures.py).
pub fn fixtures() -> PathBuf {
    root().join("tests/fixtures")
}

/// `tests/fixtures` under the working directory when there is one (test binaries built elsewhere
/// and run from a copy of the repository, as tools/gpu_check.sh does on a GPU machine), else
/// [`fixtures`].
pub fn portable_fixtures() -> PathBuf {
    let rel = PathBuf::from("tests/fixtures");
    if rel.is_dir() {
        return rel;
    }
    fixtures()
}

/// A recorded sample run, `sample_runs/{name}.jsonl.gz`.
pub fn sample_run(name: &str) -> PathBuf {
    root().join("sample_runs").join(format!("{name}.jsonl.gz"))
}

/// Runs the `ldviz` binary with `args`.
pub fn ldviz(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ldviz"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs the `ldviz` binary with `args`, which must succeed; returns its stdout.
pub fn ldviz_ok(args: &[&str]) -> String {
    let o = ldviz(args);
    assert!(
        o.status.success(),
        "ldviz {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// The model folder `dir` loaded on the CPU.
pub fn cpu_model(dir: &Path) -> Model {
    Model::load(dir, &Device::Cpu).unwrap()
}

/// The fixture model folder `name` (llama, llama_tied, llama_sharded, qwen2, gpt_neox, gpt2)
/// loaded on the CPU.
pub fn fixture_model(name: &str) -> Model {
    cpu_model(&fixtures().join(name))
}

/// The dataset file `path`, format detected, no chat template.
pub fn dataset(path: &Path) -> Dataset {
    load_dataset(path, None, None).unwrap()
}

/// `tests/fixtures/prefs.jsonl`, the records the reference log-probs and trajectories were
/// computed on.
pub fn prefs() -> Dataset {
    dataset(&fixtures().join("prefs.jsonl"))
}

/// The chosen and the rejected sequence of `r` for `model`, default lengths.
pub fn encode_pair(model: &Model, r: &PreferenceRecord) -> (Seq, Seq) {
    let seq =
        |response: &str| Seq::encode(&model.tok, &r.prompt, response, Lengths::default()).unwrap();
    (seq(&r.chosen), seq(&r.rejected))
}

/// The chosen sequences of `records` for `model`, default lengths.
pub fn chosen_seqs(model: &Model, records: &[PreferenceRecord]) -> Vec<Seq> {
    records
        .iter()
        .map(|r| Seq::encode(&model.tok, &r.prompt, &r.chosen, Lengths::default()).unwrap())
        .collect()
}

/// Copies the files of the model folder `src` into `dst` (created if needed), leaving out those
/// named in `skip`.
pub fn copy_model(src: &Path, dst: &Path, skip: &[&str]) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let n = e.file_name().to_string_lossy().to_string();
        if !skip.contains(&n.as_str()) {
            std::fs::copy(e.path(), dst.join(&n)).unwrap();
        }
    }
}

/// Training options for the model folder `model` and the dataset `data`, with the extras a
/// test does not ask for turned off: no label smoothing, no transfer matrix, no influence.
/// Everything else is [`TrainOptions::default`] (AdamW, β 0.1, batch 4, seed 0, shuffled,
/// 32 probes, top 5 tokens, the default lengths, CPU f32); a test sets what it relies on.
pub fn train_options(model: &Path, data: &Path) -> TrainOptions {
    TrainOptions {
        model: model.display().to_string(),
        data: data.display().to_string(),
        label_smoothing: 0.0,
        transfer_prompts: 0,
        influence_every: Some(0),
        ..TrainOptions::default()
    }
}

/// [`train_options`] for the fixture model folder `model` and the fixture dataset `data`.
pub fn fixture_options(model: &str, data: &str) -> TrainOptions {
    train_options(&fixtures().join(model), &fixtures().join(data))
}

/// The 6-step trajectories of tools/make_fixtures.py (tests/fixtures/trajectories.json): `algo`
/// on the llama fixture and prefs.jsonl under `fixtures`, plain SGD at `lr` for 6 steps (each
/// phase), batches of 4 in file order, 2 probes evaluated at the start and the end only.
pub fn trajectory_options(fixtures: &Path, algo: Algo, lr: f64) -> TrainOptions {
    TrainOptions {
        algo,
        optimizer: OptimKind::Sgd,
        lr: Some(lr),
        steps: Some(6),
        batch_size: 4,
        shuffle: false,
        eval_every: 1000,
        probes: "2".into(),
        ..train_options(&fixtures.join("llama"), &fixtures.join("prefs.jsonl"))
    }
}

/// A run file as a recorder that trains elsewhere writes it from the probe file `probes`
/// (`ldviz probes`): the probe file's `run_header` with the model and the probes' token ids
/// filled in, a phase, then `evals` evaluations (every family's log-prob falling by 0.5 per
/// evaluation, no per-token traces) with a step record between each, and no end record when
/// `end` is false (a run still being written).
pub fn external_run(probes: &Path, evals: usize, end: bool) -> Vec<String> {
    use serde_json::{Value, json};
    let text = std::fs::read_to_string(probes).unwrap();
    let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let mut h = first["run_header"].clone();
    h["model"] = json!({"path": "org/model", "arch": "llama", "fingerprint": "abc",
        "n_params": 1000, "vocab_size": 64, "eos_id": 2});
    for p in h["probes"].as_array_mut().unwrap() {
        p["tokens"] = json!({"chosen": [5, 6, 2], "rejected": [7, 2]});
    }
    let algo = h["config"]["algo"].as_str().unwrap().to_string();
    h["phases"] = json!([{"name": algo, "algo": algo, "steps": evals}]);
    // "type" first, as the documentation asks (the other records' members come sorted)
    let header = format!(r#"{{"type":"header",{}"#, &h.to_string()[1..]);
    let families: Vec<String> = first["families"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f.as_str().unwrap().to_string())
        .collect();
    let n = h["probes"].as_array().unwrap().len();
    let mut lines = vec![
        header,
        json!({"type": "phase", "name": algo, "algo": algo, "step": 0, "examples": 0}).to_string(),
    ];
    for k in 0..evals {
        if k > 0 {
            lines.push(
                json!({"type": "step", "step": k, "examples": 4 * k, "epoch": 0.1 * k as f64,
                    "phase": algo, "batch": [], "metrics": {"loss": 1.0 / k as f64}, "wall_ms": 0.0})
                .to_string(),
            );
        }
        let logps: serde_json::Map<String, Value> = families
            .iter()
            .enumerate()
            .map(|(i, f)| (f.clone(), json!(vec![-(i as f64) - 0.5 * k as f64; n])))
            .collect();
        lines.push(
            json!({"type": "eval", "step": k, "examples": 4 * k, "epoch": 0.1 * k as f64,
                "phase": algo, "logps": logps, "tokens": []})
            .to_string(),
        );
    }
    if end {
        lines.push(
            json!({"type": "end", "reason": "completed", "step": evals.saturating_sub(1),
                "message": null})
            .to_string(),
        );
    }
    lines
}
