//! The events a run produces, which are also the records of a run file (one JSON object per
//! line, tagged by "type"). See RUNFILE.md for the documented format.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::config::{Algo, InfluenceTarget, OptimKind, TrainConfig};
use super::trace::{Diag, ProbeTrace};
use crate::data::{DataFormat, Family};

/// Format name and version written in every header.
pub const FORMAT: &str = "ldviz-run";
pub const VERSION: u32 = 1;

/// The conventions a run was recorded with (so readers never have to guess).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Conventions {
    pub tokenization: String,
    pub eos_appended: bool,
    pub sequence_logp: String,
    pub sft_loss: String,
    pub reference: String,
    pub evaluation: String,
    pub argmax: String,
    pub step: String,
}

impl Default for Conventions {
    fn default() -> Self {
        Conventions {
            tokenization: "prompt and response tokenized separately without special tokens, then concatenated".into(),
            eos_appended: true,
            sequence_logp: "sum over response tokens and the appended EOS of log pi(token | prefix), natural log".into(),
            sft_loss: "batch mean of the summed negative log-likelihood".into(),
            reference: "the phase's starting weights, frozen; reference log-probs of all training pairs computed once when the phase starts".into(),
            evaluation: "probes scored before the first update (step 0), every eval_every examples, and after the last step, without a backprop graph".into(),
            argmax: "y*: teacher-forced greedy response along the chosen response, sum over positions of max_v log pi(v | x, y+_<m)".into(),
            step: "number of optimizer updates applied before the record".into(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    pub path: String,
    pub arch: String,
    pub fingerprint: String,
    pub n_params: usize,
    pub vocab_size: usize,
    pub eos_id: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DataInfo {
    pub path: String,
    pub format: DataFormat,
    pub fingerprint: String,
    pub n_records: usize,
    pub n_train: usize,
    pub n_test: usize,
    pub test_path: Option<String>,
}

/// A probe as recorded: its texts, and token ids of the chosen and rejected responses (EOS
/// included), which the per-token traces index.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeInfo {
    pub index: usize,
    pub prompt: String,
    pub responses: BTreeMap<Family, String>,
    pub tokens: BTreeMap<Family, Vec<u32>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhasePlan {
    pub name: String,
    pub algo: Algo,
    pub steps: usize,
}

/// The first record of every run file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunHeader {
    pub format: String,
    pub version: u32,
    pub ldviz_version: String,
    /// Seconds since the Unix epoch when the run started.
    pub created_unix: u64,
    pub config: TrainConfig,
    pub conventions: Conventions,
    pub model: ModelInfo,
    pub data: DataInfo,
    pub families: Vec<Family>,
    pub probes: Vec<ProbeInfo>,
    pub phases: Vec<PhasePlan>,
    pub batch_size: usize,
    /// Training records per epoch.
    pub examples_per_epoch: usize,
}

/// One optimizer update.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Updates applied so far, this one included (1 = after the first update).
    pub step: usize,
    pub examples: usize,
    pub epoch: f64,
    pub phase: String,
    /// Record indices of the batch, in file order numbering.
    pub batch: Vec<usize>,
    /// TRL's names: loss, logps/chosen, logps/rejected, rewards/chosen, rewards/rejected,
    /// rewards/margins, rewards/accuracies, grad_norm, learning_rate.
    #[serde(with = "super::nonfinite")]
    pub metrics: BTreeMap<String, f64>,
    pub wall_ms: f64,
}

/// The per-token traces of an evaluation. Read from a run file they stay raw JSON text until
/// first used (parsing them is most of the cost of loading a run); built in memory they are
/// parsed already. Derefs to the slice of traces; text that does not parse reads as empty and
/// [`Traces::parse_error`] says why.
#[derive(Default)]
pub struct Traces {
    raw: Option<Box<str>>,
    parsed: std::sync::OnceLock<(Vec<ProbeTrace>, Option<String>)>,
}

impl Traces {
    pub fn new(v: Vec<ProbeTrace>) -> Traces {
        let parsed = std::sync::OnceLock::new();
        let _ = parsed.set((v, None));
        Traces { raw: None, parsed }
    }

    /// Raw JSON text, parsed on first use.
    pub fn raw(text: &str) -> Traces {
        Traces {
            raw: Some(text.into()),
            parsed: std::sync::OnceLock::new(),
        }
    }

    fn parsed(&self) -> &(Vec<ProbeTrace>, Option<String>) {
        self.parsed.get_or_init(|| match &self.raw {
            None => (Vec::new(), None),
            Some(r) => match serde_json::from_str(r) {
                Ok(v) => (v, None),
                Err(e) => (Vec::new(), Some(format!("per-token data: {e}"))),
            },
        })
    }

    /// The traces, parsing the raw text on first use.
    pub fn get_all(&self) -> &[ProbeTrace] {
        &self.parsed().0
    }

    /// Why the raw per-token data could not be read (None when it could).
    pub fn parse_error(&self) -> Option<&str> {
        self.parsed().1.as_deref()
    }
}

impl From<Vec<ProbeTrace>> for Traces {
    fn from(v: Vec<ProbeTrace>) -> Traces {
        Traces::new(v)
    }
}

impl std::ops::Deref for Traces {
    type Target = [ProbeTrace];
    fn deref(&self) -> &[ProbeTrace] {
        self.get_all()
    }
}

impl Clone for Traces {
    fn clone(&self) -> Traces {
        match (self.parsed.get(), &self.raw) {
            (None, Some(r)) => Traces::raw(r),
            _ => Traces::new(self.get_all().to_vec()),
        }
    }
}

impl PartialEq for Traces {
    fn eq(&self, other: &Traces) -> bool {
        self.get_all() == other.get_all()
    }
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.parsed.get() {
            Some(v) => write!(f, "Traces({} probes)", v.0.len()),
            None => write!(f, "Traces(raw)"),
        }
    }
}

impl Serialize for Traces {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.get_all().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Traces {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Traces, D::Error> {
        Ok(Traces::new(Vec::<ProbeTrace>::deserialize(d)?))
    }
}

/// An evaluation record read from a run-file line whose `tokens` value was cut out (see
/// run::reader): everything but the per-token traces.
#[derive(Deserialize)]
pub struct EvalLine {
    pub step: usize,
    pub examples: usize,
    pub epoch: f64,
    pub phase: String,
    #[serde(with = "super::nonfinite")]
    pub logps: BTreeMap<Family, Vec<f64>>,
    #[serde(default, deserialize_with = "diag_3_or_4")]
    pub diag: BTreeMap<Family, Vec<Diag>>,
    #[serde(default, with = "super::nonfinite")]
    pub transfer: Vec<Vec<f64>>,
}

impl EvalLine {
    pub fn with_tokens(self, tokens: Traces) -> EvalRecord {
        EvalRecord {
            step: self.step,
            examples: self.examples,
            epoch: self.epoch,
            phase: self.phase,
            logps: self.logps,
            tokens,
            diag: self.diag,
            transfer: self.transfer,
        }
    }
}

/// One probe evaluation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    pub step: usize,
    pub examples: usize,
    pub epoch: f64,
    pub phase: String,
    /// Summed log-prob per family, one value per probe (header order).
    #[serde(with = "super::nonfinite")]
    pub logps: BTreeMap<Family, Vec<f64>>,
    /// Per-token traces of chosen, rejected and argmax, one per probe (header order). Loaded
    /// lazily from run files (they are most of a file's bytes).
    pub tokens: Traces,
    /// Diagnostics per family (argmax excluded), one [‖A‖_F, ‖π − e_y‖, energy 1 − π(y),
    /// ‖A‖_F from the mean ‖π‖] per probe (see [`Diag`]). Absent in runs recorded before they
    /// existed; runs recorded before the fourth value read it as NaN.
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        serialize_with = "super::nonfinite::serialize",
        deserialize_with = "diag_3_or_4"
    )]
    pub diag: BTreeMap<Family, Vec<Diag>>,
    /// Hallucination transfer: log π(y_j⁺ | x_i) for the first M probes (header order),
    /// `transfer[i][j]` = prompt i with probe j's chosen response. Empty when off.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        with = "super::nonfinite"
    )]
    pub transfer: Vec<Vec<f64>>,
}

