//! The user-facing training options (what `ldviz train` flags and the app's train panel set),
//! and their validation into a [`TrainConfig`]. Unset values take the embedded model's demo
//! recipe when the model is the embedded default, TRL-like defaults otherwise.

use anyhow::{Result, anyhow, bail};

use crate::data::{DataFormat, ProbeCount};
use crate::probe::Lengths;
use crate::schema::config::{Algo, Duration, InfluenceTarget, OptimConfig, OptimKind, TrainConfig};

/// Every training option; `None` means "the default for this model". One definition for the
/// CLI (`ldviz train` flattens it: the flags, their help and defaults come from here), the app's
/// train panel (it edits one of these, starting from [`Default`]) and the run header (through
/// [`TrainOptions::to_config`], the one validation). The flags' defaults are read from the
/// [`Default`] implementation, so the two cannot disagree.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, clap::Args)]
pub struct TrainOptions {
    /// Hugging Face model folder, or "default" for the embedded model.
    #[arg(long, default_value_t = d().model)]
    pub model: String,
    /// Preference data file (.jsonl, .json, .jsonl.gz, .parquet), or "default" for the demo
    /// dataset.
    #[arg(long, default_value_t = d().data)]
    pub data: String,
    /// Held-out records (for irr_test and random_nonhum).
    #[arg(long)]
    pub test_data: Option<String>,
    /// Hold out this fraction of the data file (its last records) as test records
    /// [default: 0; for the demo dataset, its 64 held-out records].
    #[arg(long)]
    pub test_fraction: Option<f64>,
    /// Dataset format [default: detected from the first record].
    #[arg(long, value_enum)]
    pub format: Option<DataFormat>,
    /// Objective; sft-then-dpo (the default) is SFT on chosen, then DPO from that model.
    #[arg(long, value_enum, default_value_t = d().algo)]
    pub algo: Algo,
    #[arg(long, value_enum, default_value_t = d().optimizer)]
    pub optimizer: OptimKind,
    /// Learning rate [default: for the embedded model its demo recipe, else 1e-4 for SFT and
    /// 1e-5 for preference losses].
    #[arg(long)]
    pub lr: Option<f64>,
    /// SGD / RMSprop momentum.
    #[arg(long, default_value_t = d().momentum)]
    pub momentum: f64,
    #[arg(long, default_value_t = d().weight_decay)]
    pub weight_decay: f64,
    /// Linear warm-up steps: lr·min(1, (s+1)/(warmup+1)).
    #[arg(long, default_value_t = d().warmup)]
    pub warmup: usize,
    /// Clip the global gradient norm.
    #[arg(long)]
    pub max_grad_norm: Option<f64>,
    #[arg(long, default_value_t = d().beta)]
    pub beta: f64,
    /// SimPO's target margin.
    #[arg(long, default_value_t = d().gamma)]
    pub gamma: f64,
    /// Label smoothing ε in [0, 0.5) of robust (assumed label-noise rate) and cdpo
    /// (conservative target).
    #[arg(long, default_value_t = d().label_smoothing)]
    pub label_smoothing: f64,
    #[arg(long, default_value_t = d().batch_size)]
    pub batch_size: usize,
    /// Optimizer steps (of the DPO phase for extended / sft-then-dpo).
    #[arg(long, conflicts_with = "epochs")]
    pub steps: Option<usize>,
    /// Epochs over the training records [default: the demo recipe for the embedded model, else 1].
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Steps of the SFT phase of extended / sft-then-dpo [default: as the DPO phase].
    #[arg(long, conflicts_with = "sft_epochs")]
    pub sft_steps: Option<usize>,
    /// Epochs of the SFT phase of extended / sft-then-dpo [default: the demo recipe for the
    /// embedded model, else as the DPO phase].
    #[arg(long)]
    pub sft_epochs: Option<f64>,
    /// Learning rate of the SFT phase [default: the demo recipe for the embedded model, else
    /// --lr, else 1e-4].
    #[arg(long)]
    pub sft_lr: Option<f64>,
    /// Evaluate the probes every N training examples (and at step 0 and at the end).
    #[arg(long, default_value_t = d().eval_every)]
    pub eval_every: usize,
    /// Number of probes: the first N records, or "all".
    #[arg(long, default_value_t = d().probes)]
    pub probes: String,
    /// Visit records in file order (batches of B, wrapping) instead of shuffling each epoch.
    #[arg(long = "no-shuffle", action = clap::ArgAction::SetFalse)]
    pub shuffle: bool,
    #[arg(long, default_value_t = d().seed)]
    pub seed: u64,
    #[arg(long, default_value_t = d().max_prompt_len)]
    pub max_prompt_len: usize,
    #[arg(long, default_value_t = d().max_len)]
    pub max_len: usize,
    /// DPO-family phases: each epoch, sample the rejected responses from the current policy.
    #[arg(long)]
    pub on_policy: bool,
    /// With --on-policy: instead of once per epoch, resample the batch's rejected responses
    /// every K updates (1 = before every update, as online DPO does).
    #[arg(long, value_name = "K")]
    #[serde(default)]
    pub resample_every: Option<usize>,
    /// Temperature of on-policy samples.
    #[arg(long, default_value_t = d().sample_temperature)]
    pub sample_temperature: f64,
    /// Top next tokens recorded per position of chosen and rejected.
    #[arg(long, default_value_t = d().top_k)]
    pub top_k: usize,
    /// Also save the trained weights as a Hugging Face folder (e.g. to start DPO from an SFT run;
    /// a folder that is not empty is refused without --force).
    #[arg(long, value_name = "DIR")]
    pub save_model: Option<String>,
    /// Hallucination transfer: log π(y_j⁺ | x_i) for the first M probes' prompts i and chosen
    /// responses j, every --transfer-every examples and at phase boundaries (0 = off).
    #[arg(long, default_value_t = d().transfer_prompts)]
    pub transfer_prompts: usize,
    /// The transfer matrix every N examples (at evaluations, and at phase boundaries)
    /// [default: 4 x --eval-every].
    #[arg(long, default_value_t = d().transfer_every, hide_default_value = true)]
    pub transfer_every: usize,
    /// First-order influence (eNTK inner products) every K updates; 0 = off [default, for
    /// models up to 50M parameters: 20 on the CPU in f32, 100 on GPUs or in bf16; off above].
    #[arg(long)]
    pub influence_every: Option<usize>,
    /// Influence: observe the first N probes…
    #[arg(long, default_value_t = d().influence_probes)]
    pub influence_probes: usize,
    /// …on these families (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = d().influence_families)]
    pub influence_families: Vec<crate::data::Family>,
    /// Influence cosines: f_u of each training example is its loss (−L_u, both terms, as the
    /// update applies them), its chosen or its rejected response's log-prob.
    #[arg(long, value_enum, default_value_t = d().influence_target)]
    #[serde(default)]
    pub influence_target: InfluenceTarget,
    /// cpu, cuda or cuda:N (cuda needs a build with `--features cuda`).
    #[arg(long, default_value_t = d().device)]
    #[serde(default)]
    pub device: crate::device::DeviceSpec,
    /// Compute precision: f32, or bf16 (bf16 forward on f32 master weights; meant for GPUs).
    #[arg(long = "dtype", default_value_t = d().precision)]
    #[serde(default)]
    pub precision: crate::device::Precision,
}

