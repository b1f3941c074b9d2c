//! The trainable language model: our own differentiable transformer on candle (llama, qwen2,
//! gpt_neox, gpt2), loaded from a local Hugging Face folder (config.json, safetensors,
//! tokenizer.json) and saved back to safetensors.
//!
//! Two forward paths: [`Model::forward`] builds the backprop graph (training), and
//! [`Model::forward_eval`] runs on detached weights so no graph is ever built (probes,
//! generation). Each architecture declares its weights once (a typed index, see [`net`]); the
//! [`Net`] built from that declaration at load is where the model dispatches on its
//! architecture. No module here depends on the GUI.

pub mod config;
pub mod fused;
pub mod gpt2;
pub mod gpt_neox;
pub mod kernels;
pub mod layers;
pub mod llama;
mod logps;
pub mod manual;
mod manual_ln;
pub mod net;
pub mod tokenizer;
pub mod weights;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use candle_core::{DType, Device, Tensor, Var};
use sha2::{Digest, Sha256};

pub use config::{Arch, ModelConfig};
pub use logps::TrainLogps;
pub use net::Net;
pub use tokenizer::Tok;
pub use weights::Params;

/// Weight access for one forward pass: with `grad`, the Vars themselves (tracked); without,
/// detached views (no graph). When the compute dtype differs from the weights' (bf16 compute
/// on f32 master weights), each weight is cast; the cast is part of the graph, so gradients
/// arrive at the f32 masters in f32.
pub struct Weights<'a> {
    params: &'a Params,
    grad: bool,
    compute: DType,
}

impl Weights<'_> {
    /// The weight at position `i` of the parameter list (positions from the model's [`Net`]).
    pub fn get(&self, i: usize) -> candle_core::Result<Tensor> {
        let v = self.params.vars().get(i).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "weight #{i} is missing ({} weights)",
                self.params.len()
            ))
        })?;
        let t = if self.grad {
            v.as_tensor().clone()
        } else {
            v.as_tensor().detach()
        };
        if t.dtype() == self.compute {
            Ok(t)
        } else {
            t.to_dtype(self.compute)
        }
    }
}

/// A loaded (or freshly initialised) model with its tokenizer.
pub struct Model {
    pub config: ModelConfig,
    pub params: Params,
    pub tok: Tok,
    pub device: Device,
    /// The folder it was loaded from, if any.
    pub dir: Option<PathBuf>,
    /// sha256 over config, tokenizer, and the weights as loaded (see [`Model::fingerprint`]).
    pub fingerprint: String,
    /// config.json as read (written back by [`Model::save`]).
    pub raw_config: serde_json::Value,
    /// The dtype the forward pass computes in (the weights' own dtype unless
    /// [`Model::set_precision`] chose bf16).
    pub compute: DType,
    /// The architecture and where each of its weights is in `params`.
    net: Net,
}

