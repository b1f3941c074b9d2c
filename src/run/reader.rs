//! Reading a run file back: every complete record is loaded; a last line cut mid-record (a
//! killed writer) is skipped and reported, anything else malformed is an error naming the line.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};

use crate::data::Family;
use crate::schema::Algo;
use crate::schema::event::{
    EndReason, EvalLine, EvalRecord, Event, FORMAT, InfluenceRecord, RECORD_TYPES, RunHeader,
    StepRecord, Traces, VERSION,
};

/// A phase as it happened: name, algorithm and the step it began at.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseMark {
    pub name: String,
    pub algo: Algo,
    pub step: usize,
}

/// A run, in memory.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub header: RunHeader,
    pub vocab: BTreeMap<u32, String>,
    pub phases: Vec<PhaseMark>,
    pub steps: Vec<StepRecord>,
    pub evals: Vec<EvalRecord>,
    pub influence: Vec<InfluenceRecord>,
    pub end: Option<(EndReason, usize, Option<String>)>,
    /// True when the last line was incomplete and skipped.
    pub truncated: bool,
    /// Records of a type this version does not know (written by a newer ldviz), skipped.
    pub skipped_records: usize,
}

impl Run {
    /// Starts an empty run from its header (for live runs).
    pub fn new(header: RunHeader) -> Run {
        Run {
            header,
            vocab: BTreeMap::new(),
            phases: Vec::new(),
            steps: Vec::new(),
            evals: Vec::new(),
            influence: Vec::new(),
            end: None,
            truncated: false,
            skipped_records: 0,
        }
    }

    /// Applies one event (the header is ignored here).
    pub fn apply(&mut self, ev: Event) {
        match ev {
            Event::Header(_) | Event::State { .. } | Event::Samples { .. } => {}
            Event::Vocab { tokens } => self.vocab.extend(tokens),
            Event::Phase {
                name, algo, step, ..
            } => self.phases.push(PhaseMark { name, algo, step }),
            Event::Step(s) => self.steps.push(s),
            Event::Eval(e) => self.evals.push(*e),
            Event::Influence(r) => self.influence.push(*r),
            Event::End {
                reason,
                step,
                message,
            } => self.end = Some((reason, step, message)),
        }
    }

    /// The last step recorded.
    pub fn last_step(&self) -> usize {
        let s = self.steps.last().map(|s| s.step).unwrap_or(0);
        let e = self.evals.last().map(|e| e.step).unwrap_or(0);
        s.max(e)
    }

    /// The step at which the run diverged: the first step whose loss, or the mean summed
    /// log-prob of any family at an evaluation, is not finite (NaN or ±∞). None when every
    /// recorded loss and mean is finite.
    pub fn diverged_at_step(&self) -> Option<usize> {
        let (loss, eval) = self.first_non_finite(0, 0);
        min_step(loss, eval)
    }

    /// The step of the first step record from `steps_from` on whose loss is not finite, and of
    /// the first evaluation from `evals_from` on with a family's non-finite mean log-prob.
    pub fn first_non_finite(
        &self,
        steps_from: usize,
        evals_from: usize,
    ) -> (Option<usize>, Option<usize>) {
        let loss = self
            .steps
            .iter()
            .skip(steps_from)
            .find(|s| s.metrics.get("loss").is_some_and(|l| !l.is_finite()))
            .map(|s| s.step);
        let eval = self
            .evals
            .iter()
            .skip(evals_from)
            .find(|e| {
                e.logps
                    .values()
                    .any(|v| !v.is_empty() && !(v.iter().sum::<f64>() / v.len() as f64).is_finite())
            })
            .map(|e| e.step);
        (loss, eval)
    }

    /// Mean over probes of one family at each evaluation: (step, mean).
    pub fn family_means(&self, f: Family) -> Vec<(usize, f64)> {
        self.evals
            .iter()
            .filter_map(|e| {
                let v = e.logps.get(&f)?;
                if v.is_empty() {
                    return None;
                }
                Some((e.step, v.iter().sum::<f64>() / v.len() as f64))
            })
            .collect()
    }
}

