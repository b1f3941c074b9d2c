//! The app, driven headlessly by egui_kittest: it starts on the embedded default, Start trains
//! and plots points, the keyboard moves the cursor and the token inspector follows, export
//! writes valid PNG and SVG files through the path window, a native dialog that cannot open is
//! reported and replaced by the path window, and bad inputs show errors while the app keeps
//! working.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test may panic: that is its failure
#![cfg(feature = "gui")]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::sample_run;
use egui_kittest::Harness;
use egui_kittest::kittest::Queryable;
use ldviz::app::{DialogKind, Launch, LdvizApp, Mode, Picked, Tab, dialog_outcome};
use ldviz::data::Family;

fn harness(app: LdvizApp) -> Harness<'static, LdvizApp> {
    Harness::builder()
        .with_size(egui::vec2(1400.0, 900.0))
        .with_max_steps(50)
        .with_accessibility_check(false)
        .with_context_setup(ldviz::app::install_fonts)
        .build_ui_state(|ui, app: &mut LdvizApp| app.show(ui), app)
}

/// Steps frames until `done` holds (the trainer runs on its own thread).
fn step_until(h: &mut Harness<'_, LdvizApp>, secs: u64, done: impl Fn(&LdvizApp) -> bool) {
    let t = Instant::now();
    while !done(h.state()) {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out; errors: {:?}",
            h.state().errors
        );
        h.step();
        std::thread::sleep(Duration::from_millis(20));
    }
    h.step();
}

fn label_contains(h: &Harness<'_, LdvizApp>, text: &str) -> bool {
    h.query_all_by_label_contains(text).next().is_some()
}

#[test]
fn starts_on_the_default_and_start_plots_points() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = LdvizApp::new(&Launch::default());
    assert_eq!(app.setup.options.model, "default");
    assert_eq!(app.setup.options.data, "default");
    // A short run so the test is quick: 3 DPO steps, an evaluation every 4 examples, 4 probes.
    app.setup.options.algo = ldviz::train::Algo::Dpo;
    app.setup.options.steps = Some(3);
    app.setup.options.eval_every = 4;
    app.setup.options.probes = "4".into();
    app.setup.options.influence_every = Some(1);
    app.setup.out_dir = dir.path().display().to_string();
    let mut h = harness(app);
    h.step();
    // The sample runs are listed.
    assert!(label_contains(&h, "open dpo_offpolicy"));
    assert!(label_contains(&h, "No run open"));
    h.get_by_label("▶ Start").click();
    step_until(&mut h, 240, |a| {
        a.active_run()
            .is_some_and(|r| r.ended() && r.n_evals() >= 4)
    });
    let app = h.state();
    assert!(app.errors.is_empty(), "{:?}", app.errors);
    let run = app.active_run().unwrap();
    assert_eq!(run.run.steps.len(), 3);
    // Plotted: every family of the run drew its points (t = 0 plus 3 evaluations).
    assert_eq!(app.curves.drawn.len(), run.run.header.families.len());
    assert!(app.curves.drawn.iter().all(|(_, n)| *n == run.n_evals()));
    // The live run was written to a run file in the chosen folder, and it ended cleanly.
    let written = ldviz::run::read_run(run.path.as_ref().unwrap()).unwrap();
    assert_eq!(written.evals.len(), run.n_evals());
    assert!(run.path.as_ref().unwrap().starts_with(dir.path()));
    assert!(label_contains(&h, "completed"));
    // The influence view: the last update's record (4 probes × 5 families observed).
    assert_eq!(run.run.influence.len(), 3);
    h.state_mut().tab = Tab::Influence;
    h.step();
    assert!(label_contains(&h, "update 3 (dpo, adamw"));
    assert!(label_contains(&h, "all 3 records up to the cursor"));
    // Scrubbing back to t = 0 shows the first record (the latest at or before the cursor).
    h.key_press(egui::Key::Home);
    h.step();
    assert!(label_contains(&h, "update 1 (dpo"));
    h.key_press(egui::Key::End);
    h.step();
    // The cosine cells say which f_u they use (the default: the example's loss).
    assert!(label_contains(&h, "f_u: loss"));
    h.state_mut().influence.cell = ldviz::app::influence::CellValue::Cosine;
    h.step();
    assert!(label_contains(&h, "cosine with f_u = −L_u"));
    // The transfer view (4 probes → a 4 × 4 matrix) and a diagnostic as the plotted quantity.
    h.state_mut().tab = Tab::Transfer;
    h.step();
    assert!(label_contains(&h, "mean off-diagonal Δ"));
    assert!(label_contains(&h, "4 prompts"));
    h.state_mut().tab = Tab::Curves;
    h.state_mut().curves.settings.quantity = ldviz::run::Quantity::Energy;
    h.step();
    let n = h.state().active_run().unwrap().n_evals();
    let drawn = h.state().curves.drawn.clone();
    assert!(
        drawn.iter().any(|(name, k)| name == "chosen" && *k == n),
        "{drawn:?}"
    );
    // y* has no diagnostics: nothing drawn for it.
    assert!(drawn.iter().any(|(name, k)| name == "argmax" && *k == 0));
}