/// The defaults the flags show and take.
fn d() -> TrainOptions {
    TrainOptions::default()
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
            influence_families: crate::schema::config::influence_families(),
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
        let sft_dur = match (self.sft_steps, self.sft_epochs) {
            (Some(0), _) => bail!("--sft-steps must be positive"),
            (Some(s), _) => Duration::Steps(s),
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
            for p in phases.iter_mut().filter(|p| !p.algo.is_sft()) {
                p.on_policy = true;
                p.resample_every = self.resample_every;
            }
        }
        let cfg = TrainConfig {
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
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        options: TrainOptions,
    }

    fn parse(args: &[&str]) -> TrainOptions {
        let mut v = vec!["ldviz"];
        v.extend(args);
        Cli::try_parse_from(v).unwrap().options
    }

    /// The CLI with no flags is TrainOptions::default() (what the app's fresh train panel
    /// holds: tests/app.rs).
    #[test]
    fn the_cli_defaults_are_the_default_options() {
        assert_eq!(parse(&[]), TrainOptions::default());
    }

    #[test]
    fn every_flag_sets_its_option() {
        let o = parse(&[
            "--model",
            "m",
            "--data",
            "d.jsonl",
            "--test-data",
            "t.jsonl",
            "--format",
            "hh",
            "--algo",
            "sft-then-dpo",
            "--optimizer",
            "rmsprop",
            "--lr",
            "0.5",
            "--momentum",
            "0.9",
            "--weight-decay",
            "0.01",
            "--warmup",
            "3",
            "--max-grad-norm",
            "1",
            "--beta",
            "0.2",
            "--gamma",
            "0.3",
            "--label-smoothing",
            "0.2",
            "--batch-size",
            "8",
            "--steps",
            "7",
            "--sft-steps",
            "5",
            "--sft-lr",
            "0.1",
            "--eval-every",
            "16",
            "--probes",
            "all",
            "--no-shuffle",
            "--seed",
            "9",
            "--max-prompt-len",
            "64",
            "--max-len",
            "128",
            "--on-policy",
            "--resample-every",
            "2",
            "--sample-temperature",
            "0.7",
            "--top-k",
            "3",
            "--save-model",
            "out",
            "--transfer-prompts",
            "4",
            "--transfer-every",
            "32",
            "--influence-every",
            "10",
            "--influence-probes",
            "2",
            "--influence-families",
            "chosen,argmax",
            "--influence-target",
            "rejected",
            "--device",
            "cpu",
            "--dtype",
            "f32",
        ]);
        let want = TrainOptions {
            model: "m".into(),
            data: "d.jsonl".into(),
            test_data: Some("t.jsonl".into()),
            test_fraction: None,
            format: Some(DataFormat::Hh),
            algo: Algo::SftThenDpo,
            optimizer: OptimKind::Rmsprop,
            lr: Some(0.5),
            momentum: 0.9,
            weight_decay: 0.01,
            warmup: 3,
            max_grad_norm: Some(1.0),
            beta: 0.2,
            gamma: 0.3,
            label_smoothing: 0.2,
            batch_size: 8,
            steps: Some(7),
            epochs: None,
            sft_steps: Some(5),
            sft_epochs: None,
            sft_lr: Some(0.1),
            eval_every: 16,
            probes: "all".into(),
            shuffle: false,
            seed: 9,
            max_prompt_len: 64,
            max_len: 128,
            on_policy: true,
            resample_every: Some(2),
            sample_temperature: 0.7,
            top_k: 3,
            save_model: Some("out".into()),
            transfer_prompts: 4,
            transfer_every: 32,
            influence_every: Some(10),
            influence_probes: 2,
            influence_families: vec![crate::data::Family::Chosen, crate::data::Family::Argmax],
            influence_target: InfluenceTarget::Rejected,
            device: crate::device::DeviceSpec::default(),
            precision: crate::device::Precision::default(),
        };
        assert_eq!(o, want);
        // the run file's internal name is not a flag value
        assert!(Cli::try_parse_from(["ldviz", "--algo", "sft-both"]).is_err());
        assert!(Cli::try_parse_from(["ldviz", "--steps", "1", "--epochs", "1"]).is_err());
    }
}