/// Reads `diag` maps whose entries have 3 values (runs recorded before the authors' ‖A‖_F,
/// which then reads as NaN) or 4; non-finite values as [`super::nonfinite`] reads them.
fn diag_3_or_4<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<Family, Vec<Diag>>, D::Error> {
    let raw: BTreeMap<Family, Vec<Vec<f64>>> = super::nonfinite::deserialize(d)?;
    raw.into_iter()
        .map(|(f, rows)| {
            let rows = rows
                .into_iter()
                .map(|r| {
                    if !(3..=4).contains(&r.len()) {
                        return Err(serde::de::Error::custom(format!(
                            "diag of {}: {} values per probe, expected 3 or 4",
                            f.key(),
                            r.len()
                        )));
                    }
                    let mut out = [f64::NAN; 4];
                    for (o, v) in out.iter_mut().zip(r) {
                        *o = v;
                    }
                    Ok(out)
                })
                .collect::<Result<Vec<Diag>, D::Error>>()?;
            Ok((f, rows))
        })
        .collect()
}

/// One observed response of an influence record.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    /// Position of the probe in the header's probe list.
    pub probe: usize,
    pub family: Family,
}

/// First-order influence of one update (see src/train/influence.rs for the exact definitions).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InfluenceRecord {
    /// The update's step number (updates applied, this one included).
    pub step: usize,
    pub phase: String,
    pub lr: f64,
    pub optimizer: OptimKind,
    /// Record indices of the batch (the columns of `contributions` and `cosine`).
    pub batch: Vec<usize>,
    pub observed: Vec<Observed>,
    /// Δf_o: the summed log-prob after the update minus before.
    #[serde(with = "super::nonfinite")]
    pub actual: Vec<f64>,
    /// ⟨∇θ f_o, Δθ⟩ with Δθ the update actually applied.
    #[serde(with = "super::nonfinite")]
    pub predicted: Vec<f64>,
    /// [o][u]: example u's share of the prediction, −(lr·κ/B)⟨∇f_o, c ⊙ ∇L_u⟩.
    #[serde(with = "super::nonfinite")]
    pub contributions: Vec<Vec<f64>>,
    /// [o][u]: ⟨∇f_o, ∇f_u⟩ / (‖∇f_o‖‖∇f_u‖), f_u as `target` says.
    #[serde(with = "super::nonfinite")]
    pub cosine: Vec<Vec<f64>>,
    /// The training-example function f_u of `cosine` (records before this field: chosen).
    #[serde(default = "InfluenceTarget::recorded_before_choice")]
    pub target: InfluenceTarget,
    /// Time of the influence computation (on top of the update).
    pub wall_ms: f64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    Completed,
    Stopped,
    Error,
}

