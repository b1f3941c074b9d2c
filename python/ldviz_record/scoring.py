"""Scoring with ldviz's conventions (src/probe/logprob.rs):

- prompt and response tokenized separately without special tokens, concatenated;
- the EOS id appended to the response;
- a prompt longer than max_prompt keeps its LAST max_prompt tokens; the response is cut so
  that prompt + response <= max_total, keeping at least one response token;
- a sequence's log-prob is the SUM over its response positions (EOS included) of
  log pi(token | prefix), natural log: float32 log-softmax, float64 sums;
- y* (argmax) is read from the chosen sequence's logits: per position the most likely next
  token and its log-prob, summed;
- per-token traces of chosen and rejected: the token's log-prob, the entropy of the next-token
  distribution and the top-k (id, log-prob), most likely first.

All responses of one prompt are scored as one right-padded batch (or several of
`rows_per_forward` rows): they share the prompt, so every row's response starts at the same
position and only those positions go through the LM head (`logits_to_keep`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch


def text_tokenizer(processing_class):
    """The text tokenizer of a tokenizer or of a processor (which holds one as `.tokenizer`)."""
    inner = getattr(processing_class, "tokenizer", None)
    if inner is not None and not hasattr(processing_class, "convert_ids_to_tokens"):
        return inner
    return processing_class


def token_ids(tokenizer, text: str) -> List[int]:
    """Ids of `text` without special tokens (ldviz's `Tok::encode(text)`)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return [int(i) for i in ids]


def encode(
    tokenizer, prompt: str, response: str, eos_id: int, max_prompt: int, max_total: int
) -> Tuple[List[int], List[int]]:
    """(prompt ids, response ids with EOS) exactly as ldviz's `Seq::encode`."""
    p = token_ids(tokenizer, prompt)
    r = token_ids(tokenizer, response) + [int(eos_id)]
    if len(p) > max_prompt:
        p = p[len(p) - max_prompt :]
    room = max(max_total - len(p), 1)
    r = r[:room]
    if not p:
        raise ValueError(
            f"prompt {prompt[:40]!r} tokenized to zero tokens: there is nothing to condition the first response token on"
        )
    return p, r


@dataclass
class Trace:
    """Per-token details of one response (TokenTrace) and, for chosen, the greedy y*."""

    logp: List[float] = field(default_factory=list)
    entropy: List[float] = field(default_factory=list)
    top: List[List[Tuple[int, float]]] = field(default_factory=list)
    greedy_ids: List[int] = field(default_factory=list)
    greedy_logp: List[float] = field(default_factory=list)


def response_logits(model, prompt: Sequence[int], rows: Sequence[Sequence[int]], pad_id: int, device, state: dict):
    """Logits [B, Rmax, V] at the response positions of `rows` after `prompt`: row b, position m
    predicts rows[b][m]. The input is prompt + response without its last token, right-padded;
    the response positions are the last Rmax of the batch, which `logits_to_keep` selects (a
    model without it returns every position and they are sliced here)."""
    P = len(prompt)
    rmax = max(len(r) for r in rows)
    T = P + rmax - 1
    ids = torch.full((len(rows), T), int(pad_id), dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for b, r in enumerate(rows):
        seq = list(prompt) + list(r[:-1])
        ids[b, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[b, : len(seq)] = 1
    ids = ids.to(device)
    mask = mask.to(device)
    kwargs = dict(input_ids=ids, attention_mask=mask, use_cache=False)
    out = None
    if state.get("logits_to_keep", True):
        try:
            out = model(**kwargs, logits_to_keep=rmax)
        except TypeError as e:
            if "logits_to_keep" not in str(e):
                raise
            state["logits_to_keep"] = False
    if out is None:
        out = model(**kwargs)
    logits = out.logits if hasattr(out, "logits") else out[0]
    if logits.shape[1] == T:
        logits = logits[:, P - 1 : P - 1 + rmax]
    elif logits.shape[1] != rmax:
        raise RuntimeError(
            f"the model returned logits for {logits.shape[1]} positions, expected {T} or {rmax}"
        )
    return logits


def score_rows(
    model,
    prompt: Sequence[int],
    rows: Sequence[Sequence[int]],
    *,
    pad_id: int,
    device,
    rows_per_forward: int,
    trace_rows: Dict[int, bool],
    top_k: int,
    state: dict,
) -> Tuple[List[float], Dict[int, Trace]]:
    """Summed log-prob of every row after `prompt` and, for the rows in `trace_rows`, the
    per-token trace (with the greedy y* when the value is True). Forward passes: one per
    `rows_per_forward` rows, so every prompt with the same number of rows takes the same
    number of passes (distributed shards rely on it)."""
    sums: List[float] = []
    traces: Dict[int, Trace] = {}
    step = max(1, int(rows_per_forward))
    for start in range(0, len(rows), step):
        part = rows[start : start + step]
        logits = response_logits(model, prompt, part, pad_id, device, state)
        for b, r in enumerate(part):
            n = len(r)
            z = logits[b, :n].float()
            lse = torch.logsumexp(z, dim=-1)
            tgt = torch.tensor(list(r), dtype=torch.long, device=z.device)
            tok = z.gather(-1, tgt[:, None]).squeeze(-1) - lse
            sums.append(float(tok.double().sum().item()))
            row = start + b
            if row not in trace_rows:
                continue
            lp = z - lse[:, None]
            p = lp.exp()
            ent = -torch.where(p > 0, p * lp, torch.zeros_like(p)).double().sum(-1)
            kk = min(int(top_k), lp.shape[-1])
            tr = Trace(logp=tok.tolist(), entropy=ent.float().tolist())
            if kk > 0:
                tv, ti = lp.topk(kk, dim=-1)
                tr.top = [list(zip(i, v)) for i, v in zip(ti.tolist(), tv.tolist())]
            else:
                tr.top = [[] for _ in range(n)]
            if trace_rows[row]:
                gv, gi = lp.max(dim=-1)
                tr.greedy_ids = gi.tolist()
                tr.greedy_logp = gv.tolist()
            traces[row] = tr
        del logits
    return sums, traces


def argmax_sum(greedy_logp: Sequence[float]) -> float:
    """y*'s summed log-prob: its float32 per-position values summed in float64 (ldviz's
    `Greedy::sum`)."""
    return float(sum(float(x) for x in greedy_logp))
