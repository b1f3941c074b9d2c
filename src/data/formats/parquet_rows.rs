//! Parquet files (Hugging Face dataset exports: UltraFeedback binarized, TRL's preference
//! datasets): recognised by their magic bytes `PAR1`, read row by row with the `parquet` crate's
//! record API (snappy, gzip, zstd and lz4 pages). Only the columns a preference format uses are
//! read (`prompt`, `chosen`, `rejected` and the probe families), each row becoming the JSON
//! object a JSON Lines record would be — strings, numbers, lists and `{role, content}` structs
//! alike — so every format parses parquet rows with the same code as JSON lines. A record's
//! "line" is its 1-based row.

use std::collections::BTreeSet;
use std::sync::Arc;

use parquet::file::reader::FileReader;
use parquet::file::serialized_reader::SerializedFileReader;
use parquet::record::{Field, Row};
use parquet::schema::types::Type;
use serde_json::{Map, Value};

use super::{LineObject, probe};
use crate::data::{DataError, one_line};

/// The magic bytes a parquet file starts (and ends) with.
pub(super) const MAGIC: &[u8; 4] = b"PAR1";

/// The columns a preference format reads.
fn wanted() -> BTreeSet<&'static str> {
    let mut w: BTreeSet<&'static str> = ["prompt", "chosen", "rejected"].into();
    w.extend(probe::PROBE_EXTRA_KEYS.iter().map(|f| f.key()));
    w
}

/// A column's type as the error messages name it.
fn type_label(t: &Type) -> String {
    use parquet::basic::{ConvertedType, LogicalType};
    let info = t.get_basic_info();
    let logical = match info.logical_type_ref() {
        Some(LogicalType::String) => Some("string".to_string()),
        Some(LogicalType::List) => Some("list".to_string()),
        Some(LogicalType::Map) => Some("map".to_string()),
        Some(other) => Some(format!("{other:?}").to_lowercase()),
        None => match info.converted_type() {
            ConvertedType::UTF8 => Some("string".to_string()),
            ConvertedType::LIST => Some("list".to_string()),
            ConvertedType::MAP | ConvertedType::MAP_KEY_VALUE => Some("map".to_string()),
            _ => None,
        },
    };
    match (logical, t) {
        (Some(l), _) => l,
        (None, Type::GroupType { .. }) => "struct".to_string(),
        (None, Type::PrimitiveType { physical_type, .. }) => {
            format!("{physical_type}").to_lowercase()
        }
    }
}

