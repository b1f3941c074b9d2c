//! A short seeded pass of the fuzzer (examples/fuzz.rs) over each target: mutated datasets,
//! run files and model folders must be refused with an error or accepted, never panic, never
//! take over 2 s, never ask for more memory than an input could justify (the capped allocator
//! aborts on a single allocation over 512 MiB).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

mod common;
#[path = "../examples/fuzz/engine.rs"]
mod engine;

#[global_allocator]
static ALLOC: engine::CappedAlloc = engine::CappedAlloc;

fn fuzz(target: engine::Target, iters: u64) {
    let o = engine::Options {
        target,
        iters,
        seed: 20_240_601,
        threads: 2,
        progress: None,
    };
    let r = engine::run(&o).unwrap_or_else(|e| panic!("{e}"));
    let text = r.describe();
    eprint!("{text}");
    assert_eq!(r.iters, iters);
    assert_eq!((r.panics, r.hangs), (0, 0), "{text}");
    assert!(r.unclear_errors.is_empty(), "{text}");
    // The inputs reach past the parsers: some are accepted.
    assert!(r.accepted > iters / 50, "{text}");
    let json: serde_json::Value = serde_json::from_str(&r.json_line()).unwrap();
    assert_eq!(json["target"], target.key());
    assert_eq!(json["panics"], 0);
}

#[test]
fn fuzz_data() {
    fuzz(engine::Target::Data, 300);
}

#[test]
fn fuzz_run() {
    fuzz(engine::Target::Run, 300);
}

#[test]
fn fuzz_model() {
    fuzz(engine::Target::Model, 300);
}

/// Replaying an input regenerates exactly the input of the run, and writes it.
#[test]
fn replay_writes_the_input() {
    let dir = tempfile::tempdir().unwrap();
    let (path, result) = engine::replay(engine::Target::Data, 7, 3, dir.path()).unwrap();
    assert!(path.exists(), "{}", path.display());
    assert!(!result.is_empty());
    let (again, _) = engine::replay(engine::Target::Data, 7, 3, dir.path()).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(&again).unwrap()
    );
}

// ---------------------------------------------------------------------------------------------
// What the fuzzer found, one test per fix (inputs rebuilt small; the fuzz input that first
// showed each is named).

use std::path::Path;

use ldviz::data::{ChatTemplate, Message};

/// A copy of a fixture model folder with `edit` applied to its config.json.
fn model_copy(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::copy_model(&common::fixtures().join(name), dir.path(), &[]);
    let path = dir.path().join("config.json");
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, config.to_string()).unwrap();
    dir
}

fn load_err(dir: &Path) -> String {
    match ldviz::model::Model::load(dir, &candle_core::Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => format!("{e:#}"),
    }
}

/// model input 2262 of seed 1: llama_tied's config.json with `num_hidden_layers` 4294967295
/// listed 4 billion layers' weight names (a 3 GiB allocation, then more) before any weight was
/// read. Sizes are now capped, and the weights they imply must fit in the safetensors files
/// before anything is sized by them.
#[test]
fn a_config_claiming_billions_of_layers_is_refused_before_allocating() {
    let dir = model_copy("llama_tied", |c| {
        c["num_hidden_layers"] = 4294967295u64.into()
    });
    let e = load_err(dir.path());
    assert!(
        e.contains("config.json: field \"num_hidden_layers\": 4294967295 is larger"),
        "{e}"
    );
    let dir = model_copy("llama_tied", |c| {
        c["num_hidden_layers"] = 2147483647u64.into()
    });
    let e = load_err(dir.path());
    assert!(
        e.contains("config.json implies") && e.contains("bytes of safetensors"),
        "{e}"
    );
    for (arch, key) in [
        ("llama", "vocab_size"),
        ("gpt2", "n_embd"),
        ("gpt_neox", "hidden_size"),
    ] {
        let dir = model_copy(arch, |c| c[key] = 0.into());
        let e = load_err(dir.path());
        assert!(e.contains(&format!("\"{key}\": must be at least 1")), "{e}");
    }
    // a dimension blown up within the cap: refused by the size of the weights
    let dir = model_copy("gpt2", |c| c["n_positions"] = 2147483647u64.into());
    let e = load_err(dir.path());
    assert!(e.contains("implies"), "{e}");
}

/// An `eos_token_id` past u32 was cut to its low 32 bits (2^32 read as id 0, a real token).
#[test]
fn an_eos_token_id_beyond_u32_is_an_error() {
    let dir = model_copy("llama", |c| c["eos_token_id"] = 4294967296u64.into());
    let e = load_err(dir.path());
    assert!(
        e.contains("config.json: field \"eos_token_id\": 4294967296 is not a token id"),
        "{e}"
    );
}

