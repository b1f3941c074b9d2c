//! Reading preference datasets: files, format detection, the five supported formats, and chat
//! templates.
//!
//! # Files
//! JSON Lines (one object per line; `.jsonl` or `.json`) or a single JSON array of objects
//! (`.json`), either optionally gzipped (`.gz`, or any file starting with the gzip magic bytes).
//! Blank lines are skipped and a leading UTF-8 byte-order mark is ignored. Line numbers in errors
//! are 1-based lines of the (decompressed) file; for a JSON array file they are the element
//! index + 1. The dataset fingerprint is the SHA-256 of the file bytes as stored on disk.
//!
//! # Formats ([`DataFormat`]; detected from the first record unless forced)
//! - **probe**, the authors' probe schema: `prompt`, `chosen`, `rejected` and any of the optional
//!   family keys (`chosen_initial`, `chosen_gptsemantic`, `chosen_gptformat`,
//!   `reject_gptsemantic`, `reject_gptformat`, `irr_train`, `irr_test`, `irr_hum`,
//!   `random_permute`, `random_nonhum`). A response value may be a string or a non-empty list of
//!   strings, of which the **first** is used (some probe files keep several paraphrases per key);
//!   a `null` optional key counts as absent. Unknown keys are ignored. Detected when the first
//!   record has any of the optional family keys.
//! - **standard** (TRL): `prompt`, `chosen`, `rejected` strings, used verbatim.
//! - **implicit** (TRL implicit prompt): `chosen`, `rejected` strings; the prompt is their longest
//!   common prefix (cut on a char boundary, never backed off to a word boundary), the responses
//!   the remainders. As TRL's `extract_prompt` does, when that prefix ends with a space the space
//!   moves to the responses (so `"Q: a b"` / `"Q: a c"` gives prompt `"Q: a"` and responses
//!   `" b"` / `" c"`). Empty prompt or empty response is an error.
//! - **conversational** (TRL): `chosen`, `rejected` as lists of `{"role", "content"}` messages
//!   (`content` may also be a list of `{"type": "text", "text": …}` parts, whose texts are joined,
//!   or `null` = empty), with either a `prompt` (a list of messages, or a string = one user
//!   message) or, without `prompt`, the messages chosen and rejected share at the start as the
//!   prompt. When a `prompt` is given and chosen/rejected repeat it at their start (as
//!   UltraFeedback binarized does), the repeated messages are dropped. A plain string for
//!   chosen/rejected counts as one assistant message.
//! - **hh** (Anthropic HH-RLHF): `chosen`, `rejected` transcripts
//!   `"\n\nHuman: …\n\nAssistant: …"`. The prompt is the chosen text up to and including its last
//!   `"\n\nAssistant:"`; the chosen response is the rest; the rejected response is the rejected
//!   text after that same prompt when it starts with it, else after its own last
//!   `"\n\nAssistant:"`. Detected when chosen (after leading whitespace) starts with `"Human:"`.
//!
//! # Rendering conversations
//! With a [`ChatTemplate`] (a Hugging Face `chat_template`, run by minijinja with `trim_blocks`
//! and `lstrip_blocks` as transformers does, Python string methods via minijinja-contrib's
//! pycompat, `raise_exception`, a Python-style `tojson`, and the globals `messages`,
//! `bos_token`, `eos_token`, `add_generation_prompt`): the prompt text is
//! `render(prompt, add_generation_prompt = true)`; a response text is
//! `render(prompt + response, false)` with the prompt text stripped off its front. If the full
//! rendering does not start with the prompt text, the response falls back to the response
//! contents joined with `"\n\n"`.
//!
//! Without a template, a plain template is used: every prompt message becomes
//! `"{Role}: {content}\n\n"` (role capitalised: `User`, `Assistant`, `System`, …) and the prompt
//! ends with `"Assistant:"`; the response is `" "` + the response messages joined with `"\n\n"`,
//! an assistant message contributing its content and any other message `"{Role}: {content}"`.
//! For `[{user: "Hi"}]` → `[{assistant: "Hello"}]` that is prompt `"User: Hi\n\nAssistant:"` and
//! response `" Hello"`.

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use minijinja::value::{Kwargs, Value as JinjaValue};
use minijinja::{Environment, ErrorKind, context};
use serde_json::{Map, Value};

use super::{DataError, Family, PreferenceRecord, fingerprint_bytes, one_line};

/// The supported dataset formats (see the module documentation).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "snake_case")]
pub enum DataFormat {
    /// The authors' probe schema (prompt, chosen, rejected and the family responses).
    Probe,
    /// prompt / chosen / rejected strings.
    Standard,
    /// chosen / rejected full texts with a shared prompt prefix.
    Implicit,
    /// prompt / chosen / rejected as message lists (rendered with the chat template).
    Conversational,
    /// Anthropic HH-RLHF ("\n\nHuman: … \n\nAssistant: …" transcripts).
    Hh,
}

impl DataFormat {
    /// Every format, in the order they are documented.
    pub const ALL: [DataFormat; 5] = [
        DataFormat::Probe,
        DataFormat::Standard,
        DataFormat::Implicit,
        DataFormat::Conversational,
        DataFormat::Hh,
    ];

    /// The name accepted by [`FromStr`] and printed by [`fmt::Display`].
    pub fn key(self) -> &'static str {
        match self {
            DataFormat::Probe => "probe",
            DataFormat::Standard => "standard",
            DataFormat::Implicit => "implicit",
            DataFormat::Conversational => "conversational",
            DataFormat::Hh => "hh",
        }
    }
}

impl fmt::Display for DataFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

impl FromStr for DataFormat {
    type Err = DataError;

    /// Parses `"probe"`, `"standard"`, `"implicit"`, `"conversational"` or `"hh"` (any case).
    /// `"auto"` is not a format: callers map it to `None` before parsing.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        DataFormat::ALL
            .into_iter()
            .find(|f| f.key() == lower)
            .ok_or_else(|| {
                DataError::Invalid(format!(
                    "unknown dataset format \"{s}\"; expected one of: auto, probe, standard, \
                     implicit, conversational, hh"
                ))
            })
    }
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A parsed dataset file.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Dataset {
    pub path: PathBuf,
    pub format: DataFormat,
    pub records: Vec<PreferenceRecord>,
    /// SHA-256 hex of the file bytes (as stored, i.e. before decompression).
    pub fingerprint: String,
}

/// A Hugging Face chat template, compiled once.
#[derive(Clone, Debug)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
    env: Environment<'static>,
}

const TEMPLATE_NAME: &str = "chat_template";

