//! Choosing files: native dialogs on their own threads, and path windows, the typed way that
//! always works.
//!
//! rfd returns `None` both when a person cancels and when no dialog could open at all: on Linux
//! it asks the xdg desktop portal over D-Bus, falls back on zenity, and when both are missing
//! (Xvfb, a bare or tiling window manager, remote X) it only logs why and returns `None` — its
//! API carries no error. A `None` that comes back sooner than anyone could have cancelled
//! ([`NO_DIALOG_WITHIN`]) is therefore taken as "no dialog here" and reported as
//! [`Picked::Unavailable`]: the app says so in its messages and opens the path window of that
//! kind. The path windows (one for run files, one for the dataset, one for the model folder,
//! one for exports with the format as a choice) can also be opened from the top bar at any time,
//! and they are `egui::Window`s, not menus, so they stay open while you click and type.
//!
//! A typed path goes through the same code as a picked one: runs, dataset and model as the
//! [`Picked`] the native dialog would have sent, exports as [`Action::Export`]. Success closes the
//! window of that kind; an error (a run file that does not exist, a folder that cannot be
//! written) is shown in it and the window stays open.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::export::Target;
use super::{Action, DialogKind, LdvizApp, Picked};

/// A native dialog that returns nothing sooner than this did not open. Failing takes
/// milliseconds: under Xvfb with no session bus, rfd's D-Bus autolaunch attempt and then its
/// search for zenity fail in 22 ms together (measured with strace on the release build).
/// Cancelling takes a person longer than this: the dialog has to appear and be seen (a visual
/// reaction alone takes about 200–250 ms) before Escape or Cancel is pressed. A very fast cancel
/// taken for a failure only opens a path window, which Cancel closes; a failure slower than this
/// (a portal that is installed but hangs until D-Bus times out) still reads as a cancel, and the
/// path windows stay reachable from the top bar.
pub const NO_DIALOG_WITHIN: Duration = Duration::from_millis(300);

/// What a native dialog's answer means, given how long it took to come back: a chosen path,
/// `Unavailable` (nothing, sooner than a person can cancel), or `None` (cancelled).
pub fn dialog_outcome(kind: DialogKind, picked: Option<Picked>, took: Duration) -> Option<Picked> {
    match picked {
        Some(p) => Some(p),
        None if took < NO_DIALOG_WITHIN => Some(Picked::Unavailable(kind)),
        None => None,
    }
}

/// The line the messages panel shows when a native dialog could not open.
pub fn unavailable_message(kind: DialogKind) -> String {
    format!(
        "no native file dialog is available here (no desktop portal or zenity); type the path in the \"{}\" window instead",
        kind.title()
    )
}

impl DialogKind {
    /// The path window's title.
    pub fn title(self) -> &'static str {
        match self {
            DialogKind::Runs => "Open run file",
            DialogKind::Data => "Choose dataset file",
            DialogKind::Model => "Choose model folder",
            DialogKind::SavePng => "Export PNG",
            DialogKind::SaveSvg => "Export SVG",
            DialogKind::SaveCsv => "Export CSV",
        }
    }

    /// The label of the path window's text field (unique in the app, so tests find it).
    pub fn field_label(self) -> &'static str {
        match self {
            DialogKind::Runs => "Run file path",
            DialogKind::Data => "Dataset file path",
            DialogKind::Model => "Model folder path",
            DialogKind::SavePng | DialogKind::SaveSvg | DialogKind::SaveCsv => "Export file path",
        }
    }

    fn hint(self) -> &'static str {
        match self {
            DialogKind::Runs => "runs/dpo.jsonl",
            DialogKind::Data => "data/train.jsonl",
            DialogKind::Model => "~/models/pythia-410m",
            DialogKind::SavePng => "ldviz.png",
            DialogKind::SaveSvg => "ldviz.svg",
            DialogKind::SaveCsv => "ldviz.csv",
        }
    }

    /// The confirming button: "Save" for exports, "OK" otherwise.
    pub fn confirm(self) -> &'static str {
        match self.export_target() {
            Some(_) => "Save",
            None => "OK",
        }
    }

    /// The export format of an export kind.
    pub fn export_target(self) -> Option<Target> {
        match self {
            DialogKind::SavePng => Some(Target::Png),
            DialogKind::SaveSvg => Some(Target::Svg),
            DialogKind::SaveCsv => Some(Target::Csv),
            _ => None,
        }
    }

    pub fn export(t: Target) -> DialogKind {
        match t {
            Target::Png => DialogKind::SavePng,
            Target::Svg => DialogKind::SaveSvg,
            Target::Csv => DialogKind::SaveCsv,
        }
    }

    /// Kinds that share one path window (the three export formats).
    fn same_window(self, other: DialogKind) -> bool {
        self == other || (self.export_target().is_some() && other.export_target().is_some())
    }

    /// The action a typed path requests: what the native dialog would have sent, or an export.
    pub fn action(self, path: PathBuf) -> Action {
        match self {
            DialogKind::Runs => Action::Picked(Picked::Run(vec![path])),
            DialogKind::Data => Action::Picked(Picked::Data(path)),
            DialogKind::Model => Action::Picked(Picked::Model(path)),
            DialogKind::SavePng => Action::Export(Target::Png, path),
            DialogKind::SaveSvg => Action::Export(Target::Svg, path),
            DialogKind::SaveCsv => Action::Export(Target::Csv, path),
        }
    }
}