/// A shard index may only name files of the folder: "/dev/zero" was read without end, a
/// "../" path read outside the folder; a checkpoint that is not a regular file is refused.
#[test]
fn shards_are_regular_files_of_the_model_folder() {
    for bad in ["/dev/zero", "../model.safetensors", "sub/model.safetensors"] {
        let dir = model_copy("llama_sharded", |_| {});
        let index = dir.path().join("model.safetensors.index.json");
        let mut v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
        let first = v["weight_map"]
            .as_object()
            .unwrap()
            .keys()
            .next()
            .unwrap()
            .clone();
        v["weight_map"][&first] = bad.into();
        std::fs::write(&index, v.to_string()).unwrap();
        let e = load_err(dir.path());
        assert!(
            e.contains(&format!("names \"{bad}\", which is not a file name")),
            "{e}"
        );
    }
    // model input 105515 of seed 9: a missing shard's name with a newline, quoted raw
    let dir = model_copy("llama_sharded", |_| {});
    let index = dir.path().join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).unwrap();
    let cut = text.replacen("model-0000", "mod\\nel-0000", 1);
    std::fs::write(&index, cut).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("shard \"mod\\nel-0000"), "{e}");
    assert!(e.contains("is missing") && !e.contains('\n'), "{e}");
    #[cfg(unix)]
    {
        let dir = model_copy("llama", |_| {});
        let weights = dir.path().join("model.safetensors");
        std::fs::remove_file(&weights).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &weights).unwrap();
        let e = load_err(dir.path());
        assert!(e.contains("not a regular file"), "{e}");
    }
}

/// model input 104 of seed 1: a tokenizer.json with a control character in a string of its
/// "decoder" made the tokenizers library panic (`expect("Helper")`) instead of returning an
/// error; so does a "Precompiled" normalizer whose charsmap is not a string, in valid JSON.
#[test]
fn a_tokenizer_json_the_tokenizers_library_panics_on_is_an_error() {
    let dir = model_copy("llama", |_| {});
    let path = dir.path().join("tokenizer.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let cut = text.replace("\"ByteLevel\"", "\"Byte\u{1}Level\"");
    assert_ne!(cut, text);
    std::fs::write(&path, cut).unwrap();
    let e = load_err(dir.path());
    assert!(
        e.contains("tokenizer.json: not valid JSON: control character"),
        "{e}"
    );
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    v["normalizer"] = serde_json::json!({"type": "Precompiled", "precompiled_charsmap": 5});
    std::fs::write(&path, v.to_string()).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("tokenizer.json: cannot load tokenizer"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}

/// model input 139332 of seed 5: a chat template asking `tojson(indent=2147483648)` allocated
/// 2 GiB of spaces per nesting level.
#[test]
fn a_chat_template_tojson_with_a_huge_indent_is_an_error() {
    let hi = [Message::new("user", "hi")];
    let t = ChatTemplate::new("{{ messages | tojson(indent=2147483648) }}", "", "").unwrap();
    let e = t.render(&hi, true).unwrap_err().to_string();
    assert!(
        e.contains("tojson: indent 2147483648 is larger than 64"),
        "{e}"
    );
    let t = ChatTemplate::new("{{ messages | tojson(indent=4) }}", "", "").unwrap();
    assert!(
        t.render(&hi, true)
            .unwrap()
            .contains("\n    {\n        \"content\"")
    );
}

/// A chat template repeating a long string in a loop rendered gigabytes; renderings are capped.
#[test]
fn a_chat_template_rendering_is_capped() {
    let t = ChatTemplate::new(
        "{% for i in range(1000) %}{{ 'ab' * 9999999 }}{% endfor %}",
        "",
        "",
    )
    .unwrap();
    let e = t.render(&[], false).unwrap_err().to_string();
    assert!(e.contains("longer than 16 MiB"), "{e}");
}

/// data input 58264 of seed 3: a first record whose key holds a newline gave a format-detection
/// error spanning two lines (keys were quoted raw).
#[test]
fn the_format_detection_error_stays_on_one_line() {
    let e = ldviz::data::parse_dataset(
        Path::new("x.jsonl"),
        b"{\"chose? Answer:\\n\": 1, \"rejected\": \"r\"}\n",
        None,
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.starts_with("x.jsonl:1: cannot detect")
            && e.contains(r#"keys "chose? Answer:\n" (number)"#),
        "{e}"
    );
    assert!(!e.contains('\n'), "{e}");
}

/// run input 5365 of seed 6: a run record with a newline inside an unknown family or format
/// name gave a two-line error (serde quotes the value raw).
#[test]
fn run_record_errors_stay_on_one_line() {
    let spec = ldviz::synth::SynthSpec {
        steps: 2,
        eval_every: 1,
        probes: 1,
        tokens: 2,
        top_k: 1,
        vocab: 4,
    };
    let mut text = String::new();
    for ev in ldviz::synth::events(spec, 0).unwrap() {
        text.push_str(&serde_json::to_string(&ev).unwrap());
        text.push('\n');
    }
    let path = Path::new("r.jsonl");
    assert!(ldviz::run::reader::parse_run(path, text.as_bytes()).is_ok());
    let family = text.replacen("\"chosen\"", "\"chosen\\nx\"", 1);
    let e = format!(
        "{:#}",
        ldviz::run::reader::parse_run(path, family.as_bytes()).unwrap_err()
    );
    assert!(
        e.starts_with("r.jsonl:1: not a valid run record: unknown variant `chosen\\nx`"),
        "{e}"
    );
    let format = text.replacen("\"ldviz-run\"", "\"ldviz\\nrun\"", 1);
    let e = format!(
        "{:#}",
        ldviz::run::reader::parse_run(path, format.as_bytes()).unwrap_err()
    );
    assert_eq!(e, "r.jsonl:1: format \"ldviz\\nrun\" is not \"ldviz-run\"");
}
