"""The probe file `ldviz probes` writes (format `ldviz-probes`, version 1): a header line
(families, lengths, top-k, transfer size and the run header the recorder completes), then one
line per probe with its prompt and the text of every family but argmax (y*, which has none)."""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional

FORMAT = "ldviz-probes"
VERSION = 1
RUN_FORMAT = "ldviz-run"
RUN_VERSION = 1

# Every family ldviz knows, in its canonical order (src/data/families.rs, Family::ALL).
FAMILIES = [
    "chosen",
    "rejected",
    "chosen_initial",
    "chosen_gptsemantic",
    "chosen_gptformat",
    "reject_gptsemantic",
    "reject_gptformat",
    "irr_train",
    "irr_test",
    "irr_hum",
    "random_permute",
    "random_nonhum",
    "argmax",
]

# ldviz's Conventions::default() (src/schema/event.rs), used when a probe file has none.
CONVENTIONS = {
    "tokenization": "prompt and response tokenized separately without special tokens, then concatenated",
    "eos_appended": True,
    "sequence_logp": "sum over response tokens and the appended EOS of log pi(token | prefix), natural log",
    "sft_loss": "batch mean of the summed negative log-likelihood",
    "reference": "the phase's starting weights, frozen; reference log-probs of all training pairs computed once when the phase starts",
    "evaluation": "probes scored before the first update (step 0), every eval_every examples, and after the last step, without a backprop graph",
    "argmax": "y*: teacher-forced greedy response along the chosen response, sum over positions of max_v log pi(v | x, y+_<m)",
    "step": "number of optimizer updates applied before the record",
}


class ProbeFileError(ValueError):
    """A probe file that cannot be used; the message names the file and line."""


@dataclass
class Probe:
    index: int
    prompt: str
    responses: Dict[str, str]


@dataclass
class ProbeFile:
    path: str
    header: dict
    families: List[str]
    probes: List[Probe]
    max_prompt: int
    max_total: int
    top_k: Optional[int]
    transfer_prompts: Optional[int]
    run_header: dict = field(default_factory=dict)
    fingerprint: str = ""

    def eval_every(self) -> Optional[int]:
        v = self.run_header.get("config", {}).get("eval_every")
        return int(v) if isinstance(v, int) and v > 0 else None


def _open(path: str):
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, "r", encoding="utf-8")


def read_probes(path: str) -> ProbeFile:
    """Reads and checks a probe file: its header, then every probe line (each must have a
    text for every family of the header but argmax, and a chosen one)."""
    h = hashlib.sha256()
    lines = []
    with _open(path) as f:
        for n, line in enumerate(f, 1):
            h.update(line.encode("utf-8"))
            if line.strip():
                lines.append((n, line))
    if not lines:
        raise ProbeFileError(f"{path}: empty probe file (write one with `ldviz probes --out {path}`)")
    n0, first = lines[0]
    try:
        header = json.loads(first)
    except json.JSONDecodeError as e:
        raise ProbeFileError(f"{path}:{n0}: not JSON: {e}") from None
    if not isinstance(header, dict) or header.get("type") != "probes_header":
        raise ProbeFileError(
            f"{path}:{n0}: the first line is not a probes_header record (is this a probe file from `ldviz probes`?)"
        )
    if header.get("format") != FORMAT:
        raise ProbeFileError(f"{path}:{n0}: format {header.get('format')!r}, expected {FORMAT!r}")
    version = header.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise ProbeFileError(
            f"{path}:{n0}: probe file version {version!r} is newer than this recorder's ({VERSION}); upgrade ldviz-record"
        )
    families = header.get("families")
    if not isinstance(families, list) or not families or not all(isinstance(f, str) for f in families):
        raise ProbeFileError(f"{path}:{n0}: \"families\" must be a non-empty list of family keys")
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        raise ProbeFileError(f"{path}:{n0}: unknown families {unknown} (known: {', '.join(FAMILIES)})")
    if "chosen" not in families:
        raise ProbeFileError(f"{path}:{n0}: the families have no \"chosen\" (y* and the transfer matrix need it)")
    lengths = header.get("lengths") or {}
    max_prompt = lengths.get("max_prompt", 256)
    max_total = lengths.get("max_total", 512)
    if not (isinstance(max_prompt, int) and isinstance(max_total, int) and 0 < max_prompt < max_total):
        raise ProbeFileError(f"{path}:{n0}: lengths must satisfy 0 < max_prompt < max_total, got {lengths}")
    run_header = header.get("run_header")
    if run_header is not None and not isinstance(run_header, dict):
        raise ProbeFileError(f"{path}:{n0}: \"run_header\" must be an object")
    probes = []
    for n, line in lines[1:]:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise ProbeFileError(f"{path}:{n}: not JSON: {e}") from None
        if not isinstance(rec, dict) or rec.get("type") != "probe":
            continue  # a newer writer's record type: ignored, as ldviz's readers do
        prompt = rec.get("prompt")
        responses = rec.get("responses")
        index = rec.get("index", len(probes))
        if not isinstance(prompt, str) or not isinstance(responses, dict):
            raise ProbeFileError(f"{path}:{n}: a probe needs a \"prompt\" string and a \"responses\" object")
        for fam in families:
            if fam == "argmax":
                continue
            if not isinstance(responses.get(fam), str):
                raise ProbeFileError(f"{path}:{n}: probe {index} has no \"{fam}\" response")
        probes.append(
            Probe(
                index=int(index),
                prompt=prompt,
                responses={f: responses[f] for f in families if f != "argmax"},
            )
        )
    if not probes:
        raise ProbeFileError(f"{path}: no probe lines after the header")

    def opt_int(key):
        v = header.get(key)
        return int(v) if isinstance(v, int) and v >= 0 else None

    return ProbeFile(
        path=path,
        header=header,
        families=list(families),
        probes=probes,
        max_prompt=max_prompt,
        max_total=max_total,
        top_k=opt_int("top_k"),
        transfer_prompts=opt_int("transfer_prompts"),
        run_header=copy.deepcopy(run_header) if run_header else {},
        fingerprint=h.hexdigest(),
    )