#[cfg(test)]
mod validation {
    use super::*;

    /// Each out-of-range option is refused by the one validation, with its flag in the error;
    /// the trainer refuses the same configuration built in code.
    #[test]
    fn every_bad_value_names_its_flag() {
        let base = TrainOptions {
            model: "m".into(),
            data: "d.jsonl".into(),
            ..TrainOptions::default()
        };
        type Case = (&'static str, Box<dyn Fn(&mut TrainOptions)>);
        let cases: Vec<Case> = vec![
            ("--lr", Box::new(|o| o.lr = Some(-1.0))),
            ("--lr", Box::new(|o| o.lr = Some(f64::NAN))),
            ("--sft-lr", Box::new(|o| o.sft_lr = Some(0.0))),
            ("--batch-size", Box::new(|o| o.batch_size = 0)),
            ("--eval-every", Box::new(|o| o.eval_every = 0)),
            ("--beta", Box::new(|o| o.beta = 0.0)),
            ("--label-smoothing", Box::new(|o| o.label_smoothing = 0.5)),
            ("--test-fraction", Box::new(|o| o.test_fraction = Some(1.0))),
            ("--max-len", Box::new(|o| o.max_len = 10)),
            (
                "--sample-temperature",
                Box::new(|o| o.sample_temperature = -1.0),
            ),
            ("--steps", Box::new(|o| o.steps = Some(0))),
            ("--epochs", Box::new(|o| o.epochs = Some(f64::INFINITY))),
            ("--sft-epochs", Box::new(|o| o.sft_epochs = Some(-2.0))),
            ("--sft-steps", Box::new(|o| o.sft_steps = Some(0))),
            ("--probes", Box::new(|o| o.probes = "none".into())),
            (
                "--resample-every needs --on-policy",
                Box::new(|o| o.resample_every = Some(2)),
            ),
            (
                "--resample-every must be positive",
                Box::new(|o| {
                    o.algo = Algo::Dpo;
                    o.on_policy = true;
                    o.resample_every = Some(0);
                }),
            ),
            (
                "--on-policy needs a preference loss",
                Box::new(|o| {
                    o.algo = Algo::Sft;
                    o.on_policy = true;
                }),
            ),
        ];
        assert!(base.to_config().is_ok());
        for (flag, change) in cases {
            let mut o = base.clone();
            change(&mut o);
            let e = format!("{:#}", o.to_config().unwrap_err());
            assert!(e.contains(flag), "{flag}: {e}");
        }
        // A configuration built in code goes through the same check.
        let mut cfg = base.to_config().unwrap();
        cfg.batch_size = 0;
        let e = format!("{:#}", cfg.validate().unwrap_err());
        assert!(e.contains("--batch-size"), "{e}");
    }
}
