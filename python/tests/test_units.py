"""The pieces on their own: encoding rules, scoring against a plain forward, sharding, the JSON
encoding of non-finite numbers, probe-file checks, the autocast bypass."""

from __future__ import annotations

import json
import struct
from types import MethodType

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from ldviz_record import ProbeFileError, Recorder, encode, read_probes
from ldviz_record import jsonio
from ldviz_record.recorder import shard, token_text, without_autocast
from ldviz_record.scoring import score_rows


@pytest.fixture(scope="module")
def tok(model_dir):
    return AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def model(model_dir):
    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    m.eval()
    return m


def test_encode_follows_ldviz_rules(tok):
    p = tok("What is the capital of France? Answer:", add_special_tokens=False)["input_ids"]
    r = tok(" Paris is the capital of France.", add_special_tokens=False)["input_ids"]
    # no truncation: EOS appended
    got = encode(tok, "What is the capital of France? Answer:", " Paris is the capital of France.", 0, 256, 512)
    assert got == (p, r + [0])
    # a long prompt keeps its LAST max_prompt tokens; the response fills the rest up to max_total
    gp, gr = encode(tok, "What is the capital of France? Answer:", " Paris is the capital of France.", 0, 5, 9)
    assert gp == p[-5:] and gr == (r + [0])[:4]
    # at least one response token even when the prompt fills max_total
    gp, gr = encode(tok, "What is the capital of France? Answer:", " Paris", 0, 8, 9)
    assert len(gp) == 8 and len(gr) == 1
    with pytest.raises(ValueError, match="zero tokens"):
        encode(tok, "", " Paris", 0, 256, 512)


def naive_logps(model, prompt, resp):
    ids = torch.tensor([list(prompt) + list(resp)])
    with torch.no_grad():
        lp = torch.log_softmax(model(ids).logits[0].float(), -1)
    rows = lp[len(prompt) - 1 : len(prompt) - 1 + len(resp)]
    return rows, rows.gather(-1, torch.tensor(resp)[:, None]).squeeze(-1)


def test_score_rows_match_one_forward_per_sequence(model, tok):
    prompt, _ = encode(tok, "How many days are in a week?", "x", 0, 256, 512)
    texts = [" A week has seven days.", " There are ten days in a week.", " seven", " Bees make honey and milk."]
    rows = [encode(tok, "How many days are in a week?", t, 0, 256, 512)[1] for t in texts]
    for rpf in (1, 3, 8):
        for keep in (True, False):
            sums, traces = score_rows(model, prompt, rows, pad_id=0, device="cpu", rows_per_forward=rpf,
                                      trace_rows={0: True, 1: False}, top_k=4, state={"logits_to_keep": keep})
            for r, s in zip(rows, sums):
                _, tl = naive_logps(model, prompt, r)
                assert s == pytest.approx(tl.double().sum().item(), rel=1e-6)
            full, tl = naive_logps(model, prompt, rows[0])
            t = traces[0]
            assert t.logp == pytest.approx(tl.tolist(), abs=1e-5)
            ent = -(full.exp() * full).sum(-1)
            assert t.entropy == pytest.approx(ent.tolist(), abs=1e-4)
            assert t.greedy_ids == full.argmax(-1).tolist()
            assert t.greedy_logp == pytest.approx(full.max(-1).values.tolist(), abs=1e-5)
            for pos, top in enumerate(t.top):
                assert len(top) == 4
                vals = [v for _, v in top]
                assert vals == sorted(vals, reverse=True)
                assert top[0][0] == t.greedy_ids[pos]
                for i, v in top:
                    assert v == pytest.approx(full[pos, i].item(), abs=1e-5)
            assert traces[1].greedy_ids == [] and 2 not in traces


def test_shards_cover_every_item_once_with_equal_counts():
    for n in range(0, 9):
        for world in range(1, 5):
            shards = [shard(n, r, world) for r in range(world)]
            assert len({len(s) for s in shards}) <= 1, (n, world)
            kept = sorted(i for s in shards for i, keep in s if keep)
            assert kept == list(range(n)), (n, world)
    assert shard(5, 1, 2) == [(1, True), (3, True), (1, False)]
    assert shard(1, 2, 3) == [(0, False)]


def test_nonfinite_numbers_are_encoded_as_ldviz_reads_them():
    assert jsonio.num(float("nan")) is None
    assert jsonio.num(float("inf")) == "Infinity"
    assert jsonio.num(float("-inf")) == "-Infinity"
    assert jsonio.f32(float("-inf")) == "-Infinity"
    line = jsonio.dumps({"a": jsonio.nums([1.5, float("nan"), float("inf")])})
    assert line == '{"a":[1.5,null,"Infinity"]}'
    with pytest.raises(ValueError):
        jsonio.dumps({"a": float("nan")})
    # float32 values survive the 9-digit form exactly
    for x in (-1.2345678806304932, 3.4e38, 1e-45, -0.1):
        x32 = struct.unpack("f", struct.pack("f", x))[0]
        back = struct.unpack("f", struct.pack("f", jsonio.f32(x32)))[0]
        assert back == x32


