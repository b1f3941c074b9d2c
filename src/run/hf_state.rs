//! A Hugging Face `trainer_state.json` (the Trainer's, TRL's trainers' included) read as a run of
//! TRL metrics only: its `log_history` becomes one [`StepRecord`] per logged step, every numeric
//! entry under its own name (`loss`, `grad_norm`, `learning_rate`, `rewards/chosen`,
//! `logps/chosen`, `eval_loss`, …; entries logged at the same step are merged), the final
//! summary (`train_runtime`, `train_loss`, …) becomes the `end` record's message, and a
//! synthetic header says where the run came from. There are no evaluations (no probes, no
//! families): the probe log-probs need ldviz's recorder.
//!
//! The algorithm is a guess from the metric names (`dpo` when `rewards/*` is logged, else
//! `sft`); `examples` is the step times `train_batch_size` (the per-device batch, so an
//! estimate). Python writes non-finite numbers as the bare words `NaN`, `Infinity` and
//! `-Infinity`, which are read as such.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Result, anyhow, bail};
use serde_json::{Map, Value};

use super::reader::{PhaseMark, Run};
use crate::data::{DataFormat, ProbeCount};
use crate::schema::config::{
    Algo, Duration, InfluenceTarget, Lengths, OptimConfig, OptimKind, PhaseConfig, TrainConfig,
};
use crate::schema::event::{
    Conventions, DataInfo, EndReason, Event, FORMAT, ModelInfo, PhasePlan, RunHeader, StepRecord,
    VERSION,
};

/// Whether `bytes` (a whole file, or its start) are one JSON object with a `log_history` (a
/// trainer state) rather than run records, whose first line is a tagged record.
pub fn is_trainer_state(bytes: &[u8]) -> bool {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace());
    if start.is_none_or(|i| bytes[i] != b'{') {
        return false;
    }
    let first_line = &bytes[..memchr::memchr(b'\n', bytes).unwrap_or(bytes.len())];
    if let Ok(Value::Object(m)) = serde_json::from_slice::<Value>(first_line) {
        return m.contains_key("log_history") && !m.contains_key("type");
    }
    // An indented object: the Trainer sorts its keys, so the log is named near the start.
    memchr::memmem::find(&bytes[..bytes.len().min(1 << 16)], b"\"log_history\"").is_some()
}

