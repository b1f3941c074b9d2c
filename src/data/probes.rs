//! Probe sets: which prompts are probed during training and which response families each is
//! scored on.
//!
//! [`split_test`] holds out the last records of a dataset as test records. [`build_probe_set`]
//! takes the first N training records (file order) as probes and fills every family:
//! - chosen and rejected always;
//! - each other family the data gives for every probe record;
//! - derived families, when the data does not give them (or gives them for only some probe
//!   records, in which case only the missing ones are derived):
//!   - `irr_train`: the chosen response of the next probe, cyclically (probe i gets probe
//!     (i + 1) mod n's); with a single probe, the chosen response of the next training record,
//!     and no `irr_train` when there is none;
//!   - `irr_test`: the chosen response of test record i mod (number of test records), only when
//!     there are test records;
//!   - `random_permute`: the whitespace-separated words of the chosen response, shuffled by a
//!     `StdRng` seeded from (seed, probe index) and joined by single spaces, with a leading space
//!     when the chosen response starts with whitespace;
//!   - `random_nonhum`: the same for the words of `irr_test` (or `irr_train` without it), from a
//!     different random stream.
//!
//! A family that some probe records give and others lack is an error when it cannot be derived.
//! `argmax` (y*) is always listed last; the model computes it from the chosen logits.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::{DataError, Family, PreferenceRecord};

/// How many training records become probes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ProbeCount {
    N(usize),
    All,
}

impl FromStr for ProbeCount {
    type Err = DataError;

    /// `"all"` (any case) or a positive integer.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("all") {
            return Ok(ProbeCount::All);
        }
        match t.parse::<usize>() {
            Ok(0) => Err(DataError::Invalid(
                "probe count must be positive (or \"all\"), got 0".to_string(),
            )),
            Ok(n) => Ok(ProbeCount::N(n)),
            Err(_) => Err(DataError::Invalid(format!(
                "probe count must be a positive integer or \"all\", got \"{s}\""
            ))),
        }
    }
}

impl fmt::Display for ProbeCount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeCount::N(n) => write!(f, "{n}"),
            ProbeCount::All => f.write_str("all"),
        }
    }
}

/// One probe prompt and the responses scored on it.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct Probe {
    /// Index of the record in the dataset file.
    pub index: usize,
    pub prompt: String,
    /// Every family of the probe set but Argmax.
    pub responses: BTreeMap<Family, String>,
}

impl Probe {
    /// The response text of `family` (`None` for Argmax and families not in the set).
    pub fn response(&self, family: Family) -> Option<&str> {
        self.responses.get(&family).map(String::as_str)
    }
}

/// The probes and the families each of them is scored on.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ProbeSet {
    /// The families, in canonical order, always ending with Argmax.
    pub families: Vec<Family>,
    pub probes: Vec<Probe>,
}

impl ProbeSet {
    pub fn len(&self) -> usize {
        self.probes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.probes.is_empty()
    }

    /// The families with a response text (every one but Argmax).
    pub fn text_families(&self) -> impl Iterator<Item = Family> + '_ {
        self.families
            .iter()
            .copied()
            .filter(|f| *f != Family::Argmax)
    }
}

/// Splits off the last ⌈fraction · n⌉ records as test records: `(train, test)`.
///
/// `test_fraction` must be in [0, 1) and leave at least one training record. The product is
/// rounded up with a 1e-9 tolerance, so 0.1 of 30 holds out 3 records, not 4.
pub fn split_test(
    mut records: Vec<PreferenceRecord>,
    test_fraction: f64,
) -> Result<(Vec<PreferenceRecord>, Vec<PreferenceRecord>), DataError> {
    if !(0.0..1.0).contains(&test_fraction) {
        return Err(DataError::Invalid(format!(
            "test fraction must be in [0, 1), got {test_fraction}"
        )));
    }
    let n = records.len();
    let held = (test_fraction * n as f64 - 1e-9).ceil().max(0.0) as usize;
    if held >= n {
        return Err(DataError::Invalid(format!(
            "holding out {held} of {n} records for testing (fraction {test_fraction}) leaves no \
             training records"
        )));
    }
    let test = records.split_off(n - held);
    Ok((records, test))
}

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
const NONHUM_STREAM: u64 = 0xD1B5_4A32_D192_ED03;

/// Shuffles the whitespace-separated words of `text` with the stream for (seed, index, stream).
fn shuffle_words(text: &str, seed: u64, index: usize, stream: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed ^ (index as u64).wrapping_mul(GOLDEN) ^ stream);
    let mut words: Vec<&str> = text.split_whitespace().collect();
    words.shuffle(&mut rng);
    let joined = words.join(" ");
    if text.starts_with(char::is_whitespace) {
        format!(" {joined}")
    } else {
        joined
    }
}