#[test]
fn the_train_panel_offers_cdpo_with_its_label_smoothing_and_the_influence_target() {
    let mut app = LdvizApp::new(&Launch::default());
    app.setup.options.algo = ldviz::train::Algo::Dpo;
    let mut h = harness(app);
    h.step();
    assert!(!label_contains(&h, "Label smoothing ε"));
    assert!(label_contains(&h, "Influence cosine f_u"));
    for a in [ldviz::train::Algo::Cdpo, ldviz::train::Algo::Robust] {
        h.state_mut().setup.options.algo = a;
        h.step();
        assert!(label_contains(&h, "Label smoothing ε"), "{a}");
    }
    assert!(ldviz::train::Algo::CLI.contains(&ldviz::train::Algo::Cdpo));
}

#[test]
fn the_train_panel_offers_resampling_before_every_update() {
    let mut app = LdvizApp::new(&Launch::default());
    app.setup.options.algo = ldviz::train::Algo::Dpo;
    let mut h = harness(app);
    h.step();
    assert!(!label_contains(&h, "resample before every update"));
    h.get_by_label("on-policy (rejected sampled from the policy)")
        .click();
    h.step();
    assert!(h.state().setup.options.on_policy);
    assert_eq!(h.state().setup.options.resample_every, None);
    h.get_by_label("resample before every update (online DPO)")
        .click();
    h.step();
    assert_eq!(h.state().setup.options.resample_every, Some(1));
    let cfg = h.state().setup.options.to_config().unwrap();
    let dpo = cfg.phases.iter().find(|p| !p.algo.is_sft()).unwrap();
    assert!(dpo.on_policy && dpo.resample_every == Some(1));
    // turning on-policy off drops the resampling choice with it
    h.get_by_label("on-policy (rejected sampled from the policy)")
        .click();
    h.step();
    assert_eq!(h.state().setup.options.resample_every, None);
}

#[test]
fn keyboard_moves_the_cursor_and_the_token_inspector_follows() {
    let launch = Launch {
        runs: vec![sample_run("dpo_offpolicy")],
        tab: Some("tokens".into()),
        ..Launch::default()
    };
    let mut h = harness(LdvizApp::new(&launch));
    h.step();
    let n = h.state().active_run().unwrap().n_evals();
    assert!(n > 3);
    // Opened at the end, paused (the run has ended).
    assert_eq!(h.state().timeline.cursor, n - 1);
    assert_eq!(h.state().timeline.mode, Mode::Paused);
    h.key_press(egui::Key::Home);
    h.step();
    assert_eq!(h.state().timeline.cursor, 0);
    h.key_press(egui::Key::ArrowRight);
    h.step();
    h.key_press(egui::Key::ArrowRight);
    h.step();
    assert_eq!(h.state().timeline.cursor, 2);
    let step2 = h.state().active_run().unwrap().run.evals[2].step;
    assert!(label_contains(
        &h,
        &format!("step {step2} · summed log-prob")
    ));
    h.key_press(egui::Key::ArrowLeft);
    h.step();
    let step1 = h.state().active_run().unwrap().run.evals[1].step;
    assert!(label_contains(
        &h,
        &format!("step {step1} · summed log-prob")
    ));
    assert!(label_contains(&h, &format!("step {step1} (cursor)")));
    h.key_press(egui::Key::End);
    h.step();
    assert_eq!(h.state().timeline.cursor, n - 1);
    // Space plays from the start after the end; the cursor advances with time.
    h.key_press(egui::Key::Space);
    h.step();
    assert_eq!(h.state().timeline.mode, Mode::Playing);
    h.step();
    h.step();
    assert!(h.state().timeline.cursor > 0);
    h.key_press(egui::Key::Space);
    h.step();
    assert_eq!(h.state().timeline.mode, Mode::Paused);
}

