//! The response families the authors track on every probe prompt, their
//! probe-file keys, plain-text symbols, and the groups the plots colour them by.

use std::fmt;
use std::str::FromStr;

use super::DataError;

/// One kind of response scored as log π(y | x_u) on a probe prompt x_u.
///
/// Serialized (and keyed in probe files) by [`Family::key`]; [`Family::ALL`] is the canonical
/// order used for columns, legends and [`super::ProbeSet::families`].
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// y_u⁺: the preferred response.
    Chosen,
    /// y_u⁻: the dispreferred response.
    Rejected,
    /// y_init: a sample from the base model.
    ChosenInitial,
    /// y_gpts⁺: the chosen response reworded, same meaning.
    ChosenGptsemantic,
    /// y_gptf⁺: the chosen response's format, different facts.
    ChosenGptformat,
    /// y_gpts⁻: the rejected response reworded, same meaning.
    RejectGptsemantic,
    /// y_gptf⁻: the rejected response's format, different facts.
    RejectGptformat,
    /// y_{j≠u}⁺: the chosen response of another training prompt.
    IrrTrain,
    /// y_test⁺: the chosen response of a held-out prompt.
    IrrTest,
    /// y_hum: an unrelated human-written sentence of similar length.
    IrrHum,
    /// y_urnd⁺: the words of y_u⁺ shuffled.
    RandomPermute,
    /// y_rnd: the words of y_test⁺ shuffled (of irr_train's response when there are no test
    /// records).
    RandomNonhum,
    /// y*: the teacher-forced greedy response along y_u⁺ (computed from the chosen logits).
    Argmax,
}

/// The coarse groups families are coloured by in plots.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum FamilyGroup {
    /// chosen, chosen_initial, chosen_gptsemantic, chosen_gptformat.
    ChosenLike,
    /// rejected, reject_gptsemantic, reject_gptformat.
    RejectedLike,
    /// irr_train, irr_test, irr_hum.
    Unrelated,
    /// random_permute, random_nonhum.
    NonHuman,
    /// argmax (y*).
    Argmax,
}

impl Family {
    /// Every family, in canonical order.
    pub const ALL: [Family; 13] = [
        Family::Chosen,
        Family::Rejected,
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
        Family::Argmax,
    ];

    /// The authors' probe-schema key, e.g. `"reject_gptsemantic"`.
    pub fn key(self) -> &'static str {
        match self {
            Family::Chosen => "chosen",
            Family::Rejected => "rejected",
            Family::ChosenInitial => "chosen_initial",
            Family::ChosenGptsemantic => "chosen_gptsemantic",
            Family::ChosenGptformat => "chosen_gptformat",
            Family::RejectGptsemantic => "reject_gptsemantic",
            Family::RejectGptformat => "reject_gptformat",
            Family::IrrTrain => "irr_train",
            Family::IrrTest => "irr_test",
            Family::IrrHum => "irr_hum",
            Family::RandomPermute => "random_permute",
            Family::RandomNonhum => "random_nonhum",
            Family::Argmax => "argmax",
        }
    }

    /// The family with this probe-schema key.
    pub fn from_key(s: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.key() == s)
    }

    /// The plot group of this family.
    pub fn group(self) -> FamilyGroup {
        match self {
            Family::Chosen
            | Family::ChosenInitial
            | Family::ChosenGptsemantic
            | Family::ChosenGptformat => FamilyGroup::ChosenLike,
            Family::Rejected | Family::RejectGptsemantic | Family::RejectGptformat => {
                FamilyGroup::RejectedLike
            }
            Family::IrrTrain | Family::IrrTest | Family::IrrHum => FamilyGroup::Unrelated,
            Family::RandomPermute | Family::RandomNonhum => FamilyGroup::NonHuman,
            Family::Argmax => FamilyGroup::Argmax,
        }
    }

    /// The paper's symbol in plain text (no markup), e.g. `"y_u+"`, `"y_j≠u+"`, `"y*"`.
    pub fn label(self) -> &'static str {
        match self {
            Family::Chosen => "y_u+",
            Family::Rejected => "y_u-",
            Family::ChosenInitial => "y_init",
            Family::ChosenGptsemantic => "y_gpts+",
            Family::ChosenGptformat => "y_gptf+",
            Family::RejectGptsemantic => "y_gpts-",
            Family::RejectGptformat => "y_gptf-",
            Family::IrrTrain => "y_j≠u+",
            Family::IrrTest => "y_test+",
            Family::IrrHum => "y_hum",
            Family::RandomPermute => "y_urnd+",
            Family::RandomNonhum => "y_rnd",
            Family::Argmax => "y*",
        }
    }

    /// A one-line description of the family, for tooltips and legends.
    pub fn description(self) -> &'static str {
        match self {
            Family::Chosen => "the preferred response",
            Family::Rejected => "the dispreferred response",
            Family::ChosenInitial => "a sample from the base model",
            Family::ChosenGptsemantic => "the chosen response reworded, same meaning",
            Family::ChosenGptformat => "the chosen response's format, different facts",
            Family::RejectGptsemantic => "the rejected response reworded, same meaning",
            Family::RejectGptformat => "the rejected response's format, different facts",
            Family::IrrTrain => "the chosen response of another training prompt",
            Family::IrrTest => "the chosen response of a held-out prompt",
            Family::IrrHum => "an unrelated human-written sentence of similar length",
            Family::RandomPermute => "the words of the chosen response shuffled",
            Family::RandomNonhum => {
                "the words of a held-out chosen response shuffled (another training prompt's without held-out records)"
            }
            Family::Argmax => "teacher-forced greedy response along the chosen response",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

impl FromStr for Family {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Family::from_key(s.trim()).ok_or_else(|| {
            let keys: Vec<&str> = Family::ALL.iter().map(|f| f.key()).collect();
            DataError::Invalid(format!(
                "unknown response family \"{s}\"; expected one of: {}",
                keys.join(", ")
            ))
        })
    }
}

