//! The `ldviz` binary end to end on the fixture models: train + inspect, logprob, export, run
//! files cut mid-record, and a one-line error with a non-zero exit for every bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{copy_model, cpu_model, fixtures, ldviz, ldviz_ok as ok, root, sample_run};
use serde_json::Value;

/// Runs a command that must fail; returns its one-line stderr.
fn fails(args: &[&str]) -> String {
    let o = ldviz(args);
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "ldviz {args:?} should fail");
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "error is not one line: {err}"
    );
    assert!(err.starts_with("error: "), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

const FAMILIES: [&str; 13] = [
    "chosen",
    "rejected",
    "chosen_initial",
    "chosen_gptsemantic",
    "chosen_gptformat",
    "reject_gptsemantic",
    "reject_gptformat",
    "irr_train",
    "irr_test",
    "irr_hum",
    "random_permute",
    "random_nonhum",
    "argmax",
];

fn train_args<'a>(model: &'a str, data: &'a str, out: &'a str, algo: &'a str) -> Vec<&'a str> {
    vec![
        "train",
        "--model",
        model,
        "--data",
        data,
        "--algo",
        algo,
        "--optimizer",
        "sgd",
        "--lr",
        "0.05",
        "--batch-size",
        "4",
        "--steps",
        "4",
        "--eval-every",
        "8",
        "--probes",
        "all",
        "--no-shuffle",
        "--quiet",
        "--out",
        out,
    ]
}

#[test]
fn dpo_train_and_inspect_show_every_family_and_argmax() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("dpo.jsonl");
    let model = fixtures().join("llama");
    let data = fixtures().join("probes_all.jsonl");
    ok(&train_args(p(&model), p(&data), p(&run), "dpo"));
    let s: Value = serde_json::from_str(&ok(&["inspect", p(&run), "--json"])).unwrap();
    assert_eq!(s["steps"], 4);
    let fams = s["families"].as_object().unwrap();
    for f in FAMILIES {
        let st = &fams[f];
        for k in ["first", "last", "min", "max"] {
            assert!(st[k].as_f64().unwrap().is_finite(), "{f}.{k}");
        }
        assert!(st["min"].as_f64().unwrap() <= st["first"].as_f64().unwrap());
        assert!(st["max"].as_f64().unwrap() >= st["last"].as_f64().unwrap());
    }
    // evaluations at steps 0, 2 (8 examples), 4
    assert_eq!(s["evaluations"], 3);
    // DPO pushes the rejected responses down relative to the reference
    let rej = &fams["rejected"];
    assert!(rej["last"].as_f64().unwrap() < rej["first"].as_f64().unwrap());
    let text = ok(&["inspect", p(&run)]);
    for f in FAMILIES {
        assert!(text.contains(f), "text summary lacks {f}");
    }
}

#[test]
fn derived_families_from_standard_format_and_extended_phases() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("ext.jsonl");
    let model = fixtures().join("llama");
    let data = fixtures().join("prefs.jsonl");
    let mut args = train_args(p(&model), p(&data), p(&run), "extended");
    args.extend(["--test-fraction", "0.2", "--sft-steps", "2"]);
    ok(&args);
    let s: Value = serde_json::from_str(&ok(&["inspect", p(&run), "--json"])).unwrap();
    let fams = s["families"].as_object().unwrap();
    let mut got: Vec<&str> = fams.keys().map(String::as_str).collect();
    got.sort();
    let mut want = vec![
        "chosen",
        "rejected",
        "irr_train",
        "irr_test",
        "random_permute",
        "random_nonhum",
        "argmax",
    ];
    want.sort();
    assert_eq!(got, want);
    let phases = s["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 2);
    assert_eq!(phases[0]["name"], "sft_both");
    assert_eq!(phases[0]["first_step"], 0);
    assert_eq!(phases[0]["last_step"], 2);
    assert_eq!(phases[1]["name"], "dpo");
    assert_eq!(phases[1]["first_step"], 2);
    assert_eq!(phases[1]["last_step"], 6);
    // SFT on chosen and rejected raises the rejected responses in the first phase
    let r = &phases[0]["families"]["rejected"];
    assert!(r["last"].as_f64().unwrap() > r["first"].as_f64().unwrap());
    assert_eq!(s["steps"], 6);
}

#[test]
fn logprob_matches_the_reference_values() {
    let model = fixtures().join("qwen2");
    let out = ok(&[
        "logprob",
        "--model",
        p(&model),
        "--data",
        p(&fixtures().join("prefs.jsonl")),
        "--tokens",
    ]);
    let want: Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("expected.json")).unwrap())
            .unwrap();
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 10);
    for (l, w) in lines.iter().zip(want["records"].as_array().unwrap()) {
        assert_eq!(l["index"], w["index"]);
        for k in ["chosen", "rejected"] {
            let (a, b) = (l[k].as_f64().unwrap(), w[k].as_f64().unwrap());
            assert!((a - b).abs() < 1e-4, "{k}: {a} vs {b}");
        }
        let toks = l["tokens"]["chosen"].as_array().unwrap();
        assert_eq!(toks.len(), w["chosen_ids"].as_array().unwrap().len());
        let sum: f64 = toks.iter().map(|t| t["logp"].as_f64().unwrap()).sum();
        assert!((sum - w["chosen"].as_f64().unwrap()).abs() < 1e-3);
    }
}

#[test]
fn export_csv_and_cut_run_file() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("sft.jsonl");
    let model = fixtures().join("gpt2");
    let data = fixtures().join("probes_all.jsonl");
    let saved = dir.path().join("sft_model");
    let mut args = train_args(p(&model), p(&data), p(&run), "sft");
    args.extend(["--save-model", p(&saved)]);
    ok(&args);
    // the trained weights load back, differ from the start, and score the data like the run's
    // last evaluation did
    let start = cpu_model(&model);
    let trained = cpu_model(&saved);
    assert_ne!(start.fingerprint, trained.fingerprint);
    let r = ldviz::run::read_run(&run).unwrap();
    let last = r.evals.last().unwrap();
    let probe = &r.header.probes[0];
    let seq = ldviz::probe::Seq::encode(
        &trained.tok,
        &probe.prompt,
        &probe.responses[&ldviz::data::Family::Chosen],
        ldviz::probe::Lengths::default(),
    )
    .unwrap();
    let lp = ldviz::probe::logprob::score(&trained, &[seq], 1).unwrap()[0];
    assert!(
        (lp - last.logps[&ldviz::data::Family::Chosen][0]).abs() < 1e-3,
        "{lp}"
    );
    let csv = dir.path().join("out.csv");
    ok(&["export", p(&run), "--csv", p(&csv)]);

    // the family plot, headless, with the bundled font
    let (png, svg) = (dir.path().join("f.png"), dir.path().join("f.svg"));
    ok(&[
        "export",
        p(&run),
        "--plot",
        "families",
        "--png",
        p(&png),
        "--svg",
        p(&svg),
        "--width",
        "800",
        "--height",
        "500",
    ]);
    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&bytes[12..16], b"IHDR");
    assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), 800);
    assert_eq!(u32::from_be_bytes(bytes[20..24].try_into().unwrap()), 500);
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.starts_with("<svg"), "{}", &text[..50]);
    for f in [
        "chosen (chosen-like)",
        "rejected (rejected-like)",
        "argmax (argmax)",
        "step",
    ] {
        assert!(text.contains(f), "SVG lacks the label {f}");
    }
    // one probe, absolute values, two families
    ok(&[
        "export",
        p(&run),
        "--svg",
        p(&svg),
        "--absolute",
        "--probe",
        "1",
        "--families",
        "chosen,argmax",
        "--band",
        "none",
    ]);
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("argmax (argmax)") && !text.contains("rejected (rejected-like)"));
    assert!(
        fails(&["export", p(&run), "--svg", p(&svg), "--families", "nope"])
            .contains("unknown family")
    );
    assert!(fails(&["export", p(&run), "--svg", p(&svg), "--probe", "99"]).contains("--probe 99"));
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("step,examples,probe,family,logp"));
    // 3 evaluations × 13 families × 8 probes
    assert_eq!(lines.count(), 3 * 13 * 8);
    let metrics = std::fs::read_to_string(dir.path().join("out.metrics.csv")).unwrap();
    let head = metrics.lines().next().unwrap();
    for m in [
        "step",
        "examples",
        "loss",
        "logps/chosen",
        "grad_norm",
        "learning_rate",
    ] {
        assert!(
            head.split(',').any(|c| c == m),
            "metrics header {head} lacks {m}"
        );
    }
    assert_eq!(metrics.lines().count(), 1 + 4);

    // Cut the file in the middle of its last record: every complete record still loads.
    let bytes = std::fs::read(&run).unwrap();
    let full: Value = serde_json::from_str(&ok(&["inspect", p(&run), "--json"])).unwrap();
    let last_nl = bytes[..bytes.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .unwrap();
    let cut = dir.path().join("cut.jsonl");
    std::fs::write(&cut, &bytes[..last_nl + 1 + (bytes.len() - last_nl) / 2]).unwrap();
    let s: Value = serde_json::from_str(&ok(&["inspect", p(&cut), "--json"])).unwrap();
    assert_eq!(s["truncated"], true);
    assert_eq!(s["evaluations"], full["evaluations"]);
    // cut inside the final evaluation record (the line before the end record)
    let lines: Vec<&[u8]> = bytes.split_inclusive(|&b| b == b'\n').collect();
    let keep: usize = lines[..lines.len() - 2].iter().map(|l| l.len()).sum();
    std::fs::write(&cut, &bytes[..keep + 100]).unwrap();
    let s: Value = serde_json::from_str(&ok(&["inspect", p(&cut), "--json"])).unwrap();
    assert_eq!(
        s["evaluations"].as_u64().unwrap(),
        full["evaluations"].as_u64().unwrap() - 1
    );
    assert_eq!(s["steps"], 4);
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let f = dir.join(name);
    std::fs::write(&f, bytes).unwrap();
    f
}

