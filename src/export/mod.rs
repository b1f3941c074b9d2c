//! Exports of recorded runs: long-format CSV of probe log-probs and a wide CSV of metrics.

pub mod csv;