impl Model {
    /// Loads a Hugging Face model folder onto `device` in f32 (bf16/f16 checkpoints are
    /// upcast: the weights are the optimizer's f32 masters).
    pub fn load(dir: &Path, device: &Device) -> Result<Model> {
        if !dir.is_dir() {
            bail!(
                "{}: not a folder (expected a Hugging Face model folder)",
                dir.display()
            );
        }
        let cfg_path = dir.join("config.json");
        if !cfg_path.exists() {
            bail!(
                "{}: no config.json (a model folder needs config.json, *.safetensors and tokenizer.json)",
                dir.display()
            );
        }
        let text = std::fs::read_to_string(&cfg_path)
            .with_context(|| format!("{}: cannot read", cfg_path.display()))?;
        let raw: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{}: not valid JSON", cfg_path.display()))?;
        let config = ModelConfig::from_value(&raw, &cfg_path.display().to_string())?;
        let tok = Tok::load(dir, &raw)?;
        if tok.vocab_size() > config.vocab_size() {
            bail!(
                "{}: the tokenizer has {} tokens but config.json's vocab_size is {}: this tokenizer does not belong to this model",
                dir.display(),
                tok.vocab_size(),
                config.vocab_size()
            );
        }
        if tok.eos_id as usize >= config.vocab_size() {
            bail!(
                "{}: EOS id {} is outside the model's vocab_size {}",
                dir.display(),
                tok.eos_id,
                config.vocab_size()
            );
        }
        let files = weights::checkpoint_files(dir)?;
        // Sizes read from config.json are claims: the weights they imply must fit in the
        // safetensors files (at half a byte per weight, the smallest dtype) before anything is
        // sized by them.
        let stored: u64 = files
            .iter()
            .map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0))
            .sum();
        let implied = param_count(&config);
        if implied > 2 * u128::from(stored) {
            bail!(
                "{}: config.json implies {implied} weights, more than the {stored} bytes of safetensors in the folder hold (is config.json from another model, or a weights file cut short?)",
                dir.display()
            );
        }
        let tensors = weights::read_tensors(&files, device)?;
        let params = weights::params_from_tensors(
            tensors,
            &param_shapes(&config),
            &dir.display().to_string(),
        )?;
        let net = Net::new(&config, &params)?;
        let mut model = Model {
            config,
            params,
            tok,
            device: device.clone(),
            dir: Some(dir.to_path_buf()),
            fingerprint: String::new(),
            raw_config: raw,
            compute: DType::F32,
            net,
        };
        model.fingerprint = model.compute_fingerprint()?;
        Ok(model)
    }

    /// A new model with random weights (std `init_std` normal for matrices and embeddings, ones
    /// for norm scales, zeros for biases), seeded.
    pub fn random(
        config: ModelConfig,
        raw_config: serde_json::Value,
        tok: Tok,
        init_std: f64,
        seed: u64,
        device: &Device,
    ) -> Result<Model> {
        use rand::{SeedableRng, rngs::StdRng};
        use rand_distr::{Distribution, Normal};
        let mut rng = StdRng::seed_from_u64(seed);
        let normal =
            Normal::new(0.0f64, init_std).map_err(|e| anyhow!("init_std {init_std}: {e}"))?;
        let mut entries = Vec::new();
        for spec in Net::specs(&config) {
            let n: usize = spec.shape.iter().product();
            let data: Vec<f32> = match spec.init {
                net::Init::Zeros => vec![0.0; n],
                net::Init::Ones => vec![1.0; n],
                net::Init::Normal => (0..n).map(|_| normal.sample(&mut rng) as f32).collect(),
            };
            let t = Tensor::from_vec(data, spec.shape.as_slice(), device)?;
            entries.push((spec.name, Var::from_tensor(&t)?));
        }
        let params = Params::new(entries);
        let net = Net::new(&config, &params)?;
        let mut model = Model {
            config,
            params,
            tok,
            device: device.clone(),
            dir: None,
            fingerprint: String::new(),
            raw_config,
            compute: DType::F32,
            net,
        };
        model.fingerprint = model.compute_fingerprint()?;
        Ok(model)
    }

    /// Computes in `p` from now on; the weights stay as they are (f32 masters for bf16).
    pub fn set_precision(&mut self, p: crate::device::Precision) {
        self.compute = match p {
            crate::device::Precision::F32 => self.dtype(),
            crate::device::Precision::Bf16 => DType::BF16,
        };
    }

    pub fn arch(&self) -> Arch {
        self.config.arch()
    }

    pub fn vocab_size(&self) -> usize {
        self.config.vocab_size()
    }

    pub fn eos_id(&self) -> u32 {
        self.tok.eos_id
    }

    /// Logits [B, T, V] with the backprop graph (training).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.run(ids, true)
    }

    /// Per-position log-probs log π(targets[b, t] | ids[b, ..=t]) [B, T] with the backprop graph
    /// (training). On the CPU in f32/f64 the LM head and the log-softmax are one fused node
    /// (`fused::head_logp`), so the [B, T, V] logits never enter the graph; elsewhere the logits
    /// are upcast to f32 and reduced there.
    pub fn forward_logps(&self, ids: &Tensor, targets: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let w = Weights {
            params: &self.params,
            grad: true,
            compute: self.compute,
        };
        let h = self.net.hidden(&w, ids, &mut layers::KvMode::Off)?;
        let head = self.net.lm_head(&w)?;
        let hs = h.dim(2)?;
        let flat_t = targets.flatten_all()?;
        if fused::usable(&h) {
            return Ok(fused::head_logp(&h.reshape((b * t, hs))?, &head, &flat_t)?.reshape((b, t))?);
        }
        let logits = layers::linear(&h, &head, None)?;
        let logits = match logits.dtype() {
            DType::F32 | DType::F64 => logits,
            _ => logits.to_dtype(DType::F32)?,
        };
        let v = logits.dim(2)?;
        Ok(fused::target_logp(&logits.reshape((b * t, v))?, &flat_t)?.reshape((b, t))?)
    }

    /// Per-position log-probs [B, T] for a training step, with the way back to the weights'
    /// gradients: on the CPU in f32/f64 a hand-written backward ([`manual`], and `manual_ln` for
    /// gpt_neox and gpt2), elsewhere candle's graph. Same values as [`Model::forward_logps`].
    pub fn train_logps(&self, ids: &Tensor, targets: &Tensor) -> Result<TrainLogps> {
        self.train_logps_where(ids, targets, None)
    }

    /// [`Model::train_logps`] for a loss that uses only the positions where `mask` [B, T] is
    /// non-zero: the others get log-prob 0 and no gradient, and skip the LM head where the
    /// hand-written pass runs.
    pub fn train_logps_masked(
        &self,
        ids: &Tensor,
        targets: &Tensor,
        mask: &Tensor,
    ) -> Result<TrainLogps> {
        self.train_logps_where(ids, targets, Some(mask))
    }

    fn train_logps_where(
        &self,
        ids: &Tensor,
        targets: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<TrainLogps> {
        if let Some(tl) = manual::train_logps(self, ids, targets, mask)? {
            return Ok(tl);
        }
        let lp = self.forward_logps(ids, targets)?;
        let logps = match mask {
            Some(m) => (&lp * m.to_dtype(lp.dtype())?)?,
            None => lp,
        };
        Ok(TrainLogps::graph(logps))
    }

    /// Logits [B, T, V] on detached weights: no backprop graph is built.
    pub fn forward_eval(&self, ids: &Tensor) -> Result<Tensor> {
        self.run(ids, false)
    }

    /// Logits for several continuations of one shared prefix, on detached weights: the prefix
    /// runs once (batch 1) and its keys/values are cached; the continuations then run as one
    /// padded batch attending to them. Only positions that predict a continuation token reach
    /// the LM head. Returns [R, L, V] where row r, position m holds the logits that predict
    /// `continuations[r][m]` (m = 0 from the prefix's last position), L the longest
    /// continuation; positions past a row's end hold padding logits.
    pub fn forward_eval_shared(&self, prefix: &[u32], continuations: &[&[u32]]) -> Result<Tensor> {
        use layers::{KvCache, KvMode};
        if prefix.is_empty() {
            bail!("a shared prefix needs at least one token");
        }
        if continuations.is_empty() || continuations.iter().any(|c| c.is_empty()) {
            bail!("every continuation of a shared prefix needs at least one token");
        }
        let r = continuations.len();
        let l = continuations.iter().map(|c| c.len()).max().unwrap_or(1);
        let total = prefix.len() + l - 1;
        if total > self.config.max_positions() && self.arch() == Arch::Gpt2 {
            bail!(
                "sequence of {total} tokens is longer than the model's {} positions",
                self.config.max_positions()
            );
        }
        let w = Weights {
            params: &self.params,
            grad: false,
            compute: self.compute,
        };
        let head = self.net.lm_head(&w)?;
        let mut cache = KvCache::default();
        let ids = Tensor::from_slice(prefix, (1, prefix.len()), &self.device)?;
        let h = self.net.hidden(&w, &ids, &mut KvMode::Record(&mut cache))?;
        let last = h.narrow(1, prefix.len() - 1, 1)?;
        let first = layers::linear(&last, &head, None)?; // [1, 1, V]
        let first = first.broadcast_as((r, 1, first.dim(2)?))?;
        if l == 1 {
            return Ok(first.contiguous()?);
        }
        // Continuation inputs: every token but the last (nothing is predicted after it).
        let mut inp = vec![0u32; r * (l - 1)];
        for (i, c) in continuations.iter().enumerate() {
            inp[i * (l - 1)..i * (l - 1) + c.len() - 1].copy_from_slice(&c[..c.len() - 1]);
        }
        let ids = Tensor::from_vec(inp, (r, l - 1), &self.device)?;
        let h = self.net.hidden(&w, &ids, &mut KvMode::Attend(&cache))?;
        let rest = layers::linear(&h, &head, None)?;
        Ok(Tensor::cat(&[&first, &rest], 1)?)
    }

    fn run(&self, ids: &Tensor, grad: bool) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        if t > self.config.max_positions() && self.arch() == Arch::Gpt2 {
            bail!(
                "sequence of {t} tokens is longer than the model's {} positions",
                self.config.max_positions()
            );
        }
        let w = Weights {
            params: &self.params,
            grad,
            compute: self.compute,
        };
        Ok(self.net.forward(&w, ids)?)
    }

    /// Copies of all weights (e.g. to restore or to diff later).
    pub fn snapshot(&self) -> Result<Vec<Tensor>> {
        self.params
            .vars()
            .iter()
            .map(|v| v.as_tensor().copy().map_err(Into::into))
            .collect()
    }

    /// Sets all weights from a snapshot taken with [`Model::snapshot`].
    pub fn restore(&self, snap: &[Tensor]) -> Result<()> {
        if snap.len() != self.params.len() {
            bail!(
                "snapshot has {} tensors, model has {}",
                snap.len(),
                self.params.len()
            );
        }
        for (v, t) in self.params.vars().iter().zip(snap) {
            v.set(t)?;
        }
        Ok(())
    }

    /// Writes config.json, model.safetensors and tokenizer.json into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{}: cannot create", dir.display()))?;
        let cfg = serde_json::to_string_pretty(&self.raw_config)?;
        std::fs::write(dir.join("config.json"), cfg)
            .with_context(|| format!("{}: cannot write config.json", dir.display()))?;
        weights::save(&self.params, &dir.join("model.safetensors"))?;
        self.tok
            .inner()
            .save(dir.join("tokenizer.json"), false)
            .map_err(|e| anyhow!("{}: cannot write tokenizer.json: {e}", dir.display()))?;
        if let Some(src) = &self.dir {
            let tc = src.join("tokenizer_config.json");
            if tc.exists() && src != dir {
                std::fs::copy(&tc, dir.join("tokenizer_config.json"))
                    .with_context(|| format!("{}: cannot copy", tc.display()))?;
            }
        }
        Ok(())
    }

    /// sha256 (hex, first 16 chars) over config.json, the tokenizer vocabulary size and every
    /// weight's bytes.
    pub fn compute_fingerprint(&self) -> Result<String> {
        let mut h = Sha256::new();
        h.update(self.raw_config.to_string().as_bytes());
        h.update((self.tok.vocab_size() as u64).to_le_bytes());
        for (name, v) in self.params.names().iter().zip(self.params.vars()) {
            h.update(name.as_bytes());
            let t = v.as_tensor().to_dtype(DType::F32)?.flatten_all()?;
            for x in t.to_vec1::<f32>()? {
                h.update(x.to_le_bytes());
            }
        }
        let d = h.finalize();
        Ok(d.iter().take(8).map(|b| format!("{b:02x}")).collect())
    }

    /// A copy of this model with every weight converted to `dtype` (e.g. F64 for
    /// finite-difference checks).
    pub fn to_dtype(&self, dtype: DType) -> Result<Model> {
        let entries = self
            .params
            .names()
            .iter()
            .zip(self.params.vars())
            .map(|(n, v)| {
                Ok((
                    n.clone(),
                    // detach first: Var::from_tensor of a variable shares its storage
                    Var::from_tensor(&v.as_tensor().detach().to_dtype(dtype)?)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Model {
            config: self.config.clone(),
            params: Params::new(entries),
            tok: self.tok.clone(),
            device: self.device.clone(),
            dir: self.dir.clone(),
            fingerprint: self.fingerprint.clone(),
            raw_config: self.raw_config.clone(),
            compute: dtype,
            net: self.net.clone(),
        })
    }

    /// A frozen copy: the weights detached into their own storage (later updates of this model
    /// leave it unchanged), computing in this model's precision (bf16 compute on f32 masters
    /// stays bf16 compute), so that it scores exactly as this model does now. The on-policy
    /// reference is made this way.
    pub fn frozen_copy(&self) -> Result<Model> {
        let mut m = self.to_dtype(self.dtype())?;
        m.compute = self.compute;
        Ok(m)
    }

    /// The weights' dtype.
    pub fn dtype(&self) -> DType {
        self.params
            .vars()
            .first()
            .map(|v| v.dtype())
            .unwrap_or(DType::F32)
    }

    pub fn n_params(&self) -> usize {
        self.params.numel()
    }
}

/// The number of weights `config` implies, computed without listing every layer's (so a layer
/// count read from a file costs nothing before it is checked against the weights).
pub fn param_count(config: &ModelConfig) -> u128 {
    let with_layers = |n: usize| {
        Net::specs(&config.with_num_layers(n))
            .iter()
            .map(|s| s.shape.iter().map(|&d| d as u128).product::<u128>())
            .sum::<u128>()
    };
    let (outside, one) = (with_layers(0), with_layers(1));
    outside + (one - outside) * config.num_layers() as u128
}

/// The weight list of an architecture: names (HF) and shapes, in checkpoint order (see
/// [`Net::specs`]).
pub fn param_shapes(config: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    Net::specs(config)
        .into_iter()
        .map(|s| (s.name, s.shape))
        .collect()
}