/// The `"type"` of every record this version writes and reads (one per [`Event`] variant);
/// records of any other type come from a newer writer and are skipped by the reader.
pub const RECORD_TYPES: [&str; 9] = [
    "header",
    "vocab",
    "phase",
    "step",
    "eval",
    "influence",
    "samples",
    "state",
    "end",
];

/// Everything a trainer reports, in order. Each is one line of the run file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    Header(Box<RunHeader>),
    /// Text of token ids first seen in this run (for top-k and argmax displays), as
    /// [id, text] pairs.
    Vocab {
        tokens: Vec<(u32, String)>,
    },
    Phase {
        name: String,
        algo: Algo,
        step: usize,
        examples: usize,
    },
    Step(StepRecord),
    Eval(Box<EvalRecord>),
    /// First-order influence of the update of the same step (every --influence-every steps).
    Influence(Box<InfluenceRecord>),
    /// On-policy responses sampled at the start of an epoch: (record index, text) of the
    /// probes' new rejected responses.
    Samples {
        step: usize,
        phase: String,
        rejected: Vec<(usize, String)>,
    },
    /// Paused / running (live only; also recorded).
    State {
        paused: bool,
        step: usize,
    },
    End {
        reason: EndReason,
        step: usize,
        message: Option<String>,
    },
}
