//! [`TrainConfig`]: everything that defines a run. It is written verbatim into the run file's
//! header, so a run can be reproduced from its file.

use serde::{Deserialize, Serialize};

use crate::data::{DataFormat, ProbeCount};

/// Training objective. The `--algo` values are the kebab-case names (`sft-then-dpo`); the run
/// file and the app use [`Algo::key`] (`sft_then_dpo`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Algo {
    /// NLL of the chosen response (batch mean of summed NLL).
    Sft,
    /// DPO, sigmoid loss: −log σ(βΔ).
    Dpo,
    /// IPO: (r̄⁺ − r̄⁻ − 1/(2β))², per-token mean log-probs.
    Ipo,
    /// SLiC hinge: relu(1 − βΔ).
    Hinge,
    /// Robust DPO (TRL's `robust`), label-noise rate ε:
    /// (−(1−ε)·log σ(βΔ) + ε·log σ(−βΔ)) / (1 − 2ε), an unbiased estimate of the DPO loss under
    /// flipped labels; its gradient always pushes the margin up.
    Robust,
    /// Conservative DPO (cDPO; TRL's `sigmoid` loss with label smoothing ε):
    /// −(1−ε)·log σ(βΔ) − ε·log σ(−βΔ); its gradient changes sign where σ(βΔ) = 1 − ε, so it
    /// stops widening the margin there.
    Cdpo,
    /// SimPO (reference-free): −log σ(β(mean⁺ − mean⁻) − γ).
    Simpo,
    /// SFT on chosen AND rejected, then DPO with that SFT result as the reference (two phases).
    Extended,
    /// SFT on chosen, then DPO from it (two phases; the demo the app's Start button runs).
    SftThenDpo,
    /// SFT on chosen and rejected responses alike (the first phase of `extended`).
    #[value(skip)]
    SftBoth,
}

impl Algo {
    pub const CLI: [Algo; 9] = [
        Algo::Sft,
        Algo::Dpo,
        Algo::Ipo,
        Algo::Hinge,
        Algo::Robust,
        Algo::Cdpo,
        Algo::Simpo,
        Algo::Extended,
        Algo::SftThenDpo,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Algo::Sft => "sft",
            Algo::Dpo => "dpo",
            Algo::Ipo => "ipo",
            Algo::Hinge => "hinge",
            Algo::Robust => "robust",
            Algo::Cdpo => "cdpo",
            Algo::Simpo => "simpo",
            Algo::Extended => "extended",
            Algo::SftThenDpo => "sft_then_dpo",
            Algo::SftBoth => "sft_both",
        }
    }

    pub fn from_key(s: &str) -> Option<Algo> {
        [Algo::SftBoth]
            .iter()
            .chain(Algo::CLI.iter())
            .copied()
            .find(|a| a.key() == s)
    }

    /// Whether the loss needs reference log-probs of the training pairs.
    pub fn needs_reference(self) -> bool {
        matches!(
            self,
            Algo::Dpo | Algo::Ipo | Algo::Hinge | Algo::Robust | Algo::Cdpo
        )
    }

    /// One line on what the algorithm optimizes (the app's algorithm menu shows it on hover).
    pub fn describe(self) -> &'static str {
        match self {
            Algo::Sft => "SFT: NLL of the chosen response",
            Algo::Dpo => {
                "DPO (sigmoid): −log σ(βΔ), Δ = chosen − rejected log-ratio to the reference"
            }
            Algo::Ipo => "IPO: (Δ̄ − 1/(2β))², per-token mean log-probs",
            Algo::Hinge => "SLiC hinge: relu(1 − βΔ)",
            Algo::Robust => {
                "robust DPO (TRL robust): (−(1−ε)·log σ(βΔ) + ε·log σ(−βΔ)) / (1 − 2ε), ε = label smoothing; always pushes the margin up"
            }
            Algo::Cdpo => {
                "conservative DPO (cDPO, TRL sigmoid with label smoothing ε): −(1−ε)·log σ(βΔ) − ε·log σ(−βΔ); pulls the margin back once σ(βΔ) > 1 − ε"
            }
            Algo::Simpo => "SimPO (no reference): −log σ(β(mean⁺ − mean⁻) − γ)",
            Algo::Extended => "SFT on chosen and rejected, then DPO referenced to that model",
            Algo::SftThenDpo => "SFT on chosen, then DPO from that model (the demo)",
            Algo::SftBoth => "SFT on chosen and rejected responses alike",
        }
    }

    /// Whether the loss uses the label smoothing ε (`--label-smoothing`).
    pub fn uses_label_smoothing(self) -> bool {
        matches!(self, Algo::Robust | Algo::Cdpo)
    }

    /// Whether the loss is an SFT loss (no rejected term).
    pub fn is_sft(self) -> bool {
        matches!(self, Algo::Sft | Algo::SftBoth)
    }
}