#[test]
fn squeezing_is_visible_in_the_token_inspector() {
    // dpo_offpolicy: where the rejected response sat in a valley at t = 0 (its token's log-prob
    // below −3), the negative gradient moves mass onto the argmax: the top-1 probability at those
    // positions rises from t = 0 to the end on most probes (21 of 32 in the shipped run), while
    // over all positions the distribution flattens (sample_runs/README.md).
    let launch = Launch {
        runs: vec![sample_run("dpo_offpolicy")],
        tab: Some("tokens".into()),
        ..Launch::default()
    };
    let app = LdvizApp::new(&launch);
    let store = app.active_run().unwrap();
    let last = store.n_evals() - 1;
    let (mut rising, mut with_valleys) = (0, 0);
    for p in 0..store.n_probes() {
        let row = ldviz::app::token_row(store, p, Family::Rejected, last).unwrap();
        let valley: Vec<usize> = (0..row.logp0.len())
            .filter(|&i| row.logp0[i] < ldviz::app::VALLEY_LOGP)
            .collect();
        if valley.is_empty() {
            continue;
        }
        with_valleys += 1;
        let pick = |top: &[Vec<(u32, f32)>]| -> Vec<Vec<(u32, f32)>> {
            valley.iter().map(|&i| top[i].clone()).collect()
        };
        if ldviz::app::mean_top1(&pick(&row.top)) > ldviz::app::mean_top1(&pick(&row.top0)) {
            rising += 1;
        }
    }
    assert!(
        with_valleys >= store.n_probes() / 2 && rising * 2 > with_valleys,
        "top-1 mass rose at the valley positions of {rising}/{with_valleys} probes"
    );
    let mut h = harness(app);
    h.step();
    assert!(label_contains(&h, "squeezing"));
}

/// Opens the export path window from the Export menu ("Save to path…").
fn open_export_window(h: &mut Harness<'_, LdvizApp>) {
    h.get_by_label("Export").click();
    h.step();
    h.step();
    h.get_by_label("Save to path…").click();
    h.run_steps(3);
    assert!(h.state().path_window(DialogKind::SavePng).is_some());
}

/// Types `text` into the (cleared) field labelled `label`.
fn type_path(h: &mut Harness<'_, LdvizApp>, label: &str, text: &str) {
    for w in h.state_mut().path_windows.iter_mut() {
        w.text.clear();
    }
    h.step();
    let field = h.get_by_label(label);
    field.focus();
    field.type_text(text);
    h.step();
}

