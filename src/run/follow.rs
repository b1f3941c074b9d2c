//! Following a run file that another process is still writing (a trainer elsewhere, a TRL
//! recorder): a [`Follower`] keeps the byte offset of what it has read and the bytes of a last
//! line still being written, and each [`Follower::poll`] returns the records completed since the
//! last one, in order, each once. A line cut mid-record is waited for, not reported; the `end`
//! record stops following. Gzipped files are read once ([`open_following`]).

use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use super::reader::{self, GZIP_MAGIC, Line, Run};
use crate::schema::event::Event;

/// Reads a growing run file's new records.
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    /// Bytes of the file read so far: the complete lines, then `partial`.
    read: u64,
    /// The start of a last line still being written.
    partial: Vec<u8>,
    /// Lines consumed (the next line's number is one more).
    lines: usize,
    /// The last consumed line was a whole record without its newline yet: a newline that
    /// follows belongs to it.
    newline_owed: bool,
    header: bool,
    ended: bool,
    skipped: usize,
}

impl Follower {
    /// A follower of `path` from its first byte (nothing is read until [`Follower::poll`]).
    pub fn new(path: &Path) -> Follower {
        Follower {
            path: path.to_path_buf(),
            read: 0,
            partial: Vec::new(),
            lines: 0,
            newline_owed: false,
            header: false,
            ended: false,
            skipped: 0,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// True once the `end` record was read (or following stopped on an error): nothing more
    /// is read.
    pub fn ended(&self) -> bool {
        self.ended
    }

    /// Records of a type this version does not know, skipped so far.
    pub fn skipped_records(&self) -> usize {
        self.skipped
    }

    /// Bytes of a last line that is still being written.
    pub fn pending_bytes(&self) -> usize {
        self.partial.len()
    }

    /// Appends the records completed since the last call to `out`, in file order. A last line
    /// without its newline waits for the rest unless it already is a whole JSON value. An error
    /// (the file is gone or shrank, a complete line is not a run record, a record before the
    /// header) stops following; the records before it are in `out`.
    pub fn poll(&mut self, out: &mut Vec<Event>) -> Result<()> {
        if self.ended {
            return Ok(());
        }
        let r = self.poll_inner(out);
        if r.is_err() {
            self.ended = true;
        }
        r
    }

    fn poll_inner(&mut self, out: &mut Vec<Event>) -> Result<()> {
        let path = self.path.display();
        let mut f = std::fs::File::open(&self.path)
            .with_context(|| format!("{path}: cannot open run file"))?;
        let len = f
            .metadata()
            .with_context(|| format!("{path}: cannot read run file"))?
            .len();
        if len < self.read {
            bail!(
                "{path}: the file shrank from {} to {len} bytes while being followed (replaced?); open it again",
                self.read
            );
        }
        if len == self.read {
            return Ok(());
        }
        f.seek(SeekFrom::Start(self.read))
            .with_context(|| format!("{path}: cannot read run file"))?;
        let mut buf = std::mem::take(&mut self.partial);
        let got = f
            .take(len - self.read)
            .read_to_end(&mut buf)
            .with_context(|| format!("{path}: cannot read run file"))?;
        self.read += got as u64;
        let mut from = 0;
        if self.newline_owed && !buf.is_empty() {
            self.newline_owed = false;
            if buf[0] == b'\n' {
                from = 1;
            } else if buf.starts_with(b"\r\n") {
                from = 2;
            }
        }
        let body = &buf[from..];
        let cut = memchr::memrchr(b'\n', body).map_or(0, |k| k + 1);
        let (complete, rest) = body.split_at(cut);
        let mut lines = reader::split_lines(complete, self.lines + 1);
        // A last line that is a whole JSON value already (its newline not written yet, or a
        // writer that ends the file without one) is complete: a cut object never parses.
        let rest_whole =
            !rest.is_empty() && serde_json::from_slice::<serde::de::IgnoredAny>(rest).is_ok();
        if rest_whole {
            lines.push((self.lines + lines.len() + 1, rest, true));
        }
        let consumed = lines.len();
        let parsed = reader::parse_lines(&lines);
        drop(lines);
        let partial = if rest_whole {
            Vec::new()
        } else {
            rest.to_vec()
        };
        self.lines += consumed;
        self.newline_owed = rest_whole;
        self.partial = partial;
        for (line_no, _, line) in parsed {
            let Some(line) = line else { continue };
            let ev = match line {
                Line::Record(ev) => ev,
                Line::Unknown if self.header => {
                    self.skipped += 1;
                    continue;
                }
                Line::Unknown => bail!("{path}:{line_no}: the first record must be the header"),
                Line::Invalid(e) => return Err(reader::invalid_line(&self.path, line_no, &e)),
            };
            match (&ev, self.header) {
                (Event::Header(h), false) => {
                    reader::check_header(&self.path, h)?;
                    self.header = true;
                }
                (Event::Header(_), true) => bail!("{path}:{line_no}: a second header"),
                (_, false) => bail!("{path}:{line_no}: the first record must be the header"),
                _ => {}
            }
            let end = matches!(ev, Event::End { .. });
            out.push(ev);
            if end {
                self.ended = true;
                break;
            }
        }
        Ok(())
    }
}

/// Whether the file starts with the gzip magic bytes.
fn is_gzipped(path: &Path) -> Result<bool> {
    let mut head = Vec::with_capacity(2);
    std::fs::File::open(path)
        .with_context(|| format!("{}: cannot open run file", path.display()))?
        .take(2)
        .read_to_end(&mut head)
        .with_context(|| format!("{}: cannot read run file", path.display()))?;
    Ok(head == GZIP_MAGIC)
}

/// Whether the file is a Hugging Face trainer state (rewritten whole, never appended to).
fn is_trainer_state_file(path: &Path) -> Result<bool> {
    let mut head = Vec::new();
    std::fs::File::open(path)
        .with_context(|| format!("{}: cannot open run file", path.display()))?
        .take(1 << 16)
        .read_to_end(&mut head)
        .with_context(|| format!("{}: cannot read run file", path.display()))?;
    Ok(super::hf_state::is_trainer_state(&head))
}

/// Opens a run file that may still be growing: the run as recorded so far, and a [`Follower`]
/// positioned after its last complete record when the file is plain JSON Lines without an `end`
/// record. A gzipped file or a Hugging Face trainer state is read once, as
/// [`reader::read_run`] reads it, and not followed.
pub fn open_following(path: &Path) -> Result<(Run, Option<Follower>)> {
    if is_gzipped(path)? || is_trainer_state_file(path)? {
        return Ok((reader::read_run(path)?, None));
    }
    let mut f = Follower::new(path);
    let mut events = Vec::new();
    f.poll(&mut events)?;
    let mut events = events.into_iter();
    let mut run = match events.next() {
        Some(Event::Header(h)) => Run::new(*h),
        Some(_) => {
            return Err(anyhow!(
                "{}:1: the first record must be the header",
                path.display()
            ));
        }
        None if f.pending_bytes() > 0 => bail!(
            "{}: no complete record yet (the first line has no end: a header still being written, or not a run file)",
            path.display()
        ),
        None => bail!("{}: empty run file (no header record)", path.display()),
    };
    for ev in events {
        run.apply(ev);
    }
    run.skipped_records = f.skipped_records();
    let follower = (!f.ended()).then_some(f);
    Ok((run, follower))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{SynthSpec, events};
    use std::io::Write;
    use std::time::{Duration, Instant};

    fn lines_of(evs: &[Event]) -> Vec<String> {
        evs.iter()
            .map(|e| serde_json::to_string(e).unwrap())
            .collect()
    }

    fn synth() -> Vec<Event> {
        let spec = SynthSpec {
            steps: 6,
            eval_every: 2,
            probes: 2,
            tokens: 3,
            top_k: 2,
            vocab: 16,
        };
        events(spec, 1).unwrap()
    }

    /// A writer on another thread appends the header, then records in pieces — one line in two
    /// halves with a pause between — and the end; the follower, polling all along, returns
    /// every record once, in order, and never errors on the half line.
    #[test]
    fn a_follower_returns_every_record_once_in_order_as_the_file_grows() {
        let evs = synth();
        assert!(matches!(evs.last(), Some(Event::End { .. })));
        let want = lines_of(&evs);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("growing.jsonl");
        std::fs::write(&path, format!("{}\n", want[0])).unwrap();
        // the follower tells the writer it has seen the first half line before it goes on
        let (seen_tx, seen_rx) = std::sync::mpsc::channel::<()>();
        let writer = {
            let path = path.clone();
            let want = want.clone();
            std::thread::spawn(move || {
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(&path)
                    .unwrap();
                let pause = || std::thread::sleep(Duration::from_millis(15));
                for (k, line) in want.iter().enumerate().skip(1) {
                    if k % 3 == 1 {
                        // in two halves, with a pause between
                        let mid = line.len() / 2;
                        f.write_all(&line.as_bytes()[..mid]).unwrap();
                        f.flush().unwrap();
                        if k == 1 {
                            seen_rx.recv_timeout(Duration::from_secs(20)).unwrap();
                        }
                        pause();
                        f.write_all(&line.as_bytes()[mid..]).unwrap();
                        f.write_all(b"\n").unwrap();
                    } else if k % 3 == 2 {
                        // whole, its newline a moment later
                        f.write_all(line.as_bytes()).unwrap();
                        f.flush().unwrap();
                        pause();
                        f.write_all(b"\n").unwrap();
                    } else {
                        // whole, with its newline
                        f.write_all(format!("{line}\n").as_bytes()).unwrap();
                    }
                    f.flush().unwrap();
                    pause();
                }
            })
        };
        let (run, follower) = open_following(&path).unwrap();
        let mut follower = follower.expect("no end record yet: followed");
        let mut got = vec![Event::Header(Box::new(run.header.clone()))];
        let t = Instant::now();
        let mut half_lines_seen = 0;
        while !follower.ended() {
            assert!(t.elapsed() < Duration::from_secs(20), "timed out");
            follower.poll(&mut got).unwrap();
            if follower.pending_bytes() > 0 {
                if half_lines_seen == 0 {
                    seen_tx.send(()).unwrap();
                }
                half_lines_seen += 1;
            }
            std::thread::sleep(Duration::from_millis(3));
        }
        writer.join().unwrap();
        assert_eq!(lines_of(&got), want);
        assert!(half_lines_seen > 0, "the half lines were never seen");
        // the end record stops following: nothing more is read
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"garbage\n")
            .unwrap();
        let mut more = Vec::new();
        follower.poll(&mut more).unwrap();
        assert!(more.is_empty());
    }

    /// Opening a file already complete reads it like `read_run` and follows nothing; a file
    /// without its end is followed from after its last complete line; errors name the line and
    /// stop following with the earlier records kept; gzipped files are not followed.
    #[test]
    fn open_following_reads_what_is_there_and_follows_only_an_unfinished_plain_file() {
        let evs = synth();
        let lines = lines_of(&evs);
        let dir = tempfile::tempdir().unwrap();
        let done = dir.path().join("done.jsonl");
        std::fs::write(&done, lines.join("\n") + "\n").unwrap();
        let (run, f) = open_following(&done).unwrap();
        assert!(f.is_none());
        assert_eq!(run, reader::read_run(&done).unwrap());

        // unfinished: the last line cut in the middle; no error, the cut line waits
        let n = lines.len() - 1;
        let growing = dir.path().join("growing.jsonl");
        let cut = &lines[n - 1][..10];
        std::fs::write(&growing, lines[..n - 1].join("\n") + "\n" + cut).unwrap();
        let (run, f) = open_following(&growing).unwrap();
        let mut f = f.unwrap();
        assert!(!run.truncated && run.end.is_none());
        assert_eq!(f.pending_bytes(), 10);
        let mut got = Vec::new();
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&growing)
            .unwrap();
        file.write_all(&lines[n - 1].as_bytes()[10..]).unwrap();
        f.poll(&mut got).unwrap();
        assert_eq!(lines_of(&got), [lines[n - 1].clone()]);
        // a complete line that is not a record: an error naming the line; following stops
        file.write_all(b"\n{\"type\":\"step\"}\n").unwrap();
        let e = format!("{:#}", f.poll(&mut got).unwrap_err());
        assert!(e.contains(&format!("growing.jsonl:{}", n + 1)), "{e}");
        assert!(f.ended());
        // unknown record types are skipped and counted
        let unknown = dir.path().join("unknown.jsonl");
        std::fs::write(
            &unknown,
            format!("{}\n{{\"type\":\"future\"}}\n{}\n", lines[0], lines[1]),
        )
        .unwrap();
        let (run, f) = open_following(&unknown).unwrap();
        assert_eq!((run.skipped_records, f.is_some()), (1, true));
        // the first record must be the header; an empty file has none
        let headless = dir.path().join("headless.jsonl");
        std::fs::write(&headless, format!("{}\n", lines[1])).unwrap();
        let e = format!("{:#}", open_following(&headless).unwrap_err());
        assert!(
            e.contains("headless.jsonl:1: the first record must be the header"),
            "{e}"
        );
        std::fs::write(&headless, "").unwrap();
        let e = format!("{:#}", open_following(&headless).unwrap_err());
        assert!(e.contains("empty run file"), "{e}");
        std::fs::write(&headless, &lines[0][..20]).unwrap();
        let e = format!("{:#}", open_following(&headless).unwrap_err());
        assert!(e.contains("no complete record yet"), "{e}");
        // a file that shrinks while followed (replaced by another run)
        let shrink = dir.path().join("shrink.jsonl");
        std::fs::write(&shrink, format!("{}\n{}\n", lines[0], lines[1])).unwrap();
        let (_, f) = open_following(&shrink).unwrap();
        let mut f = f.unwrap();
        std::fs::write(&shrink, format!("{}\n", lines[0])).unwrap();
        let e = format!("{:#}", f.poll(&mut got).unwrap_err());
        assert!(e.contains("shrank"), "{e}");
        // gzipped: read once, not followed
        let gz = dir.path().join("growing.jsonl.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all((lines[..n].join("\n") + "\n").as_bytes())
            .unwrap();
        std::fs::write(&gz, enc.finish().unwrap()).unwrap();
        let (run, f) = open_following(&gz).unwrap();
        assert!(f.is_none() && run.end.is_none() && !run.evals.is_empty());
    }
}
