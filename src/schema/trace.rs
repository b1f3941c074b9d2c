//! What one evaluation records per probe beside the summed log-probs: per-token traces of
//! chosen and rejected (log-prob, entropy, top-k at every position), the teacher-forced greedy
//! response y*, and the per-response diagnostics.

use serde::{Deserialize, Serialize};

/// Per-token details of one response at every position: log-prob of the actual token, entropy
/// of the next-token distribution, and its top-k tokens.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TokenTrace {
    #[serde(with = "super::nonfinite")]
    pub logp: Vec<f32>,
    #[serde(with = "super::nonfinite")]
    pub entropy: Vec<f32>,
    /// top-k (token id, log-prob) per position, most likely first.
    #[serde(with = "super::nonfinite")]
    pub top: Vec<Vec<(u32, f32)>>,
}

/// The teacher-forced greedy response along a row: argmax token and its log-prob per position.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Greedy {
    pub ids: Vec<u32>,
    #[serde(with = "super::nonfinite")]
    pub logp: Vec<f32>,
}

impl Greedy {
    pub fn sum(&self) -> f64 {
        self.logp.iter().map(|&x| f64::from(x)).sum()
    }
}

/// Per-token details of one probe at one evaluation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProbeTrace {
    pub chosen: TokenTrace,
    pub rejected: TokenTrace,
    pub argmax: Greedy,
}

/// The cheap diagnostics of one response, from its next-token distributions π_m and tokens y_m
/// (m over response positions, V the vocabulary size):
/// `[A_MEAN]` ‖A‖_F = sqrt(V‖π_m‖² + V − 2) of A = I − 1π_mᵀ, mean over positions;
/// `[1]` ‖π_m − e_y‖ = sqrt(‖π_m‖² − 2π_y + 1), mean over positions;
/// `[2]` energy 1 − π_y, mean over positions;
/// `[A_AUTHORS]` ‖A‖_F as the learning-dynamics authors' code computes it: the same formula
/// applied once to the mean norm, sqrt(V·(mean_m ‖π_m‖)² + V − 2). As sqrt(V x² + V − 2) is
/// convex in x = ‖π‖, `[A_MEAN]` ≥ `[A_AUTHORS]`, equal only when ‖π_m‖ is the same at every
/// position.
pub type Diag = [f64; 4];

/// Index of ‖A‖_F averaged over positions in a [`Diag`].
pub const A_MEAN: usize = 0;
/// Index of the authors' ‖A‖_F (from the mean ‖π‖) in a [`Diag`].
pub const A_AUTHORS: usize = 3;
