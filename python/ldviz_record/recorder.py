"""Probe evaluation as ldviz does it, sharded over the processes of a distributed job, and the
run-file records it gives (header, vocab, phase, eval, step, end).

`Recorder` knows nothing of the Trainer: `LdvizCallback` (callback.py) drives it; a custom
training loop can too (see docs/recorder.md)."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import math
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from . import jsonio
from .probes import ProbeFile, default_run_header
from .scoring import argmax_sum, encode, score_rows, text_tokenizer

# ldviz's Algo keys (src/schema/config.rs); a run file with another algo does not load.
ALGOS = ("sft", "dpo", "ipo", "hinge", "robust", "cdpo", "simpo", "extended", "sft_then_dpo", "sft_both")


def dist_rank_world() -> Tuple[int, int]:
    """(rank, world size) of torch.distributed, (0, 1) when it is not initialized."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_gather(obj: Any, world: int) -> List[Any]:
    """Every process's `obj`, in rank order (torch.distributed.all_gather_object)."""
    if world <= 1:
        return [obj]
    import torch.distributed as dist

    out: List[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def shard(n: int, rank: int, world: int) -> List[Tuple[int, bool]]:
    """The items rank `rank` scores: r, r + W, ..., padded with repeats of one of them (flag
    False: scored, result dropped) so that every rank runs the same number of forward passes
    (DeepSpeed ZeRO-3 and FSDP need every rank in every forward)."""
    if n <= 0:
        return []
    mine = list(range(rank, n, world))
    per = -(-n // world)
    dummy = mine[0] if mine else 0
    return [(i, True) for i in mine] + [(dummy, False)] * (per - len(mine))


def _autocast_holder(model):
    """The module accelerate patched for mixed precision: `model` itself, or the module a
    wrapper (FSDP, DDP) holds as `.module` (accelerate patches before wrapping)."""
    m = model
    for _ in range(4):
        if not isinstance(m, torch.nn.Module):
            return None
        if "_original_forward" in m.__dict__:
            return m
        m = getattr(m, "module", None)
    return None


@contextlib.contextmanager
def without_autocast(model, device):
    """The model's own forward for the duration: accelerate's mixed precision wraps
    `model.forward` in an autocast (TRL's configs default to bf16=True, on the CPU too) and
    keeps the original as `model._original_forward`; it is swapped back in (and restored
    after), and any autocast around the call is disabled. Weights stored in float32 are then
    scored in float32, as ldviz scores them; bf16 weights stay bf16 (log-softmax in float32)."""
    holder = _autocast_holder(model)
    orig = holder.__dict__.get("_original_forward") if holder is not None else None
    patched = holder.__dict__.get("forward") if holder is not None else None
    if orig is not None:
        holder.forward = orig
    try:
        dev = getattr(device, "type", str(device).split(":")[0])
        try:
            ctx = torch.autocast(device_type=dev, enabled=False)
        except Exception:
            ctx = contextlib.nullcontext()
        with ctx:
            yield
    finally:
        if orig is not None:
            if patched is not None:
                holder.forward = patched
            else:
                del holder.forward


def token_text(tok, i: int) -> str:
    """Readable text of one token id: decoded (so byte-level "Ġ" reads as a space), else its
    vocabulary entry, else "<id>" (ldviz's `Tok::token_text`)."""
    try:
        s = tok.decode([int(i)], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    except Exception:
        s = ""
    if isinstance(s, str) and s:
        return s
    try:
        t = tok.convert_ids_to_tokens(int(i))
    except Exception:
        t = None
    return t if isinstance(t, str) and t else f"<{int(i)}>"


def resolve_eos_id(model, tokenizer) -> int:
    """The EOS id ldviz appends (src/model/tokenizer.rs): config.json's eos_token_id (an int
    or the first of a list), else the tokenizer's eos token, else a token named
    <|endoftext|>, </s>, <eos> or <|im_end|>."""
    cfg = getattr(model, "config", None)
    cands = []
    if cfg is not None:
        cands.append(getattr(cfg, "eos_token_id", None))
        try:
            cands.append(getattr(cfg.get_text_config(), "eos_token_id", None))
        except Exception:
            pass
    for v in cands:
        if isinstance(v, (list, tuple)) and v:
            v = v[0]
        if isinstance(v, int) and v >= 0:
            return v
    v = getattr(tokenizer, "eos_token_id", None)
    if isinstance(v, int) and v >= 0:
        return v
    vocab = {}
    try:
        vocab = tokenizer.get_vocab()
    except Exception:
        pass
    for name in ("<|endoftext|>", "</s>", "<eos>", "<|im_end|>"):
        if name in vocab:
            return int(vocab[name])
    raise ValueError(
        "cannot tell the EOS token: the model config has no eos_token_id and the tokenizer has no eos token, "
        "<|endoftext|>, </s> or <eos>; pass eos_id= to LdvizCallback"
    )


def model_info(model, eos_id: int) -> dict:
    """ModelInfo: path, arch (config.model_type), a fingerprint (sha256 of the config and of
    every parameter's name, shape and dtype: stable for a model, cheap, and the same under
    ZeRO-3 partitioning), parameter count, vocabulary size and EOS id."""
    cfg = getattr(model, "config", None)
    path = str(getattr(model, "name_or_path", "") or getattr(cfg, "_name_or_path", "") or "")
    arch = str(getattr(cfg, "model_type", "") or "")
    h = hashlib.sha256()
    try:
        cfg_dict = cfg.to_dict() if cfg is not None else {}
    except Exception:
        cfg_dict = {}
    for k in ("_name_or_path", "transformers_version", "_commit_hash"):
        cfg_dict.pop(k, None)
    h.update(json.dumps(cfg_dict, sort_keys=True, default=str).encode())
    n_params = 0
    for name, p in model.named_parameters():
        shape = tuple(getattr(p, "ds_shape", None) or p.shape)
        numel = int(getattr(p, "ds_numel", 0) or p.numel())
        n_params += numel
        h.update(f"{name}:{shape}:{p.dtype};".encode())
    vocab = getattr(cfg, "vocab_size", None)
    if not isinstance(vocab, int):
        try:
            vocab = cfg.get_text_config().vocab_size
        except Exception:
            vocab = None
    if not isinstance(vocab, int):
        try:
            vocab = int(model.get_output_embeddings().weight.shape[0])
        except Exception:
            vocab = 0
    return {
        "path": path,
        "arch": arch,
        "fingerprint": h.hexdigest()[:16],
        "n_params": n_params,
        "vocab_size": int(vocab),
        "eos_id": int(eos_id),
    }


class Recorder:
    """Tokenizes a probe file once and scores it at the model's current weights.

    `evaluate` must be called on every process of a distributed job (each scores its shard);
    the assembled records come back on rank 0 only."""

    def __init__(
        self,
        probe_file: ProbeFile,
        tokenizer,
        eos_id: int,
        *,
        top_k: int = 5,
        transfer_prompts: int = 16,
        rows_per_forward: int = 8,
    ):
        self.pf = probe_file
        self.tok = text_tokenizer(tokenizer)
        self.eos_id = int(eos_id)
        self.top_k = int(top_k)
        self.rows_per_forward = max(1, int(rows_per_forward))
        self.families = list(probe_file.families)
        self.scored = [f for f in self.families if f != "argmax"]
        lim = (probe_file.max_prompt, probe_file.max_total)
        # per probe: prompt ids, response ids per scored family (EOS appended)
        self.seqs: List[Tuple[List[int], List[List[int]]]] = []
        for p in probe_file.probes:
            enc = [encode(self.tok, p.prompt, p.responses[f], self.eos_id, *lim) for f in self.scored]
            self.seqs.append((enc[0][0], [r for _, r in enc]))
        self.trace_rows: Dict[int, bool] = {self.scored.index("chosen"): True}
        if "rejected" in self.scored:
            self.trace_rows[self.scored.index("rejected")] = False
        m = min(max(0, int(transfer_prompts)), len(probe_file.probes))
        self.transfer: List[Tuple[List[int], List[List[int]]]] = []
        for pi in probe_file.probes[:m]:
            enc = [encode(self.tok, pi.prompt, pj.responses["chosen"], self.eos_id, *lim) for pj in probe_file.probes[:m]]
            self.transfer.append((enc[0][0], [r for _, r in enc]))
        self.seen: set = set()
        self._state: dict = {}

    # --- what the header records -------------------------------------------------------

    def probe_tokens(self, i: int) -> Dict[str, List[int]]:
        _, rows = self.seqs[i]
        return {f: rows[k] for k, f in enumerate(self.scored) if f in ("chosen", "rejected")}

    def header(self, *, model: dict, config: dict, phases: List[dict], batch_size: int,
               examples_per_epoch: int, extra: Optional[dict] = None) -> dict:
        """The run file's header record: the probe file's run header with the model, probe
        tokens, phases and training configuration filled in."""
        h = copy.deepcopy(self.pf.run_header) if self.pf.run_header else default_run_header(self.pf)
        fallback = default_run_header(self.pf)
        for k, v in fallback.items():
            h.setdefault(k, v)
        cfg = h.get("config") or {}
        for k, v in fallback["config"].items():
            cfg.setdefault(k, v)
        cfg.update(config)
        h["type"] = "header"
        h["format"] = "ldviz-run"
        h["version"] = 1
        h["created_unix"] = int(time.time())
        h["config"] = cfg
        h["model"] = model
        h["families"] = list(self.families)
        h["probes"] = [
            {"index": p.index, "prompt": p.prompt, "responses": dict(p.responses), "tokens": self.probe_tokens(i)}
            for i, p in enumerate(self.pf.probes)
        ]
        h["phases"] = phases
        h["batch_size"] = int(batch_size)
        h["examples_per_epoch"] = int(examples_per_epoch)
        if extra:
            h["recorder"] = extra
        # the type tag first, as ldviz writes it
        return {"type": "header", **{k: v for k, v in h.items() if k != "type"}}

    def vocab_record(self, ids) -> Optional[dict]:
        """A vocab record for the ids not seen before (None when there are none)."""
        new = sorted({int(i) for i in ids} - self.seen)
        if not new:
            return None
        self.seen.update(new)
        return {"type": "vocab", "tokens": [[i, token_text(self.tok, i)] for i in new]}

    def header_vocab(self) -> Optional[dict]:
        ids = [t for i in range(len(self.seqs)) for r in self.probe_tokens(i).values() for t in r]
        return self.vocab_record(ids)

    # --- evaluation ----------------------------------------------------------------------

    @torch.no_grad()
    def _score_shard(self, model, device, rank: int, world: int, transfer: bool) -> dict:
        out: Dict[str, dict] = {"probes": {}, "transfer": {}}
        kw = dict(pad_id=self.eos_id, device=device, rows_per_forward=self.rows_per_forward,
                  top_k=self.top_k, state=self._state)
        for i, keep in shard(len(self.seqs), rank, world):
            prompt, rows = self.seqs[i]
            sums, traces = score_rows(model, prompt, rows, trace_rows=self.trace_rows, **kw)
            if keep:
                out["probes"][i] = (sums, {k: vars(t) for k, t in traces.items()})
        if transfer:
            for i, keep in shard(len(self.transfer), rank, world):
                prompt, rows = self.transfer[i]
                sums, _ = score_rows(model, prompt, rows, trace_rows={}, **kw)
                if keep:
                    out["transfer"][i] = sums
        return out

    def evaluate(self, model, device, *, step: int, examples: int, epoch: float, phase: str,
                 transfer: bool, rank: int = 0, world: int = 1, mixed_precision: bool = False) -> Optional[List[dict]]:
        """Scores every probe (this process's shard; all processes must call it), in eval mode
        without a graph, and returns on rank 0 the records to append: a vocab record for
        token ids first seen (when there are any) and the eval record. Other ranks get None.
        The trainer's autocast is bypassed unless `mixed_precision` (see `without_autocast`)."""
        was_training = bool(getattr(model, "training", False))
        model.eval()
        try:
            ctx = contextlib.nullcontext() if mixed_precision else without_autocast(model, device)
            with ctx:
                local = self._score_shard(model, device, rank, world, transfer and bool(self.transfer))
        finally:
            if was_training:
                model.train()
        parts = all_gather(local, world)
        if rank != 0:
            return None
        probes: Dict[int, Any] = {}
        rows: Dict[int, Any] = {}
        for part in parts:
            probes.update(part["probes"])
            rows.update(part["transfer"])
        n = len(self.seqs)
        missing = [i for i in range(n) if i not in probes]
        if missing:
            raise RuntimeError(f"probes {missing} were not scored by any process")
        ci = self.scored.index("chosen")
        ri = self.scored.index("rejected") if "rejected" in self.scored else None
        logps: Dict[str, List[Any]] = {f: [] for f in self.families}
        tokens: List[dict] = []
        new_ids: List[int] = []

        def trace(t: Optional[dict]) -> dict:
            if t is None:
                return {"logp": [], "entropy": [], "top": []}
            return {
                "logp": jsonio.f32s(t["logp"]),
                "entropy": jsonio.f32s(t["entropy"]),
                "top": [[[int(i), jsonio.f32(v)] for i, v in pos] for pos in t["top"]],
            }

        for i in range(n):
            sums, traces = probes[i]
            ch = traces[ci]
            for f in self.families:
                if f == "argmax":
                    logps[f].append(jsonio.num(argmax_sum(ch["greedy_logp"])))
                else:
                    logps[f].append(jsonio.num(sums[self.scored.index(f)]))
            rj = traces.get(ri) if ri is not None else None
            tokens.append({
                "chosen": trace(ch),
                "rejected": trace(rj),
                "argmax": {"ids": [int(x) for x in ch["greedy_ids"]], "logp": jsonio.f32s(ch["greedy_logp"])},
            })
            new_ids.extend(ch["greedy_ids"])
            for t in (ch, rj):
                if t is not None:
                    new_ids.extend(i for pos in t["top"] for i, _ in pos)
        record = {
            "type": "eval",
            "step": int(step),
            "examples": int(examples),
            "epoch": float(epoch),
            "phase": phase,
            "logps": logps,
            "tokens": tokens,
        }
        if rows:
            m = len(self.transfer)
            record["transfer"] = [jsonio.nums(rows[i]) for i in range(m)]
        out = []
        v = self.vocab_record(new_ids)
        if v is not None:
            out.append(v)
        out.append(record)
        return out


def step_record(*, step: int, examples: int, epoch: float, phase: str, logs: dict, wall_ms: float) -> dict:
    """A step record from a Trainer `on_log` dict: every numeric value under its own name
    (TRL's loss, rewards/chosen, logps/chosen, grad_norm, learning_rate, ...), epoch and step
    excluded (they are fields of the record)."""
    metrics = {}
    for k, v in logs.items():
        if k in ("epoch", "step") or isinstance(v, bool):
            continue
        if isinstance(v, torch.Tensor) and v.numel() == 1:
            v = v.item()
        if isinstance(v, (int, float)):
            metrics[str(k)] = jsonio.num(float(v))
    return {
        "type": "step",
        "step": int(step),
        "examples": int(examples),
        "epoch": float(epoch),
        "phase": phase,
        "batch": [],
        "metrics": metrics,
        "wall_ms": float(wall_ms) if math.isfinite(wall_ms) else 0.0,
    }
