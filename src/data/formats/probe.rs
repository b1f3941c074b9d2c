//! The authors' probe schema: prompt, chosen, rejected and the optional family responses.

use serde_json::{Map, Value};

use super::{Cx, req_str, required, type_name};
use crate::data::{DataError, Family};

/// The optional family keys of the probe schema (everything beyond prompt/chosen/rejected).
pub(super) const PROBE_EXTRA_KEYS: [Family; 10] = [
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

pub(super) type Parsed = (
    String,
    String,
    String,
    std::collections::BTreeMap<Family, String>,
);

pub(super) fn parse_probe(obj: &Map<String, Value>, cx: &Cx) -> Result<Parsed, DataError> {
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

#[cfg(test)]
mod tests {
    use crate::data::test_util::load_str;
    use crate::data::{DataFormat, Family};

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
}
