//! The timeline: a cursor over the active run's evaluations in one of three states — Following
//! (tails a live run), Paused, Playing (replays at a speed) — with a draggable slider and keys:
//! space play/pause, ←/→ one evaluation, Home/End. Every view reads the cursor. A diverged run
//! (a NaN or infinite loss or mean log-prob) is marked with the step it diverged at; clicking
//! the mark moves the cursor there.

use crate::run::{RunStore, XAxis};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Following,
    Paused,
    Playing,
}

pub struct Timeline {
    pub mode: Mode,
    /// Index into the active run's evaluations.
    pub cursor: usize,
    /// Playback speed in evaluations per second.
    pub speed: f64,
    acc: f64,
}

impl Default for Timeline {
    fn default() -> Self {
        Timeline {
            mode: Mode::Following,
            cursor: 0,
            speed: 10.0,
            acc: 0.0,
        }
    }
}

impl Timeline {
    /// The cursor, clamped to the run's evaluations.
    pub fn index(&self, store: Option<&RunStore>) -> Option<usize> {
        let n = store.map(|s| s.n_evals()).unwrap_or(0);
        (n > 0).then(|| self.cursor.min(n - 1))
    }

    /// The cursor's x on the given axis.
    pub fn cursor_x(&self, store: &RunStore, axis: XAxis) -> Option<f64> {
        self.index(Some(store)).map(|i| store.eval_x(i, axis))
    }

    /// Moves the cursor to evaluation `i` and pauses there (a click on a plot).
    pub fn seek(&mut self, i: usize) {
        self.cursor = i;
        self.mode = Mode::Paused;
    }

    pub fn jump_end(&mut self, store: Option<&RunStore>) {
        let n = store.map(|s| s.n_evals()).unwrap_or(0);
        self.cursor = n.saturating_sub(1);
        self.mode = if store.is_some_and(|s| !s.ended()) {
            Mode::Following
        } else {
            Mode::Paused
        };
    }

    /// Moves the cursor by `d` evaluations and pauses.
    pub fn step_by(&mut self, store: Option<&RunStore>, d: isize) {
        let n = store.map(|s| s.n_evals()).unwrap_or(0);
        if n == 0 {
            return;
        }
        let c = self.cursor.min(n - 1) as isize + d;
        self.cursor = c.clamp(0, n as isize - 1) as usize;
        self.mode = Mode::Paused;
    }

    pub fn toggle_play(&mut self, store: Option<&RunStore>) {
        self.mode = match self.mode {
            Mode::Playing => Mode::Paused,
            _ => {
                let n = store.map(|s| s.n_evals()).unwrap_or(0);
                if self.cursor + 1 >= n {
                    self.cursor = 0;
                }
                self.acc = 0.0;
                Mode::Playing
            }
        };
    }

    /// Keyboard control (ignored while a text field has focus).
    pub fn handle_keys(&mut self, ctx: &egui::Context, store: Option<&RunStore>) {
        if ctx.egui_wants_keyboard_input() {
            return;
        }
        let (space, left, right, home, end) = ctx.input(|i| {
            (
                i.key_pressed(egui::Key::Space),
                i.key_pressed(egui::Key::ArrowLeft),
                i.key_pressed(egui::Key::ArrowRight),
                i.key_pressed(egui::Key::Home),
                i.key_pressed(egui::Key::End),
            )
        });
        if space {
            self.toggle_play(store);
        }
        if left {
            self.step_by(store, -1);
        }
        if right {
            self.step_by(store, 1);
        }
        if home {
            self.cursor = 0;
            self.mode = Mode::Paused;
        }
        if end {
            self.jump_end(store);
        }
    }

    /// Follows the live end or plays forward by `dt` seconds.
    pub fn advance(&mut self, store: Option<&RunStore>, dt: f64) {
        let n = store.map(|s| s.n_evals()).unwrap_or(0);
        match self.mode {
            Mode::Following => self.cursor = n.saturating_sub(1),
            Mode::Paused => {}
            Mode::Playing => {
                self.acc += self.speed * dt;
                let whole = self.acc.floor();
                self.acc -= whole;
                self.cursor += whole as usize;
                if self.cursor + 1 >= n {
                    self.cursor = n.saturating_sub(1);
                    self.mode = if store.is_some_and(|s| !s.ended()) {
                        Mode::Following
                    } else {
                        Mode::Paused
                    };
                }
            }
        }
    }

    pub fn ui(&mut self, ui: &mut egui::Ui, store: Option<&RunStore>) {
        let n = store.map(|s| s.n_evals()).unwrap_or(0);
        ui.horizontal(|ui| {
            if ui
                .button("|◀")
                .on_hover_text("first evaluation (Home)")
                .clicked()
            {
                self.cursor = 0;
                self.mode = Mode::Paused;
            }
            if ui
                .button("◀")
                .on_hover_text("previous evaluation (←)")
                .clicked()
            {
                self.step_by(store, -1);
            }
            let play = if self.mode == Mode::Playing {
                "Pause"
            } else {
                "▶ Play"
            };
            if ui.button(play).on_hover_text("space").clicked() {
                self.toggle_play(store);
            }
            if ui
                .button("▶")
                .on_hover_text("next evaluation (→)")
                .clicked()
            {
                self.step_by(store, 1);
            }
            if ui
                .button("▶|")
                .on_hover_text("last evaluation (End)")
                .clicked()
            {
                self.jump_end(store);
            }
            if ui
                .selectable_label(self.mode == Mode::Following, "Follow")
                .on_hover_text("tail the live run, or a run file still being written")
                .clicked()
            {
                self.mode = Mode::Following;
            }
            ui.label(match self.mode {
                Mode::Following => "Following",
                Mode::Paused => "Paused",
                Mode::Playing => "Playing",
            });
            ui.add(
                egui::Slider::new(&mut self.speed, 1.0..=200.0)
                    .logarithmic(true)
                    .text("evals/s"),
            );
            ui.separator();
            if let Some(d) = store.and_then(|s| s.diverged_at_step()) {
                let text = egui::RichText::new(format!("diverged at step {d}"))
                    .color(egui::Color32::from_rgb(220, 50, 50));
                let r = ui.button(text).on_hover_text(
                    "the first step whose loss or a family's mean log-prob is NaN or infinite; \
                     click to move the cursor to the first evaluation from there",
                );
                if r.clicked()
                    && let Some(i) =
                        store.and_then(|s| s.run.evals.iter().position(|e| e.step >= d))
                {
                    self.cursor = i;
                    self.mode = Mode::Paused;
                }
            }
            if n == 0 {
                ui.label("no evaluations yet");
                return;
            }
            let mut c = self.cursor.min(n - 1);
            let w = (ui.available_width() - 330.0).max(120.0);
            ui.spacing_mut().slider_width = w;
            let r = ui.add(egui::Slider::new(&mut c, 0..=n - 1).show_value(false));
            if r.changed() {
                self.cursor = c;
                self.mode = Mode::Paused;
            }
            if let Some(e) = store.and_then(|s| s.run.evals.get(c)) {
                ui.label(format!(
                    "eval {}/{} · step {} · {} examples · epoch {:.2} · {}",
                    c + 1,
                    n,
                    e.step,
                    e.examples,
                    e.epoch,
                    e.phase
                ));
            }
        });
    }
}