#[test]
fn export_path_window_saves_png_svg_and_csv_with_the_save_button() {
    let dir = tempfile::tempdir().unwrap();
    let launch = Launch {
        runs: vec![sample_run("sft")],
        ..Launch::default()
    };
    let mut h = harness(LdvizApp::new(&launch));
    h.step();
    for ext in ["png", "svg", "csv"] {
        let out = dir.path().join(format!("plot.{ext}"));
        open_export_window(&mut h);
        // The window is not a menu: it stays open while its field is clicked and typed into.
        type_path(&mut h, "Export file path", &out.display().to_string());
        assert!(h.state().path_window(DialogKind::SavePng).is_some());
        // The format follows the typed extension.
        assert_eq!(
            h.state().path_window(DialogKind::SavePng).unwrap().kind,
            match ext {
                "png" => DialogKind::SavePng,
                "svg" => DialogKind::SaveSvg,
                _ => DialogKind::SaveCsv,
            }
        );
        h.get_by_label("Save").click();
        h.step();
        h.step();
        assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
        assert!(out.exists(), "{} not written", out.display());
        // Written: the window closed, the messages say where.
        assert!(h.state().path_window(DialogKind::SavePng).is_none());
        assert!(label_contains(&h, &format!("wrote {}", out.display())));
    }
    let png = std::fs::read(dir.path().join("plot.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let img = image::load_from_memory(&png).unwrap();
    assert_eq!((img.width(), img.height()), (1200, 700));
    let svg = std::fs::read_to_string(dir.path().join("plot.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(svg.contains("chosen") && svg.contains("Δ summed log-prob"));
    let csv = std::fs::read_to_string(dir.path().join("plot.csv")).unwrap();
    assert!(csv.starts_with("step,examples,probe,family,logp\n"));
    assert!(dir.path().join("plot.metrics.csv").exists());
}

#[test]
fn export_path_window_saves_on_enter_and_keeps_a_bad_path_open() {
    let dir = tempfile::tempdir().unwrap();
    let launch = Launch {
        runs: vec![sample_run("sft")],
        ..Launch::default()
    };
    let mut h = harness(LdvizApp::new(&launch));
    h.step();
    open_export_window(&mut h);
    // A folder that does not exist: the error is shown in the window, which stays open.
    let bad = dir.path().join("missing").join("plot.png");
    type_path(&mut h, "Export file path", &bad.display().to_string());
    h.key_press(egui::Key::Enter);
    h.step();
    h.step();
    assert!(!bad.exists());
    let w = h.state().path_window(DialogKind::SavePng).unwrap();
    let err = w.error.clone().unwrap();
    assert!(err.contains("missing"), "{err}");
    assert!(label_contains(&h, &err));
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    // Enter with a good path writes the file and closes the window.
    let out = dir.path().join("plot.png");
    type_path(&mut h, "Export file path", &out.display().to_string());
    h.key_press(egui::Key::Enter);
    h.step();
    h.step();
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    let png = std::fs::read(&out).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert!(image::load_from_memory(&png).is_ok());
    assert!(h.state().path_window(DialogKind::SavePng).is_none());
    // CSV the same way.
    open_export_window(&mut h);
    let csv = dir.path().join("data.csv");
    type_path(&mut h, "Export file path", &csv.display().to_string());
    h.key_press(egui::Key::Enter);
    h.step();
    h.step();
    let text = std::fs::read_to_string(&csv).unwrap();
    assert!(text.starts_with("step,examples,probe,family,logp\n"));
}

#[test]
fn an_unavailable_native_dialog_says_so_and_opens_the_path_window() {
    // rfd answers None for a cancel and for a dialog that could not open; a None faster than a
    // person can cancel is the latter.
    let fast = Duration::from_millis(5);
    let slow = ldviz::app::NO_DIALOG_WITHIN + Duration::from_millis(700);
    assert_eq!(
        dialog_outcome(DialogKind::SavePng, None, fast),
        Some(Picked::Unavailable(DialogKind::SavePng))
    );
    assert_eq!(dialog_outcome(DialogKind::SavePng, None, slow), None);
    let p = Picked::ExportPng("x.png".into());
    assert_eq!(
        dialog_outcome(DialogKind::SavePng, Some(p.clone()), fast),
        Some(p)
    );

    let launch = Launch {
        runs: vec![sample_run("sft")],
        ..Launch::default()
    };
    let mut h = harness(LdvizApp::new(&launch));
    h.step();
    // What the dialog thread sends when the PNG dialog came back empty within a few ms.
    let tx = h.state().picked_sender();
    tx.send(dialog_outcome(DialogKind::SavePng, None, fast).unwrap())
        .unwrap();
    h.step();
    h.step();
    let msg = ldviz::app::unavailable_message(DialogKind::SavePng);
    assert!(!msg.contains('\n'));
    assert!(msg.contains("no native file dialog is available here"));
    assert!(label_contains(&h, &msg));
    assert!(h.state().path_window(DialogKind::SavePng).is_some());
    assert!(label_contains(&h, "Export PNG"));
    assert!(label_contains(&h, "Export file path"));
    // The field has the focus: typing goes straight into it, Enter saves.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("shot.png");
    h.state()
        .picked_sender()
        .send(Picked::Unavailable(DialogKind::SavePng))
        .unwrap();
    h.step();
    h.step();
    h.event(egui::Event::Text(out.display().to_string()));
    h.step();
    h.key_press(egui::Key::Enter);
    h.step();
    h.step();
    assert!(out.exists(), "{:?}", h.state().path_windows);
    // The model folder's dialog: its own window; a folder that is not there is refused in it.
    tx.send(Picked::Unavailable(DialogKind::Model)).unwrap();
    h.step();
    h.step();
    assert!(label_contains(&h, "Choose model folder"));
    type_path(&mut h, "Model folder path", "/no/such/model");
    h.get_by_label("OK").click();
    h.step();
    h.step();
    assert!(label_contains(&h, "/no/such/model: no such folder"));
    let model = dir.path().to_path_buf();
    type_path(&mut h, "Model folder path", &model.display().to_string());
    h.get_by_label("OK").click();
    h.step();
    h.step();
    assert_eq!(h.state().setup.options.model, model.display().to_string());
    assert!(h.state().path_window(DialogKind::Model).is_none());
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
}

#[test]
fn open_path_window_opens_a_run_and_keeps_a_missing_file_open() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = harness(LdvizApp::new(&Launch::default()));
    h.step();
    h.get_by_label("Open path…").click();
    // The click's frame opens the window; the next lays it out unseen, the third shows it.
    h.run_steps(3);
    assert!(label_contains(&h, "Open run file"));
    let missing = dir.path().join("nope.jsonl");
    type_path(&mut h, "Run file path", &missing.display().to_string());
    h.get_by_label("OK").click();
    h.step();
    h.step();
    assert!(h.state().runs.is_empty());
    let w = h.state().path_window(DialogKind::Runs).unwrap();
    let err = w.error.clone().unwrap();
    assert!(
        err.contains("nope.jsonl") && err.contains("cannot open run file"),
        "{err}"
    );
    assert!(label_contains(&h, "nope.jsonl: cannot open run file"));
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    // An empty path is refused in the window too.
    type_path(&mut h, "Run file path", "");
    h.get_by_label("OK").click();
    h.step();
    h.step();
    assert!(label_contains(&h, "type a path first"));
    // The sample run opens with Enter and the window closes.
    type_path(
        &mut h,
        "Run file path",
        &sample_run("sft").display().to_string(),
    );
    h.key_press(egui::Key::Enter);
    h.step();
    h.step();
    assert_eq!(h.state().runs.len(), 1);
    assert_eq!(h.state().active_run().unwrap().name, "sft");
    assert!(h.state().path_window(DialogKind::Runs).is_none());
    // Cancel closes without opening anything.
    h.get_by_label("Open path…").click();
    // The click's frame opens the window; the next lays it out unseen, the third shows it.
    h.run_steps(3);
    assert!(h.state().path_window(DialogKind::Runs).is_some());
    h.get_by_label("Cancel").click();
    h.step();
    assert!(h.state().path_window(DialogKind::Runs).is_none());
    assert_eq!(h.state().runs.len(), 1);
}

#[test]
fn bad_inputs_show_errors_and_the_app_continues() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"prompt\": \"a\", \"chosen\": \"b\"}\nnot json\n").unwrap();
    let mut app = LdvizApp::new(&Launch::default());
    app.setup.options.data = bad.display().to_string();
    app.setup.out_dir = dir.path().join("runs").display().to_string();
    let mut h = harness(app);
    h.step();
    h.get_by_label("▶ Start").click();
    step_until(&mut h, 60, |a| !a.errors.is_empty());
    let err = h.state().errors[0].clone();
    assert!(err.contains("bad.jsonl"), "{err}");
    assert!(label_contains(&h, "error: training failed"));
    // A run file that is not one: another error, nothing else changes.
    let not_run = dir.path().join("not_a_run.jsonl");
    std::fs::write(&not_run, "{\"type\":\"step\"}\n").unwrap();
    h.state_mut().open_run(&not_run);
    h.step();
    assert_eq!(h.state().errors.len(), 2);
    assert!(
        h.state().errors[1].contains("not_a_run.jsonl:1"),
        "{}",
        h.state().errors[1]
    );
    // An invalid number in the train panel is refused before anything starts.
    h.state_mut().setup.lr = "fast".into();
    h.get_by_label("▶ Start").click();
    h.step();
    assert!(
        h.state()
            .errors
            .iter()
            .any(|e| e.contains("\"fast\" is not a number"))
    );
    // The app still works: a sample run opens and plots.
    h.state_mut().open_run(&sample_run("sft"));
    h.step();
    assert_eq!(h.state().runs.len(), 1);
    assert!(!h.state().curves.drawn.is_empty());
}

#[derive(Debug)]
struct Dropped(PathBuf);

impl egui::DroppedFile for Dropped {
    fn path(&self) -> &Path {
        &self.0
    }
    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

#[test]
fn runs_overlay_and_dropped_files() {
    let mut h = harness(LdvizApp::new(&Launch::default()));
    h.step();
    // Drop two run files and a model folder.
    for p in [sample_run("dpo_offpolicy"), sample_run("extended_then_dpo")] {
        h.input_mut()
            .dropped_files
            .push(std::sync::Arc::new(Dropped(p)));
    }
    let model = ldviz::assets::default_model_dir().unwrap();
    h.input_mut()
        .dropped_files
        .push(std::sync::Arc::new(Dropped(model.clone())));
    h.step();
    h.step();
    assert_eq!(h.state().runs.len(), 2);
    assert_eq!(h.state().setup.options.model, model.display().to_string());
    // Overlay both runs on one family: one line per run, named by run.
    h.state_mut().overlay = vec![0, 1];
    h.state_mut().active = 0;
    h.state_mut().curves.settings.overlay_family = Family::Chosen;
    h.state_mut().tab = Tab::Curves;
    h.step();
    h.step();
    let names: Vec<String> = h.state().curves.drawn.iter().map(|d| d.0.clone()).collect();
    assert_eq!(
        names,
        vec!["dpo_offpolicy · chosen", "extended_then_dpo · chosen"]
    );
    // Exporting the overlay draws the family across both runs, labelled by run.
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("overlay.svg");
    h.state_mut().export_to(ldviz::app::ExportTarget::Svg, &svg);
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        text.contains("dpo_offpolicy · chosen"),
        "run legend missing"
    );
    assert!(text.contains("extended_then_dpo · chosen"));
    assert!(text.contains("chosen across 2 runs"));
}

#[test]
fn playground_shows_the_valley_peak_and_dpo_cases() {
    let mut h = harness(LdvizApp::new(&Launch {
        tab: Some("playground".into()),
        ..Launch::default()
    }));
    h.step();
    // The valley preset: only the argmax rises.
    assert!(label_contains(
        &h,
        "after: [0.5689, 0.2795, 0.1203, 0.0287, 0.0026]"
    ));
    assert!(label_contains(&h, "classes that rose: [0]"));
    h.get_by_label("peak preset").click();
    h.step();
    h.step();
    assert!(label_contains(
        &h,
        "after: [0.3246, 0.4335, 0.1865, 0.0446, 0.0108]"
    ));
    assert!(label_contains(&h, "classes that rose: [1, 2, 3, 4]"));
    // The DPO-like case: a positive step on class 1 and a negative one on class 4 at once move
    // z_1 up and z_4 down by η' (the π terms cancel): softmax(ln π + (0, 1, 0, 0, −1)).
    h.get_by_label("DPO preset").click();
    h.step();
    h.step();
    assert!(label_contains(
        &h,
        "after: [0.3313, 0.5404, 0.0994, 0.0265, 0.0024]"
    ));
    assert!(label_contains(&h, "classes that rose: [1]"));
    // A bad distribution is an error in the view, not a crash.
    h.state_mut().playground.typed = "0.5, 0.9".into();
    h.step();
    assert!(label_contains(&h, "sum to"));
}

#[test]
fn pause_step_resume_stop_from_the_train_panel() {
    let dir = tempfile::tempdir().unwrap();
    let mut app = LdvizApp::new(&Launch::default());
    app.setup.options.algo = ldviz::train::Algo::Sft;
    app.setup.options.steps = Some(400);
    app.setup.options.eval_every = 100_000;
    app.setup.options.probes = "2".into();
    app.setup.options.transfer_prompts = 0;
    app.setup.options.influence_every = Some(0);
    app.setup.out_dir = dir.path().display().to_string();
    let mut h = harness(app);
    h.step();
    h.get_by_label("▶ Start").click();
    step_until(&mut h, 120, |a| {
        a.active_run().is_some_and(|r| !r.run.steps.is_empty())
    });
    h.get_by_label("Pause").click();
    step_until(&mut h, 60, |a| a.active_run().is_some_and(|r| r.paused));
    // Paused: the step count stays put; Step applies exactly one update.
    std::thread::sleep(Duration::from_millis(300));
    h.step();
    let n = h.state().active_run().unwrap().run.steps.len();
    std::thread::sleep(Duration::from_millis(300));
    h.step();
    assert_eq!(h.state().active_run().unwrap().run.steps.len(), n);
    h.get_by_label("Step").click();
    step_until(&mut h, 60, |a| {
        a.active_run().is_some_and(|r| r.run.steps.len() == n + 1)
    });
    std::thread::sleep(Duration::from_millis(300));
    h.step();
    assert_eq!(h.state().active_run().unwrap().run.steps.len(), n + 1);
    h.get_by_label("Resume").click();
    step_until(&mut h, 60, |a| {
        a.active_run().is_some_and(|r| r.run.steps.len() > n + 3)
    });
    h.get_by_label("■ Stop").click();
    step_until(&mut h, 60, |a| a.active_run().is_some_and(|r| r.ended()));
    let store = h.state().active_run().unwrap();
    let (reason, _, _) = store.run.end.clone().unwrap();
    assert_eq!(reason, ldviz::run::EndReason::Stopped);
    assert!(store.run.steps.len() < 400);
    // Stop keeps the run: the file has every step and the end record.
    let file = ldviz::run::read_run(store.path.as_ref().unwrap()).unwrap();
    assert_eq!(file.steps.len(), store.run.steps.len());
    assert_eq!(file.end.unwrap().0, ldviz::run::EndReason::Stopped);
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
}

#[test]
fn settings_persist_between_launches() {
    let mut app = LdvizApp::new(&Launch {
        runs: vec![sample_run("sft")],
        ..Launch::default()
    });
    app.setup.options.algo = ldviz::train::Algo::Ipo;
    app.setup.lr = "3e-4".into();
    app.curves.settings.smoothing = 0.6;
    app.tab = Tab::Tokens;
    let saved = serde_json::to_string(&app.to_persisted()).unwrap();
    let restored: ldviz::app::Persisted = serde_json::from_str(&saved).unwrap();
    assert_eq!(restored.recent_runs, vec![sample_run("sft")]);
    let again = LdvizApp::with_persisted(&Launch::default(), restored);
    assert_eq!(again.setup.options.algo, ldviz::train::Algo::Ipo);
    assert_eq!(again.setup.lr.parse::<f64>().unwrap(), 3e-4);
    assert_eq!(again.curves.settings.smoothing, 0.6);
    assert_eq!(again.tab, Tab::Tokens);
}

#[test]
fn a_two_phase_run_defaults_to_change_since_phase_start() {
    use ldviz::run::YMode;
    let launch = Launch {
        runs: vec![sample_run("sft"), sample_run("extended_then_dpo")],
        ..Launch::default()
    };
    let mut h = harness(LdvizApp::new(&launch));
    h.state_mut().active = 1;
    h.state_mut().tab = Tab::Curves;
    h.step();
    h.step();
    // sft_both then dpo: re-zeroed per phase, both phases labelled, the loss on two scales.
    let app = h.state();
    assert_eq!(app.curves.settings.y, None);
    assert_eq!(app.curves.shown_y, Some(YMode::PhaseDelta));
    assert_eq!(app.curves.shown_phases, vec!["sft_both", "dpo"]);
    assert_eq!(app.curves.shown_loss, vec!["loss · sft_both", "loss · dpo"]);
    let n = app.active_run().unwrap().n_evals();
    assert!(app.curves.drawn.iter().all(|(_, k)| *k == n));
    // The export follows the mode.
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("phases.svg");
    h.state_mut().export_to(ldviz::app::ExportTarget::Svg, &svg);
    let text = std::fs::read_to_string(&svg).unwrap();
    assert!(text.contains("since phase start"), "axis label");
    assert!(text.contains("▸ dpo"), "phase label");
    // The one-phase run keeps Δ since t = 0, one loss plot, no phase labels.
    h.state_mut().active = 0;
    h.step();
    assert_eq!(h.state().curves.shown_y, Some(YMode::Delta));
    assert!(h.state().curves.shown_phases.is_empty());
    assert_eq!(h.state().curves.shown_loss, vec!["loss"]);
    // Switching by the buttons: absolute sticks to every run…
    h.state_mut().active = 1;
    h.step();
    h.get_by_label("absolute").click();
    h.step();
    h.step();
    assert_eq!(h.state().curves.settings.y, Some(YMode::Absolute));
    assert_eq!(h.state().curves.shown_y, Some(YMode::Absolute));
    h.get_by_label("Δ since t = 0").click();
    h.step();
    h.step();
    assert_eq!(h.state().curves.shown_y, Some(YMode::Delta));
    let svg2 = dir.path().join("t0.svg");
    h.state_mut()
        .export_to(ldviz::app::ExportTarget::Svg, &svg2);
    let text = std::fs::read_to_string(&svg2).unwrap();
    assert!(text.contains("since step 0") && !text.contains("since phase start"));
    // …and choosing the run's default again goes back to automatic.
    h.get_by_label("Δ since phase start").click();
    h.step();
    h.step();
    assert_eq!(h.state().curves.settings.y, None);
    assert_eq!(h.state().curves.shown_y, Some(YMode::PhaseDelta));
}

/// A diverged run (NaN and infinite log-probs from some evaluation on) is marked on the
/// timeline with the step it diverged at; clicking the mark moves the cursor to that evaluation.
#[test]
fn the_timeline_marks_where_a_run_diverged() {
    use ldviz::run::Event;
    let spec = ldviz::synth::SynthSpec::tiny(8);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("diverged.jsonl");
    let mut k = 0;
    let mut at = None;
    ldviz::synth::write_edited(&path, spec, 2, |ev| {
        if let Event::Eval(e) = ev {
            k += 1;
            if k >= 3 {
                at.get_or_insert(e.step);
                for v in e.logps.values_mut() {
                    v[0] = f64::NAN;
                    v[1] = f64::NEG_INFINITY;
                }
            }
        }
    })
    .unwrap();
    let at = at.unwrap();
    let launch = Launch {
        runs: vec![path],
        ..Launch::default()
    };
    let mut h = harness(LdvizApp::new(&launch));
    h.step();
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    assert_eq!(h.state().active_run().unwrap().diverged_at_step(), Some(at));
    h.key_press(egui::Key::Home);
    h.step();
    assert_eq!(h.state().timeline.cursor, 0);
    h.get_by_label(&format!("diverged at step {at}")).click();
    h.step();
    assert_eq!(h.state().timeline.cursor, 2);
    assert_eq!(h.state().timeline.mode, Mode::Paused);
}

/// The app's fresh train panel trains with exactly what `ldviz train` does without flags: both
/// are the engine's one `TrainOptions` (the CLI flattens it into its flags).
#[test]
fn the_train_panel_defaults_are_the_cli_defaults() {
    use clap::Parser;
    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        options: ldviz::train::TrainOptions,
    }
    let cli = Cli::try_parse_from(["ldviz"]).unwrap().options;
    let mut app = LdvizApp::new(&Launch::default());
    let panel = app.setup.checked().unwrap();
    assert_eq!(panel, cli);
    assert_eq!(
        panel.to_config().unwrap(),
        cli.to_config().unwrap(),
        "the run definitions differ"
    );
}