def test_writer_refuses_an_existing_file_and_flushes_each_record(tmp_path):
    p = tmp_path / "run.jsonl"
    w = jsonio.RunWriter(str(p))
    w.write({"type": "state", "paused": False, "step": 0})
    assert p.read_text().endswith("\n")  # on disk before close
    w.close()
    with pytest.raises(FileExistsError):
        jsonio.RunWriter(str(p))
    jsonio.RunWriter(str(p), overwrite=True).close()


def write_probe_file(path, header_extra=None, probes=None):
    header = {"type": "probes_header", "format": "ldviz-probes", "version": 1,
              "lengths": {"max_prompt": 256, "max_total": 512}, "families": ["chosen", "rejected", "argmax"]}
    header.update(header_extra or {})
    probes = probes if probes is not None else [
        {"type": "probe", "index": 0, "prompt": "How many days are in a week?",
         "responses": {"chosen": " Seven.", "rejected": " Ten."}}]
    with open(path, "w") as f:
        f.write(json.dumps(header) + "\n")
        for p in probes:
            f.write(json.dumps(p) + "\n")


def test_probe_file_errors_name_the_file_and_line(tmp_path):
    p = tmp_path / "p.jsonl"
    write_probe_file(p)
    pf = read_probes(str(p))
    assert pf.families == ["chosen", "rejected", "argmax"] and len(pf.probes) == 1
    write_probe_file(p, {"version": 2})
    with pytest.raises(ProbeFileError, match="newer"):
        read_probes(str(p))
    write_probe_file(p, probes=[{"type": "probe", "index": 3, "prompt": "x", "responses": {"chosen": " a"}}])
    with pytest.raises(ProbeFileError, match=r"p.jsonl:2: probe 3 has no \"rejected\""):
        read_probes(str(p))
    write_probe_file(p, {"families": ["chosen", "nonsense"]})
    with pytest.raises(ProbeFileError, match="unknown families"):
        read_probes(str(p))
    p.write_text('{"type":"header","format":"ldviz-run"}\n')
    with pytest.raises(ProbeFileError, match="probes_header"):
        read_probes(str(p))


def test_a_probe_file_without_run_header_gives_a_complete_header(tmp_path, tok, model):
    p = tmp_path / "p.jsonl"
    write_probe_file(p)
    rec = Recorder(read_probes(str(p)), tok, 0, top_k=3, transfer_prompts=1)
    h = rec.header(model={"path": "m", "arch": "llama", "fingerprint": "x", "n_params": 1, "vocab_size": 320,
                          "eos_id": 0}, config={"algo": "sft"}, phases=[{"name": "sft", "algo": "sft", "steps": 1}],
                   batch_size=1, examples_per_epoch=1)
    for k in ("format", "version", "ldviz_version", "created_unix", "config", "conventions", "model", "data",
              "families", "probes", "phases", "batch_size", "examples_per_epoch"):
        assert k in h, k
    assert h["probes"][0]["tokens"]["chosen"][-1] == 0
    recs = rec.evaluate(model, "cpu", step=0, examples=0, epoch=0.0, phase="sft", transfer=True)
    ev = recs[-1]
    assert ev["transfer"] and len(ev["transfer"]) == 1
    assert ev["logps"]["argmax"][0] == pytest.approx(sum(ev["tokens"][0]["argmax"]["logp"]), rel=1e-6)


def test_autocast_wrapper_is_bypassed_and_restored(model, tok):
    prompt, resp = encode(tok, "How many days are in a week?", " A week has seven days.", 0, 256, 512)
    want, _ = score_rows(model, prompt, [resp], pad_id=0, device="cpu", rows_per_forward=1, trace_rows={},
                         top_k=1, state={})
    # what accelerate does under mixed precision: forward wrapped in a bf16 autocast
    orig = model.forward
    model._original_forward = orig

    def patched(self, *a, **k):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return orig(*a, **k)

    model.forward = MethodType(patched, model)
    try:
        low, _ = score_rows(model, prompt, [resp], pad_id=0, device="cpu", rows_per_forward=1, trace_rows={},
                            top_k=1, state={})
        assert abs(low[0] - want[0]) > 1e-4  # the wrapper does lower the precision
        with without_autocast(model, "cpu"):
            got, _ = score_rows(model, prompt, [resp], pad_id=0, device="cpu", rows_per_forward=1, trace_rows={},
                                top_k=1, state={})
        assert got[0] == want[0]
        assert model.forward.__func__ is patched  # restored

        class Wrapper(torch.nn.Module):  # a wrapper holding the patched model, as FSDP's does
            def __init__(self, module):
                super().__init__()
                self.module = module

            def forward(self, *a, **k):
                return self.module(*a, **k)

        w = Wrapper(model)
        with without_autocast(w, torch.device("cpu")):
            got, _ = score_rows(w, prompt, [resp], pad_id=0, device="cpu", rows_per_forward=1, trace_rows={},
                                top_k=1, state={})
        assert got[0] == want[0]
        assert model.forward.__func__ is patched
    finally:
        del model.forward
        del model._original_forward


def test_token_text(tok):
    assert token_text(tok, 0) == "<|endoftext|>"
    assert token_text(tok, 221) == " "
    assert token_text(tok, 299) == "rom"
    assert token_text(tok, 319) == "<319>"  # past the tokenizer's 300 ids (the model's vocabulary is 320)


def test_installed_distribution_matches_the_source():
    import importlib.metadata

    import ldviz_record

    assert importlib.metadata.version("ldviz-record") == ldviz_record.__version__