#[test]
fn bad_data_gives_one_line_errors_naming_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = fixtures().join("llama");
    let good = r#"{"prompt": "Q?", "chosen": " yes", "rejected": " no"}"#;
    let cases: Vec<(&str, Vec<u8>, Vec<&str>)> = vec![
        (
            "malformed.jsonl",
            format!("{good}\n{{\"prompt\": \"x\",\n").into_bytes(),
            vec!["malformed.jsonl:2"],
        ),
        (
            "missing.jsonl",
            format!("{good}\n{{\"prompt\": \"Q?\", \"chosen\": \" yes\"}}\n").into_bytes(),
            vec!["missing.jsonl:2", "rejected"],
        ),
        (
            "mistyped.jsonl",
            format!("{good}\n{{\"prompt\": \"Q?\", \"chosen\": 5, \"rejected\": \" no\"}}\n")
                .into_bytes(),
            vec!["mistyped.jsonl:2", "chosen"],
        ),
        (
            "empty.jsonl",
            b"\n\n".to_vec(),
            vec!["empty.jsonl", "no records"],
        ),
        (
            "unknown.jsonl",
            b"{\"question\": \"a\", \"answer\": \"b\"}\n".to_vec(),
            vec!["unknown.jsonl", "question"],
        ),
        (
            "binary.jsonl",
            [
                good.as_bytes(),
                b"\n{\"prompt\": \"\xff\xfe\", \"chosen\": \"a\", \"rejected\": \"b\"}\n",
            ]
            .concat(),
            vec!["binary.jsonl:2", "UTF-8"],
        ),
    ];
    for (name, bytes, needles) in cases {
        let f = write(d, name, &bytes);
        let run = d.join(format!("{name}.run"));
        for args in [
            train_args(p(&model), p(&f), p(&run), "dpo"),
            vec!["logprob", "--model", p(&model), "--data", p(&f)],
        ] {
            let err = fails(&args);
            for n in &needles {
                assert!(
                    err.to_lowercase().contains(&n.to_lowercase()),
                    "{name}: error {err:?} lacks {n:?}"
                );
            }
        }
        assert!(
            !run.exists(),
            "{name}: a run file was created for bad input"
        );
    }
}

#[test]
fn bad_models_give_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let src = fixtures().join("llama");
    let data = fixtures().join("prefs.jsonl");
    let check = |m: &Path, needles: &[&str]| {
        let err = fails(&["logprob", "--model", p(m), "--data", p(&data)]);
        for n in needles {
            assert!(err.contains(n), "error {err:?} lacks {n:?}");
        }
        let run = d.join("x.run");
        fails(&train_args(p(m), p(&data), p(&run), "sft"));
        assert!(!run.exists());
    };
    let m = d.join("no_config");
    copy_model(&src, &m, &["config.json"]);
    check(&m, &["no_config", "config.json"]);

    let m = d.join("no_tok");
    copy_model(&src, &m, &["tokenizer.json"]);
    check(&m, &["no_tok", "tokenizer.json"]);

    let m = d.join("mamba");
    copy_model(&src, &m, &[]);
    let cfg = std::fs::read_to_string(m.join("config.json"))
        .unwrap()
        .replace("\"llama\"", "\"mamba\"");
    std::fs::write(m.join("config.json"), cfg).unwrap();
    check(&m, &["config.json", "mamba", "not supported"]);

    let m = d.join("pickle");
    copy_model(&src, &m, &["model.safetensors"]);
    std::fs::write(m.join("pytorch_model.bin"), b"PK\x03\x04 not really").unwrap();
    check(&m, &["pytorch_model.bin", "pickle", "save_pretrained"]);

    let m = d.join("truncated");
    copy_model(&src, &m, &[]);
    let w = std::fs::read(m.join("model.safetensors")).unwrap();
    std::fs::write(m.join("model.safetensors"), &w[..w.len() / 2]).unwrap();
    check(&m, &["model.safetensors", "truncated"]);

    let m = d.join("small_vocab");
    copy_model(&src, &m, &[]);
    let cfg = std::fs::read_to_string(m.join("config.json"))
        .unwrap()
        .replace("\"vocab_size\": 320", "\"vocab_size\": 200");
    std::fs::write(m.join("config.json"), cfg).unwrap();
    check(&m, &["small_vocab", "300 tokens", "vocab_size is 200"]);

    let m = d.join("missing_folder");
    check(&m, &["missing_folder"]);
}

#[test]
fn nan_loss_stops_the_run_and_keeps_earlier_records() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("nan.jsonl");
    let model = fixtures().join("llama");
    let data = fixtures().join("prefs.jsonl");
    let mut args = train_args(p(&model), p(&data), p(&run), "sft");
    let lr = args.iter().position(|a| *a == "0.05").unwrap();
    args[lr] = "1e30";
    let err = fails(&args);
    assert!(
        err.contains("loss became") || err.contains("gradient norm became"),
        "{err}"
    );
    let s: Value = serde_json::from_str(&ok(&["inspect", p(&run), "--json"])).unwrap();
    assert!(
        s["steps"].as_u64().unwrap() >= 1,
        "the first step must be kept"
    );
    assert!(
        s["end"].as_str().unwrap().starts_with("error"),
        "{}",
        s["end"]
    );
    assert!(
        s["families"]["chosen"]["first"]
            .as_f64()
            .unwrap()
            .is_finite()
    );
}

#[test]
fn bad_run_files_give_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "empty.jsonl", b"");
    assert!(fails(&["inspect", p(&f)]).contains("empty run file"));
    let f = write(
        dir.path(),
        "noheader.jsonl",
        b"{\"type\":\"state\",\"paused\":true,\"step\":0}\n",
    );
    assert!(fails(&["inspect", p(&f)]).contains("header"));
    let missing = dir.path().join("nope.jsonl");
    assert!(fails(&["inspect", p(&missing)]).contains("nope.jsonl"));
}

