//! The trainer thread obeys Pause / Step / Resume / Stop, and a stopped run keeps its file.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure

mod common;

use ldviz::run::{EndReason, Event, read_run};
use ldviz::train::{Algo, Command, OptimKind, TrainConfig, TrainOptions};

/// DPO with AdamW at 1e-3 on the gpt_neox fixture and probes_all.jsonl, `steps` steps, batches
/// of 2 shuffled with seed 1, 3 probes evaluated every 4 examples, top 3 tokens.
fn config(steps: usize) -> TrainConfig {
    TrainOptions {
        algo: Algo::Dpo,
        optimizer: OptimKind::Adamw,
        lr: Some(1e-3),
        steps: Some(steps),
        batch_size: 2,
        seed: 1,
        eval_every: 4,
        probes: "3".into(),
        top_k: 3,
        ..common::fixture_options("gpt_neox", "probes_all.jsonl")
    }
    .to_config()
    .unwrap()
}

#[test]
fn pause_step_resume_and_stop() {
    use std::time::{Duration as Wait, Instant};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("live.jsonl");
    let h = ldviz::train::spawn(config(1000), Some(out.clone()));
    // queued before the first update: the trainer pauses before training
    h.commands.send(Command::Pause).unwrap();
    let paused_seen = loop {
        match h.events.recv_timeout(Wait::from_secs(60)).unwrap() {
            Event::State { paused: true, step } => {
                assert_eq!(step, 0);
                break true;
            }
            Event::Step(s) => panic!("update {} before the queued pause", s.step),
            _ => {}
        }
    };
    // Each Step applies exactly one update, and nothing runs between Steps while paused.
    let mut steps = 0;
    for k in 1..=2 {
        h.commands.send(Command::Step).unwrap();
        loop {
            if let Event::Step(s) = h.events.recv_timeout(Wait::from_secs(60)).unwrap() {
                assert_eq!(s.step, k);
                steps += 1;
                break;
            }
        }
        let quiet_until = Instant::now() + Wait::from_millis(500);
        while let Some(left) = quiet_until.checked_duration_since(Instant::now()) {
            match h.events.recv_timeout(left) {
                Ok(Event::Step(s)) => panic!("update {} ran while paused after Step {k}", s.step),
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    assert_eq!(steps, 2);
    h.commands.send(Command::Resume).unwrap();
    let mut sent_pause = false;
    let mut stopped_at = None;
    for ev in h.events.iter() {
        match ev {
            Event::State { paused: true, step } => {
                // paused again: stop while paused, so the stop step is deterministic
                stopped_at = Some(step);
                h.commands.send(Command::Stop).unwrap();
            }
            Event::Step(s) => {
                steps += 1;
                assert_eq!(s.step, steps);
                if steps == 5 && !sent_pause {
                    h.commands.send(Command::Pause).unwrap();
                    sent_pause = true;
                }
            }
            Event::End { reason, step, .. } => {
                assert_eq!(reason, EndReason::Stopped);
                assert_eq!(step, steps);
            }
            _ => {}
        }
    }
    h.join().unwrap();
    assert!(paused_seen);
    // no update after the pause that preceded the stop
    let k = stopped_at.unwrap();
    assert!(k >= 5);
    assert_eq!(steps, k);
    let run = read_run(&out).unwrap();
    assert_eq!(run.steps.len(), k);
    assert_eq!(run.end.as_ref().unwrap().0, EndReason::Stopped);
    // evaluations at step 0, every 4 examples (2 steps), and the state at the stop
    let eval_steps: Vec<usize> = run.evals.iter().map(|e| e.step).collect();
    let mut want: Vec<usize> = (0..=k).step_by(2).collect();
    if k % 2 == 1 {
        want.push(k);
    }
    assert_eq!(eval_steps, want);
    // the header records the configuration, conventions and probes
    assert_eq!(run.header.config.batch_size, 2);
    assert_eq!(run.header.probes.len(), 3);
    assert!(run.header.conventions.eos_appended);
    assert_eq!(run.header.families.last().map(|f| f.key()), Some("argmax"));
    // per-token traces cover every chosen token, with top-k sorted and entropies ≥ 0
    let e = &run.evals[0];
    for (tr, p) in e.tokens.iter().zip(&run.header.probes) {
        let n = p.tokens[&ldviz::data::Family::Chosen].len();
        assert_eq!(tr.chosen.logp.len(), n);
        assert_eq!(tr.argmax.ids.len(), n);
        for (m, top) in tr.chosen.top.iter().enumerate() {
            assert_eq!(top.len(), 3);
            assert!(top[0].1 >= top[1].1 && top[1].1 >= top[2].1);
            assert!(tr.chosen.entropy[m] >= 0.0);
            // the greedy token is the top-1 token, and no token beats it
            assert_eq!(top[0].0, tr.argmax.ids[m]);
            assert!(tr.chosen.logp[m] <= tr.argmax.logp[m] + 1e-6);
        }
        for id in tr.argmax.ids.iter() {
            assert!(
                run.vocab.contains_key(id),
                "token {id} has no text in the run's vocab"
            );
        }
    }
}