impl ChatTemplate {
    /// Compiles a template source with the given special tokens.
    pub fn new(
        source: impl Into<String>,
        bos_token: impl Into<String>,
        eos_token: impl Into<String>,
    ) -> Result<ChatTemplate, DataError> {
        let source = source.into();
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.clone())
            .map_err(|e| DataError::Template(one_line(&e.to_string())))?;
        Ok(ChatTemplate {
            source,
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
            env,
        })
    }

    /// Reads the chat template of a model from its `tokenizer_config.json` (`path` is that file
    /// or the model folder holding it).
    ///
    /// `chat_template` may be a string or a list of `{"name", "template"}` (the one named
    /// `"default"` is taken, else the first). When the config has no `chat_template`, a
    /// `chat_template.jinja` (or `chat_template.json`) file next to it is used, as newer
    /// transformers versions save it there. `bos_token`/`eos_token` are read as strings or
    /// `{"content": …}` objects (missing = empty). A missing config file or no template at all
    /// gives `Ok(None)`.
    pub fn from_tokenizer_config(path: &Path) -> Result<Option<ChatTemplate>, DataError> {
        let file = if path.is_dir() {
            path.join("tokenizer_config.json")
        } else {
            path.to_path_buf()
        };
        let name = file.display().to_string();
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(DataError::Io {
                    path: name,
                    reason: source,
                });
            }
        };
        let config: Value = serde_json::from_str(&text).map_err(|e| json_error(&name, &e))?;
        let Value::Object(config) = config else {
            return Err(DataError::File {
                file: name,
                msg: format!("expected a JSON object, got {}", type_name(&config)),
            });
        };
        let dir = file.parent().unwrap_or(Path::new("."));
        let source = match config.get("chat_template") {
            None | Some(Value::Null) => template_beside(dir)?,
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(list)) => Some(named_template(list, &name)?),
            Some(other) => {
                return Err(DataError::File {
                    file: name,
                    msg: format!(
                        "field \"chat_template\": expected a string or a list of \
                         {{name, template}}, got {}",
                        type_name(other)
                    ),
                });
            }
        };
        let Some(source) = source else {
            return Ok(None);
        };
        let bos = special_token(&config, "bos_token", &name)?;
        let eos = special_token(&config, "eos_token", &name)?;
        ChatTemplate::new(source, bos, eos)
            .map(Some)
            .map_err(|e| DataError::File {
                file: name,
                msg: e.to_string(),
            })
    }

    /// Renders `messages` with the template (globals: `messages`, `bos_token`, `eos_token`,
    /// `add_generation_prompt`).
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, DataError> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| DataError::Template(one_line(&e.to_string())))?;
        let mut out = Limited {
            buf: Vec::new(),
            limit: MAX_RENDERED_BYTES,
            overflowed: false,
        };
        template
            .render_captured_to(
                context! {
                    messages => messages,
                    bos_token => &self.bos_token,
                    eos_token => &self.eos_token,
                    add_generation_prompt => add_generation_prompt,
                },
                &mut out,
            )
            .map_err(|e| {
                DataError::Template(if out.overflowed {
                    format!(
                        "the rendered text is longer than {} MiB",
                        MAX_RENDERED_BYTES >> 20
                    )
                } else {
                    one_line(&e.to_string())
                })
            })?;
        String::from_utf8(out.buf)
            .map_err(|_| DataError::Template("the rendered text is not UTF-8".to_string()))
    }

    /// The template source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The BOS token passed to the template (empty when the config has none).
    pub fn bos_token(&self) -> &str {
        &self.bos_token
    }

    /// The EOS token passed to the template (empty when the config has none).
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }
}

/// The longest text a chat template may render (a prompt and its response; real ones are a few
/// KB): a template looping over a huge repeated string fails instead of filling memory.
const MAX_RENDERED_BYTES: usize = 16 << 20;

/// A writer that refuses to grow past `limit` bytes (and remembers it did).
struct Limited {
    buf: Vec<u8>,
    limit: usize,
    overflowed: bool,
}

impl std::io::Write for Limited {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + b.len() > self.limit {
            self.overflowed = true;
            return Err(std::io::Error::other("rendered text too long"));
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn raise_exception(msg: String) -> Result<String, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

/// The largest `tojson(indent=…)` a template may ask for (each nesting level repeats it).
const MAX_TOJSON_INDENT: usize = 64;

/// Python `json.dumps`-style `tojson` (separators `", "`/`": "`, optional `indent=`), as
/// transformers' template environment provides it.
fn tojson(value: JinjaValue, kwargs: Kwargs) -> Result<String, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    if let Some(n) = indent
        && n > MAX_TOJSON_INDENT
    {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("tojson: indent {n} is larger than {MAX_TOJSON_INDENT}"),
        ));
    }
    let json = serde_json::to_value(&value)
        .map_err(|e| minijinja::Error::new(ErrorKind::InvalidOperation, e.to_string()))?;
    let mut out = String::new();
    write_py_json(&json, indent, 0, &mut out);
    Ok(out)
}

fn write_py_json(v: &Value, indent: Option<usize>, depth: usize, out: &mut String) {
    let newline = |out: &mut String, depth: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * depth));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v {
        Value::Array(items) if !items.is_empty() => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_py_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        Value::Object(map) if !map.is_empty() => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(": ");
                write_py_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn named_template(list: &[Value], file: &str) -> Result<String, DataError> {
    let mut first = None;
    for (i, entry) in list.iter().enumerate() {
        let name = entry.get("name").and_then(Value::as_str);
        let Some(template) = entry.get("template").and_then(Value::as_str) else {
            return Err(DataError::File {
                file: file.to_string(),
                msg: format!("field \"chat_template[{i}].template\": expected a string"),
            });
        };
        if name == Some("default") {
            return Ok(template.to_string());
        }
        first.get_or_insert(template);
    }
    first.map(str::to_string).ok_or_else(|| DataError::File {
        file: file.to_string(),
        msg: "field \"chat_template\": the list of templates is empty".to_string(),
    })
}

fn template_beside(dir: &Path) -> Result<Option<String>, DataError> {
    let jinja = dir.join("chat_template.jinja");
    match std::fs::read_to_string(&jinja) {
        Ok(text) => return Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(DataError::Io {
                path: jinja.display().to_string(),
                reason: source,
            });
        }
    }
    let json = dir.join("chat_template.json");
    let name = json.display().to_string();
    let text = match std::fs::read_to_string(&json) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(DataError::Io {
                path: name,
                reason: source,
            });
        }
    };
    let v: Value = serde_json::from_str(&text).map_err(|e| json_error(&name, &e))?;
    Ok(v.get("chat_template")
        .and_then(Value::as_str)
        .map(str::to_string))
}

fn special_token(config: &Map<String, Value>, key: &str, file: &str) -> Result<String, DataError> {
    match config.get(key) {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => Ok(s.clone()),
            _ => Err(DataError::File {
                file: file.to_string(),
                msg: format!("field \"{key}.content\": expected a string"),
            }),
        },
        Some(other) => Err(DataError::File {
            file: file.to_string(),
            msg: format!(
                "field \"{key}\": expected a string or {{\"content\": …}}, got {}",
                type_name(other)
            ),
        }),
    }
}

fn json_error(file: &str, e: &serde_json::Error) -> DataError {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let msg = full.strip_suffix(&suffix).unwrap_or(&full);
    DataError::Line {
        file: file.to_string(),
        line: e.line().max(1),
        msg: format!("invalid JSON at column {}: {}", e.column(), one_line(msg)),
    }
}

/// The JSON type of a value, as named in error messages.
fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

/// The optional family keys of the probe schema (everything beyond prompt/chosen/rejected).
const PROBE_EXTRA_KEYS: [Family; 10] = [
    Family::ChosenInitial,
    Family::ChosenGptsemantic,
    Family::ChosenGptformat,
    Family::RejectGptsemantic,
    Family::RejectGptformat,
    Family::IrrTrain,
    Family::IrrTest,
    Family::IrrHum,
    Family::RandomPermute,
    Family::RandomNonhum,
];

const HH_ASSISTANT: &str = "\n\nAssistant:";