/// The earlier of two optional steps.
pub fn min_step(a: Option<usize>, b: Option<usize>) -> Option<usize> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Finds the `"tokens":[...]` member of an eval line: returns the line without it and the
/// value's text. A bracket scan that honours strings and escapes; None when the line does not
/// have that shape (the caller then parses the whole line the ordinary way).
fn cut_tokens(text: &str) -> Option<(String, &str)> {
    let key = ",\"tokens\":";
    let k = text.find(key)?;
    let b = text.as_bytes();
    let start = k + key.len();
    if b.get(start) != Some(&b'[') {
        return None;
    }
    // Fast path for ldviz's own member order (…, tokens, [diag], [transfer]): traces end with
    // "}]", which neither diag nor transfer contain, so the value ends after the last "}]".
    // Checked: it must look like a list of traces followed by diag, transfer or the closing
    // brace; otherwise the bracket scan below decides.
    if let Some(e) = text.rfind("}]") {
        let end = e + 2;
        let after = text[end..].trim_end();
        let v = &text[start..end.max(start)];
        if end > start
            && v.starts_with("[{\"chosen\":")
            && (after == "}"
                || after.starts_with(",\"diag\":")
                || after.starts_with(",\"transfer\":"))
        {
            let rest = format!("{}{}", &text[..k], &text[end..]);
            return Some((rest, v));
        }
    }
    let mut depth = 0usize;
    let mut i = start;
    let mut in_str = false;
    while i < b.len() {
        let c = b[i];
        if in_str {
            match c {
                b'\\' => i += 1,
                b'"' => in_str = false,
                _ => {}
            }
        } else {
            match c {
                b'"' => in_str = true,
                b'[' | b'{' => depth += 1,
                b']' | b'}' => {
                    depth = depth.checked_sub(1)?;
                    if depth == 0 {
                        let rest = format!("{}{}", &text[..k], &text[i + 1..]);
                        return Some((rest, &text[start..=i]));
                    }
                }
                _ => {}
            }
        }
        i += 1;
    }
    None
}

/// One parsed line.
pub(super) enum Line {
    Record(Event),
    /// A valid JSON object whose `"type"` this version does not know.
    Unknown,
    Invalid(String),
}

/// Parses one line: evaluation records without their per-token traces (kept as raw text until
/// used), everything else through the tagged [`Event`] enum. Fields a record type does not
/// have are ignored; a record whose type is unknown is [`Line::Unknown`].
fn parse_line(text: &str) -> Line {
    if text.starts_with("{\"type\":\"eval\"")
        && let Some((rest, tokens)) = cut_tokens(text)
        && let Ok(l) = serde_json::from_str::<EvalLine>(&rest)
    {
        return Line::Record(Event::Eval(Box::new(l.with_tokens(Traces::raw(tokens)))));
    }
    match serde_json::from_str(text) {
        Ok(ev) => Line::Record(ev),
        Err(e) => {
            #[derive(serde::Deserialize)]
            struct Tagged {
                #[serde(rename = "type")]
                ty: String,
            }
            match serde_json::from_str::<Tagged>(text) {
                Ok(t) if !RECORD_TYPES.contains(&t.ty.as_str()) => Line::Unknown,
                _ => Line::Invalid(e.to_string()),
            }
        }
    }
}

/// The gzip magic bytes: a run file that starts with them is read through a decompressor.
pub(super) const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The bytes of a run file, plain or gzipped (detected by content, not by name). A gzipped file
/// is decompressed as a stream; one cut short (a copy interrupted, a download stopped) yields
/// what was decompressed before the cut, and `true`.
pub fn read_run_bytes(path: &Path) -> Result<(Vec<u8>, bool)> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)
        .with_context(|| format!("{}: cannot open run file", path.display()))?;
    let mut head = [0u8; 2];
    let mut got = 0;
    while got < 2 {
        let n = f
            .read(&mut head[got..])
            .with_context(|| format!("{}: cannot read run file", path.display()))?;
        if n == 0 {
            break;
        }
        got += n;
    }
    let mut bytes = head[..got].to_vec();
    if got < 2 || head != GZIP_MAGIC {
        f.read_to_end(&mut bytes)
            .with_context(|| format!("{}: cannot read run file", path.display()))?;
        return Ok((bytes, false));
    }
    let stream = std::io::Cursor::new(head).chain(std::io::BufReader::new(f));
    let mut dec = flate2::read::MultiGzDecoder::new(stream);
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match dec.read(&mut buf) {
            Ok(0) => return Ok((out, false)),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {
                return Ok((out, true));
            }
            Err(e) => {
                return Err(anyhow::anyhow!(
                    "{}: not a readable gzip file after {} decompressed bytes: {e}",
                    path.display(),
                    out.len()
                ));
            }
        }
    }
}