impl std::fmt::Display for Algo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.key())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum OptimKind {
    Sgd,
    Adamw,
    Rmsprop,
}

impl OptimKind {
    pub fn key(self) -> &'static str {
        match self {
            OptimKind::Sgd => "sgd",
            OptimKind::Adamw => "adamw",
            OptimKind::Rmsprop => "rmsprop",
        }
    }
}

/// The training-example function f_u whose gradient the influence record's cosines compare with
/// each observed ∇f_o (`--influence-target`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum InfluenceTarget {
    /// f_u = −L_u, the example's own loss negated: ∇f_u = −∇L_u is the direction the update
    /// moves θ for u, every term of the loss included (under DPO
    /// β(1 − σ(βΔ))·(∇log π(y⁺) − ∇log π(y⁻)), so the rejected response's negative gradient
    /// shows; under SFT it is ∇log π(y⁺)). A positive cosine means u's update raises f_o.
    #[default]
    Loss,
    /// f_u = log π(y_u⁺ | x_u), the example's chosen response.
    Chosen,
    /// f_u = log π(y_u⁻ | x_u), the example's rejected response (the phase's current one).
    Rejected,
}

impl InfluenceTarget {
    pub const ALL: [InfluenceTarget; 3] = [
        InfluenceTarget::Loss,
        InfluenceTarget::Chosen,
        InfluenceTarget::Rejected,
    ];

    pub fn key(self) -> &'static str {
        match self {
            InfluenceTarget::Loss => "loss",
            InfluenceTarget::Chosen => "chosen",
            InfluenceTarget::Rejected => "rejected",
        }
    }

    /// What f_u is, for legends and hover texts.
    pub fn describe(self) -> &'static str {
        match self {
            InfluenceTarget::Loss => {
                "f_u = −L_u (the example's loss gradient, as the update applies it)"
            }
            InfluenceTarget::Chosen => "f_u = log π(y_u⁺ | x_u) (the example's chosen response)",
            InfluenceTarget::Rejected => {
                "f_u = log π(y_u⁻ | x_u) (the example's rejected response)"
            }
        }
    }

    /// What runs recorded before the choice existed used.
    pub fn recorded_before_choice() -> InfluenceTarget {
        InfluenceTarget::Chosen
    }
}

/// How long a phase trains.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Duration {
    Steps(usize),
    Epochs(f64),
}

impl Duration {
    /// Number of optimizer steps for `n_train` records in batches of `batch`.
    pub fn steps(self, n_train: usize, batch: usize) -> usize {
        match self {
            Duration::Steps(s) => s,
            Duration::Epochs(e) => ((e * n_train as f64) / batch.max(1) as f64).ceil() as usize,
        }
    }
}

/// Optimizer hyperparameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimConfig {
    pub kind: OptimKind,
    pub lr: f64,
    /// SGD momentum (0 = plain SGD) or RMSprop momentum.
    pub momentum: f64,
    pub weight_decay: f64,
    /// Linear warm-up: the lr of update s (0-based) is lr·min(1, (s+1)/(warmup+1)), as the
    /// authors' code does.
    pub warmup: usize,
    /// Clip the global gradient L2 norm to this value (None = no clipping).
    pub max_grad_norm: Option<f64>,
    pub adam_betas: (f64, f64),
    /// RMSprop smoothing constant α.
    pub rms_alpha: f64,
    pub eps: f64,
}

