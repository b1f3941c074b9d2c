"""(b) Short runs of TRL's DPOTrainer, transformers' Trainer (SFT) and TRL's SFTTrainer write
run files `ldviz inspect --json` reads, with the expected evaluations, steps and header."""

from __future__ import annotations

import pytest

from conftest import PREFS, inspect_json, read_jsonl, run_ldviz
from train_script import run


def evals(records):
    return [r for r in records if r["type"] == "eval"]


def mean(xs):
    return sum(xs) / len(xs)


def check_common(records, *, algo, batch, steps, eval_steps):
    h = records[0]
    assert h["type"] == "header" and h["format"] == "ldviz-run"
    assert h["config"]["algo"] == algo
    assert h["phases"] == [{"name": algo, "algo": algo, "steps": steps}]
    assert h["batch_size"] == h["config"]["batch_size"] == batch
    assert h["examples_per_epoch"] == 10
    assert records[1]["type"] == "vocab"
    assert records[2] == {"type": "phase", "name": algo, "algo": algo, "step": 0, "examples": 0}
    ev = evals(records)
    assert [e["step"] for e in ev] == eval_steps
    assert [e["examples"] for e in ev] == [s * batch for s in eval_steps]
    assert [e["epoch"] for e in ev] == pytest.approx([s * batch / 10 for s in eval_steps])
    steps_rec = [r for r in records if r["type"] == "step"]
    assert [r["step"] for r in steps_rec] == list(range(1, steps + 1))
    for r in steps_rec:
        assert "loss" in r["metrics"] and "learning_rate" in r["metrics"] and "epoch" not in r["metrics"]
    assert records[-1] == {"type": "end", "reason": "completed", "step": steps, "message": None}
    for e in ev:
        assert len(e["tokens"]) == len(h["probes"])
        for f, vs in e["logps"].items():
            assert len(vs) == len(h["probes"]), f


def test_dpo_trainer_run(dpo_run, tmp_path):
    records = read_jsonl(dpo_run)
    check_common(records, algo="dpo", batch=2, steps=4, eval_steps=[0, 2, 3, 4])
    h = records[0]
    assert h["config"]["beta"] == pytest.approx(0.1)
    assert h["recorder"]["trainer_args"] == "DPOConfig"
    s = inspect_json(dpo_run)
    assert s["evaluations"] == 4 and s["steps"] == 4 and s["probes"] == 4
    metrics = set().union(*(r["metrics"] for r in records if r["type"] == "step"))
    assert {"loss", "rewards/chosen", "rewards/margins", "logps/chosen", "logps/rejected"} <= metrics
    ev = evals(records)
    # the transfer matrix at t = 0 and at the end (its interval, 4 x 3 examples, never passes)
    assert ["transfer" in e for e in ev] == [True, False, False, True]
    # the app's store reads it: the plot and the CSVs export (4 evaluations x 6 families x 4 probes)
    run_ldviz("export", dpo_run, "--csv", tmp_path / "x.csv", "--png", tmp_path / "x.png")
    assert len((tmp_path / "x.csv").read_text().splitlines()) == 1 + 4 * 6 * 4
    assert len((tmp_path / "x.metrics.csv").read_text().splitlines()) == 1 + 4
    assert (tmp_path / "x.png").stat().st_size > 0
    # DPO widens the margin between chosen and rejected
    margin = [mean([c - r for c, r in zip(e["logps"]["chosen"], e["logps"]["rejected"])]) for e in ev]
    assert margin[-1] > margin[0]


def test_trainer_sft_run(model_dir, probes4, tmp_path):
    out = tmp_path / "sft.jsonl"
    run(trainer="sft", model_dir=str(model_dir), data=str(PREFS), probes=str(probes4), out=str(out),
        output_dir=str(tmp_path / "t"), per_device=2, steps=5, every=4)
    records = read_jsonl(out)
    # 2 examples per step, every 4: steps 2 and 4, and the last step 5
    check_common(records, algo="sft", batch=2, steps=5, eval_steps=[0, 2, 4, 5])
    assert records[0]["recorder"]["trainer_args"] == "TrainingArguments"
    s = inspect_json(out)
    assert s["evaluations"] == 4 and s["steps"] == 5
    ev = evals(records)
    assert mean(ev[-1]["logps"]["chosen"]) > mean(ev[0]["logps"]["chosen"])  # SFT raises chosen


def test_trl_sft_trainer_with_gradient_accumulation(model_dir, probes4, tmp_path):
    out = tmp_path / "trl_sft.jsonl"
    run(trainer="trl-sft", model_dir=str(model_dir), data=str(PREFS), probes=str(probes4), out=str(out),
        output_dir=str(tmp_path / "t"), per_device=1, grad_accum=2, steps=3, every=2)
    records = read_jsonl(out)
    # global batch 1 x 2 accumulation steps: every step is an evaluation
    check_common(records, algo="sft", batch=2, steps=3, eval_steps=[0, 1, 2, 3])
    assert records[0]["recorder"]["trainer_args"] == "SFTConfig"
    assert inspect_json(out)["evaluations"] == 4


def test_existing_run_file_is_refused(probes4, tmp_path):
    from ldviz_record import LdvizCallback

    out = tmp_path / "x.jsonl"
    out.write_text("{}\n")
    with pytest.raises(FileExistsError):
        LdvizCallback(probes=str(probes4), out=str(out))
    LdvizCallback(probes=str(probes4), out=str(out), overwrite=True)