/// Builds the probe set (see the module documentation).
pub fn build_probe_set(
    train: &[PreferenceRecord],
    test: &[PreferenceRecord],
    count: ProbeCount,
    seed: u64,
) -> Result<ProbeSet, DataError> {
    let n = match count {
        ProbeCount::All => train.len(),
        ProbeCount::N(0) => {
            return Err(DataError::Invalid(
                "probe count must be positive (or \"all\"), got 0".to_string(),
            ));
        }
        ProbeCount::N(k) => k.min(train.len()),
    };
    if n == 0 {
        return Err(DataError::Invalid(
            "no training records to take probes from".to_string(),
        ));
    }
    let records = &train[..n];
    let mut responses: Vec<BTreeMap<Family, String>> = records
        .iter()
        .map(|r| {
            BTreeMap::from([
                (Family::Chosen, r.chosen.clone()),
                (Family::Rejected, r.rejected.clone()),
            ])
        })
        .collect();
    let mut families = vec![Family::Chosen, Family::Rejected];
    for family in Family::ALL {
        if matches!(family, Family::Chosen | Family::Rejected | Family::Argmax) {
            continue;
        }
        let given = records
            .iter()
            .filter(|r| r.extras.contains_key(&family))
            .count();
        let derivable = match family {
            Family::IrrTrain => n > 1 || train.len() > 1,
            Family::IrrTest => !test.is_empty(),
            Family::RandomPermute => true,
            Family::RandomNonhum => {
                families.contains(&Family::IrrTest) || families.contains(&Family::IrrTrain)
            }
            _ => false,
        };
        if given == 0 && !derivable {
            continue;
        }
        if given < n && !derivable {
            let (pos, lacking) = records
                .iter()
                .enumerate()
                .find(|(_, r)| !r.extras.contains_key(&family))
                .ok_or_else(|| DataError::Invalid("inconsistent probe families".to_string()))?;
            return Err(DataError::Invalid(format!(
                "line {}: probe record {} lacks \"{}\", which {given} of the {n} probe records \
                 give and which cannot be derived; give it in every probe record or in none",
                lacking.line,
                pos + 1,
                family.key()
            )));
        }
        for (i, record) in records.iter().enumerate() {
            let text = match record.extras.get(&family) {
                Some(text) => text.clone(),
                None => derive(family, i, records, train, test, &responses[i], seed)?,
            };
            responses[i].insert(family, text);
        }
        families.push(family);
    }
    families.push(Family::Argmax);
    let probes = records
        .iter()
        .zip(responses)
        .map(|(r, responses)| Probe {
            index: r.index,
            prompt: r.prompt.clone(),
            responses,
        })
        .collect();
    Ok(ProbeSet { families, probes })
}