/// The rows of a parquet file as JSON objects with their 1-based row numbers.
pub(super) fn read_rows(raw: &[u8], file: &str) -> Result<Vec<LineObject>, DataError> {
    let err = |msg: String| DataError::File {
        file: file.to_string(),
        msg,
    };
    let unreadable =
        |e: parquet::errors::ParquetError| err(format!("not a readable parquet file: {}", why(&e)));
    // The parquet reader is not hardened against every corrupt input: a panic in it is an error
    // about the file, not a crash.
    let bytes = bytes::Bytes::copy_from_slice(raw);
    let reader = quietly(|| SerializedFileReader::new(bytes))
        .map_err(|_| err("not a readable parquet file (its metadata is corrupt)".to_string()))?
        .map_err(unreadable)?;
    let root = reader
        .metadata()
        .file_metadata()
        .schema_descr()
        .root_schema();
    let wanted = wanted();
    let fields: Vec<Arc<Type>> = root
        .get_fields()
        .iter()
        .filter(|f| wanted.contains(f.name()))
        .cloned()
        .collect();
    let has = |name: &str| fields.iter().any(|f| f.name() == name);
    if !has("chosen") || !has("rejected") {
        let found: Vec<String> = root
            .get_fields()
            .iter()
            .map(|f| format!("\"{}\" ({})", f.name(), type_label(f)))
            .collect();
        let found = if found.is_empty() {
            "no columns".to_string()
        } else {
            format!("columns {}", found.join(", "))
        };
        let missing: Vec<&str> = ["chosen", "rejected"]
            .into_iter()
            .filter(|c| !has(c))
            .collect();
        return Err(err(format!(
            "no \"{}\" column{} ({found}); preference data needs \"chosen\" and \"rejected\" \
             (and usually \"prompt\"): strings or lists of {{role, content}} messages",
            missing.join("\" or \""),
            if missing.len() > 1 { "s" } else { "" },
        )));
    }
    // Every format reads these columns as text, or lists (of messages, or of texts).
    for f in &fields {
        let text_or_list = match f.as_ref() {
            Type::PrimitiveType { physical_type, .. } => {
                *physical_type == parquet::basic::Type::BYTE_ARRAY
            }
            Type::GroupType { .. } => type_label(f) == "list",
        };
        if !text_or_list {
            return Err(err(format!(
                "column \"{}\" holds {}; expected strings or lists (of {{role, content}} \
                 messages, or of strings)",
                f.name(),
                type_label(f)
            )));
        }
    }
    let projection = Type::group_type_builder(root.name())
        .with_fields(fields)
        .build()
        .map_err(unreadable)?;
    // Rows up to the first error (a corrupt page yields errors without end); no more rows than
    // the metadata declares.
    let declared = usize::try_from(reader.metadata().file_metadata().num_rows()).unwrap_or(0);
    let rows = quietly(|| {
        let mut out = Vec::new();
        for (i, row) in reader
            .get_row_iter(Some(projection))
            .map_err(unreadable)?
            .enumerate()
        {
            let n = i + 1;
            let row = row.map_err(|e| err(format!("row {n}: cannot read: {}", why(&e))))?;
            if n > declared {
                return Err(err(format!(
                    "more rows than the {declared} its metadata declares (a corrupt file)"
                )));
            }
            out.push((n, row_object(&row, n, file)?));
        }
        Ok(out)
    })
    .map_err(|_| err("not a readable parquet file (a data page is corrupt)".to_string()))?;
    let out = rows?;
    if out.is_empty() {
        return Err(err("contains no rows".to_string()));
    }
    Ok(out)
}

