#!/usr/bin/env python3
"""PyTorch reference for `ldviz bench --device cuda --preset pythia-410m [--dtype f32|bf16]`.

Model: transformers GPTNeoXForCausalLM of Pythia-410M's shape (hidden 1024, 24 layers, 16 heads,
intermediate 4096, vocab 50304, rotary_pct 0.25, parallel residual, untied), random init
(std 0.02, LayerNorm weights 1, biases 0), f32 weights. bf16 = torch.autocast(bfloat16) over f32
master weights, which is what ldviz does (bf16 compute, f32 masters and optimizer state).

- DPO step: 4 pairs x 512 tokens (prompt 256 shared by a pair, responses 256): reference
  log-probs (no grad), policy forward + backward of the DPO loss (beta 0.1) on summed response
  log-probs, AdamW (lr 1e-6).
- Probe evaluation: 32 prompts x 13 responses x 384 tokens (prompt 128, response 256), one
  padded batch of 13 rows per prompt, summed response log-probs, no grad.
Each the median of 5 after 2 warm-ups, with torch.cuda.synchronize() around every timing.
Prints one JSON line.

    python3 tools/bench_torch_gpu.py [--dtype f32|bf16] [--reps 5] [--preset pythia-410m|pythia-tiny]
"""
import argparse
import contextlib
import json
import statistics
import time

import torch
import torch.nn.functional as F
import transformers

PRESETS = {
    "pythia-410m": dict(hidden=1024, layers=24, heads=16, inter=4096, vocab=50304,
                        pairs=4, seq=512, prompts=32, responses=13, eval_seq=384),
    "pythia-tiny": dict(hidden=64, layers=2, heads=4, inter=256, vocab=512,
                        pairs=2, seq=64, prompts=2, responses=13, eval_seq=48),
}


def summed_logps(logits, ids, start):
    """Summed log-probs of ids[:, start:] given logits of the full rows (f32 reductions)."""
    lp = F.log_softmax(logits[:, start - 1:-1].float(), dim=-1)
    return lp.gather(-1, ids[:, start:].unsqueeze(-1)).squeeze(-1).sum(-1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--preset", choices=sorted(PRESETS), default="pythia-410m")
    args = ap.parse_args()
    p = PRESETS[args.preset]
    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(0)
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = False  # ldviz's f32 is true f32
    torch.backends.cudnn.allow_tf32 = False
    cfg = transformers.GPTNeoXConfig(
        vocab_size=p["vocab"], hidden_size=p["hidden"], num_hidden_layers=p["layers"],
        num_attention_heads=p["heads"], intermediate_size=p["inter"], rotary_pct=0.25,
        rotary_emb_base=10000, max_position_embeddings=2048, layer_norm_eps=1e-5,
        use_parallel_residual=True, tie_word_embeddings=False, hidden_act="gelu")
    model = transformers.GPTNeoXForCausalLM(cfg).to(dev, torch.float32)
    with torch.no_grad():
        for name, w in model.named_parameters():
            if name.endswith("bias"):
                w.zero_()
            elif "layernorm" in name or "layer_norm" in name:
                w.fill_(1.0)
            else:
                w.normal_(0.0, 0.02)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if args.dtype == "bf16"
           else contextlib.nullcontext())
    sync = torch.cuda.synchronize

    half = p["seq"] // 2
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(0, p["vocab"], (p["pairs"], half), generator=g)
    resp = torch.randint(0, p["vocab"], (2 * p["pairs"], p["seq"] - half), generator=g)
    ids = torch.cat([prompts.repeat(2, 1), resp], dim=1).to(dev)  # chosen rows, then rejected

    ref_t, fb_t, opt_t, tot = [], [], [], []
    for i in range(args.reps + 2):
        sync()
        t0 = time.perf_counter()
        with torch.no_grad(), amp:
            ref = summed_logps(model(input_ids=ids).logits, ids, half)
        sync()
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with amp:
            pol = summed_logps(model(input_ids=ids).logits, ids, half)
        n = p["pairs"]
        delta = (pol[:n] - ref[:n]) - (pol[n:] - ref[n:])
        loss = -F.logsigmoid(0.1 * delta).mean()
        loss.backward()
        sync()
        t2 = time.perf_counter()
        opt.step()
        sync()
        t3 = time.perf_counter()
        if i >= 2:
            ref_t.append((t1 - t0) * 1e3)
            fb_t.append((t2 - t1) * 1e3)
            opt_t.append((t3 - t2) * 1e3)
            tot.append((t3 - t0) * 1e3)

    ep = p["eval_seq"] // 3
    batches = []
    for _ in range(p["prompts"]):
        pr = torch.randint(0, p["vocab"], (1, ep), generator=g).repeat(p["responses"], 1)
        rs = torch.randint(0, p["vocab"], (p["responses"], p["eval_seq"] - ep), generator=g)
        batches.append(torch.cat([pr, rs], dim=1).to(dev))
    model.eval()
    ev_t = []
    for i in range(args.reps + 2):
        sync()
        t0 = time.perf_counter()
        out = []
        with torch.no_grad(), amp:
            for b in batches:
                out.append(summed_logps(model(input_ids=b).logits, b, ep))
        sync()
        if i >= 2:
            ev_t.append((time.perf_counter() - t0) * 1e3)

    print(json.dumps({
        "preset": args.preset,
        "dtype": args.dtype,
        "dpo_step_ms": round(statistics.median(tot), 2),
        "dpo_reference_ms": round(statistics.median(ref_t), 2),
        "dpo_forward_backward_ms": round(statistics.median(fb_t), 2),
        "dpo_optimizer_ms": round(statistics.median(opt_t), 2),
        "probe_eval_ms": round(statistics.median(ev_t), 2),
        "params": sum(w.numel() for w in model.parameters()),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0),
        "attn_implementation": model.config._attn_implementation,
    }))


if __name__ == "__main__":
    main()
