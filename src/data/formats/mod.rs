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
//! Parquet files (Hugging Face dataset exports, recognised by their magic bytes `PAR1`; snappy,
//! gzip, zstd or lz4 pages) are read row by row: the columns a format uses (`prompt`, `chosen`,
//! `rejected` and the probe families) become the JSON object a line would hold, strings,
//! numbers, lists and `{role, content}` structs alike, and go through the same format code. Their
//! errors say `row N` (1-based) where a line number would be, and a record's line is its row.
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

mod conversational;
mod hh;
mod implicit;
mod parquet_rows;
mod probe;
mod standard;

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde_json::{Map, Value};

pub use super::chat_template::{ChatTemplate, Message};
pub use conversational::format_prompt;

use super::{DataError, PreferenceRecord, fingerprint_bytes, one_line};

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

/// A parsed dataset file.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Dataset {
    pub path: PathBuf,
    pub format: DataFormat,
    pub records: Vec<PreferenceRecord>,
    /// SHA-256 hex of the file bytes (as stored, i.e. before decompression).
    pub fingerprint: String,
}

/// Detects the format from the first record (see the module documentation); `None` when the
/// keys fit no supported format.
pub fn detect_format(first: &Map<String, Value>) -> Option<DataFormat> {
    if probe::PROBE_EXTRA_KEYS
        .iter()
        .any(|f| first.contains_key(f.key()))
    {
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
    let parquet = raw.starts_with(parquet_rows::MAGIC);
    let bytes = if parquet {
        raw
    } else if gz {
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
    let objects = if parquet {
        parquet_rows::read_rows(bytes, &file).map_err(as_row)?
    } else {
        read_objects(bytes, &file)?
    };
    let parsed = records_of(&objects, &file, format, chat);
    // a parquet record's "line" is its row: say so
    let (format, records) = if parquet {
        parsed.map_err(as_row)?
    } else {
        parsed?
    };
    Ok(Dataset {
        path: path.to_path_buf(),
        format,
        records,
        fingerprint,
    })
}

/// The records of the file's objects in `format` (detected from the first when `None`).
fn records_of(
    objects: &[LineObject],
    file: &str,
    format: Option<DataFormat>,
    chat: Option<&ChatTemplate>,
) -> Result<(DataFormat, Vec<PreferenceRecord>), DataError> {
    let Some((first_line, first)) = objects.first() else {
        return Err(DataError::File {
            file: file.to_string(),
            msg: "contains no records".to_string(),
        });
    };
    let format = match format {
        Some(f) => f,
        None => detect_format(first).ok_or_else(|| undetectable(file, *first_line, first))?,
    };
    let mut records = Vec::with_capacity(objects.len());
    for (index, (line, obj)) in objects.iter().enumerate() {
        let cx = Cx { file, line: *line };
        let (prompt, chosen, rejected, extras) = match format {
            DataFormat::Probe => probe::parse_probe(obj, &cx)?,
            DataFormat::Standard => {
                let (p, c, r) = standard::parse_standard(obj, &cx)?;
                (p, c, r, Default::default())
            }
            DataFormat::Implicit => {
                let (p, c, r) = implicit::parse_implicit(obj, &cx)?;
                (p, c, r, Default::default())
            }
            DataFormat::Conversational => {
                let (p, c, r) = conversational::parse_conversational(obj, &cx, chat)?;
                (p, c, r, Default::default())
            }
            DataFormat::Hh => {
                let (p, c, r) = hh::parse_hh(obj, &cx)?;
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
    Ok((format, records))
}

/// An error about a parquet file's record: its number is a row, not a line.
fn as_row(e: DataError) -> DataError {
    match e {
        DataError::Line { file, line, msg } => DataError::File {
            file,
            msg: format!("row {line}: {msg}"),
        },
        DataError::Field {
            file,
            line,
            field,
            msg,
        } => DataError::File {
            file,
            msg: format!("row {line}: field \"{field}\": {msg}"),
        },
        e => e,
    }
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

/// A `serde_json` error as one line naming the file and the line (shared with the chat template
/// loader).
pub(super) fn json_error(file: &str, e: &serde_json::Error) -> DataError {
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
pub(super) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::test_util::{err_str, load_str, write};

    /// A missing file is named with the reason once, also when printed as an error chain
    /// (`{:#}`, as the CLI does).
    #[test]
    fn missing_file_names_the_path_and_reason_once() {
        let err = load_dataset(Path::new("/no/such/prefs.jsonl"), None, None).unwrap_err();
        let chain = format!("{:#}", anyhow::Error::from(err));
        assert!(chain.starts_with("/no/such/prefs.jsonl: "), "{chain}");
        assert_eq!(chain.matches("os error").count(), 1, "{chain}");
    }

    fn obj(json: &str) -> Map<String, Value> {
        match serde_json::from_str(json).unwrap() {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
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