#[test]
fn squeeze_reproduces_the_worked_numbers() {
    // The worked example: a negative step on index 4 with η' = 1 and 5, and on the peak (index 0).
    let cases: [(&[&str], &str); 4] = [
        (
            &["--negative", "4", "--eta", "1"],
            "[0.5689, 0.2795, 0.1203, 0.0287, 0.0026]",
        ),
        (
            &["--negative", "4", "--eta", "5"],
            "[0.7807, 0.1723, 0.0407, 0.0063, 0.0000]",
        ),
        (
            &["--negative", "0", "--eta", "1"],
            "[0.3246, 0.4335, 0.1865, 0.0446, 0.0108]",
        ),
        // Five steps of η' = 1 are not one step of η' = 5 (π changes between steps).
        (
            &["--negative", "4", "--eta", "1", "--steps", "1"],
            "rose: [0]",
        ),
    ];
    for (args, want) in cases {
        let mut a = vec!["squeeze", "--probs", "0.5,0.3,0.15,0.04,0.01"];
        a.extend_from_slice(args);
        let out = ldviz(&a);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains(want), "{args:?}: {text}");
    }
    let out = ldviz(&[
        "squeeze",
        "--probs",
        "0.5,0.3,0.15,0.04,0.01",
        "--positive",
        "2",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let after: Vec<f64> = serde_json::from_value(v["after"].clone()).unwrap();
    assert!(after[2] > 0.15);
    // Bad input: a clear error, non-zero exit.
    let out = ldviz(&["squeeze", "--probs", "0.5,0.6", "--negative", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sum to"));
    let out = ldviz(&["squeeze", "--probs", "0.5,0.5", "--negative", "7"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("out of range"));
}

#[test]
fn transfer_matrix_and_diagnostics_agree_with_the_probe_scores() {
    // Independent consistency checks on a real run of the default model: the transfer
    // matrix's diagonal is each prompt with its own chosen answer, i.e. the chosen family's
    // score (scored in a different padded batch); the chosen energy equals the mean of
    // 1 − exp(per-token log-prob) of the chosen trace.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("t.jsonl");
    ok(&[
        "train",
        "--algo",
        "sft",
        "--steps",
        "2",
        "--probes",
        "5",
        "--transfer-prompts",
        "4",
        "--transfer-every",
        "4",
        "--eval-every",
        "4",
        // file order: the two steps train the first 8 records, the 4 transfer prompts among them
        "--no-shuffle",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]);
    let run = ldviz::run::read_run(&out).unwrap();
    assert!(run.evals.len() >= 3);
    for e in &run.evals {
        assert_eq!(e.transfer.len(), 4);
        let chosen = &e.logps[&ldviz::data::Family::Chosen];
        for (i, (row, c)) in e.transfer.iter().zip(chosen).enumerate() {
            assert_eq!(row.len(), 4);
            assert!(
                (row[i] - c).abs() < 1e-3,
                "diagonal {i}: {} vs chosen {c}",
                row[i]
            );
        }
        let diag = &e.diag[&ldviz::data::Family::Chosen];
        assert_eq!(diag.len(), 5);
        for (p, d) in diag.iter().enumerate() {
            let lp = &e.tokens[p].chosen.logp;
            let energy: f64 =
                lp.iter().map(|&x| 1.0 - (x as f64).exp()).sum::<f64>() / lp.len() as f64;
            assert!((d[2] - energy).abs() < 1e-4, "energy {} vs {energy}", d[2]);
            // ‖π − e_y‖ ≥ 1 − π_y and ‖A‖_F ≥ sqrt(V − 2) + … > 0.
            assert!(d[1] >= d[2] - 1e-6 && d[0] > 0.0);
            // the authors' ‖A‖_F (from the mean ‖π‖) is at most the mean of ‖A‖_F, and at
            // least sqrt(V·(1/V) + V − 2) = sqrt(V − 1)
            let v = run.header.model.vocab_size as f64;
            assert!(
                d[3] <= d[0] + 1e-9 && d[3] >= (v - 1.0).sqrt() - 1e-6,
                "{d:?}"
            );
        }
        assert!(!e.diag.contains_key(&ldviz::data::Family::Argmax));
    }
    // SFT raises each prompt's own answer more than the others' on average.
    let last = run.evals.last().unwrap();
    let first = &run.evals[0];
    let d = |i: usize, j: usize| last.transfer[i][j] - first.transfer[i][j];
    let diag: f64 = (0..4).map(|i| d(i, i)).sum::<f64>() / 4.0;
    assert!(diag > 0.0, "own answers rose: {diag}");
}

#[test]
fn export_plots_a_diagnostic() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("energy.svg");
    let run = sample_run("dpo_offpolicy");
    ok(&["export", p(&run), "--quantity", "energy", "--svg", p(&svg)]);
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("Δ energy 1 − π(y)"), "axis label missing");
    // argmax has no diagnostics: it is not drawn.
    assert!(!text.contains("argmax (argmax)"));
    assert!(text.contains("rejected (rejected-like)"));
}

#[test]
fn device_and_dtype_errors_are_specific() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run.jsonl");
    // every command that runs the model takes --device / --dtype
    for cmd in [
        vec!["train", "--steps", "1", "--out", p(&out)],
        vec!["logprob"],
        vec!["bench", "--steps", "1"],
    ] {
        let mut a = cmd.clone();
        a.extend(["--device", "tpu"]);
        let o = ldviz(&a);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(e.contains("expected cpu, cuda or cuda:N"), "{cmd:?}: {e}");
        let mut a = cmd.clone();
        a.extend(["--dtype", "bf16"]);
        let e = fails(&a);
        assert!(e.contains("bf16 runs on GPUs only"), "{cmd:?}: {e}");
        if !ldviz::device::cuda_built() {
            let mut a = cmd.clone();
            a.extend(["--device", "cuda:1"]);
            let e = fails(&a);
            assert!(e.contains("built without CUDA support"), "{cmd:?}: {e}");
        }
    }
    assert!(!out.exists() || std::fs::metadata(&out).unwrap().len() == 0);
}

#[test]
fn bench_preset_runs_the_gpu_workload_at_toy_size() {
    // pythia-tiny: the code path of --preset pythia-410m (gpt_neox, DPO step with reference
    // log-probs, shared-KV probe evaluation vs padded) on the CPU.
    let out = ok(&["bench", "--preset", "pythia-tiny", "--reps", "1", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["preset"], "pythia-tiny");
    assert_eq!(v["dtype"], "f32");
    for k in [
        "dpo_step_ms",
        "dpo_reference_ms",
        "dpo_forward_backward_ms",
        "probe_eval_ms",
    ] {
        assert!(v[k].as_f64().unwrap() > 0.0, "{k}: {v}");
    }
    assert_eq!(v["dpo_tokens"], 256);
    assert_eq!(v["eval_tokens"], 2 * 13 * 48);
    // both evaluations score the same sequences
    assert!(v["probe_eval_max_abs_diff"].as_f64().unwrap() < 1e-3, "{v}");
}

#[test]
fn bench_arch_times_each_architecture_at_the_same_sizes() {
    for (arch, params) in [("gpt_neox", 10_512_896), ("gpt2", 8_940_032)] {
        let out = ok(&["bench", "--arch", arch, "--steps", "1", "--json"]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["arch"], arch, "{v}");
        // transformers' GPTNeoXForCausalLM / GPT2LMHeadModel of tools/bench_torch.py --arch
        // count the same parameters
        assert_eq!(v["params"], params, "{v}");
        assert!(v["step_ms"].as_f64().unwrap() > 0.0, "{v}");
    }
}

#[test]
fn bench_influence_prints_update_and_record_times() {
    // the JSON line has exactly these keys; a record observes 40 responses against the
    // update's 8 sequences, so it cannot cost less than the update
    let out = ok(&["bench", "--influence", "--steps", "1", "--json"]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["influence_ms", "ratio", "update_ms"], "{v}");
    let (u, i, r) = (
        v["update_ms"].as_f64().unwrap(),
        v["influence_ms"].as_f64().unwrap(),
        v["ratio"].as_f64().unwrap(),
    );
    assert!(u > 0.0 && i > u, "{v}");
    assert!((r - i / u).abs() < 1e-9, "{v}");
    let o = ldviz(&["bench", "--flat"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--influence"));
}

/// A synthetic two-phase run (sft to step 10, then dpo to 20, evaluations every 5 steps) whose
/// 3 × 3 transfer matrix is scored at steps 0, 10 and 20: entry (i, j) moves from its t = 0
/// value by a(s)·(i + 1) on the diagonal and b(s)·(j + 1) off it, so the mean diagonal change is
/// 2a(s) and the mean off-diagonal change 2b(s) (each column j ≠ i appears in two rows).
fn write_transfer_run(path: &Path, with_transfer: bool) {
    use ldviz::run::Event;
    let evs = ldviz::synth::events(
        ldviz::synth::SynthSpec {
            steps: 20,
            eval_every: 5,
            probes: 3,
            tokens: 2,
            top_k: 1,
            vocab: 8,
        },
        9,
    )
    .unwrap();
    let ab = |s: usize| match s {
        0 => Some((0.0, 0.0)),
        10 => Some((3.0, -1.0)),
        20 => Some((5.0, 2.0)),
        _ => None,
    };
    let mut out = String::new();
    for mut ev in evs {
        let mut boundary = false;
        match &mut ev {
            Event::Header(h) => {
                let plan = |name: &str, algo| ldviz::run::event::PhasePlan {
                    name: name.into(),
                    algo,
                    steps: 10,
                };
                h.phases = vec![
                    plan("sft", ldviz::train::Algo::Sft),
                    plan("dpo", ldviz::train::Algo::Dpo),
                ];
            }
            Event::Phase { name, algo, .. } => {
                *name = "sft".into();
                *algo = ldviz::train::Algo::Sft;
            }
            Event::Step(st) if st.step <= 10 => st.phase = "sft".into(),
            Event::Eval(e) => {
                if e.step <= 10 {
                    e.phase = "sft".into();
                }
                boundary = e.step == 10;
                if let (Some((a, b)), true) = (ab(e.step), with_transfer) {
                    e.transfer = (0..3)
                        .map(|i| {
                            (0..3)
                                .map(|j| {
                                    let base = -1.5 - (3 * i + j) as f64;
                                    base + if i == j {
                                        a * (i + 1) as f64
                                    } else {
                                        b * (j + 1) as f64
                                    }
                                })
                                .collect()
                        })
                        .collect();
                }
            }
            _ => {}
        }
        out.push_str(&serde_json::to_string(&ev).unwrap());
        out.push('\n');
        if boundary {
            let phase = Event::Phase {
                name: "dpo".into(),
                algo: ldviz::train::Algo::Dpo,
                step: 10,
                examples: 40,
            };
            out.push_str(&serde_json::to_string(&phase).unwrap());
            out.push('\n');
        }
    }
    std::fs::write(path, out).unwrap();
}

#[test]
fn inspect_reports_the_transfer_diagonal_and_off_diagonal() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("transfer.jsonl");
    write_transfer_run(&run, true);
    let s: Value = serde_json::from_str(&ok(&["inspect", p(&run), "--json"])).unwrap();
    let close = |v: &Value, want: f64| {
        let got = v.as_f64().unwrap();
        assert!((got - want).abs() < 1e-9, "{got} vs {want}");
    };
    // At the last evaluation that scored the matrix (step 20): 2·5 and 2·2.
    let t = &s["transfer"];
    assert_eq!(t["step"], 20);
    assert_eq!(t["prompts"], 3);
    close(&t["diagonal_delta"], 10.0);
    close(&t["off_diagonal_delta"], 4.0);
    // Per phase: sft ends at step 10 (2·3, 2·(−1)); dpo ends at 20 and, over the phase from
    // step 10, moved the diagonal by 2·(5 − 3) and the off-diagonal by 2·(2 + 1).
    let ph = s["phases"].as_array().unwrap();
    assert_eq!(ph.len(), 2);
    let (sft, dpo) = (&ph[0]["transfer"], &ph[1]["transfer"]);
    assert_eq!(
        (sft["step"].clone(), sft["phase_from_step"].clone()),
        (10.into(), 0.into())
    );
    close(&sft["diagonal_delta"], 6.0);
    close(&sft["off_diagonal_delta"], -2.0);
    close(&sft["phase_diagonal_delta"], 6.0);
    close(&sft["phase_off_diagonal_delta"], -2.0);
    assert_eq!(
        (dpo["step"].clone(), dpo["phase_from_step"].clone()),
        (20.into(), 10.into())
    );
    close(&dpo["diagonal_delta"], 10.0);
    close(&dpo["off_diagonal_delta"], 4.0);
    close(&dpo["phase_diagonal_delta"], 4.0);
    close(&dpo["phase_off_diagonal_delta"], 6.0);
    let text = ok(&["inspect", p(&run)]);
    assert!(
        text.contains("transfer (3 × 3, log π(answer j | prompt i)) at step 20: mean Δ since t = 0 diagonal +10.000 (own answers), off-diagonal +4.000"),
        "{text}"
    );
    assert!(text.contains("over the phase (from step 10): diagonal +4.000, off-diagonal +6.000"));
    // Without a transfer matrix the field is absent.
    let none = dir.path().join("none.jsonl");
    write_transfer_run(&none, false);
    let s: Value = serde_json::from_str(&ok(&["inspect", p(&none), "--json"])).unwrap();
    assert!(s.get("transfer").is_none());
    assert!(s["phases"][1].get("transfer").is_none());
    assert!(!ok(&["inspect", p(&none)]).contains("transfer"));
}

#[test]
fn export_draws_each_phase_from_its_start() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("two.jsonl");
    write_transfer_run(&run, false);
    // Two phases: the default is the change since each phase's start, phases labelled.
    let svg = dir.path().join("default.svg");
    ok(&["export", p(&run), "--svg", p(&svg)]);
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("Δ summed log-prob since phase start"));
    assert!(text.contains("▸ sft") && text.contains("▸ dpo"));
    for (y, label) in [
        ("delta", "mean Δ log-prob since step 0"),
        ("absolute", "mean summed log-prob"),
        ("phase-delta", "since phase start"),
    ] {
        ok(&["export", p(&run), "--svg", p(&svg), "--y", y]);
        let text = std::fs::read_to_string(&svg).unwrap();
        assert!(text.contains(label), "--y {y}: {label} missing");
    }
    // --absolute is --y absolute: not both.
    let both = ldviz(&[
        "export",
        p(&run),
        "--svg",
        p(&svg),
        "--y",
        "delta",
        "--absolute",
    ]);
    assert!(!both.status.success());
    assert!(String::from_utf8_lossy(&both.stderr).contains("--absolute"));
    // The curves themselves: the dpo piece of every family starts at 0 at step 10.
    let r = ldviz::run::read_run(&run).unwrap();
    let curves = ldviz::export::plot::family_curves(
        &r,
        &[],
        ldviz::export::plot::YMode::PhaseDelta,
        ldviz::run::XAxis::Step,
        ldviz::run::Band::MinMax,
        None,
        ldviz::run::Quantity::LogProb,
    );
    for c in &curves {
        assert_eq!(c.starts, vec![0, 3], "{:?}", c.family);
        assert_eq!(c.points[3], (10.0, 0.0, 0.0, 0.0));
        let chosen = &r.evals[4].logps[&c.family];
        let start = &r.evals[2].logps[&c.family];
        let want: f64 = chosen.iter().zip(start).map(|(a, b)| a - b).sum::<f64>() / 3.0;
        assert!((c.points[5].1 - want).abs() < 1e-9);
        assert_eq!(c.lines().count(), 2);
    }
}

#[test]
fn cdpo_with_label_smoothing_and_an_influence_target_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("cdpo.jsonl");
    let model = fixtures().join("llama");
    let data = fixtures().join("probes_all.jsonl");
    let mut args = train_args(p(&model), p(&data), p(&run), "cdpo");
    args.extend([
        "--label-smoothing",
        "0.2",
        "--influence-every",
        "2",
        "--influence-target",
        "rejected",
    ]);
    ok(&args);
    let r = ldviz::run::read_run(&run).unwrap();
    let c = &r.header.config;
    assert_eq!(c.algo, ldviz::train::Algo::Cdpo);
    assert_eq!(r.header.phases[0].algo, ldviz::train::Algo::Cdpo);
    assert_eq!(c.label_smoothing, 0.2);
    assert_eq!(c.influence_target, ldviz::train::InfluenceTarget::Rejected);
    // TRL's metric names, as for the other DPO losses
    for s in &r.steps {
        for k in [
            "loss",
            "rewards/chosen",
            "rewards/rejected",
            "rewards/margins",
            "rewards/accuracies",
            "logps/chosen",
            "logps/rejected",
            "grad_norm",
        ] {
            assert!(s.metrics[k].is_finite(), "step {} {k}", s.step);
        }
    }
    // the first update starts at the reference: loss ln 2 whatever ε
    assert!((r.steps[0].metrics["loss"] - std::f64::consts::LN_2).abs() < 1e-5);
    assert_eq!(r.influence.len(), 2);
    assert!(
        r.influence
            .iter()
            .all(|i| i.target == ldviz::train::InfluenceTarget::Rejected)
    );
    // every option list knows cdpo
    let err = fails(&[
        "train",
        "--model",
        p(&model),
        "--data",
        p(&data),
        "--algo",
        "sft",
        "--on-policy",
        "--out",
        p(&dir.path().join("x.jsonl")),
    ]);
    assert!(err.contains("robust, cdpo, simpo"), "{err}");
    let fresh = dir.path().join("bad.jsonl");
    let mut bad = train_args(p(&model), p(&data), p(&fresh), "cdpo");
    bad.extend(["--label-smoothing", "0.5"]);
    assert!(fails(&bad).contains("--label-smoothing"));
    // (argument errors come from clap, which lists the possible values)
    let o = ldviz(&["train", "--influence-target", "both", "--out", "x.jsonl"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("possible values: loss, chosen, rejected"),
        "{err}"
    );
}

/// A run whose diagnostics predate the authors' ‖A‖_F (three values per probe) plots ‖A‖_F and
/// refuses the authors' one with a one-line error instead of an empty plot.
#[test]
fn export_refuses_a_diagnostic_the_run_lacks() {
    use ldviz::run::Event;
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("old.jsonl");
    let spec = ldviz::synth::SynthSpec {
        steps: 4,
        eval_every: 2,
        probes: 2,
        tokens: 2,
        top_k: 1,
        vocab: 8,
    };
    let mut text = String::new();
    for mut ev in ldviz::synth::events(spec, 3).unwrap() {
        if let Event::Eval(e) = &mut ev {
            e.diag.insert(
                ldviz::data::Family::Chosen,
                vec![[2.0, 0.5, 0.3, f64::NAN]; 2],
            );
        }
        let line = serde_json::to_string(&ev).unwrap();
        // as written before the fourth value existed
        text.push_str(&line.replace(",null]", "]"));
        text.push('\n');
    }
    assert!(text.contains("[2.0,0.5,0.3]"));
    std::fs::write(&run, text).unwrap();
    let svg = dir.path().join("a.svg");
    ok(&["export", p(&run), "--quantity", "a-norm", "--svg", p(&svg)]);
    let err = fails(&[
        "export",
        p(&run),
        "--quantity",
        "a-norm-authors",
        "--svg",
        p(&svg),
    ]);
    assert!(
        err.contains("no ‖A‖_F (authors: from mean ‖π‖) values"),
        "{err}"
    );
}

/// On-policy DPO resamples the batch's rejected responses before every update with
/// `--resample-every 1` (the records of that batch only; file order, so the batches are known),
/// once per epoch without it; `--resample-every` needs `--on-policy` and a positive K.
#[test]
fn on_policy_resamples_every_k_updates() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures().join("llama");
    let data = fixtures().join("probes_all.jsonl");
    let samples = |extra: &[&str]| -> Vec<(usize, Vec<usize>)> {
        let run = dir.path().join("s.jsonl");
        let mut a = train_args(p(&model), p(&data), p(&run), "dpo");
        a.extend(["--on-policy", "--force"]);
        a.extend(extra);
        ok(&a);
        std::fs::read_to_string(&run)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["type"] == "samples")
            .map(|v| {
                let idx = v["rejected"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r[0].as_u64().unwrap() as usize)
                    .collect();
                (v["step"].as_u64().unwrap() as usize, idx)
            })
            .collect()
    };
    let n = ldviz::data::load_dataset(&data, None, None)
        .unwrap()
        .records
        .len();
    assert_eq!(n, 8);
    // every update: steps 0..4, each with its batch's four records (file order, wrapping)
    let every = samples(&["--resample-every", "1"]);
    assert_eq!(every.len(), 4, "{every:?}");
    for (s, (step, idx)) in every.iter().enumerate() {
        assert_eq!(*step, s);
        let batch: Vec<usize> = (0..4).map(|k| (4 * s + k) % n).collect();
        assert_eq!(idx, &batch, "{every:?}");
    }
    // once per epoch (an epoch is two batches of four): all eight records at steps 0 and 2
    let epoch = samples(&[]);
    let all: Vec<usize> = (0..n).collect();
    assert_eq!(epoch, vec![(0, all.clone()), (2, all)]);
    let run = dir.path().join("x.jsonl");
    let mut bad = train_args(p(&model), p(&data), p(&run), "dpo");
    bad.extend(["--resample-every", "1"]);
    assert!(fails(&bad).contains("--resample-every needs --on-policy"));
    let mut bad = train_args(p(&model), p(&data), p(&run), "dpo");
    bad.extend(["--on-policy", "--resample-every", "0"]);
    assert!(fails(&bad).contains("--resample-every must be positive"));
}