/// Detects the format from the first record (see the module documentation); `None` when the
/// keys fit no supported format.
pub fn detect_format(first: &Map<String, Value>) -> Option<DataFormat> {
    if PROBE_EXTRA_KEYS.iter().any(|f| first.contains_key(f.key())) {
        return Some(DataFormat::Probe);
    }
    let chosen = first.get("chosen")?;
    first.get("rejected")?;
    match first.get("prompt") {
        Some(prompt) => match (prompt, chosen) {
            (Value::String(_), Value::String(_)) => Some(DataFormat::Standard),
            (Value::String(_) | Value::Array(_), Value::Array(_))
            | (Value::Array(_), Value::String(_)) => Some(DataFormat::Conversational),
            _ => None,
        },
        None => match chosen {
            Value::String(s) if s.trim_start().starts_with("Human:") => Some(DataFormat::Hh),
            Value::String(_) => Some(DataFormat::Implicit),
            Value::Array(_) => Some(DataFormat::Conversational),
            _ => None,
        },
    }
}

/// Reads and parses a dataset file (see the module documentation). `format: None` detects the
/// format from the first record; `chat` renders conversational records (else the plain
/// template is used).
pub fn load_dataset(
    path: &Path,
    format: Option<DataFormat>,
    chat: Option<&ChatTemplate>,
) -> Result<Dataset, DataError> {
    let raw = std::fs::read(path).map_err(|reason| DataError::Io {
        path: path.display().to_string(),
        reason,
    })?;
    parse_dataset(path, &raw, format, chat)
}

/// Parses dataset bytes as [`load_dataset`] does (e.g. an embedded demo dataset); `path` names
/// the data in errors and decides, with the gzip magic bytes, whether to decompress.
pub fn parse_dataset(
    path: &Path,
    raw: &[u8],
    format: Option<DataFormat>,
    chat: Option<&ChatTemplate>,
) -> Result<Dataset, DataError> {
    let file = path.display().to_string();
    let fingerprint = fingerprint_bytes(raw);
    let gz = raw.starts_with(&[0x1f, 0x8b]) || path.extension().is_some_and(|e| e == "gz");
    let decompressed;
    let bytes = if gz {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(raw)
            .read_to_end(&mut out)
            .map_err(|e| DataError::File {
                file: file.clone(),
                msg: format!("cannot decompress gzip data: {}", one_line(&e.to_string())),
            })?;
        decompressed = out;
        decompressed.as_slice()
    } else {
        raw
    };
    let objects = read_objects(bytes, &file)?;
    let Some((first_line, first)) = objects.first() else {
        return Err(DataError::File {
            file,
            msg: "contains no records".to_string(),
        });
    };
    let format = match format {
        Some(f) => f,
        None => detect_format(first).ok_or_else(|| undetectable(&file, *first_line, first))?,
    };
    let mut records = Vec::with_capacity(objects.len());
    for (index, (line, obj)) in objects.iter().enumerate() {
        let cx = Cx {
            file: &file,
            line: *line,
        };
        let (prompt, chosen, rejected, extras) = match format {
            DataFormat::Probe => parse_probe(obj, &cx)?,
            DataFormat::Standard => {
                let (p, c, r) = parse_standard(obj, &cx)?;
                (p, c, r, Default::default())
            }
            DataFormat::Implicit => {
                let (p, c, r) = parse_implicit(obj, &cx)?;
                (p, c, r, Default::default())
            }
            DataFormat::Conversational => {
                let (p, c, r) = parse_conversational(obj, &cx, chat)?;
                (p, c, r, Default::default())
            }
            DataFormat::Hh => {
                let (p, c, r) = parse_hh(obj, &cx)?;
                (p, c, r, Default::default())
            }
        };
        records.push(PreferenceRecord {
            index,
            line: *line,
            prompt,
            chosen,
            rejected,
            extras,
        });
    }
    Ok(Dataset {
        path: path.to_path_buf(),
        format,
        records,
        fingerprint,
    })
}

fn undetectable(file: &str, line: usize, first: &Map<String, Value>) -> DataError {
    let keys: Vec<String> = first
        .iter()
        .map(|(k, v)| format!("{} ({})", Value::String(k.clone()), type_name(v)))
        .collect();
    let found = if keys.is_empty() {
        "no keys".to_string()
    } else {
        format!("keys {}", keys.join(", "))
    };
    DataError::Line {
        file: file.to_string(),
        line,
        msg: format!(
            "cannot detect the dataset format from the first record ({found}); supported: \
             probe (prompt, chosen, rejected + any of chosen_initial, chosen_gptsemantic, \
             chosen_gptformat, reject_gptsemantic, reject_gptformat, irr_train, irr_test, \
             irr_hum, random_permute, random_nonhum), standard (prompt, chosen, rejected \
             strings), conversational ([prompt,] chosen, rejected lists of {{role, content}} \
             messages), implicit (chosen, rejected strings sharing the prompt as a prefix), \
             hh (chosen, rejected \"\\n\\nHuman: … \\n\\nAssistant: …\" transcripts)"
        ),
    }
}

/// A JSON object of the file with its 1-based line number.
type LineObject = (usize, Map<String, Value>);

/// Splits the (decompressed) file into JSON objects with their 1-based line numbers.
fn read_objects(bytes: &[u8], file: &str) -> Result<Vec<LineObject>, DataError> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        return read_array(bytes, file);
    }
    let mut out = Vec::new();
    for (i, raw_line) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = i + 1;
        let text = std::str::from_utf8(raw_line).map_err(|e| DataError::Line {
            file: file.to_string(),
            line,
            msg: format!("invalid UTF-8 at byte {} of the line", e.valid_up_to() + 1),
        })?;
        if text.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(text).map_err(|e| {
            let mut err = json_error(file, &e);
            if let DataError::Line { line: l, .. } = &mut err {
                *l = line;
            }
            err
        })?;
        match value {
            Value::Object(obj) => out.push((line, obj)),
            other => {
                return Err(DataError::Line {
                    file: file.to_string(),
                    line,
                    msg: format!("expected a JSON object, got {}", type_name(&other)),
                });
            }
        }
    }
    Ok(out)
}

fn read_array(bytes: &[u8], file: &str) -> Result<Vec<LineObject>, DataError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let upto = &bytes[..e.valid_up_to()];
        let line = upto.iter().filter(|&&b| b == b'\n').count() + 1;
        let start = upto.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        DataError::Line {
            file: file.to_string(),
            line,
            msg: format!(
                "invalid UTF-8 at byte {} of the line",
                e.valid_up_to() - start + 1
            ),
        }
    })?;
    let value: Value = serde_json::from_str(text).map_err(|e| json_error(file, &e))?;
    let Value::Array(items) = value else {
        return Err(DataError::File {
            file: file.to_string(),
            msg: format!(
                "expected a JSON array of objects, got {}",
                type_name(&value)
            ),
        });
    };
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::Object(obj) => Ok((i + 1, obj)),
            other => Err(DataError::Line {
                file: file.to_string(),
                line: i + 1,
                msg: format!(
                    "array element {}: expected a JSON object, got {}",
                    i + 1,
                    type_name(&other)
                ),
            }),
        })
        .collect()
}

/// Where a record is, for error messages.
struct Cx<'a> {
    file: &'a str,
    line: usize,
}

impl Cx<'_> {
    fn field(&self, field: &str, msg: impl Into<String>) -> DataError {
        DataError::Field {
            file: self.file.to_string(),
            line: self.line,
            field: field.to_string(),
            msg: msg.into(),
        }
    }

    fn err(&self, msg: impl Into<String>) -> DataError {
        DataError::Line {
            file: self.file.to_string(),
            line: self.line,
            msg: msg.into(),
        }
    }
}

fn required<'a>(obj: &'a Map<String, Value>, key: &str, cx: &Cx) -> Result<&'a Value, DataError> {
    obj.get(key).ok_or_else(|| cx.field(key, "missing"))
}

