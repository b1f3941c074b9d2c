//! Exports of recorded runs: long-format CSV of probe log-probs and a wide CSV of metrics
//! (csv.rs), and the family plot as PNG/SVG with plotters (plot.rs).

pub mod csv;
pub mod plot;
