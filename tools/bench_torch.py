#!/usr/bin/env python3
"""PyTorch reference for ldviz's training-step benchmark (CPU, float32).

Model: transformers LlamaForCausalLM, vocab 8192, hidden 256, 8 layers, 4 heads (4 kv heads),
intermediate 1024, untied embeddings, random init (std 0.02). Batch 8 x 64 random token ids,
labels = inputs (standard causal-LM loss), AdamW lr 1e-4.
3 warm-up steps, then 10 timed steps (zero_grad + forward, backward, optimizer.step), timed
with time.perf_counter. Prints one JSON line with medians.

    python3 tools/bench_torch.py [--threads N]      (default: all cores)
"""
import argparse
import json
import os
import statistics
import time

import torch
import transformers

BATCH, SEQ, WARMUP, TIMED = 8, 64, 3, 10


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(0)

    cfg = transformers.LlamaConfig(
        vocab_size=8192, hidden_size=256, num_hidden_layers=8, num_attention_heads=4,
        num_key_value_heads=4, intermediate_size=1024, tie_word_embeddings=False,
        max_position_embeddings=SEQ, initializer_range=0.02, dtype="float32")
    model = transformers.LlamaForCausalLM(cfg).to(torch.float32)
    with torch.no_grad():  # explicit std-0.02 init, independent of transformers' init rules
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
            else:
                p.fill_(1.0)  # RMSNorm weights
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(0, cfg.vocab_size, (BATCH, SEQ))

    fwd, bwd, optm, tot = [], [], [], []
    for i in range(WARMUP + TIMED):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, labels=ids).loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        if i >= WARMUP:
            fwd.append((t1 - t0) * 1e3)
            bwd.append((t2 - t1) * 1e3)
            optm.append((t3 - t2) * 1e3)
            tot.append((t3 - t0) * 1e3)
    step_ms = statistics.median(tot)
    print(json.dumps({
        "step_ms": round(step_ms, 2),
        "tokens_per_s": round(BATCH * SEQ * 1000.0 / step_ms, 1),
        "forward_ms": round(statistics.median(fwd), 2),
        "backward_ms": round(statistics.median(bwd), 2),
        "optimizer_ms": round(statistics.median(optm), 2),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "params": sum(p.numel() for p in model.parameters()),
        "loss_last": round(loss.item(), 4),
        "attn_implementation": model.config._attn_implementation,
    }))


if __name__ == "__main__":
    main()