impl OptimConfig {
    pub fn new(kind: OptimKind, lr: f64) -> Self {
        OptimConfig {
            kind,
            lr,
            momentum: 0.0,
            weight_decay: 0.0,
            warmup: 0,
            max_grad_norm: None,
            adam_betas: (0.9, 0.999),
            rms_alpha: 0.99,
            eps: 1e-8,
        }
    }

    /// The learning rate of update `s` (0-based within its phase).
    pub fn lr_at(&self, s: usize) -> f64 {
        if self.warmup == 0 {
            self.lr
        } else {
            self.lr * ((s + 1) as f64 / (self.warmup + 1) as f64).min(1.0)
        }
    }
}

/// One training phase: an objective trained for a number of steps.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PhaseConfig {
    pub name: String,
    pub algo: Algo,
    pub duration: Duration,
    pub optim: OptimConfig,
    /// Preference phases only: replace the records' rejected responses by samples from the
    /// current policy (reference log-probs of the samples come from the frozen reference
    /// weights): every record's at the start of every epoch, or, with `resample_every`, the
    /// batch's records every that many updates.
    #[serde(default)]
    pub on_policy: bool,
    /// With `on_policy`: resample the batch's rejected responses every K updates (1 = before
    /// every update, as online DPO does); `None` = every record's once per epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resample_every: Option<usize>,
}

/// The full definition of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Model folder (or "default").
    pub model: String,
    /// Training data file (or "default").
    pub data: String,
    /// Held-out data file for irr_test / random_nonhum.
    pub test_data: Option<String>,
    pub format: Option<DataFormat>,
    /// Fraction of the data file held out as test records (when no test file is given).
    pub test_fraction: f64,
    /// The algorithm as asked for (phases are derived from it).
    pub algo: Algo,
    pub phases: Vec<PhaseConfig>,
    pub beta: f64,
    /// SimPO's target margin γ.
    pub gamma: f64,
    /// Label smoothing ε of `robust` (assumed label-noise rate) and `cdpo` (conservative
    /// target): in [0, 0.5).
    pub label_smoothing: f64,
    pub batch_size: usize,
    pub seed: u64,
    pub shuffle: bool,
    /// Evaluate probes every this many training examples (and at t = 0 and at the end).
    pub eval_every: usize,
    pub probes: ProbeCount,
    pub lengths: Lengths,
    /// Number of top next tokens recorded per position.
    pub top_k: usize,
    /// Sampling temperature of on-policy responses.
    #[serde(default = "one")]
    pub sample_temperature: f64,
    /// Save the final weights to this folder (config.json, model.safetensors, tokenizer.json).
    #[serde(default)]
    pub save_model: Option<String>,
    /// Hallucination transfer: score every probe prompt i with every probe j's chosen
    /// response, for the first M probes, at every evaluation (0 = off).
    #[serde(default)]
    pub transfer_prompts: usize,
    /// The transfer matrix every this many examples (at evaluations; 0 = four times the
    /// evaluation interval), and always at phase boundaries.
    #[serde(default)]
    pub transfer_every: usize,
    /// First-order influence every this many updates (0 = off; None = for models up to 50M
    /// parameters 20 where the batched pass applies (the CPU in f32/f64) and 100 elsewhere,
    /// off above).
    #[serde(default)]
    pub influence_every: Option<usize>,
    /// Influence: the first this many probes are observed…
    #[serde(default = "eight")]
    pub influence_probes: usize,
    /// …on these families.
    #[serde(default = "influence_families")]
    pub influence_families: Vec<crate::data::Family>,
    /// f_u of the influence cosines (runs recorded before this field: chosen).
    #[serde(default = "InfluenceTarget::recorded_before_choice")]
    pub influence_target: InfluenceTarget,
    /// Where to train (`--device`; runs recorded before this field: cpu).
    #[serde(default)]
    pub device: crate::device::DeviceSpec,
    /// Compute precision (`--dtype`; see `crate::device` for what stays f32).
    #[serde(default)]
    pub precision: crate::device::Precision,
}

fn eight() -> usize {
    8
}

/// chosen, rejected, argmax, irr_train, chosen_gptsemantic.
pub fn influence_families() -> Vec<crate::data::Family> {
    use crate::data::Family;
    vec![
        Family::Chosen,
        Family::Rejected,
        Family::Argmax,
        Family::IrrTrain,
        Family::ChosenGptsemantic,
    ]
}