/// A run's display name: the file name without `.gz` and `.jsonl` (`runs/sft.jsonl.gz` → `sft`).
pub fn run_name(path: &Path) -> String {
    let mut name = path
        .file_name()
        .map(|s| s.to_string_lossy().to_string())
        .unwrap_or_default();
    for ext in [".gz", ".jsonl"] {
        if let Some(n) = name.strip_suffix(ext)
            && !n.is_empty()
        {
            name = n.to_string();
        }
    }
    if name.is_empty() { "run".into() } else { name }
}

/// Whether a file looks like an ldviz run file, plain or gzipped: its first line is a run
/// header, or it is a Hugging Face trainer state (reads at most the first 4 KiB of its content).
pub fn looks_like_run_file(path: &Path) -> bool {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(path) else {
        return false;
    };
    let mut head = Vec::new();
    if (&mut f).take(2).read_to_end(&mut head).is_err() {
        return false;
    }
    let mut first = Vec::new();
    let read = if head == GZIP_MAGIC {
        let stream = std::io::Cursor::new(head).chain(std::io::BufReader::new(f));
        flate2::read::MultiGzDecoder::new(stream)
            .take(4096)
            .read_to_end(&mut first)
    } else {
        first = head;
        f.take(4094).read_to_end(&mut first)
    };
    if read.is_err() && first.is_empty() {
        return false;
    }
    if super::hf_state::is_trainer_state(&first) {
        return true;
    }
    // `{"type":"header"` with any whitespace between the tokens (Python's json.dumps adds some)
    let s = String::from_utf8_lossy(&first);
    let mut rest = s.trim_start();
    for token in ["{", "\"type\"", ":", "\"header\""] {
        match rest.strip_prefix(token) {
            Some(r) => rest = r.trim_start(),
            None => return false,
        }
    }
    let compact: String = s.split_whitespace().collect();
    compact.contains("\"format\":\"ldviz-run\"")
}

/// Loads a run file (plain JSON Lines or gzipped). Lines are parsed in parallel, then applied
/// in order. A Hugging Face `trainer_state.json` (one JSON object with a `log_history`) is read
/// as a run of TRL metrics (see [`super::hf_state`]).
pub fn read_run(path: &Path) -> Result<Run> {
    let (bytes, cut_stream) = read_run_bytes(path)?;
    if super::hf_state::is_trainer_state(&bytes) {
        return super::hf_state::parse_trainer_state(path, &bytes);
    }
    let mut run = parse_run(path, &bytes)?;
    run.truncated |= cut_stream;
    Ok(run)
}

/// The lines of `bytes`, numbered from `first_no`: (line number, bytes without the newline,
/// whether the newline was there). The last may lack its newline (a killed writer).
pub(super) fn split_lines(bytes: &[u8], first_no: usize) -> Vec<(usize, &[u8], bool)> {
    let mut lines = Vec::new();
    let mut start = 0usize;
    let mut no = first_no;
    while start < bytes.len() {
        match memchr::memchr(b'\n', &bytes[start..]) {
            Some(k) => {
                lines.push((no, &bytes[start..start + k], true));
                start += k + 1;
            }
            None => {
                lines.push((no, &bytes[start..], false));
                start = bytes.len();
            }
        }
        no += 1;
    }
    lines
}

/// A parsed line: (line number, complete, the record; None for a blank line).
pub(super) type Parsed = (usize, bool, Option<Line>);