def default_config() -> dict:
    """ldviz's TrainConfig with the defaults of `ldviz train` (src/train/options.rs), for probe
    files that carry no run header; the recorder overwrites what it knows."""
    optim = {
        "kind": "adamw",
        "lr": 1e-5,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "warmup": 0,
        "max_grad_norm": None,
        "adam_betas": [0.9, 0.999],
        "rms_alpha": 0.99,
        "eps": 1e-8,
    }
    return {
        "model": "",
        "data": "",
        "test_data": None,
        "format": None,
        "test_fraction": 0.0,
        "algo": "dpo",
        "phases": [{"name": "dpo", "algo": "dpo", "duration": {"steps": 1}, "optim": optim, "on_policy": False}],
        "beta": 0.1,
        "gamma": 0.5,
        "label_smoothing": 0.0,
        "batch_size": 1,
        "seed": 0,
        "shuffle": True,
        "eval_every": 64,
        "probes": "All",
        "lengths": {"max_prompt": 256, "max_total": 512},
        "top_k": 5,
        "sample_temperature": 1.0,
        "save_model": None,
        "transfer_prompts": 16,
        "transfer_every": 0,
        "influence_every": 0,
        "influence_probes": 8,
        "influence_families": ["chosen", "rejected", "argmax", "irr_train", "chosen_gptsemantic"],
        "influence_target": "loss",
        "device": "cpu",
        "precision": "f32",
    }


def default_run_header(pf: ProbeFile) -> dict:
    """A complete RunHeader for a probe file without one (written by hand, not by `ldviz
    probes`): data described by the probe file itself."""
    return {
        "format": RUN_FORMAT,
        "version": RUN_VERSION,
        "ldviz_version": str(pf.header.get("ldviz_version", "0.1.0")),
        "created_unix": 0,
        "config": default_config(),
        "conventions": dict(pf.header.get("conventions") or CONVENTIONS),
        "model": {"path": "", "arch": "", "fingerprint": "", "n_params": 0, "vocab_size": 0, "eos_id": 0},
        "data": {
            "path": pf.path,
            "format": "probe",
            "fingerprint": pf.fingerprint,
            "n_records": len(pf.probes),
            "n_train": len(pf.probes),
            "n_test": 0,
            "test_path": None,
        },
        "families": list(pf.families),
        "probes": [],
        "phases": [],
        "batch_size": 1,
        "examples_per_epoch": len(pf.probes),
    }
