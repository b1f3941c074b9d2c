//! TRL's standard format: prompt, chosen and rejected strings, used verbatim.

use serde_json::{Map, Value};

use super::{Cx, req_str};
use crate::data::DataError;

pub(super) fn parse_standard(
    obj: &Map<String, Value>,
    cx: &Cx,
) -> Result<(String, String, String), DataError> {
    Ok((
        req_str(obj, "prompt", cx)?.to_string(),
        req_str(obj, "chosen", cx)?.to_string(),
        req_str(obj, "rejected", cx)?.to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use crate::data::DataFormat;
    use crate::data::test_util::load_str;

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
}
