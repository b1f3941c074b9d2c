//! Anthropic HH-RLHF: chosen and rejected `"\n\nHuman: …\n\nAssistant: …"` transcripts.

use serde_json::{Map, Value};

use super::{Cx, req_str};
use crate::data::DataError;

const HH_ASSISTANT: &str = "\n\nAssistant:";

pub(super) fn parse_hh(
    obj: &Map<String, Value>,
    cx: &Cx,
) -> Result<(String, String, String), DataError> {
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

#[cfg(test)]
mod tests {
    use std::io::Write;

    use crate::data::test_util::{err_str, write};
    use crate::data::{DataFormat, fingerprint_bytes, load_dataset};

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
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
}