/// A run recorded elsewhere from the probe file of `ldviz probes` (no per-token traces, no
/// transfer matrix, no influence) opens, plots every family, and every tab draws.
#[test]
fn a_run_recorded_elsewhere_from_the_probe_file_opens() {
    let dir = tempfile::tempdir().unwrap();
    let probes = dir.path().join("probes.jsonl");
    common::ldviz_ok(&[
        "probes",
        "--probes",
        "4",
        "--algo",
        "dpo",
        "--out",
        probes.to_str().unwrap(),
    ]);
    let run = dir.path().join("external.jsonl");
    std::fs::write(
        &run,
        common::external_run(&probes, 3, true).join("\n") + "\n",
    )
    .unwrap();
    let mut h = harness(LdvizApp::new(&Launch::default()));
    h.state_mut().open_run(&run);
    h.step();
    h.step();
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    let families = h.state().active_run().unwrap().run.header.families.len();
    let drawn = h.state().curves.drawn.clone();
    assert_eq!(drawn.len(), families, "{drawn:?}");
    assert!(drawn.iter().all(|(_, n)| *n == 3), "{drawn:?}");
    for tab in [
        Tab::Tokens,
        Tab::Metrics,
        Tab::Influence,
        Tab::Transfer,
        Tab::Curves,
    ] {
        h.state_mut().tab = tab;
        h.step();
        h.key_press(egui::Key::Home);
        h.step();
        h.key_press(egui::Key::End);
        h.step();
    }
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
}

