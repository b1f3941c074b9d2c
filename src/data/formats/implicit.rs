//! TRL's implicit prompt: chosen and rejected full texts whose longest common prefix is the
//! prompt.

use serde_json::{Map, Value};

use super::{Cx, req_str};
use crate::data::DataError;

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

pub(super) fn parse_implicit(
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

#[cfg(test)]
mod tests {
    use crate::data::DataFormat;
    use crate::data::test_util::{err_str, load_str};

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
}