impl Picked {
    /// The kind of dialog this answers.
    pub fn kind(&self) -> DialogKind {
        match self {
            Picked::Run(_) => DialogKind::Runs,
            Picked::Data(_) => DialogKind::Data,
            Picked::Model(_) => DialogKind::Model,
            Picked::ExportPng(_) => DialogKind::SavePng,
            Picked::ExportSvg(_) => DialogKind::SaveSvg,
            Picked::ExportCsv(_) => DialogKind::SaveCsv,
            Picked::Unavailable(k) => *k,
        }
    }
}

/// One open path window.
#[derive(Clone, Debug)]
pub struct PathWindow {
    pub kind: DialogKind,
    pub text: String,
    /// Why the last path was refused.
    pub error: Option<String>,
    /// Give the field the keyboard focus on the next frame (just opened or raised).
    focus: bool,
}

/// A leading `~/` means the home folder, as in a shell.
fn expand_home(s: &str) -> PathBuf {
    if let Some(rest) = s.strip_prefix("~/")
        && let Some(home) = std::env::var_os("HOME")
    {
        return Path::new(&home).join(rest);
    }
    PathBuf::from(s)
}

impl LdvizApp {
    /// Opens a native file dialog on its own thread (never on the UI thread). Its answer comes
    /// back over the channel, `Picked::Unavailable` when no dialog could open.
    pub fn dialog(&self, ctx: &egui::Context, kind: DialogKind) {
        let tx = self.picked_tx.clone();
        let ctx = ctx.clone();
        let spawned = std::thread::Builder::new()
            .name("ldviz-dialog".into())
            .spawn(move || {
                let d = rfd::FileDialog::new();
                let started = Instant::now();
                let picked = match kind {
                    DialogKind::Runs => d
                        .add_filter("run files", &["jsonl", "gz", "json"])
                        .pick_files()
                        .map(Picked::Run),
                    DialogKind::Data => d
                        .add_filter("preference data", &["jsonl", "json", "gz", "parquet"])
                        .pick_file()
                        .map(Picked::Data),
                    DialogKind::Model => d.pick_folder().map(Picked::Model),
                    DialogKind::SavePng => d
                        .add_filter("PNG", &["png"])
                        .set_file_name("ldviz.png")
                        .save_file()
                        .map(Picked::ExportPng),
                    DialogKind::SaveSvg => d
                        .add_filter("SVG", &["svg"])
                        .set_file_name("ldviz.svg")
                        .save_file()
                        .map(Picked::ExportSvg),
                    DialogKind::SaveCsv => d
                        .add_filter("CSV", &["csv"])
                        .set_file_name("ldviz.csv")
                        .save_file()
                        .map(Picked::ExportCsv),
                };
                if let Some(p) = dialog_outcome(kind, picked, started.elapsed()) {
                    let _ = tx.send(p);
                    ctx.request_repaint();
                }
            });
        if spawned.is_err() {
            // No thread, no dialog: the same as a dialog that could not open.
            let _ = self.picked_tx.send(Picked::Unavailable(kind));
        }
    }

    /// The channel native dialogs answer on (what their threads send; tests send here too).
    pub fn picked_sender(&self) -> crossbeam_channel::Sender<Picked> {
        self.picked_tx.clone()
    }

    /// The open path window of `kind`'s sort (any export format for an export kind).
    pub fn path_window(&self, kind: DialogKind) -> Option<&PathWindow> {
        self.path_windows.iter().find(|w| w.kind.same_window(kind))
    }

    /// Opens the path window of `kind` (or raises the open one, switching its export format).
    pub fn open_path_window(&mut self, kind: DialogKind) {
        match self
            .path_windows
            .iter_mut()
            .find(|w| w.kind.same_window(kind))
        {
            Some(w) => {
                w.kind = kind;
                w.focus = true;
            }
            None => self.path_windows.push(PathWindow {
                kind,
                text: String::new(),
                error: None,
                focus: true,
            }),
        }
    }

