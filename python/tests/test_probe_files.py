"""`ldviz probes` files: what the recorder reads from them, and the stand-in the tests build
from an `ldviz train` header (for binaries without the command) gives the same probes."""

from __future__ import annotations

from conftest import PREFS, has_probes_command, run_ldviz, standin_probes
from ldviz_record import LdvizCallback, read_probes


def test_ldviz_probes_and_the_standin_agree(model_dir, tmp_path):
    assert has_probes_command(), "the ldviz binary has no `probes` command (set LDVIZ_PROBES_STANDIN=1 to test on the stand-in)"
    real = tmp_path / "real.jsonl"
    run_ldviz("probes", "--model", model_dir, "--data", PREFS, "--probes", 6, "--out", real)
    stand = standin_probes(model_dir, PREFS, 6, tmp_path / "standin.jsonl", tmp_path)
    a, b = read_probes(str(real)), read_probes(str(stand))
    assert a.families == b.families
    assert a.probes == b.probes
    assert (a.max_prompt, a.max_total, a.top_k, a.transfer_prompts) == (b.max_prompt, b.max_total, b.top_k, b.transfer_prompts)
    for key in ("format", "version", "config", "conventions", "data", "families"):
        assert key in a.run_header, key
    assert a.run_header["data"] == b.run_header["data"]


def test_callback_defaults_come_from_the_probe_file(model_dir, tmp_path):
    p = tmp_path / "p.jsonl"
    run_ldviz("probes", "--model", model_dir, "--data", PREFS, "--probes", 3, "--eval-every", 5, "--top-k", 2,
              "--transfer-prompts", 2, "--out", p)
    cb = LdvizCallback(probes=str(p), out=str(tmp_path / "r.jsonl"))
    assert (cb.every, cb.top_k, cb.transfer_prompts, cb.transfer_every) == (5, 2, 2, 20)
    cb = LdvizCallback(probes=str(p), every_examples=7, top_k=3, transfer_prompts=0, transfer_every=9,
                       out=str(tmp_path / "r.jsonl"))
    assert (cb.every, cb.top_k, cb.transfer_prompts, cb.transfer_every) == (7, 3, 0, 9)
