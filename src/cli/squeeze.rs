//! `ldviz squeeze`: the squeezing effect on one softmax.

use anyhow::{Context, Result, bail};
use clap::Args;

#[derive(Args)]
pub struct SqueezeArgs {
    /// The distribution before the step, comma-separated (must sum to 1).
    #[arg(long, value_delimiter = ',', required_unless_present = "classes")]
    probs: Vec<f64>,
    /// Instead of --probs: V classes with geometric probabilities π_i ∝ ratio^i.
    #[arg(long, conflicts_with = "probs")]
    classes: Option<usize>,
    #[arg(long, default_value_t = 0.5)]
    ratio: f64,
    /// Push this class's log-prob down (0-based index); with --positive both steps are taken
    /// at once.
    #[arg(long, required_unless_present = "positive")]
    negative: Option<usize>,
    /// Push this class's log-prob up (0-based index); with --negative both steps are taken at
    /// once.
    #[arg(long)]
    positive: Option<usize>,
    /// Step size η' on the logits.
    #[arg(long, default_value_t = 1.0)]
    eta: f64,
    /// Number of steps.
    #[arg(long, default_value_t = 1)]
    steps: usize,
    #[arg(long)]
    json: bool,
}

pub fn run(a: SqueezeArgs) -> Result<()> {
    use crate::squeeze::{Sign, check_probs, geometric, ratios, step_many};
    let p0 = match a.classes {
        Some(v) if v < 2 => bail!("--classes must be at least 2"),
        Some(v) => geometric(v, a.ratio),
        None => check_probs(&a.probs).context("--probs")?,
    };
    let mut terms = Vec::new();
    if let Some(c) = a.positive {
        terms.push((c, Sign::Positive));
    }
    if let Some(c) = a.negative {
        terms.push((c, Sign::Negative));
    }
    if terms.is_empty() {
        bail!("give --negative I or --positive I (or both)");
    }
    for &(c, sign) in &terms {
        let flag = if sign == Sign::Negative {
            "--negative"
        } else {
            "--positive"
        };
        if c >= p0.len() {
            bail!(
                "{flag}: class {c} is out of range: there are {} classes (0-based)",
                p0.len()
            );
        }
    }
    if let (Some(i), Some(j)) = (a.positive, a.negative)
        && i == j
    {
        bail!("--positive and --negative name the same class {i}: the two steps cancel");
    }
    if !(a.eta.is_finite() && a.eta >= 0.0) {
        bail!("--eta must be a non-negative number");
    }
    let mut p = p0.clone();
    let mut history = Vec::new();
    for _ in 0..a.steps.max(1) {
        p = step_many(&p, &terms, a.eta);
        history.push(p.clone());
    }
    let alpha = ratios(&p0, &p);
    let sign_name = |sign: Sign| {
        if sign == Sign::Negative {
            "negative"
        } else {
            "positive"
        }
    };
    if a.json {
        let changes: Vec<serde_json::Value> = terms
            .iter()
            .map(|&(c, sign)| {
                serde_json::json!({"class": c, "step": sign_name(sign), "before": p0[c], "after": p[c], "alpha": alpha[c]})
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"before": p0, "after": p, "alpha": alpha, "steps": history, "changes": changes})
        );
        return Ok(());
    }
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.4}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let what = terms
        .iter()
        .map(|&(c, sign)| format!("{} step(s) on class {c}", sign_name(sign)))
        .collect::<Vec<_>>()
        .join(" and ");
    println!("before: [{}]", fmt(&p0));
    println!(
        "after {} {what} with eta {}: [{}]",
        a.steps.max(1),
        a.eta,
        fmt(&p)
    );
    for &(c, sign) in &terms {
        println!(
            "class {c} ({}): {:.4} -> {:.4} (alpha {:.4})",
            sign_name(sign),
            p0[c],
            p[c],
            alpha[c]
        );
    }
    println!("alpha (after / before): [{}]", fmt(&alpha));
    println!(
        "rose: {:?} (argmax before: {})",
        crate::squeeze::rose(&alpha),
        crate::squeeze::argmax(&p0)
    );
    Ok(())
}