/// A run file another process is still writing is followed: opened without an end record, its
/// new records (an evaluation among them written in two halves) appear in the same store
/// without reopening, the cursor follows them, and the end record stops following.
#[test]
fn a_growing_run_file_is_followed_until_its_end() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let probes = dir.path().join("probes.jsonl");
    common::ldviz_ok(&[
        "probes",
        "--probes",
        "3",
        "--algo",
        "dpo",
        "--out",
        probes.to_str().unwrap(),
    ]);
    // header, phase, eval 0 | step 1, eval 1, step 2, eval 2, step 3, eval 3, end
    let lines = common::external_run(&probes, 4, true);
    let run = dir.path().join("growing.jsonl");
    std::fs::write(&run, lines[..3].join("\n") + "\n").unwrap();
    let mut h = harness(LdvizApp::new(&Launch::default()));
    h.state_mut().open_run(&run);
    h.step();
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    assert_eq!(h.state().runs.len(), 1);
    assert_eq!(h.state().active_run().unwrap().n_evals(), 1);
    assert_eq!(h.state().followed.len(), 1);
    assert_eq!(h.state().timeline.mode, Mode::Following);
    assert!(label_contains(&h, "1 evals, following"));
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let writer = {
        let run = run.clone();
        let rest = lines[3..].to_vec();
        std::thread::spawn(move || {
            let mut f = std::fs::OpenOptions::new().append(true).open(&run).unwrap();
            for (k, line) in rest.iter().enumerate() {
                if k == 1 {
                    // eval 1 in two halves, a pause between
                    let mid = line.len() / 2;
                    f.write_all(&line.as_bytes()[..mid]).unwrap();
                    f.flush().unwrap();
                    std::thread::sleep(Duration::from_millis(600));
                    f.write_all(format!("{}\n", &line[mid..]).as_bytes())
                        .unwrap();
                } else {
                    f.write_all(format!("{line}\n").as_bytes()).unwrap();
                }
                f.flush().unwrap();
                if k == 1 {
                    // wait until the app has shown eval 1 before writing on
                    go_rx.recv_timeout(Duration::from_secs(60)).unwrap();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    step_until(&mut h, 60, |a| a.active_run().unwrap().n_evals() >= 2);
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    assert_eq!(h.state().active_run().unwrap().n_evals(), 2);
    go_tx.send(()).unwrap();
    step_until(&mut h, 60, |a| a.active_run().unwrap().ended());
    writer.join().unwrap();
    let app = h.state();
    assert!(app.errors.is_empty(), "{:?}", app.errors);
    assert_eq!(app.runs.len(), 1);
    let store = app.active_run().unwrap();
    assert_eq!(store.n_evals(), 4);
    assert_eq!(store.run.steps.len(), 3);
    assert!(app.followed.is_empty(), "the end record stops following");
    assert_eq!(app.timeline.index(Some(store)), Some(3));
    assert_eq!(app.curves.drawn.len(), store.run.header.families.len());
    assert!(app.curves.drawn.iter().all(|(_, n)| *n == 4));
}

/// A Hugging Face trainer_state.json opens (dropped on the window) as a run of TRL metrics: the
/// curves tab says there are no evaluations, the TRL metrics tab draws its curves.
#[test]
fn a_trainer_state_opens_with_its_trl_metrics() {
    let state = common::fixtures().join("trainer_state.json");
    let mut h = harness(LdvizApp::new(&Launch::default()));
    // dropped on the window, it opens as a run (not as the dataset)
    h.input_mut()
        .dropped_files
        .push(std::sync::Arc::new(Dropped(state.clone())));
    h.step();
    h.step();
    assert_eq!(h.state().runs.len(), 1);
    assert_eq!(h.state().setup.options.data, "default");
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
    assert!(h.state().followed.is_empty());
    let store = h.state().active_run().unwrap();
    assert_eq!((store.run.steps.len(), store.n_evals()), (4, 0));
    assert!(label_contains(&h, "This run has no evaluations"));
    h.state_mut().tab = Tab::Metrics;
    h.step();
    h.step();
    for k in ["rewards/chosen", "logps/rejected", "eval_loss", "grad_norm"] {
        assert!(label_contains(&h, k), "{k}");
    }
    for tab in [Tab::Tokens, Tab::Influence, Tab::Transfer] {
        h.state_mut().tab = tab;
        h.step();
    }
    assert!(h.state().errors.is_empty(), "{:?}", h.state().errors);
}