#[test]
fn train_into_a_full_disk_fails_with_one_line() {
    if !Path::new("/dev/full").exists() {
        eprintln!("skipped: no /dev/full");
        return;
    }
    let model = fixtures().join("llama");
    let data = fixtures().join("probes_all.jsonl");
    let err = fails(&train_args(p(&model), p(&data), "/dev/full", "dpo"));
    assert!(err.contains("/dev/full"), "{err}");
    assert!(err.contains("cannot write run record"), "{err}");
}

/// A training error (here: the trained model cannot be saved) followed by a failure to write
/// the end record (the file-size limit is reached exactly there) reports the training error.
#[test]
fn a_training_error_is_not_replaced_by_the_end_record_write_error() {
    if Command::new("bash").arg("-c").arg("true").output().is_err() {
        eprintln!("skipped: no bash");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let blocker = dir.path().join("blocker");
    std::fs::write(&blocker, "a file, not a folder").unwrap();
    // A long path makes the end record (which carries the error message) over 2 KB long.
    let mut save = blocker.clone();
    for _ in 0..10 {
        save.push("x".repeat(200));
    }
    let model = fixtures().join("llama");
    let data = fixtures().join("probes_all.jsonl");
    let run = |out: &Path, limit_blocks: Option<u64>| {
        let mut args = train_args(p(&model), p(&data), p(out), "dpo");
        args.extend(["--save-model", p(&save)]);
        let mut script = String::from("trap '' XFSZ; ");
        if let Some(l) = limit_blocks {
            script.push_str(&format!("ulimit -f {l}; "));
        }
        script.push_str("exec \"$0\" \"$@\"");
        Command::new("bash")
            .arg("-c")
            .arg(script)
            .arg(env!("CARGO_BIN_EXE_ldviz"))
            .args(&args)
            .output()
            .unwrap()
    };
    // Without a limit: the save error is reported and the end record is written.
    let free = dir.path().join("a.jsonl");
    let o = run(&free, None);
    assert!(!o.status.success());
    let text = std::fs::read_to_string(&free).unwrap();
    let last = text.trim_end().lines().last().unwrap();
    assert!(last.contains("\"type\":\"end\""), "{last}");
    assert!(last.len() > 2100, "end record only {} bytes", last.len());
    let before_end = (text.len() - last.len() - 1) as u64;
    // With the limit between the records before the end record and the end record's end.
    let limited = dir.path().join("b.jsonl");
    let blocks = (before_end + 100) / 1024 + 1;
    let o = run(&limited, Some(blocks));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success());
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("blocker"), "the training error is lost: {err}");
    assert!(
        err.contains("cannot create"),
        "the training error is lost: {err}"
    );
    assert!(
        err.contains("end record could not be written"),
        "the write failure is not mentioned: {err}"
    );
    let written = std::fs::read(&limited).unwrap();
    assert!(
        written.len() < text.len(),
        "the end record was written whole"
    );
    // The disk fills up in the middle of the run: one line naming the run file, a non-zero
    // exit, and every record written before it reads back (the cut last line is skipped).
    let mid = dir.path().join("c.jsonl");
    let o = run(&mid, Some((text.len() as u64 / 2) / 1024));
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success());
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("c.jsonl") && err.contains("cannot write run record"),
        "{err}"
    );
    let s: Value = serde_json::from_str(&ok(&["inspect", p(&mid), "--json"])).unwrap();
    let full: Value = serde_json::from_str(&ok(&["inspect", p(&free), "--json"])).unwrap();
    let (got, all) = (
        s["evaluations"].as_u64().unwrap(),
        full["evaluations"].as_u64().unwrap(),
    );
    assert!(got >= 1 && got < all, "{got} of {all} evaluations kept");
}