/// The derived text of `family` for probe `i` (only called for derivable families).
fn derive(
    family: Family,
    i: usize,
    probes: &[PreferenceRecord],
    train: &[PreferenceRecord],
    test: &[PreferenceRecord],
    so_far: &BTreeMap<Family, String>,
    seed: u64,
) -> Result<String, DataError> {
    let missing = || {
        DataError::Invalid(format!(
            "cannot derive \"{}\" for probe record {}",
            family.key(),
            i + 1
        ))
    };
    match family {
        Family::IrrTrain => {
            let other = if probes.len() > 1 {
                probes.get((i + 1) % probes.len())
            } else {
                train.get(1)
            };
            other.map(|r| r.chosen.clone()).ok_or_else(missing)
        }
        Family::IrrTest => {
            if test.is_empty() {
                return Err(missing());
            }
            Ok(test[i % test.len()].chosen.clone())
        }
        Family::RandomPermute => Ok(shuffle_words(&probes[i].chosen, seed, i, 0)),
        Family::RandomNonhum => so_far
            .get(&Family::IrrTest)
            .or_else(|| so_far.get(&Family::IrrTrain))
            .map(|source| shuffle_words(source, seed, i, NONHUM_STREAM))
            .ok_or_else(missing),
        _ => Err(missing()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(index: usize, chosen: &str) -> PreferenceRecord {
        PreferenceRecord {
            index,
            line: index + 1,
            prompt: format!("P{index}"),
            chosen: chosen.to_string(),
            rejected: format!(" R{index}"),
            extras: BTreeMap::new(),
        }
    }

    fn records(n: usize) -> Vec<PreferenceRecord> {
        (0..n)
            .map(|i| rec(i, &format!(" the answer number {i} is here")))
            .collect()
    }

    fn sorted_words(s: &str) -> Vec<&str> {
        let mut w: Vec<&str> = s.split_whitespace().collect();
        w.sort_unstable();
        w
    }

    #[test]
    fn probe_count_parses() {
        assert_eq!("all".parse::<ProbeCount>().unwrap(), ProbeCount::All);
        assert_eq!("ALL".parse::<ProbeCount>().unwrap(), ProbeCount::All);
        assert_eq!(" 8 ".parse::<ProbeCount>().unwrap(), ProbeCount::N(8));
        assert!(
            "0".parse::<ProbeCount>()
                .unwrap_err()
                .to_string()
                .contains("positive")
        );
        assert!("-3".parse::<ProbeCount>().is_err());
        assert!(
            "ten"
                .parse::<ProbeCount>()
                .unwrap_err()
                .to_string()
                .contains("\"ten\"")
        );
        assert_eq!(ProbeCount::N(5).to_string(), "5");
        assert_eq!(ProbeCount::All.to_string(), "all");
    }

    #[test]
    fn split_holds_out_the_last_records() {
        let (train, test) = split_test(records(10), 0.25).unwrap();
        assert_eq!(train.len(), 7);
        assert_eq!(test.len(), 3);
        assert_eq!(test[0].index, 7);
        assert_eq!(train.last().unwrap().index, 6);
        let (train, test) = split_test(records(30), 0.1).unwrap();
        assert_eq!((train.len(), test.len()), (27, 3));
        let (train, test) = split_test(records(4), 0.0).unwrap();
        assert_eq!((train.len(), test.len()), (4, 0));
        assert!(split_test(records(4), 1.0).is_err());
        assert!(split_test(records(4), -0.1).is_err());
        assert!(split_test(records(4), f64::NAN).is_err());
        let e = split_test(records(1), 0.5).unwrap_err().to_string();
        assert!(e.contains("leaves no training records"), "{e}");
    }

    #[test]
    fn derives_families_from_plain_pairs() {
        let (train, test) = split_test(records(6), 0.34).unwrap();
        assert_eq!((train.len(), test.len()), (3, 3));
        let set = build_probe_set(&train, &test, ProbeCount::N(3), 7).unwrap();
        assert_eq!(
            set.families,
            [
                Family::Chosen,
                Family::Rejected,
                Family::IrrTrain,
                Family::IrrTest,
                Family::RandomPermute,
                Family::RandomNonhum,
                Family::Argmax
            ]
        );
        assert_eq!(set.len(), 3);
        for (i, p) in set.probes.iter().enumerate() {
            assert_eq!(p.index, i);
            assert_eq!(p.prompt, format!("P{i}"));
            assert_eq!(p.responses.len(), set.families.len() - 1);
            assert!(!p.responses.contains_key(&Family::Argmax));
            // cyclic irr_train
            assert_eq!(
                p.response(Family::IrrTrain),
                Some(train[(i + 1) % 3].chosen.as_str())
            );
            assert_eq!(p.response(Family::IrrTest), Some(test[i].chosen.as_str()));
            let permuted = p.response(Family::RandomPermute).unwrap();
            assert!(permuted.starts_with(' ') && !permuted.starts_with("  "));
            assert_eq!(sorted_words(permuted), sorted_words(&train[i].chosen));
            let nonhum = p.response(Family::RandomNonhum).unwrap();
            assert_eq!(sorted_words(nonhum), sorted_words(&test[i].chosen));
        }
        assert_eq!(
            set.text_families().collect::<Vec<_>>(),
            &set.families[..set.families.len() - 1]
        );
    }

    #[test]
    fn shuffles_are_deterministic_per_seed() {
        let train: Vec<PreferenceRecord> = (0..2)
            .map(|i| {
                rec(
                    i,
                    "one two three four five six seven eight nine ten eleven twelve",
                )
            })
            .collect();
        let a = build_probe_set(&train, &[], ProbeCount::All, 42).unwrap();
        let b = build_probe_set(&train, &[], ProbeCount::All, 42).unwrap();
        let c = build_probe_set(&train, &[], ProbeCount::All, 43).unwrap();
        assert_eq!(a, b);
        let perm = |s: &ProbeSet, i: usize| s.probes[i].responses[&Family::RandomPermute].clone();
        assert_ne!(perm(&a, 0), perm(&c, 0));
        // different probes get different streams even with equal text
        assert_ne!(perm(&a, 0), perm(&a, 1));
        // no leading space when chosen has none
        assert!(!perm(&a, 0).starts_with(' '));
        assert_eq!(perm(&a, 0).split(' ').count(), 12);
        // exact value: the documented seeding, reproduced here
        assert_eq!(perm(&a, 1), shuffle_words(&train[1].chosen, 42, 1, 0));
        let mut rng = StdRng::seed_from_u64(42 ^ 0x9E37_79B9_7F4A_7C15);
        let mut words: Vec<&str> = train[1].chosen.split_whitespace().collect();
        words.shuffle(&mut rng);
        assert_eq!(perm(&a, 1), words.join(" "));
        // nonhum uses irr_train without test records, on another stream
        let nonhum = &a.probes[1].responses[&Family::RandomNonhum];
        assert_eq!(sorted_words(nonhum), sorted_words(&train[0].chosen));
        assert_ne!(nonhum, &perm(&a, 0));
    }

    #[test]
    fn irr_test_only_with_test_records() {
        let train = records(3);
        let set = build_probe_set(&train, &[], ProbeCount::All, 0).unwrap();
        assert_eq!(
            set.families,
            [
                Family::Chosen,
                Family::Rejected,
                Family::IrrTrain,
                Family::RandomPermute,
                Family::RandomNonhum,
                Family::Argmax
            ]
        );
        assert!(
            set.probes
                .iter()
                .all(|p| p.response(Family::IrrTest).is_none())
        );
        // test records cycle when there are fewer than probes
        let test = vec![rec(10, " held out")];
        let set = build_probe_set(&train, &test, ProbeCount::All, 0).unwrap();
        assert!(set.families.contains(&Family::IrrTest));
        assert!(
            set.probes
                .iter()
                .all(|p| p.response(Family::IrrTest) == Some(" held out"))
        );
        assert_eq!(set.families.last(), Some(&Family::Argmax));
    }

    #[test]
    fn single_probe_irr_train() {
        let train = records(3);
        let set = build_probe_set(&train, &[], ProbeCount::N(1), 0).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(
            set.probes[0].response(Family::IrrTrain),
            Some(train[1].chosen.as_str())
        );
        // one training record and no test records: no irr_train, hence no random_nonhum
        let set = build_probe_set(&train[..1], &[], ProbeCount::N(5), 0).unwrap();
        assert_eq!(
            set.families,
            [
                Family::Chosen,
                Family::Rejected,
                Family::RandomPermute,
                Family::Argmax
            ]
        );
    }

    #[test]
    fn count_larger_than_available_uses_all() {
        let train = records(4);
        let set = build_probe_set(&train, &[], ProbeCount::N(100), 0).unwrap();
        assert_eq!(set.len(), 4);
        let set = build_probe_set(&train, &[], ProbeCount::N(2), 0).unwrap();
        assert_eq!(set.len(), 2);
        // irr_train cycles within the probes, not the training set
        assert_eq!(
            set.probes[1].response(Family::IrrTrain),
            Some(train[0].chosen.as_str())
        );
        assert!(build_probe_set(&[], &[], ProbeCount::All, 0).is_err());
        assert!(build_probe_set(&train, &[], ProbeCount::N(0), 0).is_err());
    }

    #[test]
    fn given_families_are_kept_and_partial_ones_derived_or_rejected() {
        let mut train = records(3);
        for r in &mut train {
            r.extras
                .insert(Family::IrrHum, format!(" human {}", r.index));
        }
        train[0]
            .extras
            .insert(Family::IrrTrain, " given irr".to_string());
        train[1]
            .extras
            .insert(Family::RandomPermute, " given perm".to_string());
        let set = build_probe_set(&train, &[], ProbeCount::All, 1).unwrap();
        assert_eq!(
            set.families,
            [
                Family::Chosen,
                Family::Rejected,
                Family::IrrTrain,
                Family::IrrHum,
                Family::RandomPermute,
                Family::RandomNonhum,
                Family::Argmax
            ]
        );
        assert_eq!(set.probes[2].response(Family::IrrHum), Some(" human 2"));
        assert_eq!(set.probes[0].response(Family::IrrTrain), Some(" given irr"));
        assert_eq!(
            set.probes[1].response(Family::IrrTrain),
            Some(train[2].chosen.as_str())
        );
        assert_eq!(
            set.probes[1].response(Family::RandomPermute),
            Some(" given perm")
        );
        // random_nonhum follows the given irr_train text
        assert_eq!(
            sorted_words(set.probes[0].response(Family::RandomNonhum).unwrap()),
            ["given", "irr"]
        );

        // a non-derivable family given by only some probes is an error naming the first gap
        train[0]
            .extras
            .insert(Family::ChosenGptsemantic, " para".to_string());
        train[2]
            .extras
            .insert(Family::ChosenGptsemantic, " para".to_string());
        let e = build_probe_set(&train, &[], ProbeCount::All, 1)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("line 2: probe record 2 lacks \"chosen_gptsemantic\""),
            "{e}"
        );
        assert!(e.contains("2 of the 3"), "{e}");
        // ... unless that record is not a probe
        let set = build_probe_set(&train, &[], ProbeCount::N(1), 1).unwrap();
        assert!(set.families.contains(&Family::ChosenGptsemantic));
    }
}