    /// A native dialog could not open: say so once and open the path window instead.
    pub(super) fn dialog_unavailable(&mut self, kind: DialogKind) {
        self.notice = Some(unavailable_message(kind));
        self.open_path_window(kind);
    }

    /// The outcome of choosing a path of `kind` (typed or picked): success closes its path
    /// window and shows the confirmation, if any; an error goes into the open path window, or
    /// into the messages when none is open.
    pub(super) fn settle(&mut self, kind: DialogKind, r: anyhow::Result<Option<String>>) {
        let w = self
            .path_windows
            .iter()
            .position(|w| w.kind.same_window(kind));
        match r {
            Ok(msg) => {
                if let Some(m) = msg {
                    self.notice = Some(m);
                }
                if let Some(i) = w {
                    self.path_windows.remove(i);
                }
            }
            Err(e) => match w.and_then(|i| self.path_windows.get_mut(i)) {
                Some(w) => w.error = Some(format!("{e:#}")),
                None => self.errors.push(format!("{e:#}")),
            },
        }
    }
}

/// Draws the open path windows; a confirmed path becomes an action.
pub fn show_windows(app: &mut LdvizApp, ctx: &egui::Context, actions: &mut Vec<Action>) {
    let cwd = std::env::current_dir()
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    let center = ctx.content_rect().center();
    let mut closed = Vec::new();
    for (i, w) in app.path_windows.iter_mut().enumerate() {
        let mut open = true;
        let mut cancel = false;
        // Each sort of window has its own place, a little apart, so two never hide each other.
        let slot: u8 = match w.kind {
            DialogKind::Runs => 0,
            DialogKind::Data => 1,
            DialogKind::Model => 2,
            DialogKind::SavePng | DialogKind::SaveSvg | DialogKind::SaveCsv => 3,
        };
        let offset = 24.0 * f32::from(slot);
        egui::Window::new(w.kind.title())
            .id(egui::Id::unique(("ldviz path window", slot)))
            .open(&mut open)
            .collapsible(false)
            .resizable(false)
            // Placed by its top-left corner, so it stays put when an error line appears.
            .default_pos(center + egui::vec2(offset - 200.0, offset - 120.0))
            .show(ctx, |ui| {
                if w.kind.export_target().is_some() {
                    ui.horizontal(|ui| {
                        ui.label("Format");
                        for k in [
                            DialogKind::SavePng,
                            DialogKind::SaveSvg,
                            DialogKind::SaveCsv,
                        ] {
                            let name = k.title().trim_start_matches("Export ");
                            ui.selectable_value(&mut w.kind, k, name);
                        }
                    });
                }
                let l = ui.label(w.kind.field_label());
                let resp = ui
                    .add(
                        egui::TextEdit::singleline(&mut w.text)
                            .hint_text(w.kind.hint())
                            .desired_width(380.0),
                    )
                    .labelled_by(l.id);
                if w.focus {
                    resp.request_focus();
                    w.focus = false;
                }
                if resp.changed() {
                    w.error = None;
                    // The format follows a typed .png/.svg/.csv extension.
                    if w.kind.export_target().is_some() {
                        let ext = Path::new(w.text.trim())
                            .extension()
                            .map(|e| e.to_string_lossy().to_lowercase());
                        match ext.as_deref() {
                            Some("png") => w.kind = DialogKind::SavePng,
                            Some("svg") => w.kind = DialogKind::SaveSvg,
                            Some("csv") => w.kind = DialogKind::SaveCsv,
                            _ => {}
                        }
                    }
                }
                let (enter, escape) = ui.input(|i| {
                    (
                        i.key_pressed(egui::Key::Enter),
                        i.key_pressed(egui::Key::Escape),
                    )
                });
                let entered = resp.lost_focus() && enter;
                cancel |= resp.lost_focus() && escape;
                ui.label(
                    egui::RichText::new(format!("relative paths start in {cwd}"))
                        .small()
                        .weak(),
                );
                if let Some(e) = &w.error {
                    ui.colored_label(egui::Color32::from_rgb(200, 40, 40), e);
                }
                let mut ok = false;
                ui.horizontal(|ui| {
                    ok = ui.button(w.kind.confirm()).clicked();
                    cancel |= ui.button("Cancel").clicked();
                });
                if ok || entered {
                    let t = w.text.trim();
                    if t.is_empty() {
                        w.error = Some("type a path first".into());
                        w.focus = true;
                    } else {
                        w.error = None;
                        actions.push(w.kind.action(expand_home(t)));
                    }
                }
            });
        if !open || cancel {
            closed.push(i);
        }
    }
    for i in closed.into_iter().rev() {
        app.path_windows.remove(i);
    }
}