thread_local! {
    /// Set while this thread runs [`quietly`].
    static QUIET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f`, turning a panic into `Err(())` without the panic message (the parquet reader
/// panics on some corrupt pages; the caller reports the file instead). Panics of other threads
/// are reported as before.
fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, ()> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !QUIET.with(|q| q.get()) {
                previous(info);
            }
        }));
    });
    QUIET.with(|q| q.set(true));
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET.with(|q| q.set(false));
    r.map_err(|_| ())
}

/// A parquet error as one line.
fn why(e: &parquet::errors::ParquetError) -> String {
    let msg = one_line(&e.to_string());
    if msg.contains("Disabled feature") {
        format!("{msg} (this build reads snappy, gzip, zstd and lz4 pages)")
    } else {
        msg
    }
}

fn row_object(row: &Row, n: usize, file: &str) -> Result<Map<String, Value>, DataError> {
    row.get_column_iter()
        .map(|(name, f)| Ok((name.clone(), field_value(f, name, n, file)?)))
        .collect()
}

/// One parquet value as the JSON value a JSON Lines record would hold.
fn field_value(f: &Field, col: &str, n: usize, file: &str) -> Result<Value, DataError> {
    let number = |x: f64| serde_json::Number::from_f64(x).map_or(Value::Null, Value::Number);
    Ok(match f {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(x) => Value::from(*x),
        Field::Short(x) => Value::from(*x),
        Field::Int(x) => Value::from(*x),
        Field::Long(x) => Value::from(*x),
        Field::UByte(x) => Value::from(*x),
        Field::UShort(x) => Value::from(*x),
        Field::UInt(x) => Value::from(*x),
        Field::ULong(x) => Value::from(*x),
        Field::Float16(x) => number(f64::from(*x)),
        Field::Float(x) => number(f64::from(*x)),
        Field::Double(x) => number(*x),
        Field::Str(s) => Value::String(s.clone()),
        Field::Bytes(b) => match std::str::from_utf8(b.data()) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => {
                return Err(DataError::Field {
                    file: file.to_string(),
                    line: n,
                    field: col.to_string(),
                    msg: "binary data that is not UTF-8 text".to_string(),
                });
            }
        },
        Field::Group(row) => Value::Object(row_object(row, n, file)?),
        Field::ListInternal(list) => Value::Array(
            list.elements()
                .iter()
                .map(|e| field_value(e, col, n, file))
                .collect::<Result<_, _>>()?,
        ),
        Field::MapInternal(map) => {
            let mut obj = Map::new();
            for (k, v) in map.entries() {
                let key = match field_value(k, col, n, file)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                obj.insert(key, field_value(v, col, n, file)?);
            }
            Value::Object(obj)
        }
        // dates, times and decimals: as the reader prints them (no format uses them)
        other => Value::String(other.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use crate::data::test_util::{CHATML, write};
    use crate::data::{ChatTemplate, DataFormat, Dataset, load_dataset};

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name)
    }

    fn load(name: &str) -> Dataset {
        load_dataset(&fixture(name), None, None).unwrap()
    }

    fn err(path: &Path) -> String {
        load_dataset(path, None, None).unwrap_err().to_string()
    }

    /// The rows of tools/make_parquet_fixture.py's ultrafeedback_tiny.parquet.
    const UF: [(&str, &str, &str); 6] = [
        (
            "What is the capital of France?",
            "The capital of France is Paris.",
            "France's capital is Lyon, a city on the Rhone.",
        ),
        (
            "Write a haiku about the sea.",
            "Grey waves fold and break\nsalt wind combs the empty shore\nthe tide keeps its time",
            "The sea is big and blue and wet.",
        ),
        (
            "Explain in one sentence why the sky is blue.",
            "Air molecules scatter short blue wavelengths of sunlight far more than red ones, so blue light reaches us from every direction.",
            "Because it reflects the ocean.",
        ),
        (
            "Translate 'good morning' into Spanish.",
            "Buenos días.",
            "Buenas noches.",
        ),
        (
            "List three prime numbers greater than 10.",
            "11, 13 and 17.",
            "12, 15 and 21.",
        ),
        (
            "How many legs does a spider have?",
            "A spider has eight legs.",
            "Spiders have six legs, like other insects.",
        ),
    ];

    /// UltraFeedback binarized's schema: a string prompt, chosen/rejected message lists that
    /// repeat it; read as conversational records exactly as the same rows in JSON Lines are.
    #[test]
    fn ultrafeedback_rows_are_conversational_records_as_in_json_lines() {
        let ds = load("ultrafeedback_tiny.parquet");
        assert_eq!(ds.format, DataFormat::Conversational);
        assert_eq!(ds.records.len(), 6);
        for (i, (r, (p, c, j))) in ds.records.iter().zip(UF).enumerate() {
            assert_eq!((r.index, r.line), (i, i + 1));
            assert_eq!(r.prompt, format!("User: {p}\n\nAssistant:"));
            assert_eq!(r.chosen, format!(" {c}"));
            assert_eq!(r.rejected, format!(" {j}"));
            assert!(r.extras.is_empty());
        }
        let msgs = |p: &str, a: &str| serde_json::json!([{"content": p, "role": "user"}, {"content": a, "role": "assistant"}]);
        let jsonl: String = UF
            .iter()
            .map(|(p, c, j)| {
                serde_json::json!({"prompt": p, "prompt_id": "x", "chosen": msgs(p, c),
                    "rejected": msgs(p, j), "messages": msgs(p, c), "score_chosen": 9.0,
                    "score_rejected": 2.0})
                .to_string()
                    + "\n"
            })
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let chat = ChatTemplate::new(CHATML, "", "<|im_end|>").unwrap();
        let as_json = load_dataset(
            &write(&dir, "uf.jsonl", jsonl.as_bytes()),
            None,
            Some(&chat),
        )
        .unwrap();
        let as_parquet =
            load_dataset(&fixture("ultrafeedback_tiny.parquet"), None, Some(&chat)).unwrap();
        assert_eq!(as_parquet.records, as_json.records);
        assert!(
            as_parquet.records[0]
                .prompt
                .starts_with("<|im_start|>user\n")
        );
        // the fingerprint is the file's
        let raw = std::fs::read(fixture("ultrafeedback_tiny.parquet")).unwrap();
        assert_eq!(as_parquet.fingerprint, crate::data::fingerprint_bytes(&raw));
    }

    /// TRL's conversational format with message-list prompts: a system message and a
    /// multi-turn prompt.
    #[test]
    fn conversational_rows_with_system_and_multi_turn_prompts() {
        let ds = load("conversational_tiny.parquet");
        assert_eq!(ds.format, DataFormat::Conversational);
        let r = &ds.records;
        assert_eq!(
            r[0].prompt,
            "System: You are a terse assistant.\n\nUser: Name a colour of the rainbow.\n\nAssistant:"
        );
        assert_eq!(
            (r[0].chosen.as_str(), r[0].rejected.as_str()),
            (" Green.", " Rainbows have no colours.")
        );
        assert_eq!(
            r[1].prompt,
            "User: I have 3 apples.\n\nAssistant: Noted: 3 apples.\n\nUser: I eat one. How many are left?\n\nAssistant:"
        );
        assert_eq!(r[1].chosen, " 2 apples are left.");
        assert_eq!(r[2].rejected, " 2 + 2 = 5.");
    }

    /// String columns are TRL's standard format, verbatim, whatever the compression; other
    /// columns are not read.
    #[test]
    fn standard_rows_in_every_compression() {
        let ds = load("standard_tiny.parquet");
        assert_eq!(ds.format, DataFormat::Standard);
        assert_eq!(ds.records.len(), 4);
        assert_eq!(
            ds.records[0].prompt,
            "Q: the boiling point of water at sea level?\nA:"
        );
        assert_eq!(ds.records[0].chosen, " 100 degrees Celsius.");
        assert_eq!(ds.records[3].rejected, " Ag.");
        for other in ["gzip_standard.parquet", "zstd_standard.parquet"] {
            assert_eq!(load(other).records, ds.records, "{other}");
        }
    }

    /// A parquet without the preference columns names the columns it has; wrong column types
    /// name the row and the field; a corrupt or cut file is an error about the file, never a
    /// panic.
    #[test]
    fn bad_parquet_files_give_one_line_errors() {
        let e = err(&fixture("not_preferences.parquet"));
        assert!(
            e.contains("not_preferences.parquet: no \"chosen\" or \"rejected\" columns")
                && e.contains("columns \"text\" (string), \"label\" (int64)"),
            "{e}"
        );
        let e = err(&fixture("wrong_types.parquet"));
        assert!(
            e.contains(
                "wrong_types.parquet: column \"chosen\" holds int64; expected strings or lists"
            ),
            "{e}"
        );
        let raw = std::fs::read(fixture("ultrafeedback_tiny.parquet")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cut = write(&dir, "cut.parquet", &raw[..raw.len() / 2]);
        let e = err(&cut);
        assert!(
            e.contains("cut.parquet: not a readable parquet file"),
            "{e}"
        );
        let e = err(&write(&dir, "magic.parquet", b"PAR1"));
        assert!(
            e.contains("magic.parquet: not a readable parquet file"),
            "{e}"
        );
        // any byte flipped: an error or records, never a panic or a hang (a corrupt page made
        // the reader yield errors without end; others panic inside the parquet crate)
        for name in ["standard_tiny.parquet", "ultrafeedback_tiny.parquet"] {
            let raw = std::fs::read(fixture(name)).unwrap();
            let step = if name.starts_with("standard") { 1 } else { 5 };
            for k in (4..raw.len() - 8).step_by(step) {
                let mut bad = raw.clone();
                bad[k] ^= 0x5a;
                let p = write(&dir, "flipped.parquet", &bad);
                let t = std::time::Instant::now();
                if let Err(e) = load_dataset(&p, None, None) {
                    assert!(!e.to_string().contains('\n'), "{e}");
                }
                assert!(t.elapsed().as_secs() < 2, "{name} byte {k}: slow");
            }
        }
    }
}