impl FamilyGroup {
    /// Every group, in plot order.
    pub const ALL: [FamilyGroup; 5] = [
        FamilyGroup::ChosenLike,
        FamilyGroup::RejectedLike,
        FamilyGroup::Unrelated,
        FamilyGroup::NonHuman,
        FamilyGroup::Argmax,
    ];

    /// Snake-case key, e.g. `"chosen_like"` (also the serde name).
    pub fn key(self) -> &'static str {
        match self {
            FamilyGroup::ChosenLike => "chosen_like",
            FamilyGroup::RejectedLike => "rejected_like",
            FamilyGroup::Unrelated => "unrelated",
            FamilyGroup::NonHuman => "non_human",
            FamilyGroup::Argmax => "argmax",
        }
    }

    /// Human-readable name for legends, e.g. `"chosen-like"`.
    pub fn label(self) -> &'static str {
        match self {
            FamilyGroup::ChosenLike => "chosen-like",
            FamilyGroup::RejectedLike => "rejected-like",
            FamilyGroup::Unrelated => "unrelated",
            FamilyGroup::NonHuman => "non-human",
            FamilyGroup::Argmax => "argmax (y*)",
        }
    }

    /// The families of this group, in canonical order.
    pub fn families(self) -> impl Iterator<Item = Family> {
        Family::ALL.into_iter().filter(move |f| f.group() == self)
    }
}

impl fmt::Display for FamilyGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key())
    }
}

impl FromStr for FamilyGroup {
    type Err = DataError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        FamilyGroup::ALL
            .into_iter()
            .find(|g| g.key() == s)
            .ok_or_else(|| {
                DataError::Invalid(format!(
                    "unknown family group \"{s}\"; expected one of: chosen_like, rejected_like, \
                     unrelated, non_human, argmax"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_in_canonical_order() {
        let keys: Vec<&str> = Family::ALL.iter().map(|f| f.key()).collect();
        assert_eq!(
            keys,
            [
                "chosen",
                "rejected",
                "chosen_initial",
                "chosen_gptsemantic",
                "chosen_gptformat",
                "reject_gptsemantic",
                "reject_gptformat",
                "irr_train",
                "irr_test",
                "irr_hum",
                "random_permute",
                "random_nonhum",
                "argmax"
            ]
        );
        for f in Family::ALL {
            assert_eq!(Family::from_key(f.key()), Some(f));
            assert_eq!(f.to_string().parse::<Family>().ok(), Some(f));
            // serde name == key
            let json = serde_json::to_string(&f).unwrap();
            assert_eq!(json, format!("\"{}\"", f.key()));
            assert_eq!(serde_json::from_str::<Family>(&json).unwrap(), f);
        }
        // canonical order is also the Ord order (BTreeMap iteration follows it)
        let mut sorted = Family::ALL;
        sorted.sort();
        assert_eq!(sorted, Family::ALL);
        assert_eq!(Family::from_key("rejected_gptsemantic"), None);
    }

    #[test]
    fn unknown_family_error_lists_keys() {
        let err = "choosen".parse::<Family>().unwrap_err().to_string();
        assert!(err.contains("\"choosen\""), "{err}");
        assert!(err.contains("random_nonhum"), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn groups_and_labels() {
        assert_eq!(Family::Chosen.group(), FamilyGroup::ChosenLike);
        assert_eq!(Family::ChosenInitial.group(), FamilyGroup::ChosenLike);
        assert_eq!(Family::ChosenGptformat.group(), FamilyGroup::ChosenLike);
        assert_eq!(Family::Rejected.group(), FamilyGroup::RejectedLike);
        assert_eq!(Family::RejectGptsemantic.group(), FamilyGroup::RejectedLike);
        assert_eq!(Family::IrrHum.group(), FamilyGroup::Unrelated);
        assert_eq!(Family::RandomNonhum.group(), FamilyGroup::NonHuman);
        assert_eq!(Family::Argmax.group(), FamilyGroup::Argmax);
        assert_eq!(Family::Chosen.label(), "y_u+");
        assert_eq!(Family::Rejected.label(), "y_u-");
        assert_eq!(Family::Argmax.label(), "y*");
        let unrelated: Vec<Family> = FamilyGroup::Unrelated.families().collect();
        assert_eq!(
            unrelated,
            [Family::IrrTrain, Family::IrrTest, Family::IrrHum]
        );
        let total: usize = FamilyGroup::ALL.iter().map(|g| g.families().count()).sum();
        assert_eq!(total, Family::ALL.len());
        for g in FamilyGroup::ALL {
            assert_eq!(g.key().parse::<FamilyGroup>().unwrap(), g);
            assert_eq!(
                serde_json::to_string(&g).unwrap(),
                format!("\"{}\"", g.key())
            );
        }
    }
}
