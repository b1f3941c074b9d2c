//! [`TrainLogps`]: what [`Model::train_logps`] returns for every architecture: the per-position
//! log-probs a training loss is built on, and how the loss's gradient reaches the weights
//! (candle's graph, or the hand-written backward of [`super::manual`]).

use anyhow::Result;
use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::Model;
use super::manual::Tape;

/// Log-probs for a training step, and how to turn the loss's gradient into the weights'.
pub struct TrainLogps {
    logps: Tensor,
    /// The hand-written pass: its log-probs as a leaf of the loss's graph, and its tape.
    tape: Option<(Var, Tape)>,
}

impl TrainLogps {
    /// Log-probs computed in candle's graph, which carries the gradient to the weights.
    pub(crate) fn graph(logps: Tensor) -> Self {
        TrainLogps { logps, tape: None }
    }

    /// Log-probs of the hand-written pass: `leaf` (a variable the loss is built on) and the
    /// tape its backward runs from.
    pub(crate) fn manual(leaf: Var, tape: Tape) -> Self {
        TrainLogps {
            logps: leaf.as_tensor().clone(),
            tape: Some((leaf, tape)),
        }
    }

    /// Per-position log π(target | prefix) [B, T], part of the graph the loss is built on.
    pub fn logps(&self) -> &Tensor {
        &self.logps
    }

    /// Whether the hand-written backward runs (false: candle's graph all the way).
    pub fn is_manual(&self) -> bool {
        self.tape.is_some()
    }

    /// The gradient of every weight, in weight order, from the loss's gradients `store`
    /// (`loss.backward()`); None where a weight got none.
    pub fn param_grads(self, model: &Model, store: &GradStore) -> Result<Vec<Option<Tensor>>> {
        let Some((leaf, tape)) = self.tape else {
            return Ok(model.params.grads(store));
        };
        let Some(g) = store.get(leaf.as_tensor()) else {
            // the loss does not depend on the log-probs
            return Ok(vec![None; model.params.len()]);
        };
        tape.backward(model, g)
    }
}