/// Python's bare `NaN`, `Infinity` and `-Infinity` outside strings, quoted so that JSON reads
/// them (as strings, read back as numbers by [`number`]).
fn quote_non_finite(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("NaN") && !text.contains("Infinity") {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut in_str = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_str {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_str = false;
            }
        } else if c == '"' {
            in_str = true;
        } else {
            let word = ["-Infinity", "Infinity", "NaN"]
                .into_iter()
                .find(|w| rest.starts_with(w));
            if let Some(w) = word {
                out.push('"');
                out.push_str(w);
                out.push('"');
                rest = &rest[w.len()..];
                continue;
            }
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    std::borrow::Cow::Owned(out)
}

/// A logged value as a number: JSON numbers, and the quoted non-finite words.
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

/// The keys of the Trainer's final summary entry.
const SUMMARY_KEYS: [&str; 2] = ["train_runtime", "train_samples_per_second"];

/// Reads the trainer state `bytes` (from `path`) as a run.
pub fn parse_trainer_state(path: &Path, bytes: &[u8]) -> Result<Run> {
    let file = path.display();
    let text = std::str::from_utf8(bytes).map_err(|e| {
        anyhow!(
            "{file}: not UTF-8 (at byte {}); expected a trainer_state.json",
            e.valid_up_to()
        )
    })?;
    let state: Map<String, Value> = serde_json::from_str(&quote_non_finite(text))
        .map_err(|e| anyhow!("{file}:{}: not a trainer_state.json: {e}", e.line()))?;
    let Some(log) = state.get("log_history") else {
        bail!("{file}: no \"log_history\"; expected a Hugging Face trainer_state.json");
    };
    let Value::Array(log) = log else {
        bail!("{file}: \"log_history\" is not a list");
    };
    let batch = state
        .get("train_batch_size")
        .and_then(Value::as_u64)
        .unwrap_or(0) as usize;
    let mut by_step: BTreeMap<usize, (f64, BTreeMap<String, f64>)> = BTreeMap::new();
    let mut summary: Option<(usize, BTreeMap<String, f64>)> = None;
    for (i, entry) in log.iter().enumerate() {
        let Value::Object(entry) = entry else {
            bail!("{file}: log_history[{i}] is not an object");
        };
        let step = match entry.get("step") {
            Some(v) => v.as_u64().ok_or_else(|| {
                anyhow!("{file}: log_history[{i}].step is not a whole number: {v}")
            })? as usize,
            None => bail!("{file}: log_history[{i}] has no \"step\""),
        };
        let epoch = entry.get("epoch").and_then(number);
        let metrics: BTreeMap<String, f64> = entry
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "step" | "epoch"))
            .filter_map(|(k, v)| Some((k.clone(), number(v)?)))
            .collect();
        if SUMMARY_KEYS.iter().any(|k| entry.contains_key(*k)) {
            summary = Some((step, metrics));
            continue;
        }
        let slot = by_step.entry(step).or_insert((f64::NAN, BTreeMap::new()));
        if let Some(e) = epoch {
            slot.0 = e;
        }
        slot.1.extend(metrics);
    }
    let algo = if by_step
        .values()
        .any(|(_, m)| m.keys().any(|k| k.starts_with("rewards/")))
    {
        Algo::Dpo
    } else {
        Algo::Sft
    };
    let phase = algo.key().to_string();
    let last = by_step.keys().next_back().copied().unwrap_or(0);
    let max_steps = state
        .get("max_steps")
        .and_then(Value::as_u64)
        .map_or(last, |s| s as usize);
    let lr = by_step
        .values()
        .filter_map(|(_, m)| m.get("learning_rate").copied())
        .fold(0.0, f64::max);
    let mut conventions = Conventions::default();
    let source = format!(
        "converted from the Hugging Face trainer state {file}: its log_history's metrics only"
    );
    conventions.evaluation = format!("none: {source} (no probes were scored)");
    conventions.step = "the Trainer's global step (optimizer updates) of each logged entry".into();
    let config = TrainConfig {
        model: String::new(),
        data: String::new(),
        test_data: None,
        format: None,
        test_fraction: 0.0,
        algo,
        phases: vec![PhaseConfig {
            name: phase.clone(),
            algo,
            duration: Duration::Steps(max_steps),
            optim: OptimConfig::new(OptimKind::Adamw, lr),
            on_policy: false,
            resample_every: None,
        }],
        beta: 0.1,
        gamma: 0.5,
        label_smoothing: 0.0,
        batch_size: batch,
        seed: 0,
        shuffle: true,
        eval_every: state
            .get("eval_steps")
            .and_then(Value::as_u64)
            .map_or(0, |s| s as usize * batch),
        probes: ProbeCount::N(0),
        lengths: Lengths::default(),
        top_k: 0,
        sample_temperature: 1.0,
        save_model: None,
        transfer_prompts: 0,
        transfer_every: 0,
        influence_every: Some(0),
        influence_probes: 0,
        influence_families: Vec::new(),
        influence_target: InfluenceTarget::default(),
        device: Default::default(),
        precision: Default::default(),
    };
    let created_unix = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let header = RunHeader {
        format: FORMAT.to_string(),
        version: VERSION,
        ldviz_version: env!("CARGO_PKG_VERSION").to_string(),
        created_unix,
        config,
        conventions,
        model: ModelInfo {
            path: path
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            arch: "unknown (Hugging Face trainer_state.json)".into(),
            fingerprint: String::new(),
            n_params: 0,
            vocab_size: 0,
            eos_id: 0,
        },
        data: DataInfo {
            path: String::new(),
            format: DataFormat::Standard,
            fingerprint: String::new(),
            n_records: 0,
            n_train: 0,
            n_test: 0,
            test_path: None,
        },
        families: Vec::new(),
        probes: Vec::new(),
        phases: vec![PhasePlan {
            name: phase.clone(),
            algo,
            steps: max_steps,
        }],
        batch_size: batch,
        examples_per_epoch: 0,
    };
    let mut run = Run::new(header);
    run.phases.push(PhaseMark {
        name: phase.clone(),
        algo,
        step: 0,
    });
    for (step, (epoch, metrics)) in by_step {
        run.apply(Event::Step(StepRecord {
            step,
            examples: step * batch,
            epoch,
            phase: phase.clone(),
            batch: Vec::new(),
            metrics,
            wall_ms: 0.0,
        }));
    }
    let (reason, step, message) = match summary {
        Some((step, m)) => {
            let parts: Vec<String> = m.iter().map(|(k, v)| format!("{k} {v}")).collect();
            (
                EndReason::Completed,
                step,
                format!("{source}; training summary: {}", parts.join(", ")),
            )
        }
        None => (
            EndReason::Stopped,
            last,
            format!("{source}; no training summary (a checkpoint taken before the end)"),
        ),
    };
    run.apply(Event::End {
        reason,
        step,
        message: Some(message),
    });
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trainer_state.json")
    }

    /// TRL's DPOTrainer state: one step record per logged step (training and evaluation
    /// entries of a step merged), metrics under their own names, a NaN read as NaN, the summary
    /// in the end record, no evaluations; read_run detects it.
    #[test]
    fn a_dpo_trainer_state_reads_as_a_run_of_trl_metrics() {
        let run = super::super::read_run(&fixture()).unwrap();
        let steps: Vec<usize> = run.steps.iter().map(|s| s.step).collect();
        assert_eq!(steps, [2, 4, 6, 8]);
        let s4 = &run.steps[1];
        assert_eq!((s4.epoch, s4.examples, s4.phase.as_str()), (0.5, 8, "dpo"));
        assert_eq!(s4.metrics["loss"], 0.6712);
        assert_eq!(s4.metrics["rewards/chosen"], 0.031);
        assert_eq!(s4.metrics["logps/rejected"], -131.0);
        assert_eq!(s4.metrics["eval_loss"], 0.65);
        assert!(s4.metrics.contains_key("eval_rewards/margins"));
        assert!(!run.steps[0].metrics.contains_key("eval_loss"));
        assert!(run.steps[2].metrics["grad_norm"].is_nan());
        assert!(
            run.steps
                .iter()
                .all(|s| !s.metrics.contains_key("train_loss"))
        );
        assert!(run.evals.is_empty() && run.header.probes.is_empty());
        assert!(run.header.families.is_empty());
        assert_eq!(run.header.config.algo, Algo::Dpo);
        assert_eq!(run.header.batch_size, 2);
        assert_eq!(run.header.phases[0].steps, 8);
        assert!(
            run.header
                .conventions
                .evaluation
                .contains("trainer_state.json")
        );
        let (reason, step, msg) = run.end.clone().unwrap();
        assert_eq!((reason, step), (EndReason::Completed, 8));
        let msg = msg.unwrap();
        assert!(
            msg.contains("train_loss 0.6465") && msg.contains("train_runtime 42.17"),
            "{msg}"
        );
        // the summary and the store work on it
        let s = super::super::summary::summarize(&run);
        assert_eq!((s.steps, s.evaluations), (8, 0));
        let store = super::super::RunStore::from_run("state".into(), None, run);
        assert!(
            store
                .metric_names()
                .contains(&"rewards/margins".to_string())
        );
    }

    #[test]
    fn trainer_states_are_told_from_run_files_and_bad_ones_are_errors() {
        let text = std::fs::read_to_string(fixture()).unwrap();
        assert!(is_trainer_state(text.as_bytes()));
        // on one line, as a compact writer leaves it
        let v: Value = serde_json::from_str(&quote_non_finite(&text)).unwrap();
        let compact = v.to_string();
        assert!(is_trainer_state(compact.as_bytes()));
        assert!(!compact.contains("\"NaN\"") || quote_non_finite(&compact) == compact);
        let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_runs/sft.jsonl.gz");
        let (plain, _) = super::super::reader::read_run_bytes(&sample).unwrap();
        assert!(!is_trainer_state(&plain));
        assert!(!is_trainer_state(b"[1, 2]"));
        // bare words outside strings are quoted, inside strings left alone
        assert_eq!(
            quote_non_finite(
                r#"{"a": NaN, "b": -Infinity, "c": "NaN \" Infinity", "d": Infinity}"#
            ),
            r#"{"a": "NaN", "b": "-Infinity", "c": "NaN \" Infinity", "d": "Infinity"}"#
        );
        let p = Path::new("s/trainer_state.json");
        let e = |t: &str| format!("{:#}", parse_trainer_state(p, t.as_bytes()).unwrap_err());
        assert!(e(r#"{"log_history": 3}"#).contains("\"log_history\" is not a list"));
        assert!(
            e(r#"{"log_history": [{"loss": 1.0}]}"#).contains("log_history[0] has no \"step\"")
        );
        assert!(
            e(r#"{"log_history": [{"step": -1}]}"#)
                .contains("log_history[0].step is not a whole number")
        );
        assert!(e(r#"{"log_history": [1]}"#).contains("log_history[0] is not an object"));
        assert!(
            e("{\"log_history\": [")
                .starts_with("s/trainer_state.json:1: not a trainer_state.json")
        );
        // an empty log is a run with nothing in it, ended as a checkpoint
        let run = parse_trainer_state(p, br#"{"log_history": []}"#).unwrap();
        assert!(run.steps.is_empty());
        assert_eq!(run.end.unwrap().0, EndReason::Stopped);
    }
}
