"""(d) A job killed mid-run (SIGKILL after its first evaluations) leaves a run file that
`ldviz inspect` loads, with every evaluation written before the kill; a job that dies of an
exception ends its file with an `error` end record."""

from __future__ import annotations

import signal
import subprocess
import time

from conftest import PYTHON, TRAIN_SCRIPT, inspect_json, read_jsonl, script_cmd, subprocess_env


def count_evals(path) -> int:
    try:
        with open(path, encoding="utf-8") as f:
            return sum(1 for line in f if line.startswith('{"type":"eval"'))
    except FileNotFoundError:
        return 0


def test_killed_job_leaves_a_readable_file(model_dir, probes4, tmp_path):
    out = tmp_path / "killed.jsonl"
    cmd = [PYTHON, str(TRAIN_SCRIPT), *script_cmd(trainer="dpo", model_dir=model_dir, probes=probes4, out=out,
                                                  output_dir=tmp_path / "o", per_device=2, steps=100000, every=2)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=subprocess_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while count_evals(out) < 3:
            assert proc.poll() is None, f"the job ended before it was killed: {proc.stderr.read()[-3000:]}"
            assert time.time() < deadline, "no evaluations within 240 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    records = read_jsonl(out)  # every complete line parses
    assert records[0]["type"] == "header"
    assert not any(r["type"] == "end" for r in records)
    n = sum(r["type"] == "eval" for r in records)
    assert n >= 3
    s = inspect_json(out)
    assert s["evaluations"] == n and s["probes"] == 4
    assert s["end"] is None


def test_exception_in_training_ends_the_file_with_an_error_record(model_dir, probes4, tmp_path):
    out = tmp_path / "failed.jsonl"
    cmd = [PYTHON, str(TRAIN_SCRIPT), *script_cmd(trainer="dpo", model_dir=model_dir, probes=probes4, out=out,
                                                  output_dir=tmp_path / "o", per_device=2, steps=10, every=2,
                                                  extra=["--fail-at-step", 3])]
    cp = subprocess.run(cmd, cwd=tmp_path, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert cp.returncode != 0 and "failing on purpose" in cp.stderr
    records = read_jsonl(out)
    assert records[-1]["type"] == "end" and records[-1]["reason"] == "error" and records[-1]["step"] == 3
    assert [r["step"] for r in records if r["type"] == "eval"] == [0, 1, 2, 3]
    s = inspect_json(out)
    assert s["evaluations"] == 4 and "error" in s["end"]
