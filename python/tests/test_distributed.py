"""(c) The same DPO run under `torchrun --nproc_per_node 2` (gloo, CPU) writes the same
evaluations as one process, within 1e-5: 5 probes (so the shards are uneven and one rank
scores a dummy repeat), the same global batch of 4 (2 per process vs 4), data in file order,
float32 training (bf16 autocast would make the two batchings round differently)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PREFS, PYTHON, TRAIN_SCRIPT, inspect_json, make_probes, read_jsonl, script_cmd, subprocess_env


def torchrun() -> list:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.is_file() else [PYTHON, "-m", "torch.distributed.run"]


def run_cmd(cmd, cwd):
    cp = subprocess.run(cmd, cwd=cwd, env=subprocess_env(), capture_output=True, text=True, timeout=600)
    assert cp.returncode == 0, f"{' '.join(cmd)} failed:\n{cp.stdout[-3000:]}\n{cp.stderr[-6000:]}"


def evals(path):
    return [r for r in read_jsonl(path) if r["type"] == "eval"]


def test_two_processes_record_what_one_does(model_dir, tmp_path):
    probes = make_probes(model_dir, PREFS, 5, tmp_path / "probes5.jsonl", tmp_path)
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    common = dict(trainer="dpo", model_dir=model_dir, probes=probes, steps=2, every=4, extra=["--fp32"])
    run_cmd([PYTHON, str(TRAIN_SCRIPT), *script_cmd(out=one, output_dir=tmp_path / "o1", per_device=4, **common)],
            tmp_path)
    run_cmd([*torchrun(), "--nproc_per_node", "2", "--master_port", str(29500 + os.getpid() % 1000),
             str(TRAIN_SCRIPT), *script_cmd(out=two, output_dir=tmp_path / "o2", per_device=2, **common)], tmp_path)
    h1, h2 = read_jsonl(one)[0], read_jsonl(two)[0]
    assert h1["batch_size"] == h2["batch_size"] == 4
    assert h1["recorder"]["world_size"] == 1 and h2["recorder"]["world_size"] == 2
    assert h1["probes"] == h2["probes"]
    e1, e2 = evals(one), evals(two)
    assert [e["step"] for e in e1] == [e["step"] for e in e2] == [0, 1, 2]
    assert [e["examples"] for e in e2] == [0, 4, 8]
    for a, b in zip(e1, e2):
        assert set(a["logps"]) == set(b["logps"])
        for fam in a["logps"]:
            assert len(b["logps"][fam]) == 5
            assert b["logps"][fam] == pytest.approx(a["logps"][fam], rel=1e-5), (a["step"], fam)
        assert ("transfer" in a) == ("transfer" in b)
        for ra, rb in zip(a.get("transfer", []), b.get("transfer", [])):
            assert rb == pytest.approx(ra, rel=1e-5)
        for ta, tb in zip(a["tokens"], b["tokens"]):
            assert tb["chosen"]["logp"] == pytest.approx(ta["chosen"]["logp"], abs=1e-4)
            assert tb["rejected"]["logp"] == pytest.approx(ta["rejected"]["logp"], abs=1e-4)
            assert len(tb["argmax"]["ids"]) == len(ta["argmax"]["ids"])
    assert "transfer" in e2[0] and len(e2[0]["transfer"]) == 5
    # rank 0 alone writes: one header, one end record
    recs = read_jsonl(two)
    assert sum(r["type"] == "header" for r in recs) == 1 and sum(r["type"] == "end" for r in recs) == 1
    assert inspect_json(two)["evaluations"] == 3
