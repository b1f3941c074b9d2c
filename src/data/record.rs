//! [`PreferenceRecord`]: one parsed dataset record, whatever the file format: the prompt, the
//! chosen and rejected responses as plain text, and any other probe-schema families the record
//! gives, with its position in the file so later errors can point back at it.

use std::collections::BTreeMap;

use super::Family;

/// One (prompt, chosen, rejected) record of a dataset, already rendered to text.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PreferenceRecord {
    /// 0-based position among the records of the file.
    pub index: usize,
    /// 1-based line number in the file (for a JSON array file: the element index + 1).
    pub line: usize,
    pub prompt: String,
    pub chosen: String,
    pub rejected: String,
    /// Other probe-schema families given in the record (never Chosen, Rejected or Argmax).
    pub extras: BTreeMap<Family, String>,
}

impl PreferenceRecord {
    /// The response text of `family` in this record: chosen, rejected, or one of the extras.
    /// `None` for a family the record does not give (and always for Argmax).
    pub fn response(&self, family: Family) -> Option<&str> {
        match family {
            Family::Chosen => Some(&self.chosen),
            Family::Rejected => Some(&self.rejected),
            Family::Argmax => None,
            other => self.extras.get(&other).map(String::as_str),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_looks_up_every_family() {
        let mut extras = BTreeMap::new();
        extras.insert(Family::IrrHum, "The sky is blue.".to_string());
        let r = PreferenceRecord {
            index: 0,
            line: 1,
            prompt: "Q:".into(),
            chosen: " yes".into(),
            rejected: " no".into(),
            extras,
        };
        assert_eq!(r.response(Family::Chosen), Some(" yes"));
        assert_eq!(r.response(Family::Rejected), Some(" no"));
        assert_eq!(r.response(Family::IrrHum), Some("The sky is blue."));
        assert_eq!(r.response(Family::IrrTest), None);
        assert_eq!(r.response(Family::Argmax), None);
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"irr_hum\":\"The sky is blue.\""), "{json}");
        assert_eq!(serde_json::from_str::<PreferenceRecord>(&json).unwrap(), r);
    }
}