#[test]
fn squeeze_takes_a_positive_and_a_negative_step_at_once() {
    // The README's example with every optional flag filled in.
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("ldviz squeeze"))
        .expect("README has a squeeze example");
    let line = line
        .replace("[--steps N]", "--steps 2")
        .replace("[--positive I]", "--positive 1");
    assert!(!line.contains('['), "unfilled option in {line}");
    let args: Vec<&str> = line.split_whitespace().skip(1).collect();
    let text = ok(&args);
    assert!(
        text.contains("positive step(s) on class 1 and negative step(s) on class 4"),
        "{text}"
    );
    assert!(text.contains("class 1 (positive): 0.3000 -> "), "{text}");
    assert!(text.contains("class 4 (negative): 0.0100 -> "), "{text}");
    // JSON: equals the hand computation. Each step is z ← ln π + η((e_I − π) − (e_J − π)),
    // i.e. π_k ∝ π_k·exp(η([k = I] − [k = J])); two steps of η = 1 multiply by exp(2·d_k).
    let mut json_args = args.clone();
    json_args.push("--json");
    let v: Value = serde_json::from_str(&ok(&json_args)).unwrap();
    let after: Vec<f64> = serde_json::from_value(v["after"].clone()).unwrap();
    let p0 = [0.5, 0.3, 0.15, 0.04, 0.01];
    let w: Vec<f64> = p0
        .iter()
        .enumerate()
        .map(|(k, &pk)| {
            let d: f64 = match k {
                1 => 1.0,
                4 => -1.0,
                _ => 0.0,
            };
            pk * (2.0 * d).exp()
        })
        .collect();
    let s: f64 = w.iter().sum();
    for k in 0..5 {
        assert!((after[k] - w[k] / s).abs() < 1e-12, "{k}: {after:?}");
    }
    let changes = v["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2);
    assert_eq!(changes[0]["class"], 1);
    assert_eq!(changes[0]["step"], "positive");
    assert!(changes[0]["after"].as_f64().unwrap() > 0.3);
    assert_eq!(changes[1]["class"], 4);
    assert_eq!(changes[1]["step"], "negative");
    assert!(changes[1]["after"].as_f64().unwrap() < 0.01);
    // The same class both ways cancels: refused.
    let err = fails(&[
        "squeeze",
        "--probs",
        "0.5,0.5",
        "--positive",
        "1",
        "--negative",
        "1",
    ]);
    assert!(err.contains("same class"), "{err}");
    assert!(
        fails(&[
            "squeeze",
            "--probs",
            "0.5,0.5",
            "--positive",
            "3",
            "--negative",
            "0"
        ])
        .contains("--positive")
    );
}

