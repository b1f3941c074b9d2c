"""Shared fixtures: the repository's tiny llama (tests/fixtures/llama: hidden 32, 2 layers,
vocab 320, byte-level BPE tokenizer) copied into a temporary folder, its preference data, the
ldviz binary, and probe files.

Nothing here skips: a missing dependency or binary fails the tests that need it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FIXTURES = REPO / "tests" / "fixtures"
PREFS = FIXTURES / "prefs.jsonl"
TRAIN_SCRIPT = HERE / "train_script.py"


def ldviz_bin() -> Path:
    """$LDVIZ_BIN, else the repository's target/debug/ldviz (`cargo build`)."""
    p = Path(os.environ.get("LDVIZ_BIN") or REPO / "target" / "debug" / "ldviz")
    if not p.is_file():
        pytest.fail(f"no ldviz binary at {p}: run `cargo build` in {REPO} or set LDVIZ_BIN", pytrace=False)
    return p


def run_ldviz(*args, check=True) -> subprocess.CompletedProcess:
    cp = subprocess.run([str(ldviz_bin()), *map(str, args)], capture_output=True, text=True, timeout=300)
    if check and cp.returncode != 0:
        pytest.fail(f"ldviz {' '.join(map(str, args))} failed ({cp.returncode}): {cp.stderr.strip()}", pytrace=False)
    return cp


def read_jsonl(path) -> list:
    """Every complete record of a run file (a cut last line is skipped, as ldviz does)."""
    out = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            if i < len(lines) - 1 and any(l.strip() for l in lines[i + 1 :]):
                raise
    return out


def inspect_json(path) -> dict:
    return json.loads(run_ldviz("inspect", path, "--json").stdout)


def has_probes_command() -> bool:
    return "probes" in run_ldviz("probes", "--help", check=False).stdout


def standin_probes(model_dir, data, n_probes, out, workdir, extra=()) -> Path:
    """A probe file made from the header of a one-step `ldviz train` run with the same data
    flags: the same probes and texts `ldviz probes` writes (used when the binary has no
    `probes` command, and to cross-check it)."""
    run = Path(workdir) / "standin_run.jsonl"
    if run.exists():
        run.unlink()
    run_ldviz("train", "--model", model_dir, "--data", data, "--probes", n_probes, "--algo", "sft", "--steps", 1,
              "--out", run, "--quiet", *extra)
    h = read_jsonl(run)[0]
    fams = h["families"]
    cfg = h["config"]
    header = {
        "type": "probes_header",
        "format": "ldviz-probes",
        "version": 1,
        "ldviz_version": h["ldviz_version"],
        "conventions": h["conventions"],
        "lengths": cfg["lengths"],
        "families": fams,
        "transfer_prompts": min(cfg["transfer_prompts"], len(h["probes"])),
        "top_k": cfg["top_k"],
        "run_header": {**h, "probes": [{**p, "tokens": {}} for p in h["probes"]]},
    }
    header["run_header"].pop("type", None)
    with open(out, "w", encoding="utf-8") as f:
        f.write(json.dumps(header) + "\n")
        for p in h["probes"]:
            f.write(json.dumps({"type": "probe", "index": p["index"], "prompt": p["prompt"],
                                "responses": p["responses"]}) + "\n")
    return Path(out)


def make_probes(model_dir, data, n_probes, out, workdir, extra=()) -> Path:
    """`ldviz probes` with these flags; the stand-in above when the binary lacks the command
    (set LDVIZ_PROBES_STANDIN=1 to force the stand-in)."""
    if os.environ.get("LDVIZ_PROBES_STANDIN") != "1" and has_probes_command():
        run_ldviz("probes", "--model", model_dir, "--data", data, "--probes", n_probes, "--out", out, "--force", *extra)
        return Path(out)
    return standin_probes(model_dir, data, n_probes, out, workdir, extra)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory) -> Path:
    """The fixture llama plus a tokenizer_config.json (so AutoTokenizer and TRL know EOS and
    padding); ldviz reads the same folder."""
    d = tmp_path_factory.mktemp("model") / "llama"
    shutil.copytree(FIXTURES / "llama", d)
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }))
    return d


@pytest.fixture(scope="session")
def probes4(model_dir, tmp_path_factory) -> Path:
    """4 probes of prefs.jsonl, as `ldviz probes --probes 4` writes them."""
    d = tmp_path_factory.mktemp("probes")
    return make_probes(model_dir, PREFS, 4, d / "probes.jsonl", d)


def script_cmd(*, trainer, model_dir, probes, out, output_dir, per_device=2, steps=4, every=3, extra=()):
    return [
        "--trainer", trainer, "--model", str(model_dir), "--data", str(PREFS), "--probes", str(probes),
        "--out", str(out), "--output-dir", str(output_dir), "--per-device", str(per_device),
        "--steps", str(steps), "--every", str(every), *map(str, extra),
    ]


def subprocess_env() -> dict:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["TOKENIZERS_PARALLELISM"] = "false"
    return env


PYTHON = sys.executable


@pytest.fixture(scope="session")
def dpo_run(model_dir, probes4, tmp_path_factory) -> Path:
    """TRL DPOTrainer (its default bf16 autocast, on the CPU) for 4 steps of 2 pairs with the
    recorder every 3 examples: evaluations at steps 0, 2 (4 examples), 3 (6) and 4 (the end)."""
    from train_script import run

    d = tmp_path_factory.mktemp("dpo")
    out = d / "dpo.jsonl"
    run(trainer="dpo", model_dir=str(model_dir), data=str(PREFS), probes=str(probes4), out=str(out),
        output_dir=str(d / "trainer"), per_device=2, steps=4, every=3)
    return out
