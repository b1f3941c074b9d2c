#!/usr/bin/env python3
"""PyTorch reference for ldviz's training-step benchmark (CPU, float32).

Model (--arch, as `ldviz bench --arch`): transformers LlamaForCausalLM (default), GPTNeoXForCausalLM
(Pythia-style: parallel residual, rotary on 25% of each head, exact GELU, untied head) or
GPT2LMHeadModel (tanh GELU, tied head), each vocab 8192, hidden 256, 8 layers, 4 heads,
intermediate 1024, random init (std 0.02 for matrices, norms at 1 and 0). Batch 8 x 64 random token ids,
labels = inputs (standard causal-LM loss), AdamW lr 1e-4.
3 warm-up steps, then 10 timed steps (zero_grad + forward, backward, optimizer.step), timed
with time.perf_counter. Prints one JSON line with medians.

    python3 tools/bench_torch.py [--threads N] [--arch llama|gpt_neox|gpt2]   (default: all cores, llama)
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
    ap.add_argument("--arch", choices=["llama", "gpt_neox", "gpt2"], default="llama")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(0)

    common = dict(vocab_size=8192, initializer_range=0.02, dtype="float32")
    if args.arch == "llama":
        cfg = transformers.LlamaConfig(
            hidden_size=256, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=4,
            intermediate_size=1024, tie_word_embeddings=False, max_position_embeddings=SEQ,
            **common)
        model = transformers.LlamaForCausalLM(cfg)
    elif args.arch == "gpt_neox":
        cfg = transformers.GPTNeoXConfig(
            hidden_size=256, num_hidden_layers=8, num_attention_heads=4, intermediate_size=1024,
            rotary_pct=0.25, use_parallel_residual=True, tie_word_embeddings=False,
            hidden_act="gelu", attention_bias=True, hidden_dropout=0.0, attention_dropout=0.0,
            max_position_embeddings=2048, **common)
        model = transformers.GPTNeoXForCausalLM(cfg)
    else:
        cfg = transformers.GPT2Config(
            n_embd=256, n_layer=8, n_head=4, n_inner=1024, n_positions=2048,
            activation_function="gelu_new", tie_word_embeddings=True, resid_pdrop=0.0,
            embd_pdrop=0.0, attn_pdrop=0.0, **common)
        model = transformers.GPT2LMHeadModel(cfg)
    model = model.to(torch.float32)
    with torch.no_grad():  # explicit std-0.02 init, independent of transformers' init rules
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.02)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.fill_(1.0)  # norm weights
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
        "arch": args.arch,
    }))


if __name__ == "__main__":
    main()