#[test]
fn train_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run.jsonl");
    let model = fixtures().join("llama");
    let data = fixtures().join("probes_all.jsonl");
    std::fs::write(&run, "keep me\n").unwrap();
    let err = fails(&train_args(p(&model), p(&data), p(&run), "sft"));
    assert!(
        err.contains("run.jsonl") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&run).unwrap(), "keep me\n");
    // --force replaces it.
    let mut args = train_args(p(&model), p(&data), p(&run), "sft");
    args.push("--force");
    ok(&args);
    assert_eq!(ldviz::run::read_run(&run).unwrap().steps.len(), 4);

    // --save-model into a folder that is not empty: refused before training (no run file).
    let saved = dir.path().join("saved");
    std::fs::create_dir(&saved).unwrap();
    std::fs::write(saved.join("notes.txt"), "mine").unwrap();
    let run2 = dir.path().join("run2.jsonl");
    let mut args = train_args(p(&model), p(&data), p(&run2), "sft");
    args.extend(["--save-model", p(&saved)]);
    let err = fails(&args);
    assert!(err.contains("saved") && err.contains("--force"), "{err}");
    assert!(!run2.exists(), "training started");
    assert!(!saved.join("model.safetensors").exists());
    // an empty folder is fine; with --force the model is written next to the other files
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let mut args = train_args(p(&model), p(&data), p(&run2), "sft");
    args.extend(["--save-model", p(&empty)]);
    ok(&args);
    assert!(empty.join("model.safetensors").exists());
    let mut args = train_args(p(&model), p(&data), p(&run2), "sft");
    args.extend(["--save-model", p(&saved), "--force"]);
    ok(&args);
    assert!(saved.join("model.safetensors").exists());
    assert_eq!(
        std::fs::read_to_string(saved.join("notes.txt")).unwrap(),
        "mine"
    );
}