fn one() -> f64 {
    1.0
}

impl TrainConfig {
    /// The phases for `algo`: one phase, or SFT then DPO for `extended` / `sft_then_dpo`
    /// (`sft` gives the first phase's duration and optimizer).
    pub fn phases_for(
        algo: Algo,
        main: (Duration, OptimConfig),
        sft: (Duration, OptimConfig),
    ) -> Vec<PhaseConfig> {
        let phase =
            |name: &str, algo: Algo, (duration, optim): (Duration, OptimConfig)| PhaseConfig {
                name: name.to_string(),
                algo,
                duration,
                optim,
                on_policy: false,
                resample_every: None,
            };
        match algo {
            Algo::Extended => vec![
                phase("sft_both", Algo::SftBoth, sft),
                phase("dpo", Algo::Dpo, main),
            ],
            Algo::SftThenDpo => vec![phase("sft", Algo::Sft, sft), phase("dpo", Algo::Dpo, main)],
            a => vec![phase(a.key(), a, main)],
        }
    }

    /// Checks every value a run needs in range; the one validation of a run definition, made
    /// by `TrainOptions::to_config` (the CLI and the app) and again by the trainer before it
    /// loads anything (for configurations built in code). Errors name the `ldviz train` flag.
    pub fn validate(&self) -> anyhow::Result<()> {
        use anyhow::bail;
        let positive = |v: f64| v > 0.0 && v.is_finite();
        if self.batch_size == 0 {
            bail!("--batch-size must be positive");
        }
        if self.eval_every == 0 {
            bail!("--eval-every must be positive");
        }
        if !positive(self.beta) {
            bail!("--beta must be a positive number, got {}", self.beta);
        }
        if !(0.0..0.5).contains(&self.label_smoothing) {
            bail!(
                "--label-smoothing must be in [0, 0.5), got {}",
                self.label_smoothing
            );
        }
        if !(0.0..1.0).contains(&self.test_fraction) {
            bail!(
                "--test-fraction must be in [0, 1), got {}",
                self.test_fraction
            );
        }
        if self.lengths.max_prompt == 0 || self.lengths.max_total <= self.lengths.max_prompt {
            bail!("--max-len must be larger than --max-prompt-len (and both positive)");
        }
        if !(self.sample_temperature >= 0.0 && self.sample_temperature.is_finite()) {
            bail!(
                "--sample-temperature must be a non-negative number, got {}",
                self.sample_temperature
            );
        }
        if self.phases.is_empty() {
            bail!("a run needs at least one phase");
        }
        // The last phase first: its values are the main flags (--lr, --steps, --epochs), and
        // an SFT phase before it falls back to them, so a bad main value is reported under its
        // own flag rather than under --sft-*.
        for p in self.phases.iter().rev() {
            let (lr_flag, steps_flag, epochs_flag) = if p.algo.is_sft() && self.phases.len() > 1 {
                ("--sft-lr", "--sft-steps", "--sft-epochs")
            } else {
                ("--lr", "--steps", "--epochs")
            };
            if !positive(p.optim.lr) {
                bail!("{lr_flag} must be a positive number, got {}", p.optim.lr);
            }
            match p.duration {
                Duration::Steps(0) => bail!("{steps_flag} must be positive"),
                Duration::Epochs(e) if !positive(e) => {
                    bail!("{epochs_flag} must be a positive number, got {e}")
                }
                _ => {}
            }
            if p.resample_every == Some(0) {
                bail!("--resample-every must be positive");
            }
            if p.resample_every.is_some() && !p.on_policy {
                bail!("--resample-every needs --on-policy");
            }
        }
        Ok(())
    }
}

/// Limits on sequence length (in tokens).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lengths {
    /// Longest prompt; longer prompts keep their last tokens.
    pub max_prompt: usize,
    /// Longest prompt + response; longer responses are cut at the end (their EOS then falls off).
    pub max_total: usize,
}

impl Default for Lengths {
    fn default() -> Self {
        Lengths {
            max_prompt: 256,
            max_total: 512,
        }
    }
}