fn req_str<'a>(obj: &'a Map<String, Value>, key: &str, cx: &Cx) -> Result<&'a str, DataError> {
    match required(obj, key, cx)? {
        Value::String(s) => Ok(s),
        other => Err(cx.field(key, format!("expected a string, got {}", type_name(other)))),
    }
}

/// A probe-schema response: a string, or a non-empty list of strings whose first is used.
fn probe_text(v: &Value, key: &str, cx: &Cx) -> Result<String, DataError> {
    let bad = |got: &str| {
        cx.field(
            key,
            format!("expected a string or a non-empty list of strings, got {got}"),
        )
    };
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(items) => match items.first() {
            Some(Value::String(s)) => Ok(s.clone()),
            Some(other) => Err(bad(&format!("a list of {}", type_name(other)))),
            None => Err(bad("an empty list")),
        },
        other => Err(bad(type_name(other))),
    }
}

type Parsed = (
    String,
    String,
    String,
    std::collections::BTreeMap<Family, String>,
);

fn parse_probe(obj: &Map<String, Value>, cx: &Cx) -> Result<Parsed, DataError> {
    let prompt = req_str(obj, "prompt", cx)?.to_string();
    let chosen = probe_text(required(obj, "chosen", cx)?, "chosen", cx)?;
    let rejected = probe_text(required(obj, "rejected", cx)?, "rejected", cx)?;
    let mut extras = std::collections::BTreeMap::new();
    for family in PROBE_EXTRA_KEYS {
        match obj.get(family.key()) {
            None | Some(Value::Null) => {}
            Some(v) => {
                extras.insert(family, probe_text(v, family.key(), cx)?);
            }
        }
    }
    Ok((prompt, chosen, rejected, extras))
}

fn parse_standard(
    obj: &Map<String, Value>,
    cx: &Cx,
) -> Result<(String, String, String), DataError> {
    Ok((
        req_str(obj, "prompt", cx)?.to_string(),
        req_str(obj, "chosen", cx)?.to_string(),
        req_str(obj, "rejected", cx)?.to_string(),
    ))
}

/// Byte length of the longest common prefix of `a` and `b`, on a char boundary.
fn common_prefix_len(a: &str, b: &str) -> usize {
    let mut end = 0;
    for ((i, ca), cb) in a.char_indices().zip(b.chars()) {
        if ca != cb {
            return i;
        }
        end = i + ca.len_utf8();
    }
    end
}

fn parse_implicit(
    obj: &Map<String, Value>,
    cx: &Cx,
) -> Result<(String, String, String), DataError> {
    let chosen = req_str(obj, "chosen", cx)?;
    let rejected = req_str(obj, "rejected", cx)?;
    let mut end = common_prefix_len(chosen, rejected);
    if end == chosen.len() {
        return Err(cx.field(
            "chosen",
            "the chosen response is empty: chosen is a prefix of (or equal to) rejected",
        ));
    }
    if end == rejected.len() {
        return Err(cx.field(
            "rejected",
            "the rejected response is empty: rejected is a prefix of chosen",
        ));
    }
    if chosen[..end].ends_with(' ') {
        end -= 1;
    }
    if end == 0 {
        return Err(cx.field(
            "chosen",
            "chosen and rejected share no common prefix, so the implicit prompt is empty",
        ));
    }
    Ok((
        chosen[..end].to_string(),
        chosen[end..].to_string(),
        rejected[end..].to_string(),
    ))
}

fn parse_hh(obj: &Map<String, Value>, cx: &Cx) -> Result<(String, String, String), DataError> {
    let chosen = req_str(obj, "chosen", cx)?;
    let rejected = req_str(obj, "rejected", cx)?;
    let Some(pos) = chosen.rfind(HH_ASSISTANT) else {
        return Err(cx.field(
            "chosen",
            "no \"\\n\\nAssistant:\" turn found in the HH transcript",
        ));
    };
    let cut = pos + HH_ASSISTANT.len();
    let prompt = &chosen[..cut];
    let rejected_response = match rejected.strip_prefix(prompt) {
        Some(rest) => rest,
        None => match rejected.rfind(HH_ASSISTANT) {
            Some(p) => &rejected[p + HH_ASSISTANT.len()..],
            None => {
                return Err(cx.field(
                    "rejected",
                    "no \"\\n\\nAssistant:\" turn found in the HH transcript",
                ));
            }
        },
    };
    Ok((
        prompt.to_string(),
        chosen[cut..].to_string(),
        rejected_response.to_string(),
    ))
}

/// Messages of a conversational field: a list of `{role, content}`, or a plain string taken as
/// one message with `string_role`.
fn parse_messages(
    v: &Value,
    field: &str,
    string_role: &str,
    cx: &Cx,
) -> Result<Vec<Message>, DataError> {
    let items = match v {
        Value::String(s) => return Ok(vec![Message::new(string_role, s.clone())]),
        Value::Array(items) => items,
        other => {
            return Err(cx.field(
                field,
                format!(
                    "expected a string or a list of messages, got {}",
                    type_name(other)
                ),
            ));
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(m) = item else {
            return Err(cx.field(
                &format!("{field}[{i}]"),
                format!(
                    "expected a message {{\"role\", \"content\"}}, got {}",
                    type_name(item)
                ),
            ));
        };
        let role = match m.get("role") {
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                return Err(cx.field(
                    &format!("{field}[{i}].role"),
                    format!("expected a string, got {}", type_name(other)),
                ));
            }
            None => return Err(cx.field(&format!("{field}[{i}].role"), "missing")),
        };
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Null) => String::new(),
            Some(Value::Array(parts)) => {
                content_parts(parts, &format!("{field}[{i}].content"), cx)?
            }
            Some(other) => {
                return Err(cx.field(
                    &format!("{field}[{i}].content"),
                    format!(
                        "expected a string or a list of text parts, got {}",
                        type_name(other)
                    ),
                ));
            }
            None => return Err(cx.field(&format!("{field}[{i}].content"), "missing")),
        };
        out.push(Message { role, content });
    }
    Ok(out)
}

/// `[{"type": "text", "text": …}, …]` (or plain strings) joined into one text.
fn content_parts(parts: &[Value], field: &str, cx: &Cx) -> Result<String, DataError> {
    let mut text = String::new();
    for (j, part) in parts.iter().enumerate() {
        match part {
            Value::String(s) => text.push_str(s),
            Value::Object(p) => match p.get("text") {
                Some(Value::String(s)) => text.push_str(s),
                _ => {
                    let kind = p.get("type").and_then(Value::as_str).unwrap_or("untyped");
                    return Err(cx.field(
                        &format!("{field}[{j}]"),
                        format!("only text parts are supported, got a \"{kind}\" part"),
                    ));
                }
            },
            other => {
                return Err(cx.field(
                    &format!("{field}[{j}]"),
                    format!("expected a text part, got {}", type_name(other)),
                ));
            }
        }
    }
    Ok(text)
}

