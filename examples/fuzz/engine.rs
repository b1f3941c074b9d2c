//! The fuzzer behind `examples/fuzz.rs` and `tests/fuzz.rs` (both include this file with
//! `#[path]`): it mutates real inputs and feeds them to the code paths the CLI and the app use.
//!
//! - `data`: small datasets in every supported format (probe, standard, implicit,
//!   conversational, HH; JSON Lines, JSON arrays, gzipped) made from the demo data and the test
//!   fixtures → `data::parse_dataset` (with and without a chat template, format detected or
//!   forced) → `split_test` → `build_probe_set`, as the trainer does before tokenizing.
//! - `run`: shrunk sample runs, a run trained on the fixtures and synthetic runs →
//!   `run::reader::parse_run` (sometimes gzipped through a file and `read_run`) → `summarize`,
//!   the text and JSON of `inspect`, `RunStore` and its family statistics, metrics, transfer
//!   means, phases, the family curves of `export` and its CSVs.
//! - `model`: the fixture model folders (plus tokenizer_config.json files with chat templates)
//!   with one file mutated → `Model::load` (config, tokenizer, safetensors header and data,
//!   shard index), tokenizing a sentence, `ChatTemplate::from_tokenizer_config` and rendering
//!   a conversation through it.
//!
//! Input `i` of a run with seed `S` is generated from the RNG seeded with `S + i` alone, so
//! any input can be regenerated (`--replay i`). Panics are caught per input, inputs over
//! [`HANG_MS`] counted as hangs, and a watchdog aborts the process, naming the input, when one
//! runs over [`WATCHDOG`]. [`CappedAlloc`] refuses (and names the input of) any single
//! allocation over [`ALLOC_LIMIT`]: no input here is larger than a few MB, so a bigger request
//! is a size read from the input and trusted.
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use ldviz::data::{self, ChatTemplate, DataFormat, Family, Message, ProbeCount};
use ldviz::run::{Event, Quantity, RunStore, SeriesKey, XAxis, YMode};

/// An input that runs longer than this counts as a hang.
pub const HANG_MS: f64 = 2000.0;
/// An input that runs longer than this aborts the process (naming the input).
pub const WATCHDOG: Duration = Duration::from_secs(60);
/// The largest single allocation [`CappedAlloc`] grants.
pub const ALLOC_LIMIT: usize = 512 << 20;
/// Mutated inputs are cut to this size.
const MAX_INPUT: usize = 4 << 20;

// ---------------------------------------------------------------------------------------------
// Targets, options, report

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Data,
    Run,
    Model,
}

impl Target {
    pub const ALL: [Target; 3] = [Target::Data, Target::Run, Target::Model];

    pub fn key(self) -> &'static str {
        match self {
            Target::Data => "data",
            Target::Run => "run",
            Target::Model => "model",
        }
    }
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Target, String> {
        Target::ALL
            .into_iter()
            .find(|t| t.key() == s)
            .ok_or_else(|| format!("unknown target \"{s}\" (expected data, run or model)"))
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub target: Target,
    pub iters: u64,
    pub seed: u64,
    pub threads: usize,
    /// Print a progress line on stderr every this often (None: never).
    pub progress: Option<Duration>,
}

/// A panic: the input that first raised it, its message and location, and how many inputs
/// raised the same (by location).
#[derive(Clone, Debug)]
pub struct PanicSeen {
    pub input: u64,
    pub message: String,
    pub count: u64,
}

/// The outcome of a fuzzing run.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub target: String,
    pub iters: u64,
    /// Inputs that panicked.
    pub panics: u64,
    /// Inputs that ran over [`HANG_MS`].
    pub hangs: u64,
    pub slowest_ms: f64,
    pub slowest_input: u64,
    /// Inputs the code under test accepted (the rest were refused with an error).
    pub accepted: u64,
    /// Distinct panics, by location, in order of first appearance.
    pub distinct_panics: Vec<PanicSeen>,
    /// The first hangs: (input, ms).
    pub hang_inputs: Vec<(u64, f64)>,
    /// Errors that do not name the file they are about or span several lines: (input,
    /// message), the first few.
    pub unclear_errors: Vec<(u64, String)>,
    pub unclear_count: u64,
    pub seconds: f64,
}

impl Report {
    /// The one-line JSON summary (`--json` prints it as the last line of stdout).
    pub fn json_line(&self) -> String {
        format!(
            "{{\"target\":{},\"iters\":{},\"panics\":{},\"hangs\":{},\"slowest_ms\":{}}}",
            serde_json::Value::String(self.target.clone()),
            self.iters,
            self.panics,
            self.hangs,
            (self.slowest_ms * 1000.0).round() / 1000.0
        )
    }

