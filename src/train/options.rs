//! The user-facing training options (what `ldviz train` flags and the app's train panel set),
//! and their validation into a [`TrainConfig`]. Unset values take the embedded model's demo
//! recipe when the model is the embedded default, TRL-like defaults otherwise.

use anyhow::{Result, anyhow, bail};

use super::config::{Algo, Duration, InfluenceTarget, OptimConfig, OptimKind, TrainConfig};
use crate::data::{DataFormat, ProbeCount};
use crate::probe::Lengths;

/// Every training option; `None` means "the default for this model".
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainOptions {
    pub model: String,
    pub data: String,
    pub test_data: Option<String>,
    pub test_fraction: Option<f64>,
    pub format: Option<DataFormat>,
    pub algo: Algo,
    pub optimizer: OptimKind,
    pub lr: Option<f64>,
    pub momentum: f64,
    pub weight_decay: f64,
    pub warmup: usize,
    pub max_grad_norm: Option<f64>,
    pub beta: f64,
    pub gamma: f64,
    pub label_smoothing: f64,
    pub batch_size: usize,
    pub steps: Option<usize>,
    pub epochs: Option<f64>,
    pub sft_steps: Option<usize>,
    pub sft_epochs: Option<f64>,
    pub sft_lr: Option<f64>,
    pub eval_every: usize,
    /// "all" or a positive count.
    pub probes: String,
    pub shuffle: bool,
    pub seed: u64,
    pub max_prompt_len: usize,
    pub max_len: usize,
    pub on_policy: bool,
    /// On-policy: resample the batch's rejected responses every K updates (None = every
    /// record's once per epoch).
    #[serde(default)]
    pub resample_every: Option<usize>,
    pub sample_temperature: f64,
    pub top_k: usize,
    pub save_model: Option<String>,
    /// Transfer matrix over the first M probes (0 = off).
    pub transfer_prompts: usize,
    /// Transfer matrix every N examples (0 = four times the evaluation interval).
    pub transfer_every: usize,
    /// Influence every K updates (0 = off, None = automatic by model size).
    pub influence_every: Option<usize>,
    pub influence_probes: usize,
    pub influence_families: Vec<crate::data::Family>,
    /// f_u of the influence cosines.
    #[serde(default)]
    pub influence_target: InfluenceTarget,
    #[serde(default)]
    pub device: crate::device::DeviceSpec,
    #[serde(default)]
    pub precision: crate::device::Precision,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            model: "default".into(),
            data: "default".into(),
            test_data: None,
            test_fraction: None,
            format: None,
            algo: Algo::SftThenDpo,
            optimizer: OptimKind::Adamw,
            lr: None,
            momentum: 0.0,
            weight_decay: 0.0,
            warmup: 0,
            max_grad_norm: None,
            beta: 0.1,
            gamma: 0.5,
            label_smoothing: 0.1,
            batch_size: 4,
            steps: None,
            epochs: None,
            sft_steps: None,
            sft_epochs: None,
            sft_lr: None,
            eval_every: 64,
            probes: "32".into(),
            shuffle: true,
            seed: 0,
            max_prompt_len: 256,
            max_len: 512,
            on_policy: false,
            resample_every: None,
            sample_temperature: 1.0,
            top_k: 5,
            save_model: None,
            transfer_prompts: 16,
            transfer_every: 0,
            influence_every: None,
            influence_probes: 8,
            influence_families: super::config::influence_families(),
            influence_target: InfluenceTarget::default(),
            device: Default::default(),
            precision: Default::default(),
        }
    }
}

impl TrainOptions {
    fn demo(&self) -> Option<crate::assets::DemoRecipe> {
        (self.model == "default").then_some(crate::assets::DEMO)
    }

    /// The learning rate used when `lr` is unset.
    pub fn default_lr(&self) -> f64 {
        match (self.demo(), self.algo) {
            (Some(d), Algo::Sft) => d.sft_lr,
            (Some(d), _) => d.lr,
            (None, Algo::Sft) => 1e-4,
            (None, _) => 1e-5,
        }
    }

    /// The epochs used when neither `steps` nor `epochs` is set.
    pub fn default_epochs(&self) -> f64 {
        match (self.demo(), self.algo) {
            (Some(d), Algo::Sft) => d.sft_epochs,
            (Some(d), _) => d.epochs,
            (None, _) => 1.0,
        }
    }