fn parse_conversational(
    obj: &Map<String, Value>,
    cx: &Cx,
    chat: Option<&ChatTemplate>,
) -> Result<(String, String, String), DataError> {
    let mut chosen = parse_messages(required(obj, "chosen", cx)?, "chosen", "assistant", cx)?;
    let mut rejected = parse_messages(required(obj, "rejected", cx)?, "rejected", "assistant", cx)?;
    let prompt = match obj.get("prompt") {
        Some(v) => {
            let prompt = parse_messages(v, "prompt", "user", cx)?;
            if prompt.is_empty() {
                return Err(cx.field("prompt", "the list of prompt messages is empty"));
            }
            for responses in [&mut chosen, &mut rejected] {
                if responses.len() > prompt.len() && responses.starts_with(&prompt) {
                    responses.drain(..prompt.len());
                }
            }
            prompt
        }
        None => {
            let shared = chosen
                .iter()
                .zip(&rejected)
                .take_while(|(c, r)| c == r)
                .count();
            if shared == 0 {
                return Err(cx.field(
                    "chosen",
                    "without \"prompt\", chosen and rejected must start with the same \
                     prompt messages, but their first messages differ",
                ));
            }
            rejected.drain(..shared);
            chosen.drain(..shared).collect()
        }
    };
    if chosen.is_empty() {
        return Err(cx.field("chosen", "no response messages after the prompt"));
    }
    if rejected.is_empty() {
        return Err(cx.field("rejected", "no response messages after the prompt"));
    }
    let render = |responses: &[Message], prompt_text: &str| -> Result<String, DataError> {
        response_text(&prompt, responses, prompt_text, chat).map_err(|e| cx.err(e.to_string()))
    };
    let prompt_text = format_prompt(&prompt, chat).map_err(|e| cx.err(e.to_string()))?;
    let chosen_text = render(&chosen, &prompt_text)?;
    let rejected_text = render(&rejected, &prompt_text)?;
    Ok((prompt_text, chosen_text, rejected_text))
}

/// Formats prompt messages as the text the model continues: the chat template with
/// `add_generation_prompt = true`, or the plain template (see the module documentation).
pub fn format_prompt(prompt: &[Message], chat: Option<&ChatTemplate>) -> Result<String, DataError> {
    match chat {
        Some(t) => t.render(prompt, true),
        None => {
            let mut text = String::new();
            for m in prompt {
                text.push_str(&capitalize(&m.role));
                text.push_str(": ");
                text.push_str(&m.content);
                text.push_str("\n\n");
            }
            text.push_str("Assistant:");
            Ok(text)
        }
    }
}