    /// A human-readable account: counts, the first distinct panics, hangs and unclear errors.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "{}: {} inputs in {:.1} s ({} accepted), {} panics ({} distinct), {} hangs, slowest {:.1} ms (input {}), {} unclear errors\n",
            self.target,
            self.iters,
            self.seconds,
            self.accepted,
            self.panics,
            self.distinct_panics.len(),
            self.hangs,
            self.slowest_ms,
            self.slowest_input,
            self.unclear_count,
        );
        for p in self.distinct_panics.iter().take(8) {
            s.push_str(&format!(
                "  panic ×{} first at input {}: {}\n",
                p.count, p.input, p.message
            ));
        }
        for (i, ms) in self.hang_inputs.iter().take(8) {
            s.push_str(&format!("  hang: input {i} took {ms:.0} ms\n"));
        }
        for (i, m) in self.unclear_errors.iter().take(8) {
            s.push_str(&format!("  unclear error at input {i}: {m}\n"));
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Allocation cap, panic capture, current input

thread_local! {
    /// The input this thread is running (u64::MAX: none).
    static CURRENT: Cell<u64> = const { Cell::new(u64::MAX) };
    /// Where the last panic on this thread happened (set by the hook).
    static PANIC_AT: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// The system allocator, refusing single allocations over [`ALLOC_LIMIT`] with a message naming
/// the input being run (the process then aborts with Rust's allocation-failure message).
pub struct CappedAlloc;

fn too_big(size: usize) {
    let input = CURRENT.try_with(Cell::get).unwrap_or(u64::MAX);
    let mut buf = [0u8; 160];
    let mut w: &mut [u8] = &mut buf;
    let _ = write!(
        w,
        "\nfuzz: input {} asked for {} bytes at once (limit {}): a size read from the input is trusted\n",
        input as i64, size, ALLOC_LIMIT
    );
    let left = w.len();
    let _ = std::io::stderr().write_all(&buf[..buf.len() - left]);
}

// SAFETY: every method either returns null (an allocation failure, which callers must handle)
// or forwards its arguments unchanged to the system allocator, which upholds the contract.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_LIMIT {
            too_big(layout.size());
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's layout contract is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > ALLOC_LIMIT {
            too_big(layout.size());
            return std::ptr::null_mut();
        }
        // SAFETY: the caller's layout contract is passed on unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from System, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > ALLOC_LIMIT {
            too_big(new_size);
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` came from System with `layout`; the caller's contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// Installs (once per process) a panic hook that, on a thread running a fuzz input, records
/// the location instead of printing; other threads keep the default hook.
fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if CURRENT.try_with(Cell::get).unwrap_or(u64::MAX) != u64::MAX {
                let at = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()))
                    .unwrap_or_else(|| "unknown location".to_string());
                let _ = PANIC_AT.try_with(|p| *p.borrow_mut() = Some(at));
            } else {
                default(info);
            }
        }));
    });
}

fn payload_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".to_string()
    }
}

/// What running one input gave.
enum Outcome {
    Accepted,
    /// Refused with an error; `Some` when the error is unclear (see [`Report`]).
    Refused(Option<String>),
    Panicked {
        at: String,
        message: String,
    },
}

fn run_caught(f: impl FnOnce() -> Result<(), Failure>) -> Outcome {
    let _ = PANIC_AT.try_with(|p| p.borrow_mut().take());
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(())) => Outcome::Accepted,
        Ok(Err(Failure::Refused)) => Outcome::Refused(None),
        Ok(Err(Failure::Unclear(m))) => Outcome::Refused(Some(m)),
        Err(p) => {
            let at = PANIC_AT
                .try_with(|p| p.borrow_mut().take())
                .ok()
                .flatten()
                .unwrap_or_else(|| "unknown location".to_string());
            Outcome::Panicked {
                at,
                message: payload_message(p.as_ref()),
            }
        }
    }
}

/// Why an input was refused: with a clear error (the normal case) or an unclear one.
enum Failure {
    Refused,
    Unclear(String),
}

/// Checks an error message: one line, naming one of `names`.
fn judge(msg: &str, names: &[&str]) -> Failure {
    if msg.contains('\n') || !names.iter().any(|n| msg.contains(n)) {
        Failure::Unclear(msg.to_string())
    } else {
        Failure::Refused
    }
}

// ---------------------------------------------------------------------------------------------
// Corpus

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures() -> PathBuf {
    root().join("tests/fixtures")
}

/// A seed file: name (decides gzip detection for datasets) and bytes.
#[derive(Clone, Debug)]
pub struct Seed {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// A model folder: its files.
#[derive(Clone, Debug)]
pub struct ModelSeed {
    pub name: String,
    pub files: Vec<(String, Vec<u8>)>,
}

/// Everything a target's inputs are made from.
pub struct Corpus {
    pub target: Target,
    pub seeds: Vec<Seed>,
    pub models: Vec<ModelSeed>,
    /// Chat templates the data target renders conversations with.
    pub templates: Vec<ChatTemplate>,
    dict: Vec<String>,
    keys: Vec<String>,
}

impl Corpus {
    pub fn build(target: Target) -> Result<Corpus, String> {
        let mut c = Corpus {
            target,
            seeds: Vec::new(),
            models: Vec::new(),
            templates: Vec::new(),
            dict: Vec::new(),
            keys: Vec::new(),
        };
        match target {
            Target::Data => {
                c.seeds = data_seeds()?;
                c.templates = vec![
                    ChatTemplate::new(CHATML, "", "<|im_end|>").map_err(|e| e.to_string())?,
                    ChatTemplate::new(QWEN, "", "<|im_end|>").map_err(|e| e.to_string())?,
                    ChatTemplate::new(LLAMA3, "<|begin_of_text|>", "<|eot_id|>")
                        .map_err(|e| e.to_string())?,
                ];
                c.keys = DATA_KEYS.iter().map(|s| s.to_string()).collect();
                c.dict = DATA_STRINGS.iter().map(|s| s.to_string()).collect();
            }
            Target::Run => {
                c.seeds = run_seeds()?;
                c.keys = RUN_KEYS.iter().map(|s| s.to_string()).collect();
                c.dict = RUN_STRINGS.iter().map(|s| s.to_string()).collect();
            }
            Target::Model => {
                c.models = model_seeds()?;
                c.keys = MODEL_KEYS.iter().map(|s| s.to_string()).collect();
                c.dict = MODEL_STRINGS.iter().map(|s| s.to_string()).collect();
            }
        }
        for f in Family::ALL {
            c.dict.push(f.key().to_string());
            c.keys.push(f.key().to_string());
        }
        Ok(c)
    }

    /// Checks that the unmutated seeds are accepted (a broken seed would make a run of the
    /// fuzzer test nothing but one error path).
    pub fn check_seeds(&self) -> Result<(), String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mut scratch = Scratch::new(dir.path().to_path_buf());
        let mut bad = Vec::new();
        match self.target {
            Target::Data => {
                for s in &self.seeds {
                    let input = Input::Data {
                        name: s.name.clone(),
                        bytes: s.bytes.clone(),
                        format: None,
                        chat: None,
                        test_fraction: 0.25,
                        count: ProbeCount::All,
                        probe_seed: 0,
                    };
                    if let Err(e) = exec(self, &input, &mut scratch) {
                        bad.push(format!("{}: {e}", s.name));
                    }
                }
            }
            Target::Run => {
                for s in &self.seeds {
                    let input = Input::Run {
                        name: s.name.clone(),
                        bytes: s.bytes.clone(),
                        gzip: None,
                    };
                    if let Err(e) = exec(self, &input, &mut scratch) {
                        bad.push(format!("{}: {e}", s.name));
                    }
                }
            }
            Target::Model => {
                for (k, m) in self.models.iter().enumerate() {
                    let input = Input::Model {
                        seed: k,
                        file: "config.json".to_string(),
                        bytes: Some(m.files[0].1.clone()),
                    };
                    if let Err(e) = exec(self, &input, &mut scratch) {
                        bad.push(format!("{}: {e}", m.name));
                    }
                }
            }
        }
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!("seeds refused: {}", bad.join("; ")))
        }
    }
}

const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
const QWEN: &str = concat!(
    "{%- if tools %}\n    {{- raise_exception('tools') }}\n{%- else %}\n",
    "    {%- if messages[0]['role'] == 'system' %}\n",
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n",
    "    {%- else %}\n",
    "        {{- '<|im_start|>system\\nYou are Qwen.<|im_end|>\\n' }}\n",
    "    {%- endif %}\n{%- endif %}\n",
    "{%- for message in messages %}\n",
    "    {%- if (message.role == \"user\") or (message.role == \"system\" and not loop.first) or (message.role == \"assistant\" and not message.tool_calls) %}\n",
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n",
    "    {%- endif %}\n{%- endfor %}\n",
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n",
);
const LLAMA3: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";

const DATA_KEYS: &[&str] = &[
    "prompt", "chosen", "rejected", "role", "content", "type", "text", "messages", "name",
];
const DATA_STRINGS: &[&str] = &[
    "\n\nHuman:",
    "\n\nAssistant:",
    "Human: hi",
    "\n\nHuman: Hi\n\nAssistant: Hello",
    "user",
    "assistant",
    "system",
    "tool",
    "image",
    "text",
    " ",
    "",
    "\u{feff}",
    "\r\n",
    "é",
    "🦀",
    "\u{0}",
    "a\nb",
];
const RUN_KEYS: &[&str] = &[
    "type",
    "format",
    "version",
    "step",
    "examples",
    "epoch",
    "phase",
    "logps",
    "tokens",
    "diag",
    "transfer",
    "batch",
    "metrics",
    "loss",
    "probes",
    "families",
    "phases",
    "name",
    "algo",
    "steps",
    "observed",
    "actual",
    "predicted",
    "contributions",
    "cosine",
    "target",
    "probe",
    "family",
    "lr",
    "optimizer",
    "wall_ms",
    "reason",
    "message",
    "paused",
    "argmax",
    "ids",
    "logp",
    "entropy",
    "top",
    "index",
    "responses",
    "batch_size",
    "examples_per_epoch",
    "config",
    "model",
    "data",
];
const RUN_STRINGS: &[&str] = &[
    "header",
    "vocab",
    "phase",
    "step",
    "eval",
    "influence",
    "samples",
    "state",
    "end",
    "ldviz-run",
    "sft",
    "dpo",
    "ipo",
    "sft_both",
    "sft_then_dpo",
    "extended",
    "completed",
    "stopped",
    "error",
    "adamw",
    "sgd",
    "Infinity",
    "-Infinity",
    "NaN",
    "inf",
    "loss",
    "grad_norm",
    "rewards/margins",
    "",
    "a\nb",
];
const MODEL_KEYS: &[&str] = &[
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "rope_type",
    "factor",
    "low_freq_factor",
    "high_freq_factor",
    "original_max_position_embeddings",
    "tie_word_embeddings",
    "attention_bias",
    "mlp_bias",
    "hidden_act",
    "eos_token_id",
    "bos_token",
    "eos_token",
    "chat_template",
    "template",
    "name",
    "content",
    "n_embd",
    "n_layer",
    "n_head",
    "n_inner",
    "n_positions",
    "rotary_pct",
    "rotary_emb_base",
    "max_position_embeddings",
    "weight_map",
    "dtype",
    "shape",
    "data_offsets",
    "__metadata__",
    "vocab",
    "merges",
    "added_tokens",
    "id",
    "special",
    "pre_tokenizer",
    "normalizer",
    "decoder",
    "post_processor",
    "unk_token",
];
const MODEL_STRINGS: &[&str] = &[
    "llama",
    "qwen2",
    "gpt2",
    "gpt_neox",
    "mistral",
    "llama3",
    "default",
    "linear",
    "silu",
    "gelu",
    "F32",
    "F16",
    "BF16",
    "F64",
    "I64",
    "I32",
    "U8",
    "BOOL",
    "F8_E4M3",
    "F4",
    "<|endoftext|>",
    "</s>",
    "<eos>",
    "<|im_end|>",
    "BPE",
    "WordPiece",
    "WordLevel",
    "Unigram",
    "ByteLevel",
    "model.safetensors",
    "model-00001-of-00003.safetensors",
    "config.json",
    "../config.json",
    "/dev/zero",
    "/dev/null",
    ".",
    "",
    "{{ messages[0]['content'] }}",
    "{{ messages[5].content }}",
    "{% for m in messages %}{{ m.role }}{% endfor %}",
    "{{ raise_exception('no') }}",
    "{% for i in range(1000) %}x{% endfor %}",
    "{{ 'ab' * 1000 }}",
    "{{ messages | tojson(indent=2) }}",
    "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
    "{{ bos_token ~ eos_token }}",
    "{% if add_generation_prompt %}",
    "{% endif %}",
    "{{ 1 / 0 }}",
    "{{ messages[0].content.split(' ')[99] }}",
    "{{ x.y.z }}",
    "{% for i in range(1000) %}{{ 'ab' * 1000 }}{% endfor %}",
    "a\nb",
];

/// A field of a JSON object as a string, if it is one.
fn str_field<'a>(v: &'a serde_json::Value, k: &str) -> &'a str {
    v.get(k).and_then(serde_json::Value::as_str).unwrap_or("")
}

fn jsonl(values: &[serde_json::Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for v in values {
        out.extend_from_slice(v.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = e.write_all(bytes);
    e.finish().unwrap_or_default()
}

fn read_lines(path: &Path, n: usize) -> Result<Vec<serde_json::Value>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .take(n)
        .map(|l| serde_json::from_str(l).map_err(|e| format!("{}: {e}", path.display())))
        .collect()
}

/// One small dataset per format and source (demo data, the two fixtures), plain, gzipped and
/// as JSON arrays.
fn data_seeds() -> Result<Vec<Seed>, String> {
    use serde_json::json;
    let sources = [
        ("demo", read_lines(&root().join("assets/demo.jsonl"), 3)?),
        ("prefs", read_lines(&fixtures().join("prefs.jsonl"), 4)?),
        (
            "probes",
            read_lines(&fixtures().join("probes_all.jsonl"), 3)?,
        ),
    ];
    let mut seeds = Vec::new();
    for (k, (src, recs)) in sources.iter().enumerate() {
        let triple = |r: &serde_json::Value| {
            (
                str_field(r, "prompt").to_string(),
                str_field(r, "chosen").to_string(),
                str_field(r, "rejected").to_string(),
            )
        };
        // probe schema: the records as they are (prefs gains two family keys, one a list)
        let probe: Vec<serde_json::Value> = recs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let mut r = r.clone();
                if r.get("irr_hum").is_none() {
                    r["irr_hum"] = json!(" The cat sat on the mat.");
                    r["chosen_gptsemantic"] = json!([str_field(&r, "chosen"), " paraphrase"]);
                }
                if i == 1 {
                    r["irr_test"] = serde_json::Value::Null;
                }
                r
            })
            .collect();
        let standard: Vec<serde_json::Value> = recs
            .iter()
            .map(|r| {
                let (p, c, j) = triple(r);
                json!({"prompt": p, "chosen": c, "rejected": j})
            })
            .collect();
        let implicit: Vec<serde_json::Value> = recs
            .iter()
            .map(|r| {
                let (p, c, j) = triple(r);
                json!({"chosen": format!("{p}{c}"), "rejected": format!("{p}{j}")})
            })
            .collect();
        let conversational: Vec<serde_json::Value> = recs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let (p, c, j) = triple(r);
                let user = json!({"role": "user", "content": p});
                match (i + k) % 4 {
                    0 => json!({
                        "prompt": [user],
                        "chosen": [{"role": "assistant", "content": c}],
                        "rejected": [{"role": "assistant", "content": j}],
                    }),
                    // no prompt: the shared first message is the prompt
                    1 => json!({
                        "chosen": [user, {"role": "assistant", "content": c}],
                        "rejected": [user, {"role": "assistant", "content": [{"type": "text", "text": j}]}],
                    }),
                    // a system message, a prompt repeated in the responses (UltraFeedback)
                    2 => json!({
                        "prompt": [{"role": "system", "content": "Be brief."}, user],
                        "chosen": [{"role": "system", "content": "Be brief."}, user, {"role": "assistant", "content": c}],
                        "rejected": [{"role": "system", "content": "Be brief."}, user, {"role": "assistant", "content": j}],
                    }),
                    // prompt as a string, responses as strings
                    _ => json!({"prompt": p, "chosen": [{"role": "assistant", "content": c}], "rejected": j}),
                }
            })
            .collect();
        let hh: Vec<serde_json::Value> = recs
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let (p, c, j) = triple(r);
                let earlier = if i % 2 == 1 {
                    "\n\nHuman: Hi\n\nAssistant: Hello."
                } else {
                    ""
                };
                json!({
                    "chosen": format!("{earlier}\n\nHuman: {p}\n\nAssistant:{c}"),
                    "rejected": format!("{earlier}\n\nHuman: {p}\n\nAssistant:{j}"),
                })
            })
            .collect();
        for (format, values) in [
            ("probe", &probe),
            ("standard", &standard),
            ("implicit", &implicit),
            ("conversational", &conversational),
            ("hh", &hh),
        ] {
            let plain = jsonl(values);
            seeds.push(Seed {
                name: format!("{src}-{format}.jsonl.gz"),
                bytes: gzip(&plain),
            });
            seeds.push(Seed {
                name: format!("{src}-{format}.jsonl"),
                bytes: plain,
            });
        }
        for (format, values) in [("standard", &standard), ("conversational", &conversational)] {
            let array = serde_json::to_vec_pretty(&serde_json::Value::Array(values.clone()))
                .map_err(|e| e.to_string())?;
            seeds.push(Seed {
                name: format!("{src}-{format}.json"),
                bytes: array,
            });
        }
    }
    // a byte-order mark, CRLF line ends and blank lines
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(
        b"{\"prompt\":\"Q: 2+2?\",\"chosen\":\" 4\",\"rejected\":\" 5\"}\r\n\r\n{\"prompt\":\"Q: 3+3?\",\"chosen\":\" 6\",\"rejected\":\" 7\"}\r\n",
    );
    seeds.push(Seed {
        name: "bom.jsonl".to_string(),
        bytes: bom,
    });
    Ok(seeds)
}

/// Cuts a run's events down to `probes` probes, `positions` token positions and top-2, so a
/// sample run's records stay small while keeping their shape.
fn shrink_event(ev: Event, probes: usize, positions: usize) -> Event {
    match ev {
        Event::Header(mut h) => {
            h.probes.truncate(probes);
            for p in &mut h.probes {
                for ids in p.tokens.values_mut() {
                    ids.truncate(positions);
                }
            }
            Event::Header(h)
        }
        Event::Vocab { mut tokens } => {
            tokens.truncate(40);
            Event::Vocab { tokens }
        }
        Event::Eval(mut e) => {
            for v in e.logps.values_mut() {
                v.truncate(probes);
            }
            for v in e.diag.values_mut() {
                v.truncate(probes);
            }
            e.transfer.truncate(probes);
            for row in &mut e.transfer {
                row.truncate(probes);
            }
            let mut traces = e.tokens.get_all().to_vec();
            traces.truncate(probes);
            for t in &mut traces {
                for tt in [&mut t.chosen, &mut t.rejected] {
                    tt.logp.truncate(positions);
                    tt.entropy.truncate(positions);
                    tt.top.truncate(positions);
                    for top in &mut tt.top {
                        top.truncate(2);
                    }
                }
                t.argmax.ids.truncate(positions);
                t.argmax.logp.truncate(positions);
            }
            e.tokens = traces.into();
            Event::Eval(e)
        }
        Event::Influence(mut r) => {
            let keep: Vec<bool> = r.observed.iter().map(|o| o.probe < probes).collect();
            let filter = |v: &mut Vec<f64>| {
                let mut k = keep.iter();
                v.retain(|_| *k.next().unwrap_or(&false));
            };
            filter(&mut r.actual);
            filter(&mut r.predicted);
            let mut k = keep.iter();
            r.contributions.retain(|_| *k.next().unwrap_or(&false));
            let mut k = keep.iter();
            r.cosine.retain(|_| *k.next().unwrap_or(&false));
            r.observed.retain(|o| o.probe < probes);
            Event::Influence(r)
        }
        Event::Samples {
            step,
            phase,
            mut rejected,
        } => {
            rejected.truncate(probes);
            Event::Samples {
                step,
                phase,
                rejected,
            }
        }
        other => other,
    }
}

/// The type of a run-file line (`{"type":"X",…`).
fn record_type(line: &[u8]) -> &str {
    let Some(rest) = line.strip_prefix(b"{\"type\":\"") else {
        return "";
    };
    let end = rest.iter().position(|&b| b == b'"').unwrap_or(0);
    std::str::from_utf8(&rest[..end]).unwrap_or("")
}

/// A sample run cut down to its header, the first records of each type, the records around
/// every phase start and its end, each shrunk by [`shrink_event`].
fn sample_run_seed(path: &Path) -> Result<Vec<u8>, String> {
    let (bytes, _) = ldviz::run::reader::read_run_bytes(path).map_err(|e| format!("{e:#}"))?;
    let mut out = Vec::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut after_phase: BTreeMap<String, usize> = BTreeMap::new();
    for line in bytes.split(|&b| b == b'\n') {
        let ty = record_type(line).to_string();
        let seen = counts.get(&ty).copied().unwrap_or(0);
        let since = after_phase.get(&ty).copied().unwrap_or(0);
        let keep = match ty.as_str() {
            "header" | "phase" | "end" | "state" => true,
            "vocab" => seen < 2,
            "step" => since < 3,
            "eval" => seen < 2 || since < 1,
            "influence" => seen < 1,
            "samples" => seen < 2,
            _ => false,
        };
        if ty == "phase" {
            after_phase.clear();
        }
        *counts.entry(ty.clone()).or_default() += 1;
        *after_phase.entry(ty).or_default() += 1;
        if !keep {
            continue;
        }
        let ev: Event =
            serde_json::from_slice(line).map_err(|e| format!("{}: {e}", path.display()))?;
        let ev = shrink_event(ev, 3, 6);
        out.extend_from_slice(&serde_json::to_vec(&ev).map_err(|e| e.to_string())?);
        out.push(b'\n');
    }
    Ok(out)
}

/// A short run of the llama fixture on the probe fixture, sft then dpo, with transfer matrices
/// and influence records, written by the trainer itself.
fn fixture_run_seed() -> Result<Vec<u8>, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out = dir.path().join("fixture.jsonl");
    let fx = fixtures();
    let opts = ldviz::train::TrainOptions {
        model: fx.join("llama").display().to_string(),
        data: fx.join("probes_all.jsonl").display().to_string(),
        algo: ldviz::train::Algo::SftThenDpo,
        optimizer: ldviz::train::OptimKind::Sgd,
        lr: Some(0.05),
        batch_size: 2,
        sft_steps: Some(2),
        steps: Some(2),
        eval_every: 2,
        probes: "3".to_string(),
        shuffle: false,
        top_k: 2,
        transfer_prompts: 3,
        transfer_every: 2,
        influence_every: Some(1),
        influence_probes: 2,
        ..ldviz::train::TrainOptions::default()
    };
    let cfg = opts.to_config().map_err(|e| format!("{e:#}"))?;
    let handle = ldviz::train::spawn(cfg, Some(out.clone()));
    while handle.events.recv().is_ok() {}
    handle.join().map_err(|e| format!("fixture run: {e:#}"))?;
    std::fs::read(&out).map_err(|e| e.to_string())
}

fn run_seeds() -> Result<Vec<Seed>, String> {
    let mut seeds = Vec::new();
    for name in ["sft", "dpo_offpolicy", "dpo_onpolicy", "extended_then_dpo"] {
        let path = root().join(format!("sample_runs/{name}.jsonl.gz"));
        seeds.push(Seed {
            name: format!("{name}.jsonl"),
            bytes: sample_run_seed(&path)?,
        });
    }
    seeds.push(Seed {
        name: "fixture.jsonl".to_string(),
        bytes: fixture_run_seed()?,
    });
    for (k, spec) in [
        ldviz::synth::SynthSpec {
            steps: 6,
            eval_every: 2,
            probes: 3,
            tokens: 4,
            top_k: 2,
            vocab: 16,
        },
        ldviz::synth::SynthSpec {
            steps: 3,
            eval_every: 1,
            probes: 1,
            tokens: 2,
            top_k: 1,
            vocab: 4,
        },
    ]
    .into_iter()
    .enumerate()
    {
        let mut bytes = Vec::new();
        for ev in ldviz::synth::events(spec, k as u64).map_err(|e| format!("{e:#}"))? {
            bytes.extend_from_slice(&serde_json::to_vec(&ev).map_err(|e| e.to_string())?);
            bytes.push(b'\n');
        }
        seeds.push(Seed {
            name: format!("synth{k}.jsonl"),
            bytes,
        });
    }
    Ok(seeds)
}

/// The fixture model folders, with tokenizer_config.json files (and a chat_template.jinja)
/// added so chat templates are read too.
fn model_seeds() -> Result<Vec<ModelSeed>, String> {
    use serde_json::json;
    let mut out = Vec::new();
    for name in [
        "llama",
        "qwen2",
        "gpt2",
        "gpt_neox",
        "llama_tied",
        "llama_sharded",
    ] {
        let dir = fixtures().join(name);
        let mut files = Vec::new();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| {
                n == "config.json"
                    || n == "tokenizer.json"
                    || n.ends_with(".safetensors")
                    || n == "model.safetensors.index.json"
            })
            .collect();
        names.sort();
        // config.json first (the seed check mutates nothing but rewrites it)
        names.sort_by_key(|n| n != "config.json");
        for n in names {
            let bytes = std::fs::read(dir.join(&n)).map_err(|e| format!("{n}: {e}"))?;
            files.push((n, bytes));
        }
        let extra = match name {
            "llama" => Some(json!({
                "bos_token": {"content": "<s>", "lstrip": false},
                "eos_token": "</s>",
                "chat_template": [
                    {"name": "tool_use", "template": "{{ raise_exception('tools') }}"},
                    {"name": "default", "template": CHATML},
                ],
            })),
            "qwen2" => Some(json!({"eos_token": "<|im_end|>", "chat_template": QWEN})),
            "gpt2" => Some(json!({
                "bos_token": "<|begin_of_text|>",
                "eos_token": "<|endoftext|>",
                "chat_template": LLAMA3,
            })),
            "gpt_neox" => {
                files.push((
                    "chat_template.jinja".to_string(),
                    CHATML.as_bytes().to_vec(),
                ));
                Some(json!({"eos_token": {"content": "<|endoftext|>"}}))
            }
            _ => None,
        };
        if let Some(v) = extra {
            files.push((
                "tokenizer_config.json".to_string(),
                serde_json::to_vec_pretty(&v).map_err(|e| e.to_string())?,
            ));
        }
        out.push(ModelSeed {
            name: name.to_string(),
            files,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Mutations

/// Numbers that break assumptions: zero, negatives, powers of two at type limits, overflowing
/// and non-finite values, digit strings no integer type holds.
const BLOWUPS: &[&str] = &[
    "0",
    "-0",
    "-1",
    "1",
    "2",
    "3",
    "7",
    "255",
    "256",
    "65536",
    "2147483647",
    "2147483648",
    "-2147483649",
    "4294967295",
    "4294967296",
    "9007199254740993",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    "-1e308",
    "1e309",
    "1e-400",
    "5e-324",
    "0.5",
    "-0.5",
    "1.5",
    "1e3",
    "NaN",
    "Infinity",
    "-Infinity",
];

fn blowup(rng: &mut StdRng) -> String {
    match rng.random_range(0..12) {
        0 => "9".repeat(rng.random_range(20..400)),
        1 => format!("1{}", "0".repeat(rng.random_range(19..330))),
        2 => format!("-{}", "9".repeat(rng.random_range(19..100))),
        _ => BLOWUPS[rng.random_range(0..BLOWUPS.len())].to_string(),
    }
}

fn quoted(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// A JSON value (as text) to put in place of another.
fn gen_value(rng: &mut StdRng, dict: &[String], keys: &[String]) -> String {
    match rng.random_range(0..16) {
        0..=3 => blowup(rng),
        4 | 5 => quoted(&dict[rng.random_range(0..dict.len())]),
        6 => quoted(&keys[rng.random_range(0..keys.len())]),
        7 => quoted(&"x".repeat(rng.random_range(0..3000))),
        8 => format!("[{}]", blowup(rng)),
        9 => format!("[{}, {}, {}]", blowup(rng), blowup(rng), blowup(rng)),
        10 => {
            let d = rng.random_range(1..300);
            format!("{}{}", "[".repeat(d), "]".repeat(d))
        }
        11 => format!(
            "{{{}: {}}}",
            quoted(&keys[rng.random_range(0..keys.len())]),
            blowup(rng)
        ),
        12 => "[{\"role\":\"user\",\"content\":\"hi\"}]".to_string(),
        13 => "[[0, 1.5], [1, -2.5]]".to_string(),
        _ => [
            "null",
            "true",
            "false",
            "\"\"",
            "[]",
            "{}",
            "[[]]",
            "[{}]",
            "[null]",
            "\"\\ud800\"",
            "\"\\u0000\"",
            "[\"a\"]",
        ][rng.random_range(0..12)]
        .to_string(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Str,
    Num,
    Lit,
    Arr,
    Obj,
}

/// A JSON value found in a text: its byte range, its kind, the range of its key when it is an
/// object member, and whether it is an array element.
#[derive(Clone, Copy, Debug)]
struct Span {
    start: usize,
    end: usize,
    kind: Kind,
    key: Option<(usize, usize)>,
    in_array: bool,
}

/// Finds the JSON values of a text (several top-level values, e.g. JSON Lines; a line that
/// does not parse is skipped up to the next newline; its values before the error count).
struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
    spans: Vec<Span>,
}

impl Scanner<'_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b'\n' | b'\r') {
            self.i += 1;
        }
    }

    fn string(&mut self) -> Option<()> {
        if self.b.get(self.i) != Some(&b'"') {
            return None;
        }
        self.i += 1;
        loop {
            match self.b.get(self.i)? {
                b'\\' => self.i += 2,
                b'"' => {
                    self.i += 1;
                    return Some(());
                }
                _ => self.i += 1,
            }
        }
    }

    fn value(&mut self, depth: usize, key: Option<(usize, usize)>, in_array: bool) -> Option<()> {
        if depth > 64 || self.spans.len() > 50_000 {
            return None;
        }
        self.ws();
        let start = self.i;
        let kind = match *self.b.get(self.i)? {
            b'"' => {
                self.string()?;
                Kind::Str
            }
            b'-' | b'0'..=b'9' => {
                while self.i < self.b.len()
                    && matches!(
                        self.b[self.i],
                        b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'
                    )
                {
                    self.i += 1;
                }
                Kind::Num
            }
            b't' | b'f' | b'n' | b'N' | b'I' => {
                while self.i < self.b.len() && self.b[self.i].is_ascii_alphabetic() {
                    self.i += 1;
                }
                Kind::Lit
            }
            b'[' => {
                self.i += 1;
                self.ws();
                if self.b.get(self.i) == Some(&b']') {
                    self.i += 1;
                } else {
                    loop {
                        self.value(depth + 1, None, true)?;
                        self.ws();
                        match *self.b.get(self.i)? {
                            b',' => self.i += 1,
                            b']' => {
                                self.i += 1;
                                break;
                            }
                            _ => return None,
                        }
                    }
                }
                Kind::Arr
            }
            b'{' => {
                self.i += 1;
                self.ws();
                if self.b.get(self.i) == Some(&b'}') {
                    self.i += 1;
                } else {
                    loop {
                        self.ws();
                        let ks = self.i;
                        self.string()?;
                        let key = (ks, self.i);
                        self.ws();
                        if self.b.get(self.i) != Some(&b':') {
                            return None;
                        }
                        self.i += 1;
                        self.value(depth + 1, Some(key), false)?;
                        self.ws();
                        match *self.b.get(self.i)? {
                            b',' => self.i += 1,
                            b'}' => {
                                self.i += 1;
                                break;
                            }
                            _ => return None,
                        }
                    }
                }
                Kind::Obj
            }
            _ => return None,
        };
        self.spans.push(Span {
            start,
            end: self.i,
            kind,
            key,
            in_array,
        });
        Some(())
    }
}

fn scan(b: &[u8]) -> Vec<Span> {
    let mut s = Scanner {
        b,
        i: 0,
        spans: Vec::new(),
    };
    loop {
        s.ws();
        if s.i >= b.len() || s.spans.len() > 50_000 {
            break;
        }
        let before = s.i;
        if s.value(0, None, false).is_none() {
            match memchr_nl(&b[before.min(b.len())..]) {
                Some(k) => s.i = before + k + 1,
                None => break,
            }
        }
    }
    s.spans
}

fn memchr_nl(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

fn replace(b: &mut Vec<u8>, start: usize, end: usize, with: &[u8]) {
    b.splice(start..end, with.iter().copied());
}

/// One structure-aware mutation: replace, copy, blow up, delete, duplicate, rename or insert
/// into a JSON value of the text. False when the text has no JSON values.
fn json_mutation(b: &mut Vec<u8>, rng: &mut StdRng, dict: &[String], keys: &[String]) -> bool {
    let spans = scan(b);
    if spans.is_empty() {
        return false;
    }
    let pick = |rng: &mut StdRng, kind: Option<Kind>| -> Option<Span> {
        let pool: Vec<&Span> = match kind {
            Some(k) => spans.iter().filter(|s| s.kind == k).collect(),
            None => spans.iter().collect(),
        };
        if pool.is_empty() {
            None
        } else {
            Some(*pool[rng.random_range(0..pool.len())])
        }
    };
    // half the time an object member (a field), not an array element: most of a run file's
    // values are numbers in arrays, most of its logic is in its fields
    let keyed: Vec<&Span> = spans.iter().filter(|s| s.key.is_some()).collect();
    let s = if !keyed.is_empty() && rng.random_bool(0.5) {
        *keyed[rng.random_range(0..keyed.len())]
    } else {
        match pick(rng, None) {
            Some(s) => s,
            None => return false,
        }
    };
    match rng.random_range(0..12) {
        0..=2 => {
            let v = gen_value(rng, dict, keys);
            replace(b, s.start, s.end, v.as_bytes());
        }
        3 => {
            let Some(o) = pick(rng, None) else {
                return false;
            };
            let text = b[o.start..o.end].to_vec();
            replace(b, s.start, s.end, &text);
        }
        4 | 5 => {
            let s = pick(rng, Some(Kind::Num)).unwrap_or(s);
            let v = blowup(rng);
            replace(b, s.start, s.end, v.as_bytes());
        }
        6 => {
            // delete the member or element with one adjacent comma
            let from = s.key.map_or(s.start, |k| k.0);
            let mut to = s.end;
            let mut j = to;
            while j < b.len() && b[j].is_ascii_whitespace() {
                j += 1;
            }
            let mut from = from;
            if b.get(j) == Some(&b',') {
                to = j + 1;
            } else {
                let mut k = from;
                while k > 0 && b[k - 1].is_ascii_whitespace() {
                    k -= 1;
                }
                if k > 0 && b[k - 1] == b',' {
                    from = k - 1;
                }
            }
            replace(b, from, to, b"");
        }
        7 => {
            if s.key.is_some() || s.in_array {
                let from = s.key.map_or(s.start, |k| k.0);
                let mut text = vec![b','];
                text.extend_from_slice(&b[from..s.end]);
                let times = if rng.random_bool(0.2) {
                    rng.random_range(2..50)
                } else {
                    1
                };
                let all: Vec<u8> = text.repeat(times);
                b.splice(s.end..s.end, all);
            } else {
                let v = gen_value(rng, dict, keys);
                replace(b, s.start, s.end, v.as_bytes());
            }
        }
        8 => {
            let Some(k) = s.key else {
                return false;
            };
            let name = quoted(&keys[rng.random_range(0..keys.len())]);
            replace(b, k.0, k.1, name.as_bytes());
        }
        9 => {
            // insert a dictionary string (escaped) inside a string
            let Some(s) = pick(rng, Some(Kind::Str)) else {
                return false;
            };
            let word = quoted(&dict[rng.random_range(0..dict.len())]);
            let inner = &word.as_bytes()[1..word.len() - 1];
            let mut p = rng.random_range(s.start + 1..s.end);
            while p > s.start + 1 && (b[p - 1] == b'\\' || (b[p] & 0xC0) == 0x80) {
                p -= 1;
            }
            b.splice(p..p, inner.iter().copied());
        }
        10 => {
            let v: &[u8] = match s.kind {
                Kind::Arr => b"[]",
                Kind::Obj => b"{}",
                Kind::Str => b"\"\"",
                _ => b"null",
            };
            replace(b, s.start, s.end, v);
        }
        _ => {
            let mut text = b"[".to_vec();
            text.extend_from_slice(&b[s.start..s.end]);
            text.push(b']');
            replace(b, s.start, s.end, &text);
        }
    }
    true
}

/// Replaces a number of the text (found from a random position on) by a blow-up.
fn number_blowup(b: &mut Vec<u8>, rng: &mut StdRng) -> bool {
    if b.is_empty() {
        return false;
    }
    let from = rng.random_range(0..b.len());
    let found = b[from..]
        .iter()
        .position(u8::is_ascii_digit)
        .map(|k| from + k)
        .or_else(|| b.iter().position(u8::is_ascii_digit));
    let Some(mut start) = found else {
        return false;
    };
    while start > 0 && matches!(b[start - 1], b'-' | b'0'..=b'9') {
        start -= 1;
    }
    let mut end = start;
    while end < b.len() && matches!(b[end], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
        end += 1;
    }
    let v = blowup(rng);
    replace(b, start, end, v.as_bytes());
    true
}

const INTERESTING_BYTES: &[u8] = &[
    0, 0xff, 0x7f, 0x80, b'"', b'\\', b'{', b'}', b'[', b']', b',', b':', b'\n', b'0', b'9', b'-',
    b'e', 0xc3, 0xe2, b' ',
];

fn range_in(rng: &mut StdRng, n: usize, max: usize) -> (usize, usize) {
    let a = rng.random_range(0..n);
    let len = if rng.random_bool(0.7) {
        rng.random_range(1..=16.min(n - a))
    } else {
        rng.random_range(1..=max.min(n - a))
    };
    (a, a + len)
}

/// One byte-level mutation: bit flips, random bytes, truncation, splicing with `other`,
/// duplicating, deleting, or a line-level edit.
fn byte_mutation(b: &mut Vec<u8>, rng: &mut StdRng, other: &[u8]) {
    let n = b.len();
    if n == 0 {
        b.extend_from_slice(&other[..other.len().min(64)]);
        return;
    }
    match rng.random_range(0..8) {
        0 => {
            for _ in 0..rng.random_range(1..=8) {
                let p = rng.random_range(0..n);
                b[p] ^= 1 << rng.random_range(0..8);
            }
        }
        1 => {
            for _ in 0..rng.random_range(1..=8) {
                let p = rng.random_range(0..n);
                b[p] = if rng.random_bool(0.5) {
                    INTERESTING_BYTES[rng.random_range(0..INTERESTING_BYTES.len())]
                } else {
                    rng.random()
                };
            }
        }
        2 => {
            let at = if rng.random_bool(0.5) {
                n.saturating_sub(rng.random_range(1..=64.min(n)))
            } else {
                rng.random_range(0..n)
            };
            b.truncate(at);
        }
        3 => {
            if other.is_empty() {
                return;
            }
            let p = rng.random_range(0..=n);
            let q = rng.random_range(0..other.len());
            b.truncate(p);
            b.extend_from_slice(&other[q..]);
        }
        4 => {
            let (a, e) = range_in(rng, n, 64 << 10);
            let chunk = b[a..e].to_vec();
            let at = rng.random_range(0..=n);
            b.splice(at..at, chunk);
        }
        5 => {
            let (a, e) = range_in(rng, n, n);
            b.drain(a..e);
        }
        _ => line_mutation(b, rng, other),
    }
}

/// Deletes, duplicates, swaps or moves lines, or inserts one of `other`'s.
fn line_mutation(b: &mut Vec<u8>, rng: &mut StdRng, other: &[u8]) {
    let mut lines: Vec<Vec<u8>> = b.split(|&c| c == b'\n').map(<[u8]>::to_vec).collect();
    let n = lines.len();
    match rng.random_range(0..5) {
        0 if n > 1 => {
            lines.remove(rng.random_range(0..n));
        }
        1 => {
            let l = lines[rng.random_range(0..n)].clone();
            lines.insert(rng.random_range(0..=n), l);
        }
        2 if n > 1 => {
            let (i, j) = (rng.random_range(0..n), rng.random_range(0..n));
            lines.swap(i, j);
        }
        3 if n > 1 => {
            let l = lines.remove(rng.random_range(0..n));
            lines.insert(rng.random_range(0..n), l);
        }
        _ => {
            let others: Vec<&[u8]> = other.split(|&c| c == b'\n').collect();
            let l = others[rng.random_range(0..others.len())].to_vec();
            lines.insert(rng.random_range(0..=n), l);
        }
    }
    *b = lines.join(&b'\n');
}

/// 1 to 4 mutations of a text input (two thirds structure-aware, the rest byte-level).
fn mutate_text(b: &mut Vec<u8>, rng: &mut StdRng, c: &Corpus, other: &[u8]) {
    let rounds = match rng.random_range(0..10) {
        0..=4 => 1,
        5..=7 => 2,
        8 => 3,
        _ => 4,
    };
    for _ in 0..rounds {
        let done = match rng.random_range(0..100) {
            0..=54 => json_mutation(b, rng, &c.dict, &c.keys),
            55..=64 => number_blowup(b, rng),
            _ => false,
        };
        if !done {
            byte_mutation(b, rng, other);
        }
        b.truncate(MAX_INPUT);
    }
}

/// A mutation of a safetensors file: its header length, its JSON header (shapes, offsets,
/// dtypes, names; structured or as text) or its data.
fn mutate_safetensors(b: &mut Vec<u8>, rng: &mut StdRng, c: &Corpus, other: &[u8]) {
    if b.len() < 8 {
        byte_mutation(b, rng, other);
        return;
    }
    let mut len8 = [0u8; 8];
    len8.copy_from_slice(&b[..8]);
    let n = u64::from_le_bytes(len8);
    let header_end = 8usize.saturating_add(usize::try_from(n).unwrap_or(usize::MAX));
    let header: Option<serde_json::Value> = b
        .get(8..header_end)
        .and_then(|h| serde_json::from_slice(h).ok());
    let choice = rng.random_range(0..10);
    match (choice, header) {
        (0, _) => {
            let v: u64 = match rng.random_range(0..10) {
                0 => 0,
                1 => n.wrapping_sub(1),
                2 => n + 1,
                3 => n + 8,
                4 => b.len() as u64,
                5 => b.len() as u64 - 8,
                6 => u64::MAX,
                7 => 1 << 32,
                8 => 100_000_001,
                _ => 1 << 63,
            };
            b[..8].copy_from_slice(&v.to_le_bytes());
        }
        (1, _) => {
            // the data: flips (NaN and infinite weights)
            if header_end < b.len() {
                for _ in 0..rng.random_range(1..=16) {
                    let p = rng.random_range(header_end..b.len());
                    b[p] = if rng.random_bool(0.5) {
                        0xff
                    } else {
                        rng.random()
                    };
                }
            }
        }
        (2 | 3, Some(_)) => {
            // the header as text, its length kept right (or not)
            let mut h = b[8..header_end].to_vec();
            if !json_mutation(&mut h, rng, &c.dict, &c.keys) {
                byte_mutation(&mut h, rng, other);
            }
            let data = b[header_end..].to_vec();
            let len = if rng.random_bool(0.8) {
                h.len() as u64
            } else {
                n
            };
            b.clear();
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&h);
            b.extend_from_slice(&data);
        }
        (_, Some(serde_json::Value::Object(mut h))) => {
            let names: Vec<String> = h.keys().filter(|k| *k != "__metadata__").cloned().collect();
            if names.is_empty() {
                byte_mutation(b, rng, other);
                return;
            }
            let name = names[rng.random_range(0..names.len())].clone();
            let data_len = (b.len() - header_end) as u64;
            let huge = |rng: &mut StdRng, was: u64| -> u64 {
                match rng.random_range(0..9) {
                    0 => 0,
                    1 => 1 << 31,
                    2 => 1 << 32,
                    3 => 1 << 62,
                    4 => u64::MAX,
                    5 => was.saturating_mul(2),
                    6 => was + 1,
                    7 => was.saturating_sub(1),
                    _ => data_len + rng.random_range(0..64),
                }
            };
            let entry = h.get(&name).cloned().unwrap_or_default();
            let mut e = entry.clone();
            if !e.is_object() {
                // an earlier mutation made the entry a non-object: replace it whole
                e = serde_json::json!({"dtype": "F32", "shape": [1], "data_offsets": [0, 4]});
            }
            match rng.random_range(0..7) {
                0 => {
                    if let Some(shape) = e.get_mut("shape").and_then(|s| s.as_array_mut()) {
                        match rng.random_range(0..3) {
                            0 if !shape.is_empty() => {
                                let k = rng.random_range(0..shape.len());
                                let was = shape[k].as_u64().unwrap_or(0);
                                shape[k] = huge(rng, was).into();
                            }
                            1 => shape.push(huge(rng, 1).into()),
                            _ => {
                                shape.pop();
                            }
                        }
                    }
                }
                1 => {
                    if let Some(off) = e.get_mut("data_offsets").and_then(|s| s.as_array_mut())
                        && off.len() == 2
                    {
                        let (s0, s1) = (off[0].as_u64().unwrap_or(0), off[1].as_u64().unwrap_or(0));
                        match rng.random_range(0..4) {
                            0 => off[1] = huge(rng, s1).into(),
                            1 => off[0] = huge(rng, s0).into(),
                            2 => {
                                off[0] = s1.into();
                                off[1] = s0.into();
                            }
                            _ => {
                                // another tensor's range (overlap)
                                let o = &names[rng.random_range(0..names.len())];
                                if let Some(r) = h.get(o).and_then(|v| v.get("data_offsets")) {
                                    e["data_offsets"] = r.clone();
                                }
                            }
                        }
                    }
                }
                2 => {
                    let dtypes = [
                        "F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "U16", "U32",
                        "U64", "BOOL", "F8_E4M3", "F8_E5M2", "F4", "F6_E2M3", "E8M0", "C64",
                        "F128", "",
                    ];
                    e["dtype"] = dtypes[rng.random_range(0..dtypes.len())].into();
                }
                3 => {
                    h.remove(&name);
                }
                4 => {
                    let other_name = format!("{name}.copy");
                    h.insert(other_name, entry.clone());
                }
                5 => {
                    // swap two tensors' names
                    let o = names[rng.random_range(0..names.len())].clone();
                    if let Some(ov) = h.get(&o).cloned() {
                        h.insert(o, entry.clone());
                        e = ov;
                    }
                }
                _ => {
                    h.insert(
                        "__metadata__".to_string(),
                        serde_json::from_str(&gen_value(rng, &c.dict, &c.keys))
                            .unwrap_or(serde_json::Value::Null),
                    );
                }
            }
            if h.contains_key(&name) {
                h.insert(name, e);
            }
            let mut text = serde_json::Value::Object(h).to_string().into_bytes();
            while !text.len().is_multiple_of(8) {
                text.push(b' ');
            }
            let data = b[header_end..].to_vec();
            b.clear();
            b.extend_from_slice(&(text.len() as u64).to_le_bytes());
            b.extend_from_slice(&text);
            b.extend_from_slice(&data);
        }
        _ => byte_mutation(b, rng, other),
    }
}

// ---------------------------------------------------------------------------------------------
// Inputs

/// One generated input.
#[derive(Clone, Debug)]
pub enum Input {
    Data {
        name: String,
        bytes: Vec<u8>,
        format: Option<DataFormat>,
        /// Index into the corpus's templates.
        chat: Option<usize>,
        test_fraction: f64,
        count: ProbeCount,
        probe_seed: u64,
    },
    Run {
        name: String,
        /// The (decompressed) run file.
        bytes: Vec<u8>,
        /// Gzipped bytes to read through a file with `read_run` instead.
        gzip: Option<Vec<u8>>,
    },
    Model {
        /// Index into the corpus's model folders.
        seed: usize,
        /// The file replaced (or deleted, `bytes: None`).
        file: String,
        bytes: Option<Vec<u8>>,
    },
}

/// Input `i` of a run with `seed`: a function of `seed + i` alone.
pub fn generate(c: &Corpus, seed: u64, i: u64) -> Input {
    let mut rng = StdRng::seed_from_u64(seed.wrapping_add(i));
    match c.target {
        Target::Data => {
            let s = &c.seeds[rng.random_range(0..c.seeds.len())];
            let other = &c.seeds[rng.random_range(0..c.seeds.len())];
            let other_plain = gunzip(&other.bytes).unwrap_or_else(|| other.bytes.clone());
            let gz = s.bytes.starts_with(&[0x1f, 0x8b]);
            let bytes = if gz && rng.random_bool(0.3) {
                // the compressed stream itself
                let mut b = s.bytes.clone();
                byte_mutation(&mut b, &mut rng, &other.bytes);
                b
            } else {
                let mut b = gunzip(&s.bytes).unwrap_or_else(|| s.bytes.clone());
                mutate_text(&mut b, &mut rng, c, &other_plain);
                if gz { gzip(&b) } else { b }
            };
            let format = if rng.random_bool(0.15) {
                Some(DataFormat::ALL[rng.random_range(0..DataFormat::ALL.len())])
            } else {
                None
            };
            let chat = if rng.random_bool(0.5) {
                Some(rng.random_range(0..c.templates.len()))
            } else {
                None
            };
            let test_fraction =
                [0.0, 0.1, 0.25, 0.5, 0.99, 1.0, -0.1, f64::NAN][rng.random_range(0..8)];
            let count = match rng.random_range(0..4) {
                0 => ProbeCount::All,
                1 => ProbeCount::N(1),
                2 => ProbeCount::N(rng.random_range(0..6)),
                _ => ProbeCount::N(usize::MAX),
            };
            Input::Data {
                name: s.name.clone(),
                bytes,
                format,
                chat,
                test_fraction,
                count,
                probe_seed: rng.random(),
            }
        }
        Target::Run => {
            let s = &c.seeds[rng.random_range(0..c.seeds.len())];
            let other = &c.seeds[rng.random_range(0..c.seeds.len())];
            let mut bytes = s.bytes.clone();
            mutate_text(&mut bytes, &mut rng, c, &other.bytes);
            let gzip = if rng.random_bool(0.1) {
                let mut g = gzip(&bytes);
                if rng.random_bool(0.5) {
                    byte_mutation(&mut g, &mut rng, &[]);
                }
                Some(g)
            } else {
                None
            };
            Input::Run {
                name: s.name.clone(),
                bytes,
                gzip,
            }
        }
        Target::Model => {
            let k = rng.random_range(0..c.models.len());
            let m = &c.models[k];
            let weights: Vec<u32> = m
                .files
                .iter()
                .map(|(n, _)| match n.as_str() {
                    "config.json" => 30,
                    "tokenizer.json" => 14,
                    "tokenizer_config.json" | "chat_template.jinja" => 16,
                    "model.safetensors.index.json" => 10,
                    _ => 30 / (m.files.len() as u32 - 2).max(1),
                })
                .collect();
            let total: u32 = weights.iter().sum();
            let mut r = rng.random_range(0..total);
            let mut f = 0;
            for (j, w) in weights.iter().enumerate() {
                if r < *w {
                    f = j;
                    break;
                }
                r -= w;
            }
            let (name, orig) = &m.files[f];
            let other_model = &c.models[rng.random_range(0..c.models.len())];
            let other = other_model
                .files
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, b)| b.as_slice())
                .unwrap_or(&other_model.files[0].1);
            if rng.random_range(0..50) == 0 {
                return Input::Model {
                    seed: k,
                    file: name.clone(),
                    bytes: None,
                };
            }
            let mut bytes = orig.clone();
            if name.ends_with(".safetensors") {
                for _ in 0..rng.random_range(1..=2) {
                    mutate_safetensors(&mut bytes, &mut rng, c, other);
                }
            } else {
                mutate_text(&mut bytes, &mut rng, c, other);
            }
            Input::Model {
                seed: k,
                file: name.clone(),
                bytes: Some(bytes),
            }
        }
    }
}

fn gunzip(b: &[u8]) -> Option<Vec<u8>> {
    if !b.starts_with(&[0x1f, 0x8b]) {
        return None;
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(b)
        .read_to_end(&mut out)
        .ok()?;
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// Running an input

/// A worker's scratch space: a temp folder with the model folder being mutated and the files
/// exports write.
pub struct Scratch {
    dir: PathBuf,
    /// The model seed the folder holds, and the file that differs from it.
    model: Option<(usize, Option<String>)>,
}

impl Scratch {
    pub fn new(dir: PathBuf) -> Scratch {
        Scratch { dir, model: None }
    }

    fn model_dir(&self) -> PathBuf {
        self.dir.join("model")
    }

    /// Makes the model folder hold seed `k` with `file` replaced by `bytes` (deleted when None).
    fn prepare_model(&mut self, c: &Corpus, k: usize, file: &str, bytes: Option<&[u8]>) {
        let dir = self.model_dir();
        let m = &c.models[k];
        match &self.model {
            Some((seed, changed)) if *seed == k => {
                if let Some(ch) = changed
                    && let Some((_, orig)) = m.files.iter().find(|(n, _)| n == ch)
                {
                    let _ = std::fs::write(dir.join(ch), orig);
                }
            }
            _ => {
                let _ = std::fs::remove_dir_all(&dir);
                let _ = std::fs::create_dir_all(&dir);
                for (n, b) in &m.files {
                    let _ = std::fs::write(dir.join(n), b);
                }
            }
        }
        match bytes {
            Some(b) => {
                let _ = std::fs::write(dir.join(file), b);
            }
            None => {
                let _ = std::fs::remove_file(dir.join(file));
            }
        }
        self.model = Some((k, Some(file.to_string())));
    }
}

/// A conversation rendered through a model's chat template, as the trainer renders
/// conversational datasets.
const CONVERSATION: &[u8] = br#"{"prompt":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi there"}],"chosen":[{"role":"assistant","content":"Hello."}],"rejected":[{"role":"assistant","content":"Go away."}]}"#;

/// Marks errors of the train/test split and the probe set, which name no file.
const PROBE_SET: &str = "probe set: ";

/// Runs one input through its target's code paths: Ok when accepted, `Err` with the first
/// error otherwise.
fn exec(c: &Corpus, input: &Input, scratch: &mut Scratch) -> Result<(), String> {
    match input {
        Input::Data {
            name,
            bytes,
            format,
            chat,
            test_fraction,
            count,
            probe_seed,
        } => {
            let chat = chat.and_then(|k| c.templates.get(k));
            let ds = data::parse_dataset(Path::new(name), bytes, *format, chat)
                .map_err(|e| e.to_string())?;
            // errors about the split and the probe set name no file (the trainer adds it)
            let (train, test) = data::split_test(ds.records, *test_fraction)
                .map_err(|e| format!("{PROBE_SET}{e}"))?;
            data::build_probe_set(&train, &test, *count, *probe_seed)
                .map_err(|e| format!("{PROBE_SET}{e}"))?;
            Ok(())
        }
        Input::Run { name, bytes, gzip } => {
            let run = match gzip {
                Some(g) => {
                    let path = scratch.dir.join(format!("{name}.gz"));
                    std::fs::write(&path, g).map_err(|e| e.to_string())?;
                    let _ = ldviz::run::looks_like_run_file(&path);
                    ldviz::run::read_run(&path).map_err(|e| format!("{e:#}"))?
                }
                None => ldviz::run::reader::parse_run(Path::new(name), bytes)
                    .map_err(|e| format!("{e:#}"))?,
            };
            exercise_run(run, &scratch.dir).map_err(|e| format!("{e:#}"))
        }
        Input::Model { seed, file, bytes } => {
            scratch.prepare_model(c, *seed, file, bytes.as_deref());
            let dir = scratch.model_dir();
            let mut first_err = None;
            match ldviz::model::Model::load(&dir, &candle_core::Device::Cpu) {
                Ok(m) => {
                    let ids = m
                        .tok
                        .encode("Hello, world! The capital of France is Paris.")
                        .map_err(|e| format!("{e:#}"))?;
                    let _ = m.tok.decode(&ids);
                    let _ = m.tok.token_text(m.eos_id());
                    let _ = m.n_params();
                }
                Err(e) => first_err = Some(format!("{e:#}")),
            }
            match ChatTemplate::from_tokenizer_config(&dir) {
                Ok(Some(t)) => {
                    let _ = t.render(&[Message::new("user", "Hi")], true);
                    let _ =
                        data::parse_dataset(Path::new("conv.jsonl"), CONVERSATION, None, Some(&t));
                }
                Ok(None) => {}
                Err(e) => {
                    first_err.get_or_insert(e.to_string());
                }
            }
            match first_err {
                Some(e) => Err(e),
                None => Ok(()),
            }
        }
    }
}

/// What `inspect`, `export` and the app do with a loaded run.
fn exercise_run(run: ldviz::run::Run, dir: &Path) -> anyhow::Result<()> {
    use ldviz::export::plot::family_curves;
    use ldviz::run::Band;
    let s = ldviz::run::summary::summarize(&run);
    let _ = ldviz::run::summary::render_text(&run, &s);
    let _ = serde_json::to_string_pretty(&s)?;
    let _ = run.diverged_at_step();
    let _ = run.last_step();
    for e in &run.evals {
        let _ = e.tokens.get_all().len();
        let _ = e.tokens.parse_error();
    }
    for (y, x, band, probe) in [
        (YMode::Delta, XAxis::Step, Band::Interquartile, None),
        (YMode::PhaseDelta, XAxis::Examples, Band::MinMax, Some(0)),
        (YMode::Absolute, XAxis::Epoch, Band::None, Some(usize::MAX)),
    ] {
        for q in [Quantity::LogProb, Quantity::ANormAuthors] {
            let curves = family_curves(&run, &[], y, x, band, probe, q);
            for c in &curves {
                let _ = c.lines().count();
            }
        }
    }
    let csv = dir.join("run.csv");
    ldviz::export::csv::write_csv(&run, &csv)?;
    let store = RunStore::from_run("fuzz".to_string(), None, run);
    let _ = store.diverged_at_step();
    let families = store.run.header.families.clone();
    let n_probes = store.n_probes();
    for f in &families {
        for q in Quantity::ALL {
            for y in YMode::ALL {
                for probe in [None, Some(0), Some(n_probes)] {
                    let st = store.stats(SeriesKey {
                        family: *f,
                        quantity: q,
                        y,
                        probe,
                    });
                    let _ = st.mean.len();
                }
            }
        }
    }
    let (d, o) = store.transfer_means();
    let _ = (d.len(), o.len());
    let _ = store.transfer_base();
    for i in 0..store.n_evals() + 1 {
        let _ = store.transfer_delta(i);
    }
    for axis in [XAxis::Step, XAxis::Examples, XAxis::Epoch] {
        for name in store.metric_names() {
            let m = store.metric(&name, axis);
            let (xs, ys) = (m.xs.clone(), m.ys.clone());
            let smooth = ldviz::run::store::ema(&ys, 0.6);
            let _ = ldviz::run::store::decimate(&xs, &smooth, 8);
            let _ = ldviz::run::store::envelope(&xs, &ys, &smooth, 8);
            let _ = store.metric_by_phase(&name, axis);
        }
        let _ = store.phase_marks(axis);
        if let Some((lo, hi)) = store.x_range(axis) {
            for x in [lo, hi, (lo + hi) / 2.0, f64::NAN] {
                let _ = store.eval_at_x(x, axis);
            }
        }
    }
    for y in YMode::ALL {
        let _ = store.pieces(y);
    }
    let _ = store.phase_spans();
    for id in [0, 1, u32::MAX] {
        let _ = store.token_text(id);
    }
    let _ = store.ended();
    Ok(())
}

/// The file names an input's errors may name.
fn names_of(c: &Corpus, input: &Input) -> Vec<String> {
    match input {
        Input::Data { name, .. } | Input::Run { name, .. } => vec![name.clone()],
        Input::Model { seed, .. } => {
            let mut v = vec!["model".to_string(), "conv.jsonl".to_string()];
            v.extend(c.models[*seed].files.iter().map(|(n, _)| n.clone()));
            v
        }
    }
}

/// Runs one input with the panic caught.
fn run_one(c: &Corpus, input: &Input, scratch: &mut Scratch) -> Outcome {
    let names = names_of(c, input);
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    run_caught(|| {
        exec(c, input, scratch).map_err(|e| {
            if e.starts_with(PROBE_SET) {
                Failure::Refused
            } else {
                judge(&e, &names)
            }
        })
    })
}

// ---------------------------------------------------------------------------------------------
// The driver

#[derive(Default)]
struct Shared {
    panics: u64,
    hangs: u64,
    accepted: u64,
    slowest_ms: f64,
    slowest_input: u64,
    distinct: Vec<(String, PanicSeen)>,
    hang_inputs: Vec<(u64, f64)>,
    unclear: Vec<(u64, String)>,
    unclear_count: u64,
}

/// Fuzzes `o.iters` inputs of `o.target` on `o.threads` threads.
pub fn run(o: &Options) -> Result<Report, String> {
    install_panic_hook();
    let corpus = Arc::new(Corpus::build(o.target)?);
    corpus.check_seeds()?;
    let threads = o.threads.max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|k| format!("fuzz-{k}"))
        .build()
        .map_err(|e| e.to_string())?;
    let next = AtomicU64::new(0);
    let done = AtomicU64::new(0);
    let shared = Mutex::new(Shared::default());
    let t0 = Instant::now();
    // per worker: input + 1 (0 = idle) and its start in ms since t0
    let running: Vec<(AtomicU64, AtomicU64)> = (0..threads)
        .map(|_| (AtomicU64::new(0), AtomicU64::new(0)))
        .collect();
    let finished = AtomicBool::new(false);
    let base = tempfile::tempdir().map_err(|e| e.to_string())?;
    let workers_started = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        // watchdog and progress
        scope.spawn(|| {
            let mut last_progress = Instant::now();
            while !finished.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let now = t0.elapsed().as_millis() as u64;
                for (input, start) in &running {
                    let i = input.load(Ordering::Relaxed);
                    let s = start.load(Ordering::Relaxed);
                    if i > 0 && now.saturating_sub(s) > WATCHDOG.as_millis() as u64 {
                        eprintln!(
                            "fuzz: {} input {} (seed {}) has run for over {} s; replay it with --replay {}",
                            o.target.key(),
                            i - 1,
                            o.seed,
                            WATCHDOG.as_secs(),
                            i - 1
                        );
                        std::process::abort();
                    }
                }
                if let Some(every) = o.progress
                    && last_progress.elapsed() >= every
                {
                    last_progress = Instant::now();
                    let n = done.load(Ordering::Relaxed);
                    let s = shared.lock().map(|s| {
                        (s.panics, s.hangs, s.slowest_ms, s.slowest_input, s.unclear_count)
                    });
                    if let Ok((p, h, ms, si, u)) = s {
                        eprintln!(
                            "{}: {n}/{} inputs, {p} panics, {h} hangs, {u} unclear errors, slowest {ms:.1} ms (input {si}), {:.0} inputs/s",
                            o.target.key(),
                            o.iters,
                            n as f64 / t0.elapsed().as_secs_f64().max(1e-9)
                        );
                    }
                }
            }
        });
        pool.broadcast(|ctx| {
            let w = ctx.index();
            workers_started.fetch_add(1, Ordering::Relaxed);
            let dir = base.path().join(format!("w{w}"));
            let _ = std::fs::create_dir_all(&dir);
            let mut scratch = Scratch::new(dir);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= o.iters {
                    break;
                }
                let Ok(input) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    generate(&corpus, o.seed, i)
                })) else {
                    eprintln!("fuzz: generating input {i} panicked: a bug in the fuzzer itself");
                    std::process::abort();
                };
                running[w]
                    .1
                    .store(t0.elapsed().as_millis() as u64, Ordering::Relaxed);
                running[w].0.store(i + 1, Ordering::Relaxed);
                CURRENT.with(|c| c.set(i));
                let start = Instant::now();
                let outcome = run_one(&corpus, &input, &mut scratch);
                let ms = start.elapsed().as_secs_f64() * 1e3;
                CURRENT.with(|c| c.set(u64::MAX));
                running[w].0.store(0, Ordering::Relaxed);
                done.fetch_add(1, Ordering::Relaxed);
                let Ok(mut s) = shared.lock() else { break };
                if ms > s.slowest_ms {
                    s.slowest_ms = ms;
                    s.slowest_input = i;
                }
                if ms > HANG_MS {
                    s.hangs += 1;
                    if s.hang_inputs.len() < 20 {
                        s.hang_inputs.push((i, ms));
                    }
                }
                match outcome {
                    Outcome::Accepted => s.accepted += 1,
                    Outcome::Refused(None) => {}
                    Outcome::Refused(Some(m)) => {
                        s.unclear_count += 1;
                        if s.unclear.len() < 20
                            && !s.unclear.iter().any(|(_, u)| u.get(..30) == m.get(..30))
                        {
                            s.unclear.push((i, m));
                        }
                    }
                    Outcome::Panicked { at, message } => {
                        s.panics += 1;
                        match s.distinct.iter_mut().find(|(k, _)| *k == at) {
                            Some((_, p)) => p.count += 1,
                            None => s.distinct.push((
                                at.clone(),
                                PanicSeen {
                                    input: i,
                                    message: format!("{message} (at {at})"),
                                    count: 1,
                                },
                            )),
                        }
                    }
                }
            }
        });
        finished.store(true, Ordering::Relaxed);
    });
    let s = shared.into_inner().map_err(|e| e.to_string())?;
    Ok(Report {
        target: o.target.key().to_string(),
        iters: o.iters,
        panics: s.panics,
        hangs: s.hangs,
        slowest_ms: s.slowest_ms,
        slowest_input: s.slowest_input,
        accepted: s.accepted,
        distinct_panics: s.distinct.into_iter().map(|(_, p)| p).collect(),
        hang_inputs: s.hang_inputs,
        unclear_errors: s.unclear,
        unclear_count: s.unclear_count,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Regenerates input `i` of (`target`, `seed`), writes it under `out` (a dataset or run file,
/// or a model folder) and runs it once, uncaught panics included. Returns the written path and
/// what happened.
pub fn replay(target: Target, seed: u64, i: u64, out: &Path) -> Result<(PathBuf, String), String> {
    let corpus = Corpus::build(target)?;
    let input = generate(&corpus, seed, i);
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let path = match &input {
        Input::Data {
            name,
            bytes,
            format,
            chat,
            test_fraction,
            count,
            probe_seed,
        } => {
            let p = out.join(format!("fuzz-data-{i}-{name}"));
            std::fs::write(&p, bytes).map_err(|e| e.to_string())?;
            eprintln!(
                "replay: format {format:?}, chat template {chat:?}, test fraction {test_fraction}, probes {count}, probe seed {probe_seed}"
            );
            p
        }
        Input::Run { name, bytes, gzip } => {
            let p = out.join(format!("fuzz-run-{i}-{name}"));
            std::fs::write(&p, bytes).map_err(|e| e.to_string())?;
            if let Some(g) = gzip {
                let gp = out.join(format!("fuzz-run-{i}-{name}.gz"));
                std::fs::write(&gp, g).map_err(|e| e.to_string())?;
                eprintln!("replay: read through the gzipped file {}", gp.display());
            }
            p
        }
        Input::Model { seed: k, file, .. } => {
            let p = out.join(format!("fuzz-model-{i}"));
            let mut scratch = Scratch::new(out.join(format!("fuzz-model-{i}-scratch")));
            let _ = std::fs::create_dir_all(&scratch.dir);
            if let Input::Model { bytes, .. } = &input {
                scratch.prepare_model(&corpus, *k, file, bytes.as_deref());
            }
            let _ = std::fs::remove_dir_all(&p);
            std::fs::rename(scratch.model_dir(), &p).map_err(|e| e.to_string())?;
            let _ = std::fs::remove_dir_all(&scratch.dir);
            eprintln!("replay: {} with {file} mutated", corpus.models[*k].name);
            p
        }
    };
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut scratch = Scratch::new(dir.path().to_path_buf());
    CURRENT.with(|c| c.set(i));
    let result = match exec(&corpus, &input, &mut scratch) {
        Ok(()) => "accepted".to_string(),
        Err(e) => format!("refused: {e}"),
    };
    CURRENT.with(|c| c.set(u64::MAX));
    Ok((path, result))
}