/// A run file from a newer writer: a record of an unknown type in the middle and an unknown
/// field in an eval record are skipped and counted; a newer header version is refused.
#[test]
fn run_files_with_unknown_records_and_fields_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run.jsonl");
    let model = fixtures().join("llama");
    let data = fixtures().join("probes_all.jsonl");
    ok(&train_args(p(&model), p(&data), p(&run), "dpo"));
    let text = std::fs::read_to_string(&run).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut evals = 0;
    for (i, l) in lines.iter().enumerate() {
        if i == lines.len() / 2 {
            out.push(r#"{"type":"future_thing","x":1}"#.to_string());
        }
        if let Some(rest) = l.strip_prefix(r#"{"type":"eval","#) {
            evals += 1;
            out.push(format!(r#"{{"type":"eval","new_field":1,{rest}"#));
        } else {
            out.push(l.to_string());
        }
    }
    assert!(evals > 0);
    let newer = dir.path().join("newer.jsonl");
    std::fs::write(&newer, out.join("\n") + "\n").unwrap();

    let a: Value = serde_json::from_str(&ok(&["inspect", p(&run), "--json"])).unwrap();
    let b: Value = serde_json::from_str(&ok(&["inspect", p(&newer), "--json"])).unwrap();
    assert_eq!(a["skipped_records"], 0);
    assert_eq!(b["skipped_records"], 1);
    assert_eq!(a["families"], b["families"]);
    assert_eq!(a["steps"], b["steps"]);
    assert_eq!(a["evaluations"], b["evaluations"]);
    let t = ok(&["inspect", p(&newer)]);
    assert_eq!(t.matches("skipped records: 1").count(), 1, "{t}");
    assert!(!ok(&["inspect", p(&run)]).contains("skipped records"));
    let r = ldviz::run::read_run(&newer).unwrap();
    assert_eq!(r.skipped_records, 1);
    assert_eq!(r, {
        let mut o = ldviz::run::read_run(&run).unwrap();
        o.skipped_records = 1;
        o
    });

    // A header of a newer version: an error naming both versions.
    let v2 = dir.path().join("v2.jsonl");
    let first = lines[0].replacen(r#""version":1"#, r#""version":2"#, 1);
    assert_ne!(first, lines[0]);
    std::fs::write(
        &v2,
        [first.as_str()]
            .into_iter()
            .chain(lines[1..].iter().copied())
            .collect::<Vec<_>>()
            .join("\n")
            + "\n",
    )
    .unwrap();
    let err = fails(&["inspect", p(&v2)]);
    assert!(err.contains("version 2") && err.contains("(1)"), "{err}");
}

/// A diverged run (SGD at lr 1e12) keeps its records, NaN included: inspect reports the step it
/// diverged at (text and --json), export writes the CSVs with `nan` where values were NaN.
#[test]
fn a_diverged_run_inspects_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let model = fixtures().join("llama");
    let data = fixtures().join("probes_all.jsonl");
    let run = dir.path().join("div.jsonl");
    let mut a = train_args(p(&model), p(&data), p(&run), "dpo");
    let lr = a.iter().position(|x| *x == "--lr").unwrap() + 1;
    a[lr] = "1e12";
    let every = a.iter().position(|x| *x == "--eval-every").unwrap() + 1;
    a[every] = "4";
    let o = ldviz(&a);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("training stopped, every earlier record is kept"),
        "{err}"
    );
    let text = ok(&["inspect", p(&run)]);
    let line = text
        .lines()
        .find(|l| l.starts_with("diverged at step "))
        .unwrap_or_else(|| panic!("{text}"));
    let json: Value = serde_json::from_str(&ok(&["inspect", p(&run), "--json"])).unwrap();
    let at = json["diverged_at_step"].as_u64().unwrap() as usize;
    assert!(
        line.starts_with(&format!("diverged at step {at}:")),
        "{line}"
    );
    let r = ldviz::run::read_run(&run).unwrap();
    // the first evaluation after an update has non-finite log-probs; before it, all finite
    let first_bad = r
        .evals
        .iter()
        .find(|e| e.logps.values().flatten().any(|v| !v.is_finite()))
        .unwrap();
    assert!(at <= first_bad.step && at >= 1, "{at}");
    assert!(
        r.evals.iter().filter(|e| e.step < at).all(|e| e
            .logps
            .values()
            .flatten()
            .all(|v| v.is_finite()))
    );
    let csv = dir.path().join("div.csv");
    ok(&["export", p(&run), "--csv", p(&csv)]);
    let rows = std::fs::read_to_string(&csv).unwrap();
    assert!(rows.lines().any(|l| l.ends_with(",nan")), "{rows}");
    assert!(!rows.contains("NaN"));
    // a finite run reports no divergence
    let fine = dir.path().join("fine.jsonl");
    ok(&train_args(p(&model), p(&data), p(&fine), "dpo"));
    assert!(!ok(&["inspect", p(&fine)]).contains("diverged"));
    let json: Value = serde_json::from_str(&ok(&["inspect", p(&fine), "--json"])).unwrap();
    assert!(json["diverged_at_step"].is_null());
}

#[test]
fn a_copied_binary_trains_the_embedded_demo_and_reads_the_sample_runs_anywhere() {
    // The binary carries the default model, the demo data and the sample runs: copied into an
    // empty folder and run from there (a fresh cache folder, no source tree paths given), it
    // trains the demo and inspects a sample run it unpacked itself.
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("ldviz-copy");
    std::fs::copy(env!("CARGO_BIN_EXE_ldviz"), &bin).unwrap();
    let cache = dir.path().join("cache");
    let run = |args: &[&str]| {
        // A test thread that forks while the copy's write handle is still open hands the handle
        // to its child, and executing the copy then fails with "text file busy" until that
        // child has exec'd: retry briefly.
        let mut tries = 0;
        let o = loop {
            match Command::new(&bin)
                .args(args)
                .current_dir(dir.path())
                .env("LDVIZ_CACHE", &cache)
                .output()
            {
                Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy && tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                r => break r.unwrap(),
            }
        };
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    };
    run(&[
        "train",
        "--algo",
        "sft",
        "--steps",
        "2",
        "--eval-every",
        "8",
        "--quiet",
        "--out",
        "demo.jsonl",
    ]);
    let s: Value = serde_json::from_str(&run(&["inspect", "demo.jsonl", "--json"])).unwrap();
    assert_eq!(s["steps"], 2);
    assert_eq!(s["families"].as_object().unwrap().len(), 13);
    let unpacked: Vec<PathBuf> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(unpacked.len(), 1, "{unpacked:?}");
    let sample = unpacked[0].join("sample_runs/dpo_offpolicy.jsonl.gz");
    let s: Value = serde_json::from_str(&run(&["inspect", p(&sample), "--json"])).unwrap();
    assert!(s["evaluations"].as_u64().unwrap() > 10, "{s}");
    assert!(
        unpacked[0].join("model/model.safetensors").exists()
            && unpacked[0].join("demo.jsonl").exists()
    );
}

/// The probe file's lines, parsed.
fn probe_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// `ldviz probes` writes exactly the probes (texts and order) and the configuration that
/// `ldviz train` with the same flags records in its header: on the embedded demo data, and on
/// a data file with a held-out fraction.
#[test]
fn probes_are_the_probes_train_evaluates() {
    let dir = tempfile::tempdir().unwrap();
    let prefs = fixtures().join("prefs.jsonl");
    let llama = fixtures().join("llama");
    let cases: [Vec<&str>; 2] = [
        vec!["--probes", "8", "--algo", "sft", "--steps", "1"],
        vec![
            "--data",
            p(&prefs),
            "--model",
            p(&llama),
            "--test-fraction",
            "0.25",
            "--probes",
            "all",
            "--algo",
            "dpo",
            "--steps",
            "1",
            "--transfer-prompts",
            "100",
            "--seed",
            "3",
        ],
    ];
    for (k, flags) in cases.iter().enumerate() {
        let probes = dir.path().join(format!("probes{k}.jsonl"));
        let run = dir.path().join(format!("run{k}.jsonl"));
        // the same flags, some of them only about training (they go into the header's config)
        let same = ["--eval-every", "1000", "--influence-every", "0"];
        let mut args = vec!["probes", "--out", p(&probes)];
        args.extend(flags.iter().chain(&same));
        ok(&args);
        let mut args = vec!["train", "--quiet", "--out", p(&run)];
        args.extend(flags.iter().chain(&same));
        ok(&args);
        let trained = ldviz::run::read_run(&run).unwrap().header;
        let lines = probe_lines(&probes);
        let h = &lines[0];
        let text = std::fs::read_to_string(&probes).unwrap();
        assert!(text.starts_with(r#"{"type":"probes_header","format":"ldviz-probes","#));
        assert_eq!(h["type"], "probes_header");
        assert_eq!(h["format"], "ldviz-probes");
        assert_eq!(h["version"], 1);
        assert_eq!(h["ldviz_version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(
            h["conventions"],
            serde_json::to_value(&trained.conventions).unwrap()
        );
        assert_eq!(
            h["lengths"],
            serde_json::json!({"max_prompt": 256, "max_total": 512})
        );
        assert_eq!(
            h["families"],
            serde_json::to_value(&trained.families).unwrap()
        );
        assert_eq!(h["top_k"], 5);
        let n = trained.probes.len();
        let m = if k == 0 { 8 } else { n };
        assert_eq!(h["transfer_prompts"], m.min(if k == 0 { 16 } else { 100 }));
        // the run header: a valid RunHeader with what ldviz knows without a model
        let rh: ldviz::run::RunHeader = serde_json::from_value(h["run_header"].clone()).unwrap();
        assert_eq!(rh.config, trained.config);
        assert_eq!(rh.data, trained.data);
        assert_eq!(rh.families, trained.families);
        assert_eq!(rh.examples_per_epoch, trained.examples_per_epoch);
        assert_eq!((rh.batch_size, rh.phases.len()), (0, 0));
        assert_eq!((rh.model.n_params, rh.model.path.as_str()), (0, ""));
        assert_eq!(rh.probes.len(), n);
        // one line per probe, header order, every family with a text and nothing else
        assert_eq!(lines.len(), n + 1);
        for ((line, info), want) in lines[1..].iter().zip(&rh.probes).zip(&trained.probes) {
            assert_eq!(line["type"], "probe");
            assert_eq!(line["index"], want.index);
            assert_eq!(line["prompt"], want.prompt.as_str());
            assert_eq!(
                line["responses"],
                serde_json::to_value(&want.responses).unwrap()
            );
            assert_eq!(line.as_object().unwrap().len(), 4);
            assert!(want.responses.len() == trained.families.len() - 1);
            assert!(line["responses"].get("argmax").is_none());
            assert_eq!(
                (info.index, &info.prompt, &info.responses),
                (want.index, &want.prompt, &want.responses)
            );
            assert!(info.tokens.is_empty());
        }
    }
}

/// A run file made from the probe file's run header (model and token ids filled in, evaluation
/// records from elsewhere) reads and inspects like one of ldviz's own.
#[test]
fn a_run_recorded_elsewhere_from_the_probe_file_inspects() {
    let dir = tempfile::tempdir().unwrap();
    let probes = dir.path().join("probes.jsonl");
    ok(&[
        "probes",
        "--probes",
        "4",
        "--algo",
        "dpo",
        "--out",
        p(&probes),
    ]);
    let run = dir.path().join("external.jsonl");
    let lines = common::external_run(&probes, 3, true);
    std::fs::write(&run, lines.join("\n") + "\n").unwrap();
    let s: Value = serde_json::from_str(&ok(&["inspect", p(&run), "--json"])).unwrap();
    assert_eq!(s["evaluations"], 3);
    assert_eq!(s["probes"], 4);
    let chosen = &s["families"]["chosen"];
    assert_eq!(chosen["first"].as_f64().unwrap(), 0.0);
    assert_eq!(chosen["last"].as_f64().unwrap(), -1.0);
    ok(&["inspect", p(&run)]);
    let csv = dir.path().join("external.csv");
    ok(&["export", p(&run), "--csv", p(&csv)]);
    assert!(std::fs::read_to_string(&csv).unwrap().lines().count() > 4);
}

/// Bad flags give one-line errors naming the flag or the file; an existing --out is refused
/// without --force and kept as it was.
#[test]
fn probes_refuses_bad_flags_and_an_existing_out() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("probes.jsonl");
    let o = p(&out);
    let cases: [(&[&str], &str); 6] = [
        (&["--probes", "0"], "--probes"),
        (&["--test-fraction", "1"], "--test-fraction"),
        (&["--data", "/no/such/data.jsonl"], "/no/such/data.jsonl"),
        (&["--model", "/no/such/model"], "--model /no/such/model"),
        (&["--save-model", "m"], "--save-model"),
        (&["--max-len", "10"], "--max-len"),
    ];
    for (flags, want) in cases {
        let mut args = vec!["probes", "--out", o];
        args.extend(flags);
        let err = fails(&args);
        assert!(err.contains(want), "{flags:?}: {err}");
        assert!(!out.exists());
    }
    std::fs::write(&out, "keep me\n").unwrap();
    let err = fails(&["probes", "--probes", "2", "--out", o]);
    assert!(
        err.contains("probes.jsonl") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "keep me\n");
    ok(&["probes", "--probes", "2", "--out", o, "--force"]);
    assert_eq!(probe_lines(&out).len(), 3);
    let err = fails(&["probes", "--out", p(dir.path()), "--force"]);
    assert!(err.contains("is a folder"), "{err}");
}

/// A Hugging Face parquet export (UltraFeedback binarized's schema) trains like JSON Lines: two
/// DPO steps on the llama fixture, its records' texts in the header; a parquet without the
/// preference columns is a one-line error naming the columns it has.
#[test]
fn train_on_an_ultrafeedback_parquet() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("uf.jsonl");
    let model = fixtures().join("llama");
    let data = fixtures().join("ultrafeedback_tiny.parquet");
    ok(&[
        "train",
        "--model",
        p(&model),
        "--data",
        p(&data),
        "--algo",
        "dpo",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--probes",
        "4",
        "--eval-every",
        "2",
        "--quiet",
        "--out",
        p(&run),
    ]);
    let r = ldviz::run::read_run(&run).unwrap();
    assert_eq!(r.steps.len(), 2);
    assert!(r.end.is_some() && r.evals.len() >= 2);
    assert_eq!(
        r.header.data.format,
        ldviz::data::DataFormat::Conversational
    );
    assert_eq!((r.header.data.n_records, r.header.probes.len()), (6, 4));
    assert_eq!(
        r.header.probes[0].prompt,
        "User: What is the capital of France?\n\nAssistant:"
    );
    assert_eq!(
        r.header.probes[0].responses[&ldviz::data::Family::Chosen],
        " The capital of France is Paris."
    );
    let s: Value = serde_json::from_str(&ok(&["inspect", p(&run), "--json"])).unwrap();
    assert_eq!(s["steps"], 2);
    let err = fails(&[
        "train",
        "--model",
        p(&model),
        "--data",
        p(&fixtures().join("not_preferences.parquet")),
        "--out",
        p(&dir.path().join("x.jsonl")),
    ]);
    assert!(
        err.contains("not_preferences.parquet: no \"chosen\" or \"rejected\" columns")
            && err.contains("\"text\" (string)"),
        "{err}"
    );
}

/// A Hugging Face trainer_state.json (TRL's DPOTrainer) inspects and exports as a run of TRL
/// metrics without evaluations.
#[test]
fn inspect_and_export_a_trainer_state() {
    let dir = tempfile::tempdir().unwrap();
    let state = fixtures().join("trainer_state.json");
    let s: Value = serde_json::from_str(&ok(&["inspect", p(&state), "--json"])).unwrap();
    assert_eq!(
        (s["steps"].as_u64(), s["evaluations"].as_u64()),
        (Some(8), Some(0))
    );
    assert!(
        s["end"].as_str().unwrap().contains("train_loss 0.6465"),
        "{s}"
    );
    let text = ok(&["inspect", p(&state)]);
    assert!(text.contains("trainer_state.json"), "{text}");
    let csv = dir.path().join("state.csv");
    ok(&["export", p(&state), "--csv", p(&csv)]);
    let metrics = std::fs::read_to_string(dir.path().join("state.metrics.csv")).unwrap();
    let mut lines = metrics.lines();
    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
    for k in [
        "loss",
        "rewards/chosen",
        "logps/chosen",
        "grad_norm",
        "eval_loss",
    ] {
        assert!(head.contains(&k), "{k}: {head:?}");
    }
    assert_eq!(lines.count(), 4);
    assert!(metrics.contains("nan"), "the NaN grad_norm");
    // a plot needs evaluations: a one-line error
    let err = fails(&["export", p(&state), "--png", p(&dir.path().join("x.png"))]);
    assert!(err.contains("no evaluations"), "{err}");
}