    /// Validates the options into a run definition; errors name the option.
    pub fn to_config(&self) -> Result<TrainConfig> {
        let algo = self.algo;
        let demo = self.demo();
        let lr = self.lr.unwrap_or(self.default_lr());
        for (name, v) in [("--lr", Some(lr)), ("--sft-lr", self.sft_lr)] {
            if let Some(v) = v
                && !(v > 0.0 && v.is_finite())
            {
                bail!("{name} must be a positive number, got {v}");
            }
        }
        if self.batch_size == 0 {
            bail!("--batch-size must be positive");
        }
        if self.eval_every == 0 {
            bail!("--eval-every must be positive");
        }
        if !(self.beta > 0.0 && self.beta.is_finite()) {
            bail!("--beta must be a positive number, got {}", self.beta);
        }
        let optim = |lr: f64| {
            let mut o = OptimConfig::new(self.optimizer, lr);
            o.momentum = self.momentum;
            o.weight_decay = self.weight_decay;
            o.warmup = self.warmup;
            o.max_grad_norm = self.max_grad_norm;
            o
        };
        let main_dur = match (self.steps, self.epochs) {
            (Some(0), _) => bail!("--steps must be positive"),
            (Some(s), _) => Duration::Steps(s),
            (None, Some(e)) => Duration::Epochs(e),
            (None, None) => Duration::Epochs(self.default_epochs()),
        };
        if let Duration::Epochs(e) = main_dur
            && !(e > 0.0 && e.is_finite())
        {
            bail!("--epochs must be a positive number");
        }
        let sft_dur = match (self.sft_steps, self.sft_epochs) {
            (Some(0), _) => bail!("--sft-steps must be positive"),
            (Some(s), _) => Duration::Steps(s),
            (None, Some(e)) if !(e > 0.0 && e.is_finite()) => {
                bail!("--sft-epochs must be a positive number")
            }
            (None, Some(e)) => Duration::Epochs(e),
            (None, None) => match demo {
                Some(d) => Duration::Epochs(d.sft_epochs),
                None => main_dur,
            },
        };
        let sft_lr = self
            .sft_lr
            .or(self.lr)
            .unwrap_or(demo.map(|d| d.sft_lr).unwrap_or(1e-4));
        let probes: ProbeCount = self.probes.parse().map_err(|e| anyhow!("--probes: {e}"))?;
        let test_fraction = match self.test_fraction {
            Some(f) => f,
            None if self.data == "default" => crate::assets::demo_test_fraction()?,
            None => 0.0,
        };
        if !(0.0..1.0).contains(&test_fraction) {
            bail!("--test-fraction must be in [0, 1)");
        }
        if self.max_prompt_len == 0 || self.max_len <= self.max_prompt_len {
            bail!("--max-len must be larger than --max-prompt-len (and both positive)");
        }
        let mut phases =
            TrainConfig::phases_for(algo, (main_dur, optim(lr)), (sft_dur, optim(sft_lr)));
        if self.resample_every.is_some() && !self.on_policy {
            bail!("--resample-every needs --on-policy");
        }
        if self.on_policy {
            if !phases
                .iter()
                .any(|p| p.algo.needs_reference() || p.algo == Algo::Simpo)
            {
                let keys: Vec<String> = Algo::CLI
                    .iter()
                    .filter(|a| **a != Algo::Sft)
                    .map(|a| a.key().replace('_', "-"))
                    .collect();
                bail!("--on-policy needs a preference loss ({})", keys.join(", "));
            }
            if self.resample_every == Some(0) {
                bail!("--resample-every must be positive");
            }
            for p in phases.iter_mut().filter(|p| !p.algo.is_sft()) {
                p.on_policy = true;
                p.resample_every = self.resample_every;
            }
        }
        if !(self.sample_temperature >= 0.0 && self.sample_temperature.is_finite()) {
            bail!("--sample-temperature must be a non-negative number");
        }
        Ok(TrainConfig {
            model: self.model.clone(),
            data: self.data.clone(),
            test_data: self.test_data.clone(),
            format: self.format,
            test_fraction,
            algo,
            phases,
            beta: self.beta,
            gamma: self.gamma,
            label_smoothing: self.label_smoothing,
            batch_size: self.batch_size,
            seed: self.seed,
            shuffle: self.shuffle,
            eval_every: self.eval_every,
            probes,
            lengths: Lengths {
                max_prompt: self.max_prompt_len,
                max_total: self.max_len,
            },
            top_k: self.top_k,
            sample_temperature: self.sample_temperature,
            save_model: self.save_model.clone(),
            transfer_prompts: self.transfer_prompts,
            transfer_every: self.transfer_every,
            influence_every: self.influence_every,
            influence_probes: self.influence_probes,
            influence_families: self.influence_families.clone(),
            influence_target: self.influence_target,
            device: self.device,
            precision: self.precision,
        })
    }
}