/// The response text following `prompt_text` (= `format_prompt(prompt, chat)`).
fn response_text(
    prompt: &[Message],
    responses: &[Message],
    prompt_text: &str,
    chat: Option<&ChatTemplate>,
) -> Result<String, DataError> {
    match chat {
        Some(t) => {
            let all: Vec<Message> = prompt.iter().chain(responses).cloned().collect();
            let full = t.render(&all, false)?;
            Ok(match full.strip_prefix(prompt_text) {
                Some(rest) => rest.to_string(),
                None => responses
                    .iter()
                    .map(|m| m.content.as_str())
                    .collect::<Vec<_>>()
                    .join("\n\n"),
            })
        }
        None => {
            let parts: Vec<String> = responses
                .iter()
                .map(|m| {
                    if m.role == "assistant" {
                        m.content.clone()
                    } else {
                        format!("{}: {}", capitalize(&m.role), m.content)
                    }
                })
                .collect();
            Ok(format!(" {}", parts.join("\n\n")))
        }
    }
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A missing file is named with the reason once, also when printed as an error chain
    /// (`{:#}`, as the CLI does).
    #[test]
    fn missing_file_names_the_path_and_reason_once() {
        let err = load_dataset(Path::new("/no/such/prefs.jsonl"), None, None).unwrap_err();
        let chain = format!("{:#}", anyhow::Error::from(err));
        assert!(chain.starts_with("/no/such/prefs.jsonl: "), "{chain}");
        assert_eq!(chain.matches("os error").count(), 1, "{chain}");
    }

    const CHATML: &str = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";

    fn write(dir: &tempfile::TempDir, name: &str, content: &[u8]) -> PathBuf {
        let path = dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path
    }

    fn load_str(name: &str, content: &str) -> Result<Dataset, DataError> {
        let dir = tempfile::tempdir().unwrap();
        let path = write(&dir, name, content.as_bytes());
        load_dataset(&path, None, None)
    }

    fn err_str(name: &str, content: &str) -> String {
        load_str(name, content).unwrap_err().to_string()
    }

    fn obj(json: &str) -> Map<String, Value> {
        match serde_json::from_str(json).unwrap() {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn detects_each_format() {
        assert_eq!(
            detect_format(&obj(
                r#"{"prompt":"p","chosen":"c","rejected":"r","irr_hum":"h"}"#
            )),
            Some(DataFormat::Probe)
        );
        assert_eq!(
            detect_format(&obj(r#"{"prompt":"p","chosen":"c","rejected":"r"}"#)),
            Some(DataFormat::Standard)
        );
        assert_eq!(
            detect_format(&obj(
                r#"{"prompt":"p","chosen":[{"role":"assistant","content":"c"}],"rejected":[]}"#
            )),
            Some(DataFormat::Conversational)
        );
        assert_eq!(
            detect_format(&obj(
                r#"{"chosen":[{"role":"user","content":"q"}],"rejected":[{"role":"user","content":"q"}]}"#
            )),
            Some(DataFormat::Conversational)
        );
        assert_eq!(
            detect_format(&obj(
                r#"{"chosen":"\n\nHuman: hi\n\nAssistant: yo","rejected":"x"}"#
            )),
            Some(DataFormat::Hh)
        );
        assert_eq!(
            detect_format(&obj(r#"{"chosen":"Q: a","rejected":"Q: b"}"#)),
            Some(DataFormat::Implicit)
        );
        assert_eq!(
            detect_format(&obj(r#"{"question":"q","answer":"a"}"#)),
            None
        );
        assert_eq!(
            detect_format(&obj(r#"{"prompt":"p","chosen":3,"rejected":"r"}"#)),
            None
        );
        assert_eq!(detect_format(&obj(r#"{"chosen":"c"}"#)), None);
    }

    #[test]
    fn format_names_parse_and_print() {
        for f in DataFormat::ALL {
            assert_eq!(f.to_string().parse::<DataFormat>().unwrap(), f);
            assert_eq!(
                serde_json::to_string(&f).unwrap(),
                format!("\"{}\"", f.key())
            );
        }
        assert_eq!("HH".parse::<DataFormat>().unwrap(), DataFormat::Hh);
        let err = "auto".parse::<DataFormat>().unwrap_err().to_string();
        assert!(
            err.contains("\"auto\"") && err.contains("conversational"),
            "{err}"
        );
    }

    #[test]
    fn parses_probe_schema() {
        let ds = load_str(
            "probe.jsonl",
            concat!(
                r#"{"prompt":"Q1","chosen":" A1","rejected":" B1","chosen_gptsemantic":[" A1'"," A1''"],"irr_hum":" H1","irr_test":null,"score":3}"#,
                "\n\n",
                r#"{"prompt":"Q2","chosen":" A2","rejected":" B2","chosen_gptsemantic":" A2'"}"#,
                "\n"
            ),
        )
        .unwrap();
        assert_eq!(ds.format, DataFormat::Probe);
        assert_eq!(ds.records.len(), 2);
        let r0 = &ds.records[0];
        assert_eq!((r0.index, r0.line), (0, 1));
        assert_eq!(r0.prompt, "Q1");
        assert_eq!(r0.chosen, " A1");
        assert_eq!(r0.rejected, " B1");
        assert_eq!(r0.extras.len(), 2);
        assert_eq!(r0.extras[&Family::ChosenGptsemantic], " A1'");
        assert_eq!(r0.extras[&Family::IrrHum], " H1");
        let r1 = &ds.records[1];
        assert_eq!((r1.index, r1.line), (1, 3));
        assert_eq!(r1.extras.len(), 1);
        assert_eq!(r1.extras[&Family::ChosenGptsemantic], " A2'");
    }

    #[test]
    fn parses_standard() {
        let ds = load_str(
            "std.jsonl",
            "{\"prompt\":\"What is 2+2?\",\"chosen\":\" 4\",\"rejected\":\" 5\"}\r\n",
        )
        .unwrap();
        assert_eq!(ds.format, DataFormat::Standard);
        let r = &ds.records[0];
        assert_eq!(
            (r.prompt.as_str(), r.chosen.as_str(), r.rejected.as_str()),
            ("What is 2+2?", " 4", " 5")
        );
        assert!(r.extras.is_empty());
    }

    #[test]
    fn parses_implicit_like_trl() {
        let ds = load_str(
            "imp.jsonl",
            concat!(
                r#"{"chosen":"The sky is blue.","rejected":"The sky is green."}"#,
                "\n",
                r#"{"chosen":"Café au lait","rejected":"Café noir"}"#,
                "\n",
                r#"{"chosen":"x = héllo","rejected":"x = hèllo"}"#,
            ),
        )
        .unwrap();
        assert_eq!(ds.format, DataFormat::Implicit);
        let r = &ds.records[0];
        // the space before the divergence goes to the responses (TRL extract_prompt)
        assert_eq!(r.prompt, "The sky is");
        assert_eq!(r.chosen, " blue.");
        assert_eq!(r.rejected, " green.");
        let r = &ds.records[1];
        assert_eq!(r.prompt, "Café");
        assert_eq!(r.chosen, " au lait");
        assert_eq!(r.rejected, " noir");
        // divergence mid-word, on a multi-byte char: plain prefix, char boundary
        let r = &ds.records[2];
        assert_eq!(r.prompt, "x = h");
        assert_eq!(r.chosen, "éllo");
        assert_eq!(r.rejected, "èllo");
    }

    #[test]
    fn implicit_errors() {
        let e = err_str("imp.jsonl", r#"{"chosen":"abc","rejected":"xyz"}"#);
        assert!(
            e.contains("imp.jsonl:1: field \"chosen\"") && e.contains("prefix"),
            "{e}"
        );
        let e = err_str("imp.jsonl", r#"{"chosen":"abc","rejected":"abcdef"}"#);
        assert!(
            e.contains("imp.jsonl:1: field \"chosen\"") && e.contains("empty"),
            "{e}"
        );
        let e = err_str(
            "imp.jsonl",
            "{\"chosen\":\"ab c\",\"rejected\":\"ab d\"}\n{\"chosen\":\"abcdef\",\"rejected\":\"abc\"}",
        );
        assert!(
            e.contains("imp.jsonl:2: field \"rejected\"") && e.contains("empty"),
            "{e}"
        );
    }

    #[test]
    fn parses_conversational_with_plain_template() {
        let ds = load_str(
            "conv.jsonl",
            concat!(
                r#"{"prompt":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hi"}],"chosen":[{"role":"assistant","content":"Hello"}],"rejected":[{"role":"assistant","content":"Go away"}]}"#,
                "\n",
                r#"{"prompt":"Hi","chosen":[{"role":"user","content":"Hi"},{"role":"assistant","content":[{"type":"text","text":"Hel"},{"type":"text","text":"lo"}]}],"rejected":[{"role":"user","content":"Hi"},{"role":"assistant","content":"No"}]}"#,
            ),
        )
        .unwrap();
        assert_eq!(ds.format, DataFormat::Conversational);
        let r = &ds.records[0];
        assert_eq!(r.prompt, "System: Be brief.\n\nUser: Hi\n\nAssistant:");
        assert_eq!(r.chosen, " Hello");
        assert_eq!(r.rejected, " Go away");
        // string prompt = one user message; repeated prompt at the start of chosen dropped
        let r = &ds.records[1];
        assert_eq!(r.prompt, "User: Hi\n\nAssistant:");
        assert_eq!(r.chosen, " Hello");
        assert_eq!(r.rejected, " No");
    }

    #[test]
    fn parses_conversational_implicit_prompt() {
        let line = r#"{"chosen":[{"role":"user","content":"2+2?"},{"role":"assistant","content":"4"},{"role":"user","content":"3+3?"},{"role":"assistant","content":"6"}],"rejected":[{"role":"user","content":"2+2?"},{"role":"assistant","content":"4"},{"role":"user","content":"3+3?"},{"role":"assistant","content":"7"}]}"#;
        let ds = load_str("conv.jsonl", line).unwrap();
        assert_eq!(ds.format, DataFormat::Conversational);
        let r = &ds.records[0];
        assert_eq!(
            r.prompt,
            "User: 2+2?\n\nAssistant: 4\n\nUser: 3+3?\n\nAssistant:"
        );
        assert_eq!(r.chosen, " 6");
        assert_eq!(r.rejected, " 7");
    }

    #[test]
    fn conversational_with_chatml_template() {
        let chat = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "conv.json",
            br#"[{"prompt":[{"role":"user","content":"Hi"}],"chosen":[{"role":"assistant","content":"Hello"}],"rejected":[{"role":"assistant","content":"Bye"}]}]"#,
        );
        let ds = load_dataset(&path, None, Some(&chat)).unwrap();
        let r = &ds.records[0];
        assert_eq!(
            r.prompt,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        assert_eq!(r.chosen, "Hello<|im_end|>\n");
        assert_eq!(r.rejected, "Bye<|im_end|>\n");
        assert_eq!(r.line, 1);
    }

    #[test]
    fn template_fallback_when_prompt_is_not_a_prefix() {
        // a template that renders the generation prompt differently from the full text
        let chat = ChatTemplate::new(
            "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}{% if add_generation_prompt %}>>{% endif %}",
            "",
            "",
        )
        .unwrap();
        let prompt = [Message::new("user", "Hi")];
        let responses = [
            Message::new("assistant", "A"),
            Message::new("assistant", "B"),
        ];
        let prompt_text = format_prompt(&prompt, Some(&chat)).unwrap();
        assert_eq!(prompt_text, "[user] Hi\n>>");
        let text = response_text(&prompt, &responses, &prompt_text, Some(&chat)).unwrap();
        assert_eq!(text, "A\n\nB");
    }

    #[test]
    fn chat_template_globals_and_helpers() {
        let src = "{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system') }}{% endif %}{{ m['content'].strip() | upper }}{{ eos_token }}{% endfor %}|{{ {'a': [1, 2], 'b': 'x'} | tojson }}";
        let chat = ChatTemplate::new(src, "<s>", "</s>").unwrap();
        assert_eq!(
            chat.render(&[Message::new("user", "  hi ")], false)
                .unwrap(),
            "<s>HI</s>|{\"a\": [1, 2], \"b\": \"x\"}"
        );
        let err = chat
            .render(&[Message::new("system", "x")], false)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("chat template:") && err.contains("no system"),
            "{err}"
        );
        assert!(!err.contains('\n'));
        let bad = ChatTemplate::new("{% for %}", "", "")
            .unwrap_err()
            .to_string();
        assert!(
            bad.starts_with("chat template:") && !bad.contains('\n'),
            "{bad}"
        );
    }

    #[test]
    fn real_hf_templates_render() {
        // Qwen2.5's template, tool branches elided (whitespace control, loop.first, undefined
        // attributes, a default system prompt).
        let qwen = concat!(
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
        let chat = ChatTemplate::new(qwen, "", "<|im_end|>").unwrap();
        let prompt = [Message::new("user", "Hi")];
        let p = format_prompt(&prompt, Some(&chat)).unwrap();
        assert_eq!(
            p,
            "<|im_start|>system\nYou are Qwen.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        let r =
            response_text(&prompt, &[Message::new("assistant", "Yo")], &p, Some(&chat)).unwrap();
        assert_eq!(r, "Yo<|im_end|>\n");

        // Llama 3's template (bos_token, `| trim`, loop.index0, set)
        let llama = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
        let chat = ChatTemplate::new(llama, "<|begin_of_text|>", "<|eot_id|>").unwrap();
        let p = format_prompt(&[Message::new("user", " Hi ")], Some(&chat)).unwrap();
        assert_eq!(
            p,
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        let r = response_text(
            &[Message::new("user", " Hi ")],
            &[Message::new("assistant", "Hello")],
            &p,
            Some(&chat),
        )
        .unwrap();
        assert_eq!(r, "Hello<|eot_id|>");
    }

    #[test]
    fn tojson_indent_matches_python() {
        let chat = ChatTemplate::new("{{ x | tojson(indent=2) }}", "", "").unwrap();
        let t = chat.env.get_template(TEMPLATE_NAME).unwrap();
        let out = t
            .render(context! { x => serde_json::json!({"a": [1, {"b": null}], "c": {}}) })
            .unwrap();
        assert_eq!(
            out,
            "{\n  \"a\": [\n    1,\n    {\n      \"b\": null\n    }\n  ],\n  \"c\": {}\n}"
        );
    }

    #[test]
    fn template_error_names_file_and_line() {
        let chat = ChatTemplate::new(
            "{% if messages|length > 1 %}{{ raise_exception('one message only') }}{% endif %}",
            "",
            "",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "conv.jsonl",
            br#"{"prompt":[{"role":"user","content":"Hi"}],"chosen":"A","rejected":"B"}"#,
        );
        let err = load_dataset(&path, None, Some(&chat))
            .unwrap_err()
            .to_string();
        assert!(err.contains("conv.jsonl:1: chat template:"), "{err}");
        assert!(err.contains("one message only"), "{err}");
    }

    #[test]
    fn reads_tokenizer_config() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            ChatTemplate::from_tokenizer_config(dir.path())
                .unwrap()
                .is_none()
        );
        let config = serde_json::json!({
            "bos_token": {"content": "<s>", "lstrip": false},
            "eos_token": "</s>",
            "chat_template": [
                {"name": "tool_use", "template": "TOOLS"},
                {"name": "default", "template": CHATML}
            ]
        });
        let path = write(&dir, "tokenizer_config.json", config.to_string().as_bytes());
        let chat = ChatTemplate::from_tokenizer_config(&path).unwrap().unwrap();
        assert_eq!(chat.source(), CHATML);
        assert_eq!(chat.bos_token(), "<s>");
        assert_eq!(chat.eos_token(), "</s>");
        assert_eq!(
            chat.render(&[Message::new("user", "Hi")], true).unwrap(),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
        // the folder works too
        let again = ChatTemplate::from_tokenizer_config(dir.path())
            .unwrap()
            .unwrap();
        assert_eq!(again.source(), CHATML);

        // no chat_template → None, unless chat_template.jinja sits beside it
        std::fs::write(&path, r#"{"eos_token": "</s>"}"#).unwrap();
        assert!(
            ChatTemplate::from_tokenizer_config(&path)
                .unwrap()
                .is_none()
        );
        write(&dir, "chat_template.jinja", b"{{ eos_token }}");
        let chat = ChatTemplate::from_tokenizer_config(&path).unwrap().unwrap();
        assert_eq!(chat.render(&[], false).unwrap(), "</s>");

        std::fs::write(&path, r#"{"chat_template": 5}"#).unwrap();
        let err = ChatTemplate::from_tokenizer_config(&path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tokenizer_config.json") && err.contains("\"chat_template\""),
            "{err}"
        );
        std::fs::write(&path, "{\n\"chat_template\": }").unwrap();
        let err = ChatTemplate::from_tokenizer_config(&path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tokenizer_config.json:2: invalid JSON"),
            "{err}"
        );
    }

    const HH_CHOSEN: &str = "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Tell me a joke.\n\nAssistant: Why did the chicken cross the road?";
    const HH_REJECTED: &str =
        "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Tell me a joke.\n\nAssistant: No.";

    #[test]
    fn parses_hh_jsonl_gz() {
        let mut text = String::new();
        text.push_str(
            &serde_json::json!({"chosen": HH_CHOSEN, "rejected": HH_REJECTED}).to_string(),
        );
        text.push('\n');
        // rejected diverging before the last turn: cut after its own last Assistant:
        text.push_str(
            &serde_json::json!({
                "chosen": "\n\nHuman: A?\n\nAssistant: B",
                "rejected": "\n\nHuman: A!\n\nAssistant: C\n\nHuman: D\n\nAssistant: E"
            })
            .to_string(),
        );
        text.push('\n');
        let dir = tempfile::tempdir().unwrap();
        let raw = gzip(text.as_bytes());
        let path = write(&dir, "train.jsonl.gz", &raw);
        let ds = load_dataset(&path, None, None).unwrap();
        assert_eq!(ds.format, DataFormat::Hh);
        assert_eq!(ds.fingerprint, fingerprint_bytes(&raw));
        assert_eq!(ds.records.len(), 2);
        let r = &ds.records[0];
        assert_eq!(
            r.prompt,
            "\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Tell me a joke.\n\nAssistant:"
        );
        assert_eq!(r.chosen, " Why did the chicken cross the road?");
        assert_eq!(r.rejected, " No.");
        let r = &ds.records[1];
        assert_eq!(r.prompt, "\n\nHuman: A?\n\nAssistant:");
        assert_eq!(r.chosen, " B");
        assert_eq!(r.rejected, " E");
    }

    #[test]
    fn hh_missing_assistant_is_an_error() {
        let e = err_str(
            "hh.jsonl",
            &serde_json::json!({"chosen": "\n\nHuman: hi", "rejected": "\n\nHuman: hi"})
                .to_string(),
        );
        assert!(
            e.contains("hh.jsonl:1: field \"chosen\"") && e.contains("Assistant:"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "hh.jsonl",
            serde_json::json!({"chosen": "\n\nHuman: hi\n\nAssistant: a", "rejected": "nope"})
                .to_string()
                .as_bytes(),
        );
        let e = load_dataset(&path, Some(DataFormat::Hh), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("hh.jsonl:1: field \"rejected\""), "{e}");
    }

    #[test]
    fn reads_json_array_file() {
        let ds = load_str(
            "data.json",
            "[\n  {\"prompt\": \"P1\", \"chosen\": \"C1\", \"rejected\": \"R1\"},\n  {\"prompt\": \"P2\", \"chosen\": \"C2\", \"rejected\": \"R2\"}\n]\n",
        )
        .unwrap();
        assert_eq!(ds.format, DataFormat::Standard);
        assert_eq!(ds.records.len(), 2);
        assert_eq!(ds.records[1].prompt, "P2");
        assert_eq!(ds.records[1].chosen, "C2");
        assert_eq!((ds.records[1].index, ds.records[1].line), (1, 2));
        let e = err_str(
            "data.json",
            r#"[{"prompt":"P","chosen":"C","rejected":"R"}, 7]"#,
        );
        assert!(
            e.contains("data.json:2:") && e.contains("got number"),
            "{e}"
        );
        let e = err_str("data.json", "[\n{\"prompt\": \"P\",\n\"chosen\" \"C\"}]");
        assert!(e.contains("data.json:3: invalid JSON"), "{e}");
    }

    #[test]
    fn json_file_with_one_object_per_line() {
        let ds = load_str(
            "data.json",
            "{\"chosen\":\"Q? yes\",\"rejected\":\"Q? no\"}\n{\"chosen\":\"R? a\",\"rejected\":\"R? b\"}\n",
        )
        .unwrap();
        assert_eq!(ds.format, DataFormat::Implicit);
        assert_eq!(ds.records[1].prompt, "R?");
        assert_eq!(ds.records[1].line, 2);
    }

    #[test]
    fn forced_format_overrides_detection() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "d.jsonl",
            br#"{"prompt":"P","chosen":"P x","rejected":"P y"}"#,
        );
        let ds = load_dataset(&path, Some(DataFormat::Implicit), None).unwrap();
        assert_eq!(ds.format, DataFormat::Implicit);
        assert_eq!(ds.records[0].prompt, "P");
        assert_eq!(ds.records[0].chosen, " x");
        let err = load_dataset(&path, Some(DataFormat::Hh), None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("d.jsonl:1: field \"chosen\""), "{err}");
    }

    #[test]
    fn file_level_errors() {
        let e = err_str("empty.jsonl", "");
        assert!(e.ends_with("empty.jsonl: contains no records"), "{e}");
        let e = err_str("blank.jsonl", "\n  \n\n");
        assert!(e.contains("blank.jsonl: contains no records"), "{e}");
        let e = err_str("arr.json", "[]");
        assert!(e.contains("arr.json: contains no records"), "{e}");
        let e = err_str(
            "bad.jsonl",
            "{\"prompt\":\"p\",\"chosen\":\"c\",\"rejected\":\"r\"}\n{\"prompt\": \"p\",}\n",
        );
        assert!(e.contains("bad.jsonl:2: invalid JSON at column"), "{e}");
        assert!(!e.contains("at line"), "{e}");
        let e = err_str(
            "scalar.jsonl",
            "{\"prompt\":\"p\",\"chosen\":\"c\",\"rejected\":\"r\"}\n\n[1,2]\n",
        );
        assert!(
            e.contains("scalar.jsonl:3: expected a JSON object, got list"),
            "{e}"
        );
        let e = err_str("keys.jsonl", r#"{"question":"q","answer":"a"}"#);
        assert!(
            e.contains("keys.jsonl:1: cannot detect")
                && e.contains("\"question\" (string)")
                && e.contains("hh (")
                && !e.contains('\n'),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            &dir,
            "latin1.jsonl",
            b"{\"prompt\":\"p\",\"chosen\":\"c\",\"rejected\":\"r\"}\n{\"prompt\":\"caf\xe9\"}\n",
        );
        let e = load_dataset(&path, None, None).unwrap_err().to_string();
        assert!(e.contains("latin1.jsonl:2: invalid UTF-8"), "{e}");
        let path = write(&dir, "latin1.json", b"[\n{\"prompt\":\"caf\xe9\"}]");
        let e = load_dataset(&path, None, None).unwrap_err().to_string();
        assert!(e.contains("latin1.json:2: invalid UTF-8 at byte 15"), "{e}");
        let path = write(&dir, "fake.jsonl.gz", b"not gzip");
        let e = load_dataset(&path, None, None).unwrap_err().to_string();
        assert!(e.contains("fake.jsonl.gz: cannot decompress"), "{e}");
        let e = load_dataset(&dir.path().join("missing.jsonl"), None, None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing.jsonl:"), "{e}");
    }

    #[test]
    fn field_errors_name_file_line_and_field() {
        let good = r#"{"prompt":"p","chosen":"c","rejected":"r"}"#;
        let cases: [(&str, &str, &str); 8] = [
            (
                r#"{"prompt":"p","rejected":"r"}"#,
                "field \"chosen\": missing",
                "std",
            ),
            (
                r#"{"prompt":"p","chosen":1,"rejected":"r"}"#,
                "field \"chosen\": expected a string, got number",
                "std",
            ),
            (
                r#"{"prompt":null,"chosen":"c","rejected":"r"}"#,
                "field \"prompt\": expected a string, got null",
                "std",
            ),
            (
                r#"{"prompt":"p","chosen":"c","rejected":"r","irr_hum":3}"#,
                "field \"irr_hum\": expected a string or a non-empty list of strings, got number",
                "probe",
            ),
            (
                r#"{"prompt":"p","chosen":"c","rejected":"r","irr_hum":[]}"#,
                "field \"irr_hum\": expected a string or a non-empty list of strings, got an empty list",
                "probe",
            ),
            (
                r#"{"prompt":"p","chosen":5,"rejected":[{"role":"assistant","content":"r"}]}"#,
                "field \"chosen\": expected a string or a list of messages, got number",
                "conv",
            ),
            (
                r#"{"prompt":"p","chosen":[{"content":"c"}],"rejected":[{"role":"assistant","content":"r"}]}"#,
                "field \"chosen[0].role\": missing",
                "conv",
            ),
            (
                r#"{"prompt":"p","chosen":[{"role":"assistant","content":{"x":1}}],"rejected":[{"role":"assistant","content":"r"}]}"#,
                "field \"chosen[0].content\": expected a string or a list of text parts, got object",
                "conv",
            ),
        ];
        for (bad, expected, kind) in cases {
            let first = match kind {
                "std" => good.to_string(),
                "probe" => r#"{"prompt":"p","chosen":"c","rejected":"r","irr_hum":"h"}"#.to_string(),
                _ => r#"{"prompt":"p","chosen":[{"role":"assistant","content":"c"}],"rejected":[{"role":"assistant","content":"r"}]}"#.to_string(),
            };
            let e = err_str("x.jsonl", &format!("{first}\n{bad}\n"));
            assert!(
                e.contains(&format!("x.jsonl:2: {expected}")),
                "expected {expected:?} in {e:?}"
            );
            assert!(!e.contains('\n'));
        }
    }

    #[test]
    fn conversational_errors() {
        let e = err_str(
            "c.jsonl",
            r#"{"chosen":[{"role":"user","content":"a"}],"rejected":[{"role":"user","content":"b"}]}"#,
        );
        assert!(
            e.contains("c.jsonl:1: field \"chosen\"") && e.contains("first messages differ"),
            "{e}"
        );
        let e = err_str(
            "c.jsonl",
            r#"{"chosen":[{"role":"user","content":"a"}],"rejected":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]}"#,
        );
        assert!(
            e.contains("c.jsonl:1: field \"chosen\": no response messages"),
            "{e}"
        );
        let e = err_str(
            "c.jsonl",
            r#"{"prompt":[],"chosen":[{"role":"assistant","content":"a"}],"rejected":[{"role":"assistant","content":"b"}]}"#,
        );
        assert!(e.contains("c.jsonl:1: field \"prompt\""), "{e}");
        let e = err_str(
            "c.jsonl",
            r#"{"prompt":"q","chosen":[{"role":"assistant","content":[{"type":"image","url":"x"}]}],"rejected":[{"role":"assistant","content":"b"}]}"#,
        );
        assert!(
            e.contains("field \"chosen[0].content[0]\": only text parts"),
            "{e}"
        );
    }

    #[test]
    fn bom_and_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = b"\xEF\xBB\xBF{\"prompt\":\"p\",\"chosen\":\"c\",\"rejected\":\"r\"}\n";
        let path = write(&dir, "bom.jsonl", bytes);
        let ds = load_dataset(&path, None, None).unwrap();
        assert_eq!(ds.records[0].prompt, "p");
        assert_eq!(ds.fingerprint, fingerprint_bytes(bytes));
        assert_eq!(ds.path, path);
        let again = parse_dataset(Path::new("embedded.jsonl"), bytes, None, None).unwrap();
        assert_eq!(again.records, ds.records);
    }
}
