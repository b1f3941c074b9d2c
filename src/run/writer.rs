//! Append-only run file writer: one JSON line per [`Event`], flushed after every record (and
//! synced to disk after evaluations and at the end), so a killed run keeps every complete record.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::schema::event::Event;

pub struct Writer {
    out: BufWriter<File>,
    path: PathBuf,
}

impl Writer {
    /// Creates (or truncates) `path`; parent folders are created.
    pub fn create(path: &Path) -> Result<Writer> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("{}: cannot create folder", dir.display()))?;
        }
        let f = File::create(path)
            .with_context(|| format!("{}: cannot create run file", path.display()))?;
        Ok(Writer {
            out: BufWriter::new(f),
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one record and flushes it to the OS.
    pub fn write(&mut self, ev: &Event) -> Result<()> {
        let ctx = || format!("{}: cannot write run record", self.path.display());
        serde_json::to_writer(&mut self.out, ev).with_context(ctx)?;
        self.out.write_all(b"\n").with_context(ctx)?;
        self.out.flush().with_context(ctx)?;
        if matches!(ev, Event::Eval(_) | Event::End { .. } | Event::Header(_)) {
            self.out.get_ref().sync_data().with_context(ctx)?;
        }
        Ok(())
    }
}