/// Parses lines (from [`split_lines`]) in parallel, in order.
pub(super) fn parse_lines(lines: &[(usize, &[u8], bool)]) -> Vec<Parsed> {
    use rayon::prelude::*;
    lines
        .par_iter()
        .map(|&(no, line, complete)| {
            let text = match std::str::from_utf8(line) {
                Ok(t) => t.trim(),
                Err(_) => return (no, complete, Some(Line::Invalid("not UTF-8".to_string()))),
            };
            if text.is_empty() {
                return (no, complete, None);
            }
            (no, complete, Some(parse_line(text)))
        })
        .collect()
}

/// Refuses a header of another format or of a newer version than this reader's.
pub(super) fn check_header(path: &Path, h: &RunHeader) -> Result<()> {
    if h.format != FORMAT {
        bail!(
            "{}:1: format \"{}\" is not \"{FORMAT}\"",
            path.display(),
            escape_controls(&h.format)
        );
    }
    if h.version > VERSION {
        bail!(
            "{}:1: run file version {} is newer than this ldviz reads ({VERSION}); update ldviz",
            path.display(),
            h.version
        );
    }
    Ok(())
}

/// The error of a complete line that is not a run record.
pub(super) fn invalid_line(path: &Path, line_no: usize, e: &str) -> anyhow::Error {
    if e == "not UTF-8" {
        anyhow!("{}:{line_no}: not UTF-8", path.display())
    } else {
        anyhow!(
            "{}:{line_no}: not a valid run record: {}",
            path.display(),
            escape_controls(e)
        )
    }
}

/// Parses the (decompressed) bytes of a run file as [`read_run`] does; `path` names the file in
/// errors.
pub fn parse_run(path: &Path, bytes: &[u8]) -> Result<Run> {
    let lines = split_lines(bytes, 1);
    let parsed = parse_lines(&lines);
    drop(lines);
    let mut run: Option<Run> = None;
    for (line_no, complete, ev) in parsed {
        let Some(ev) = ev else { continue };
        let ev = match ev {
            Line::Record(ev) => ev,
            Line::Unknown if run.is_some() => {
                if let Some(r) = run.as_mut() {
                    r.skipped_records += 1;
                }
                continue;
            }
            Line::Unknown => bail!(
                "{}:{line_no}: the first record must be the header",
                path.display()
            ),
            Line::Invalid(_) if !complete => {
                // A record cut by a killed writer: keep everything before it.
                if let Some(r) = run.as_mut() {
                    r.truncated = true;
                }
                break;
            }
            Line::Invalid(e) => return Err(invalid_line(path, line_no, &e)),
        };
        match (&mut run, ev) {
            (None, Event::Header(h)) => {
                check_header(path, &h)?;
                run = Some(Run::new(*h));
            }
            (None, _) => bail!(
                "{}:{line_no}: the first record must be the header",
                path.display()
            ),
            (Some(_), Event::Header(_)) => bail!("{}:{line_no}: a second header", path.display()),
            (Some(r), ev) => r.apply(ev),
        }
    }
    run.ok_or_else(|| anyhow!("{}: empty run file (no header record)", path.display()))
}

