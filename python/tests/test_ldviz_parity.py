"""(a) The recorder's t = 0 evaluation equals ldviz's own t = 0 evaluation of the same model
folder and probes: summed log-probs of every family within 1e-4 relative, the same chosen and
rejected token ids, per-token traces, y*, the transfer matrix and token texts."""

from __future__ import annotations

import pytest

from conftest import PREFS, read_jsonl, run_ldviz


@pytest.fixture(scope="module")
def ldviz_run(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ldviz") / "run.jsonl"
    run_ldviz("train", "--model", model_dir, "--data", PREFS, "--probes", 4, "--algo", "sft", "--steps", 1,
              "--out", out, "--quiet")
    return read_jsonl(out)


def first_eval(records):
    return next(r for r in records if r["type"] == "eval")


def vocab(records):
    return {i: t for r in records if r["type"] == "vocab" for i, t in r["tokens"]}


def test_t0_logps_equal_ldviz(ldviz_run, dpo_run):
    ours = read_jsonl(dpo_run)
    theirs_h, ours_h = ldviz_run[0], ours[0]
    assert ours_h["families"] == theirs_h["families"]
    a, b = first_eval(ldviz_run), first_eval(ours)
    assert a["step"] == b["step"] == 0 and b["examples"] == 0
    assert set(a["logps"]) == set(b["logps"])
    for fam, want in a["logps"].items():
        got = b["logps"][fam]
        assert len(got) == len(want) == 4
        for i, (x, y) in enumerate(zip(got, want)):
            assert x == pytest.approx(y, rel=1e-4), (fam, i)


def test_t0_tokens_traces_and_transfer_equal_ldviz(ldviz_run, dpo_run):
    ours = read_jsonl(dpo_run)
    for pt, po in zip(ldviz_run[0]["probes"], ours[0]["probes"]):
        assert po["index"] == pt["index"] and po["prompt"] == pt["prompt"]
        assert po["responses"] == pt["responses"]
        assert po["tokens"] == pt["tokens"]  # chosen and rejected ids with EOS
    a, b = first_eval(ldviz_run), first_eval(ours)
    for ta, tb in zip(a["tokens"], b["tokens"]):
        for fam in ("chosen", "rejected"):
            assert tb[fam]["logp"] == pytest.approx(ta[fam]["logp"], abs=1e-4)
            assert tb[fam]["entropy"] == pytest.approx(ta[fam]["entropy"], abs=1e-4)
            assert len(tb[fam]["top"]) == len(ta[fam]["top"])
            for pa, pb in zip(ta[fam]["top"], tb[fam]["top"]):
                assert [i for i, _ in pb] == [i for i, _ in pa]
                assert [v for _, v in pb] == pytest.approx([v for _, v in pa], abs=1e-4)
        assert tb["argmax"]["ids"] == ta["argmax"]["ids"]
        assert tb["argmax"]["logp"] == pytest.approx(ta["argmax"]["logp"], abs=1e-4)
    assert len(b["transfer"]) == len(a["transfer"]) == 4
    for ra, rb in zip(a["transfer"], b["transfer"]):
        assert rb == pytest.approx(ra, rel=1e-4)
    # every token id both files name has the same text
    va, vb = vocab(ldviz_run), vocab(ours)
    ids = set(va) & set(vb)
    assert ids and all(va[i] == vb[i] for i in ids)
    # and every id an evaluation shows has a text in the recorder's file
    for t in b["tokens"]:
        shown = set(t["argmax"]["ids"]) | {i for f in ("chosen", "rejected") for pos in t[f]["top"] for i, _ in pos}
        assert shown <= set(vb)


def test_model_info_equals_ldviz(ldviz_run, dpo_run):
    mt, mo = ldviz_run[0]["model"], read_jsonl(dpo_run)[0]["model"]
    for k in ("arch", "n_params", "vocab_size", "eos_id"):
        assert mo[k] == mt[k], k
    assert mo["fingerprint"]


def test_every_family_and_truncation_equal_ldviz(model_dir, tmp_path):
    """The authors' probe schema with all 13 families, prompts and responses cut by
    --max-prompt-len 6 --max-len 14, scored by the Recorder directly (5 rows per forward)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from conftest import FIXTURES, make_probes
    from ldviz_record import Recorder, read_probes

    data = FIXTURES / "probes_all.jsonl"
    flags = ["--max-prompt-len", 6, "--max-len", 14]
    probes = make_probes(model_dir, data, "all", tmp_path / "p.jsonl", tmp_path, extra=flags)
    out = tmp_path / "run.jsonl"
    run_ldviz("train", "--model", model_dir, "--data", data, "--probes", "all", "--algo", "sft", "--steps", 1,
              "--out", out, "--quiet", *flags)
    theirs = read_jsonl(out)
    pf = read_probes(str(probes))
    assert (pf.max_prompt, pf.max_total) == (6, 14)
    assert len(pf.families) == 13
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    rec = Recorder(pf, tok, 0, top_k=5, transfer_prompts=8, rows_per_forward=5)
    for i, p in enumerate(theirs[0]["probes"]):
        assert rec.probe_tokens(i) == p["tokens"]
        assert all(len(t) <= 14 - 6 for t in p["tokens"].values())
    model.train()  # as a trainer leaves it: scored in eval mode, train mode restored after
    ours = rec.evaluate(model, "cpu", step=0, examples=0, epoch=0.0, phase="sft", transfer=True)[-1]
    want = first_eval(theirs)
    assert list(ours["logps"]) == theirs[0]["families"]
    for fam, vals in want["logps"].items():
        assert ours["logps"][fam] == pytest.approx(vals, rel=1e-4), fam
    for ra, rb in zip(want["transfer"], ours["transfer"]):
        assert rb == pytest.approx(ra, rel=1e-4)
    assert model.training and all(m.training for m in model.modules())
