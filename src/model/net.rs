//! A model's architecture as a typed index of its weights, in the style of candle-transformers'
//! model structs: each architecture declares its weights once (llama.rs, gpt_neox.rs, gpt2.rs:
//! `*Weights::build`, the only place their Hugging Face names are spelled), in checkpoint order,
//! with shape and initialisation. The same declaration gives the list of (name, shape) a
//! checkpoint is read against, the random initialisation, and the index into [`Params`] that
//! the candle forward and the hand-written pass read their weights through. [`Net`] is the one
//! place that dispatches on the architecture.

use std::convert::Infallible;

use anyhow::{Context, Result, bail};
use candle_core::Tensor;

use super::config::{Gpt2Config, GptNeoxConfig, LlamaConfig, ModelConfig};
use super::gpt_neox::GptNeoxWeights;
use super::gpt2::Gpt2Weights;
use super::layers::{KvMode, linear};
use super::llama::LlamaWeights;
use super::{Params, Weights};

/// How a fresh model initialises a weight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Init {
    /// Normal with the model's `init_std` (matrices, embeddings).
    Normal,
    /// Ones (norm scales).
    Ones,
    /// Zeros (biases).
    Zeros,
}

/// One weight as an architecture declares it.
#[derive(Clone, Debug, PartialEq)]
pub struct WeightSpec {
    /// The Hugging Face name.
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

impl WeightSpec {
    pub fn normal(name: String, shape: Vec<usize>) -> Self {
        WeightSpec {
            name,
            shape,
            init: Init::Normal,
        }
    }
    pub fn ones(name: String, shape: Vec<usize>) -> Self {
        WeightSpec {
            name,
            shape,
            init: Init::Ones,
        }
    }
    pub fn zeros(name: String, shape: Vec<usize>) -> Self {
        WeightSpec {
            name,
            shape,
            init: Init::Zeros,
        }
    }
}

/// What an architecture's `build` calls once per weight, in checkpoint order: it gets the
/// weight's declaration and returns what the index keeps for it (`W`: a position in [`Params`]).
pub type Declare<'a, W, E> = dyn FnMut(WeightSpec) -> std::result::Result<W, E> + 'a;

/// A linear map's weight and optional bias.
#[derive(Clone, Debug)]
pub struct Proj<W = usize> {
    pub weight: W,
    pub bias: Option<W>,
}

impl<W> Proj<W> {
    /// `{name}.weight` of `shape`, then `{name}.bias` of n elements when `bias` is Some(n).
    pub fn build<E>(
        f: &mut Declare<'_, W, E>,
        name: &str,
        shape: Vec<usize>,
        bias: Option<usize>,
    ) -> std::result::Result<Self, E> {
        let weight = f(WeightSpec::normal(format!("{name}.weight"), shape))?;
        let bias = match bias {
            Some(n) => Some(f(WeightSpec::zeros(format!("{name}.bias"), vec![n]))?),
            None => None,
        };
        Ok(Proj { weight, bias })
    }
}

/// A LayerNorm's scale and shift.
#[derive(Clone, Debug)]
pub struct Norm<W = usize> {
    pub weight: W,
    pub bias: W,
}

impl<W> Norm<W> {
    /// `{name}.weight` (ones), then `{name}.bias` (zeros), n elements each.
    pub fn build<E>(
        f: &mut Declare<'_, W, E>,
        name: &str,
        n: usize,
    ) -> std::result::Result<Self, E> {
        Ok(Norm {
            weight: f(WeightSpec::ones(format!("{name}.weight"), vec![n]))?,
            bias: f(WeightSpec::zeros(format!("{name}.bias"), vec![n]))?,
        })
    }
}

/// A model's architecture: its config and the positions of its weights in [`Params`], built
/// once when the model is loaded or initialised.
#[derive(Clone, Debug)]
pub enum Net {
    /// llama and qwen2.
    Llama(LlamaConfig, LlamaWeights),
    GptNeox(GptNeoxConfig, GptNeoxWeights),
    Gpt2(Gpt2Config, Gpt2Weights),
}

impl Net {
    /// `config`'s architecture, with `f` deciding what the index keeps for each weight.
    fn build<E>(
        config: &ModelConfig,
        mut f: impl FnMut(WeightSpec) -> std::result::Result<usize, E>,
    ) -> std::result::Result<Net, E> {
        Ok(match config {
            ModelConfig::Llama(c) | ModelConfig::Qwen2(c) => {
                Net::Llama(c.clone(), LlamaWeights::build(c, &mut f)?)
            }
            ModelConfig::GptNeox(c) => Net::GptNeox(c.clone(), GptNeoxWeights::build(c, &mut f)?),
            ModelConfig::Gpt2(c) => Net::Gpt2(c.clone(), Gpt2Weights::build(c, &mut f)?),
        })
    }

    /// The index of `config`'s weights in `params` (found by name, shapes checked).
    pub fn new(config: &ModelConfig, params: &Params) -> Result<Net> {
        Net::build(config, |s| {
            let i = params
                .position(&s.name)
                .with_context(|| format!("weight \"{}\" is missing", s.name))?;
            let dims = params.vars()[i].dims();
            if dims != s.shape.as_slice() {
                bail!(
                    "weight \"{}\" has shape {dims:?}, the config implies {:?}",
                    s.name,
                    s.shape
                );
            }
            Ok(i)
        })
    }

    /// Every weight of `config`, in checkpoint order (the order of [`Params`]).
    pub fn specs(config: &ModelConfig) -> Vec<WeightSpec> {
        let mut specs = Vec::new();
        let Ok(_) = Net::build::<Infallible>(config, |s| {
            specs.push(s);
            Ok(specs.len() - 1)
        });
        specs
    }

    /// The final normalized hidden states [B, T, H] for token ids [B, T], at positions starting
    /// after the cached prefix when `kv` attends to one.
    pub fn hidden(
        &self,
        w: &Weights,
        ids: &Tensor,
        kv: &mut KvMode,
    ) -> candle_core::Result<Tensor> {
        match self {
            Net::Llama(c, ix) => super::llama::hidden(c, ix, w, ids, kv),
            Net::GptNeox(c, ix) => super::gpt_neox::hidden(c, ix, w, ids, kv),
            Net::Gpt2(c, ix) => super::gpt2::hidden(c, ix, w, ids, kv),
        }
    }

    /// The LM head's weight [V, H] (the token embedding when tied).
    pub fn lm_head(&self, w: &Weights) -> candle_core::Result<Tensor> {
        w.get(match self {
            Net::Llama(_, ix) => ix.head(),
            Net::GptNeox(_, ix) => ix.head(),
            Net::Gpt2(_, ix) => ix.wte,
        })
    }

    /// Logits [B, T, V] for token ids [B, T] (right padding is fine: attention is causal).
    pub fn forward(&self, w: &Weights, ids: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.hidden(w, ids, &mut KvMode::Off)?;
        linear(&x, &self.lm_head(w)?, None)
    }
}

/// Tensors a checkpoint may hold beside its weights: an LM head saved next to the embedding it
/// is tied to, under any architecture's name.
pub fn is_tied_head_copy(name: &str) -> bool {
    name == super::llama::LM_HEAD
        || name == super::gpt_neox::EMBED_OUT
        || name.strip_prefix(super::gpt2::PREFIX) == Some(super::llama::LM_HEAD)
}