/// `s` with control characters escaped (`\n` as `\\n`): strings from the file quoted in an
/// error keep the message on one line.
fn escape_controls(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names_and_run_file_detection() {
        assert_eq!(run_name(Path::new("runs/sft.jsonl.gz")), "sft");
        assert_eq!(run_name(Path::new("a.jsonl")), "a");
        assert_eq!(run_name(Path::new("b.txt")), "b.txt");
        assert_eq!(run_name(Path::new(".jsonl")), ".jsonl");
        let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_runs/sft.jsonl.gz");
        assert!(looks_like_run_file(&sample));
        let dir = tempfile::tempdir().unwrap();
        let (plain, _) = read_run_bytes(&sample).unwrap();
        let p = dir.path().join("x.jsonl");
        std::fs::write(&p, &plain[..100]).unwrap();
        assert!(looks_like_run_file(&p));
        std::fs::write(&p, gzip(b"{\"prompt\": \"q\"}")).unwrap();
        assert!(!looks_like_run_file(&p));
        std::fs::write(&p, b"").unwrap();
        assert!(!looks_like_run_file(&p));
        // Python's separators, and a Hugging Face trainer state
        std::fs::write(
            &p,
            b"{\"type\": \"header\", \"format\": \"ldviz-run\", \"version\": 1",
        )
        .unwrap();
        assert!(looks_like_run_file(&p));
        std::fs::write(&p, b"{\"type\": \"step\", \"format\": \"ldviz-run\"").unwrap();
        assert!(!looks_like_run_file(&p));
        let state = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trainer_state.json");
        assert!(looks_like_run_file(&state));
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(bytes).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn gzipped_run_files_read_like_plain_ones_and_a_cut_one_keeps_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("sample_runs/sft.jsonl.gz");
        let (plain, cut) = read_run_bytes(&sample).unwrap();
        assert!(!cut);
        let plain_path = dir.path().join("plain.jsonl");
        std::fs::write(&plain_path, &plain).unwrap();
        let a = read_run(&plain_path).unwrap();
        let b = read_run(&sample).unwrap();
        assert_eq!(a, b);
        assert!(!b.truncated && b.evals.len() > 2);
        // The name does not matter, the content does.
        let odd = dir.path().join("run.txt");
        std::fs::write(&odd, gzip(&plain)).unwrap();
        assert_eq!(read_run(&odd).unwrap(), a);
        // A gzip stream cut in the middle: every record before the cut, marked truncated.
        let gz = gzip(&plain);
        let cut_path = dir.path().join("cut.jsonl.gz");
        std::fs::write(&cut_path, &gz[..gz.len() / 2]).unwrap();
        let c = read_run(&cut_path).unwrap();
        assert!(c.truncated);
        assert!(!c.evals.is_empty() && c.evals.len() < a.evals.len());
        assert_eq!(c.evals[..], a.evals[..c.evals.len()]);
        // Gzip garbage is an error naming the file, not a panic.
        let bad = dir.path().join("bad.jsonl.gz");
        std::fs::write(&bad, [0x1f, 0x8b, 0xff, 0xff, 0x00]).unwrap();
        let e = format!("{:#}", read_run(&bad).unwrap_err());
        assert!(e.contains("bad.jsonl.gz"), "{e}");
    }

    fn parse(text: &str) -> std::result::Result<Event, String> {
        match parse_line(text) {
            Line::Record(ev) => Ok(ev),
            Line::Unknown => Err("unknown record type".to_string()),
            Line::Invalid(e) => Err(e),
        }
    }

    #[test]
    fn record_types_are_exactly_the_event_variants() {
        let Err(e) = serde_json::from_str::<Event>(r#"{"type":"future_thing"}"#) else {
            panic!("an unknown type parsed");
        };
        let msg = e.to_string();
        let expected = msg
            .split("expected one of ")
            .nth(1)
            .unwrap_or_else(|| panic!("{msg}"));
        let names: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
        assert_eq!(names, RECORD_TYPES.to_vec(), "{msg}");
        assert!(matches!(
            parse_line(r#"{"type":"future_thing","x":1}"#),
            Line::Unknown
        ));
        assert!(matches!(
            parse_line(r#"{"type":"step","x":1}"#),
            Line::Invalid(_)
        ));
        assert!(matches!(parse_line(r#"{"x":1}"#), Line::Invalid(_)));
    }

    #[test]
    fn tokens_are_cut_out_of_eval_lines_in_any_member_order() {
        let traces = r#"[{"chosen":{"logp":[-1.0],"entropy":[0.5],"top":[[[3,-0.1]]]},"rejected":{"logp":[],"entropy":[],"top":[]},"argmax":{"ids":[3],"logp":[-0.1]}}]"#;
        // ldviz's order, with and without diag/transfer.
        for tail in [
            "}".to_string(),
            r#","diag":{"chosen":[[1.0,2.0,3.0]]},"transfer":[[1.0]]}"#.to_string(),
            r#","transfer":[[1.0,2.0],[3.0,4.0]]}"#.to_string(),
        ] {
            let line = format!(
                r#"{{"type":"eval","step":3,"examples":12,"epoch":0.1,"phase":"dpo","logps":{{"chosen":[-2.5]}},"tokens":{traces}{tail}"#
            );
            let (rest, t) = cut_tokens(&line).unwrap();
            assert_eq!(t, traces);
            let Ok(Event::Eval(e)) = parse(&line) else {
                panic!("{rest}")
            };
            assert_eq!(e.step, 3);
            assert_eq!(e.tokens.len(), 1);
            assert_eq!(e.tokens[0].argmax.ids, vec![3]);
            assert!(e.tokens.parse_error().is_none());
        }
        // Another writer's order and brackets inside strings: the bracket scan finds the value.
        let line = format!(
            r#"{{"type":"eval","phase":"a]}}[\"x","tokens":{traces},"step":1,"examples":4,"epoch":0.0,"logps":{{}}}}"#
        );
        let (_, t) = cut_tokens(&line).unwrap();
        assert_eq!(t, traces);
        let Ok(Event::Eval(e)) = parse(&line) else {
            panic!()
        };
        assert_eq!(e.phase, "a]}[\"x");
        assert_eq!(e.tokens.len(), 1);
        // Malformed per-token data: the record loads, the traces read as empty with a reason.
        let line = r#"{"type":"eval","step":1,"examples":4,"epoch":0.0,"phase":"p","logps":{},"tokens":[{"chosen":{"logp":"x"}}]}"#;
        let Ok(Event::Eval(e)) = parse(line) else {
            panic!()
        };
        assert!(e.tokens.is_empty());
        assert!(e.tokens.parse_error().unwrap().contains("per-token data"));
    }

    #[test]
    fn records_from_before_the_authors_a_norm_and_the_influence_target_still_read() {
        use crate::data::Family;
        use crate::run::Quantity;
        use crate::schema::InfluenceTarget;
        let traces = r#"[{"chosen":{"logp":[-1.0],"entropy":[0.5],"top":[]},"rejected":{"logp":[],"entropy":[],"top":[]},"argmax":{"ids":[3],"logp":[-0.1]}}]"#;
        // through the reader's cut-out of the traces, or the whole record at once
        let eval = |diag: &str, whole: bool| {
            let line = format!(
                r#"{{"type":"eval","step":0,"examples":0,"epoch":0.0,"phase":"dpo","logps":{{"chosen":[-2.5,-3.0]}},"tokens":{traces},"diag":{{"chosen":{diag}}}}}"#
            );
            if whole {
                serde_json::from_str::<Event>(&line).map_err(|e| e.to_string())
            } else {
                parse(&line)
            }
        };
        for whole in [false, true] {
            // three values per probe (older runs): the authors' ‖A‖_F reads as absent
            let Ok(Event::Eval(e)) = eval("[[1.5,0.5,0.25],[1.6,0.6,0.35]]", whole) else {
                panic!("3 values")
            };
            let d = &e.diag[&Family::Chosen];
            assert_eq!(d[1][..3], [1.6, 0.6, 0.35]);
            assert!(d[0][3].is_nan());
            assert_eq!(
                Quantity::ANorm.values(&e, Family::Chosen),
                Some(vec![1.5, 1.6])
            );
            assert_eq!(Quantity::ANormAuthors.values(&e, Family::Chosen), None);
            // four values: the fourth is the authors' ‖A‖_F
            let Ok(Event::Eval(e)) = eval("[[1.5,0.5,0.25,1.4],[1.6,0.6,0.35,null]]", whole) else {
                panic!("4 values")
            };
            let v = Quantity::ANormAuthors.values(&e, Family::Chosen).unwrap();
            assert_eq!(v[0], 1.4);
            assert!(v[1].is_nan());
            assert_eq!(
                Quantity::Energy.values(&e, Family::Chosen),
                Some(vec![0.25, 0.35])
            );
            // anything else is an error that says what
            let err = eval("[[1.0,2.0]]", whole).err().unwrap();
            assert!(err.contains("2 values per probe, expected 3 or 4"), "{err}");
        }
        // an influence record from before the target choice used the chosen log-prob
        let inf = r#"{"type":"influence","step":1,"phase":"dpo","lr":0.1,"optimizer":"sgd","batch":[0],"observed":[{"probe":0,"family":"chosen"}],"actual":[0.1],"predicted":[0.1],"contributions":[[0.1]],"cosine":[[0.5]],"wall_ms":1.0}"#;
        let Ok(Event::Influence(r)) = parse(inf) else {
            panic!("influence")
        };
        assert_eq!(r.target, InfluenceTarget::Chosen);
        let with = inf.replace(r#""wall_ms""#, r#""target":"loss","wall_ms""#);
        let Ok(Event::Influence(r)) = parse(&with) else {
            panic!("influence with target")
        };
        assert_eq!(r.target, InfluenceTarget::Loss);
        // so did a run whose header's config predates the field; new options default to loss
        let opts = crate::train::TrainOptions {
            algo: crate::schema::Algo::Dpo,
            ..Default::default()
        };
        assert_eq!(opts.influence_target, InfluenceTarget::Loss);
        let cfg = opts.to_config().unwrap();
        assert_eq!(cfg.influence_target, InfluenceTarget::Loss);
        let mut v = serde_json::to_value(&cfg).unwrap();
        v.as_object_mut().unwrap().remove("influence_target");
        let old: crate::schema::TrainConfig = serde_json::from_value(v).unwrap();
        assert_eq!(old.influence_target, InfluenceTarget::Chosen);
    }

    /// Files written before non-finite values had their own encoding hold `null` wherever a
    /// value was NaN or infinite (serde_json's default): every such number reads as NaN.
    #[test]
    fn old_files_with_null_numbers_read_them_as_nan() {
        let step = r#"{"type":"step","step":2,"examples":8,"epoch":1.0,"phase":"dpo","batch":[0],"metrics":{"loss":null,"grad_norm":3.5},"wall_ms":1.0}"#;
        let Ok(Event::Step(s)) = parse(step) else {
            panic!("step")
        };
        assert!(s.metrics["loss"].is_nan());
        assert_eq!(s.metrics["grad_norm"], 3.5);
        let traces = r#"[{"chosen":{"logp":[null,-1.0],"entropy":[null,0.5],"top":[[[3,null]]]},"rejected":{"logp":[],"entropy":[],"top":[]},"argmax":{"ids":[3],"logp":[null]}}]"#;
        let eval = format!(
            r#"{{"type":"eval","step":2,"examples":8,"epoch":1.0,"phase":"dpo","logps":{{"chosen":[null,-3.0]}},"tokens":{traces},"diag":{{"chosen":[[null,0.5,null,null]]}},"transfer":[[null,1.0]]}}"#
        );
        for whole in [false, true] {
            let e = if whole {
                serde_json::from_str::<Event>(&eval).map_err(|e| e.to_string())
            } else {
                parse(&eval)
            };
            let Ok(Event::Eval(e)) = e else {
                panic!("eval: {e:?}")
            };
            assert!(e.logps[&Family::Chosen][0].is_nan());
            assert_eq!(e.logps[&Family::Chosen][1], -3.0);
            assert!(e.diag[&Family::Chosen][0][0].is_nan());
            assert!(e.transfer[0][0].is_nan());
            assert!(e.tokens.parse_error().is_none());
            let t = &e.tokens[0];
            assert!(t.chosen.logp[0].is_nan() && t.chosen.entropy[0].is_nan());
            assert!(t.chosen.top[0][0].1.is_nan() && t.argmax.logp[0].is_nan());
        }
        let infl = r#"{"type":"influence","step":2,"phase":"dpo","lr":0.1,"optimizer":"sgd","batch":[0],"observed":[{"probe":0,"family":"chosen"}],"actual":[null],"predicted":[null],"contributions":[[null]],"cosine":[[null]],"target":"loss","wall_ms":1.0}"#;
        let Ok(Event::Influence(r)) = parse(infl) else {
            panic!("influence")
        };
        assert!(r.actual[0].is_nan() && r.predicted[0].is_nan());
        assert!(r.contributions[0][0].is_nan() && r.cosine[0][0].is_nan());
    }

    /// NaN, +∞ and −∞ in every recorded number survive the writer and the reader exactly.
    #[test]
    fn non_finite_values_round_trip_through_writer_and_reader() {
        use crate::synth::{SynthSpec, events};
        let spec = SynthSpec {
            steps: 4,
            eval_every: 2,
            probes: 2,
            tokens: 2,
            top_k: 1,
            vocab: 8,
        };
        let odd = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY];
        let mut evs = events(spec, 5).unwrap();
        let mut last_step = None;
        for ev in evs.iter_mut() {
            match ev {
                Event::Step(s) => {
                    s.metrics.insert("loss".into(), odd[s.step % 3]);
                    s.metrics.insert("grad_norm".into(), f64::INFINITY);
                    last_step = Some(s.step);
                }
                Event::Eval(e) => {
                    for v in e.logps.values_mut() {
                        v[0] = f64::NEG_INFINITY;
                        v[1] = f64::NAN;
                    }
                    e.diag
                        .insert(Family::Chosen, vec![[odd[0], odd[1], odd[2], 1.0]; 2]);
                    e.transfer = vec![odd.to_vec(), vec![1.0, 2.0, 3.0]];
                    let mut t = e.tokens.get_all().to_vec();
                    t[0].chosen.logp[0] = f32::NEG_INFINITY;
                    t[0].chosen.entropy[0] = f32::INFINITY;
                    t[0].chosen.top[0][0].1 = f32::NAN;
                    t[0].argmax.logp[0] = f32::NEG_INFINITY;
                    e.tokens = Traces::new(t);
                }
                _ => {}
            }
        }
        let step = last_step.unwrap();
        let influence = InfluenceRecord {
            step,
            phase: "dpo".into(),
            lr: 0.1,
            optimizer: crate::schema::OptimKind::Sgd,
            batch: vec![0, 1],
            observed: vec![],
            actual: odd.to_vec(),
            predicted: vec![f64::INFINITY, 2.0],
            contributions: vec![odd.to_vec()],
            cosine: vec![vec![f64::NEG_INFINITY, f64::NAN]],
            target: crate::schema::InfluenceTarget::Loss,
            wall_ms: 1.0,
        };
        let end = evs.len() - usize::from(matches!(evs.last(), Some(Event::End { .. })));
        evs.insert(end, Event::Influence(Box::new(influence)));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("odd.jsonl");
        let mut w = crate::run::Writer::create(&path).unwrap();
        for ev in &evs {
            w.write(ev).unwrap();
        }
        drop(w);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"-Infinity\"") && text.contains("\"Infinity\""));
        assert!(!text.contains("NaN"), "NaN is written as null");
        let run = read_run(&path).unwrap();
        let mut want = Run::new(match &evs[0] {
            Event::Header(h) => (**h).clone(),
            _ => panic!("header first"),
        });
        for ev in evs.iter().skip(1) {
            want.apply(ev.clone());
        }
        // Debug prints NaN, inf and -inf, so equal text is equal bits here
        assert!(!run.evals.is_empty() && run.influence.len() == 1);
        assert_eq!(format!("{:?}", run.steps), format!("{:?}", want.steps));
        assert_eq!(
            format!("{:?}", run.influence),
            format!("{:?}", want.influence)
        );
        for (a, b) in run.evals.iter().zip(&want.evals) {
            assert_eq!(format!("{:?}", a.logps), format!("{:?}", b.logps));
            assert_eq!(format!("{:?}", a.diag), format!("{:?}", b.diag));
            assert_eq!(format!("{:?}", a.transfer), format!("{:?}", b.transfer));
            assert!(a.tokens.parse_error().is_none());
            assert_eq!(
                format!("{:?}", a.tokens.get_all()),
                format!("{:?}", b.tokens.get_all())
            );
        }
        assert_eq!(run.diverged_at_step(), Some(0));
    }
}
