#!/usr/bin/env python3
"""Generate the small, committed test fixtures under tests/fixtures/.

Run from anywhere:  python3 tools/make_fixtures.py
Needs: pip install torch transformers safetensors tokenizers
Deterministic (fixed seeds); takes a few seconds on 2 CPU cores.

Writes:
  tests/fixtures/tokenizer.json          byte-level BPE (vocab 300, "<|endoftext|>" = id 0)
  tests/fixtures/prefs.jsonl             10 TRL-style {"prompt","chosen","rejected"} records
  tests/fixtures/<model>/                config.json, model.safetensors (or shards + index),
                                         tokenizer.json, expected.json (sequence log-probs)
      models: llama, llama_tied, llama_sharded, qwen2, gpt_neox, gpt2
  tests/fixtures/trajectories.json       6 SGD steps of sft / dpo / ipo / cdpo on the llama fixture
  tests/fixtures/dpo_losses.json         dpo / cdpo / robust losses (TRL's formulas) and their
                                         gradients w.r.t. the policy log-probs, on hand-picked
                                         margins from -30 to +40 (beta * delta)

  python3 tools/make_fixtures.py --only cdpo   writes just dpo_losses.json and the cdpo
                                               trajectory (merged into trajectories.json)

ldviz conventions reproduced here (RUNFILE.md and the run header's `conventions`):
  prompt and response are tokenized SEPARATELY (no special tokens) and concatenated;
  EOS (id 0) is appended to the response; a sequence log-prob is the SUM over response
  tokens incl. EOS of log_softmax(logits[t-1])[ids[t]], in float64 from float32 logits.
"""
import json
import math
import os
import random
import shutil
import sys

import torch
import torch.nn.functional as F
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIX = os.path.join(ROOT, "tests", "fixtures")
EOS = "<|endoftext|>"
EOS_ID = 0
VOCAB = 320

# ---------------------------------------------------------------------------
# a) tokenizer
# ---------------------------------------------------------------------------


def corpus():
    rng = random.Random(1234)
    subjects = [
        ("The sun", "rises in the east"), ("Water", "boils at one hundred degrees"),
        ("A cat", "likes to sleep in the sun"), ("The dog", "barks at the mail carrier"),
        ("Paris", "is the capital of France"), ("Rome", "is the capital of Italy"),
        ("Berlin", "is the capital of Germany"), ("Madrid", "is the capital of Spain"),
        ("Ice", "melts when it gets warm"), ("The moon", "orbits the earth"),
        ("Bread", "is made from flour and water"), ("Milk", "comes from cows"),
        ("A week", "has seven days"), ("A year", "has twelve months"),
        ("Bees", "make honey from flowers"), ("Trees", "grow leaves in spring"),
        ("Rain", "falls from the clouds"), ("Snow", "is cold and white"),
        ("The sea", "is full of salt water"), ("Fish", "swim in rivers and lakes"),
        ("Birds", "build nests in trees"), ("Apples", "grow on trees"),
        ("Coffee", "is a popular morning drink"), ("Tea", "is made with hot water"),
        ("The train", "leaves the station at noon"), ("A bicycle", "has two wheels"),
        ("A car", "has four wheels"), ("The library", "opens at nine"),
        ("Children", "go to school in the morning"), ("People", "sleep at night"),
    ]
    adverbs = ["usually", "always", "often", "sometimes", "", "", ""]
    questions = [
        "What is the capital of France?", "How many days are in a week?",
        "Where does the sun rise?", "What do bees make?", "How many wheels does a car have?",
        "What color is snow?", "When does the library open?", "What falls from the clouds?",
        "Why do people sleep at night?", "What is bread made from?",
    ]
    extras = [
        "Answer: yes.", "Answer: no.", "Question: is it true?", "I think so.",
        "That is correct.", "That is not right.", "It is a simple fact.",
        "Everyone knows this.", "Thank you for asking!", "Let me explain.",
        "The answer is 7.", "It costs 3 dollars.", "We met at 10 o'clock.",
    ]
    lines = []
    for s, p in subjects:
        lines.append(f"{s} {p}.")
        for _ in range(6):
            a = rng.choice(adverbs)
            lines.append(f"{s} {a + ' ' if a else ''}{p}.")
    for q in questions:
        lines.append(q)
        lines.append(f"Question: {q} Answer:")
    lines.extend(extras)
    rng.shuffle(lines)
    return lines


def make_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = None
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus(), trainer=trainer)
    assert tok.token_to_id(EOS) == EOS_ID, tok.token_to_id(EOS)
    assert tok.get_vocab_size() <= 300
    return tok


# ---------------------------------------------------------------------------
# c) preference records
# ---------------------------------------------------------------------------

PREFS = [
    ("What is the capital of France? Answer:", " Paris is the capital of France.", " The capital is Berlin, I think."),
    ("How many days are in a week?", " A week has seven days.", " There are ten days in a week."),
    ("Where does the sun rise each morning?", " The sun rises in the east.", " It rises in the west."),
    ("Question: what do bees make from flowers? Answer:", " Bees make honey.", " Bees make bread and milk from flowers."),
    ("How many wheels does a car usually have?", " A car has four wheels.", " Two wheels, like a bicycle."),
    ("What color is fresh snow? Answer:", " Fresh snow is white.", " Snow is usually green and warm."),
    ("When does the library open in the morning?", " The library opens at nine.", " It never opens."),
    ("What falls from the clouds on a grey day?", " Rain falls from the clouds.", " Apples fall from the clouds every day."),
    ("Question: what is bread made from? Answer:", " Bread is made from flour and water.", " It is made from ice."),
    ("Why do most people sleep at night?", " People sleep at night because it is dark and they are tired.", " Because the sea is full of salt water."),
]


def write_prefs():
    path = os.path.join(FIX, "prefs.jsonl")
    with open(path, "w") as f:
        for p, c, r in PREFS:
            assert c != r and c.startswith(" ") and r.startswith(" ")
            f.write(json.dumps({"prompt": p, "chosen": c, "rejected": r}) + "\n")
    return [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in PREFS]


def encode_records(tok, records):
    out = []
    for rec in records:
        p = tok.encode(rec["prompt"], add_special_tokens=False).ids
        c = tok.encode(rec["chosen"], add_special_tokens=False).ids + [EOS_ID]
        r = tok.encode(rec["rejected"], add_special_tokens=False).ids + [EOS_ID]
        out.append((p, c, r))
    return out


# ---------------------------------------------------------------------------
# b) models
# ---------------------------------------------------------------------------

COMMON = dict(bos_token_id=EOS_ID, eos_token_id=EOS_ID, pad_token_id=EOS_ID, dtype="float32")


def llama_config(tied):
    return transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=tied, max_position_embeddings=128, **COMMON)


def qwen2_config():
    return transformers.Qwen2Config(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, rms_norm_eps=1e-5,
        tie_word_embeddings=False, max_position_embeddings=128, **COMMON)


def neox_config():
    return transformers.GPTNeoXConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, rotary_pct=0.25, rotary_emb_base=10000, use_parallel_residual=True,
        hidden_act="gelu", layer_norm_eps=1e-5, tie_word_embeddings=False,
        max_position_embeddings=128, **COMMON)


def gpt2_config():
    return transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=128,
        activation_function="gelu_new", **COMMON)


def is_norm(name):
    n = name.lower()
    return "norm" in n or ".ln_" in n or n.startswith("ln_")


def init_weights(model, seed):
    """std 0.2 for matrices/embeddings, small nonzero biases, norm weights 1 + noise."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = p.shape
            if p.dim() >= 2:
                v = torch.randn(shape, generator=g) * 0.2
            elif is_norm(name) and name.endswith("weight"):
                v = 1.0 + 0.1 * torch.randn(shape, generator=g)
            else:  # biases (incl. norm biases)
                v = 0.05 * torch.randn(shape, generator=g)
            p.copy_(v.to(p.dtype))
    return model


def build(kind):
    if kind in ("llama", "llama_sharded"):
        cfg, cls = llama_config(False), transformers.LlamaForCausalLM
    elif kind == "llama_tied":
        cfg, cls = llama_config(True), transformers.LlamaForCausalLM
    elif kind == "qwen2":
        cfg, cls = qwen2_config(), transformers.Qwen2ForCausalLM
    elif kind == "gpt_neox":
        cfg, cls = neox_config(), transformers.GPTNeoXForCausalLM
    elif kind == "gpt2":
        cfg, cls = gpt2_config(), transformers.GPT2LMHeadModel
    else:
        raise ValueError(kind)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = cls(cfg).to(torch.float32)
    # llama / llama_tied / llama_sharded share a seed: identical weights (tied lacks lm_head,
    # which is the last parameter, so every other tensor matches the untied model).
    seed = {"llama": 1, "llama_sharded": 1, "llama_tied": 1, "qwen2": 2, "gpt_neox": 3, "gpt2": 4}[kind]
    init_weights(model, seed)
    if cfg.tie_word_embeddings:
        assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    model.eval()
    return model


# ---------------------------------------------------------------------------
# d) log-probs
# ---------------------------------------------------------------------------


def token_logps(model, prompt_ids, resp_ids):
    """float64 per-token log-probs of resp_ids given prompt_ids (differentiable)."""
    ids = torch.tensor([prompt_ids + resp_ids], dtype=torch.long)
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0]  # [T, V] float32
    lp = logits.double().log_softmax(-1)
    n, m = len(prompt_ids), len(resp_ids)
    pos = torch.arange(n - 1, n - 1 + m)
    tgt = torch.tensor(resp_ids, dtype=torch.long)
    return lp[pos, tgt]  # [m]


def expected_json(model, enc):
    recs = []
    with torch.no_grad():
        for i, (p, c, r) in enumerate(enc):
            lc = token_logps(model, p, c)
            lr = token_logps(model, p, r)
            recs.append({
                "index": i, "prompt_ids": p, "chosen_ids": c, "rejected_ids": r,
                "chosen": float(lc.sum()), "rejected": float(lr.sum()),
                "chosen_token_logps": [float(x) for x in lc],
                "rejected_token_logps": [float(x) for x in lr],
            })
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "eos_id": EOS_ID, "records": recs}


# ---------------------------------------------------------------------------
# e) trajectories
# ---------------------------------------------------------------------------

BATCH, STEPS, N_REC = 4, 6, 10
ALGOS = {
    "sft": {"lr": 0.05, "beta": None},
    "dpo": {"lr": 0.5, "beta": 0.1},
    "ipo": {"lr": 0.01, "beta": 0.1},
    # conservative DPO (TRL's sigmoid loss with label smoothing): with eps = 0.2 its gradient
    # turns at beta * delta = ln 4, which the margins pass within these 6 steps
    "cdpo": {"lr": 0.5, "beta": 0.1, "label_smoothing": 0.2},
}


def pair_loss(algo, beta, eps, margin):
    """TRL's DPOTrainer.dpo_loss on logits = margin (policy minus reference log-ratio)."""
    z = beta * margin
    if algo == "dpo":
        return -F.logsigmoid(z)
    if algo == "cdpo":  # loss_type "sigmoid" with label_smoothing
        return -F.logsigmoid(z) * (1 - eps) - F.logsigmoid(-z) * eps
    if algo == "robust":
        return (-F.logsigmoid(z) * (1 - eps) + F.logsigmoid(-z) * eps) / (1 - 2 * eps)
    raise ValueError(algo)


def grad_norm(model):
    s = 0.0
    for p in model.parameters():
        if p.grad is not None:
            s += float(p.grad.double().pow(2).sum())
    return math.sqrt(s)


def train(algo, lr, beta, enc, eps=0.0):
    model = build("llama")
    model.eval()  # no dropout (attention_dropout is 0 anyway)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.0, weight_decay=0.0)
    ref = None
    if algo in ("dpo", "ipo", "cdpo"):
        with torch.no_grad():
            ref = [(float(token_logps(model, p, c).sum()), float(token_logps(model, p, r).sum()))
                   for p, c, r in enc]
    steps = []
    for k in range(STEPS):
        idx = [(BATCH * k + j) % N_REC for j in range(BATCH)]
        opt.zero_grad(set_to_none=True)
        losses, lcs, lrs = [], [], []
        for i in idx:
            p, c, r = enc[i]
            lc = token_logps(model, p, c).sum()
            if algo == "sft":
                losses.append(-lc)
                lcs.append(lc.item())
                with torch.no_grad():
                    lrs.append(float(token_logps(model, p, r).sum()))
                continue
            lr_ = token_logps(model, p, r).sum()
            lcs.append(lc.item())
            lrs.append(lr_.item())
            if algo in ("dpo", "cdpo"):
                margin = (lc - ref[i][0]) - (lr_ - ref[i][1])
                losses.append(pair_loss(algo, beta, eps, margin))
            else:  # ipo: per-token mean log-probs (incl. EOS), as TRL
                nc, nr = len(c), len(r)
                h = (lc / nc - ref[i][0] / nc) - (lr_ / nr - ref[i][1] / nr)
                losses.append((h - 1.0 / (2.0 * beta)) ** 2)
        loss = torch.stack(losses).mean()
        loss.backward()
        gn = grad_norm(model)
        steps.append({"step": k + 1, "records": idx, "loss": loss.item(),
                      "logps_chosen": lcs, "logps_rejected": lrs, "grad_norm": gn})
        opt.step()
    final = []
    with torch.no_grad():
        for i, (p, c, r) in enumerate(enc):
            final.append({"index": i, "chosen": float(token_logps(model, p, c).sum()),
                          "rejected": float(token_logps(model, p, r).sum())})
    out = {"lr": lr, "beta": beta, "steps": steps, "final_logps": final}
    if eps:
        out["label_smoothing"] = eps
    return out


# ---------------------------------------------------------------------------
# f) preference losses on given log-probs
# ---------------------------------------------------------------------------

LOSS_BETA, LOSS_EPS = 0.5, 0.1
# beta * delta of each pair: both signs, around cDPO's turning point ln((1 - eps) / eps) = ln 9
# = 2.197 (its gradient changes sign there), and far out where log-sigmoid saturates
LOSS_Z = [-30.0, -3.0, -0.4, 0.0, 0.7, 2.0, 2.5, 4.0, 12.0, 40.0]


def loss_cases():
    """Per algorithm: the per-pair losses, the batch-mean loss and its gradient w.r.t. the policy
    chosen and rejected summed log-probs, in float64 autograd with TRL's formulas."""
    n = len(LOSS_Z)
    # arbitrary log-probs with (pc - rc) - (pr - rr) = z / beta
    rc = torch.tensor([-40.0 - 3.0 * k for k in range(n)], dtype=torch.float64)
    rr = torch.tensor([-55.0 + 2.0 * k for k in range(n)], dtype=torch.float64)
    pr0 = torch.tensor([-50.0 + 1.5 * k for k in range(n)], dtype=torch.float64)
    delta = torch.tensor(LOSS_Z, dtype=torch.float64) / LOSS_BETA
    pc0 = rc + (pr0 - rr) + delta
    out = {"beta": LOSS_BETA, "label_smoothing": LOSS_EPS,
           "policy_chosen": pc0.tolist(), "policy_rejected": pr0.tolist(),
           "ref_chosen": rc.tolist(), "ref_rejected": rr.tolist(),
           "beta_delta": LOSS_Z, "algorithms": {}}
    for algo in ("dpo", "cdpo", "robust"):
        pc = pc0.clone().requires_grad_(True)
        pr = pr0.clone().requires_grad_(True)
        margin = (pc - rc) - (pr - rr)
        losses = pair_loss(algo, LOSS_BETA, LOSS_EPS, margin)
        loss = losses.mean()
        gc, gr = torch.autograd.grad(loss, [pc, pr])
        out["algorithms"][algo] = {
            "losses": losses.tolist(), "loss": loss.item(),
            "grad_policy_chosen": gc.tolist(), "grad_policy_rejected": gr.tolist(),
        }
    return out


# ---------------------------------------------------------------------------


def dump(obj, path):
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")


def main_cdpo():
    """Only the cDPO additions, leaving every other fixture as committed."""
    tok = Tokenizer.from_file(os.path.join(FIX, "tokenizer.json"))
    records = [json.loads(line) for line in open(os.path.join(FIX, "prefs.jsonl"))]
    enc = encode_records(tok, records)
    path = os.path.join(FIX, "trajectories.json")
    with open(path) as f:
        traj = json.load(f)
    # the same torch must reproduce the committed dpo trajectory
    dpo = train("dpo", ALGOS["dpo"]["lr"], ALGOS["dpo"]["beta"], enc)
    worst = max(abs(a["loss"] - b["loss"]) / max(abs(b["loss"]), 1e-12)
                for a, b in zip(dpo["steps"], traj["algorithms"]["dpo"]["steps"]))
    print(f"dpo trajectory recomputed: max relative loss difference {worst:.2e}")
    assert worst < 1e-9, worst
    hp = ALGOS["cdpo"]
    t = train("cdpo", hp["lr"], hp["beta"], enc, hp["label_smoothing"])
    traj["algorithms"]["cdpo"] = t
    print("cdpo: losses=" + ", ".join(f"{s['loss']:.4f}" for s in t["steps"])
          + " grad_norms=" + ", ".join(f"{s['grad_norm']:.3f}" for s in t["steps"]))
    dump(traj, path)
    dump(loss_cases(), os.path.join(FIX, "dpo_losses.json"))


def main():
    os.makedirs(FIX, exist_ok=True)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    if sys.argv[1:] == ["--only", "cdpo"]:
        return main_cdpo()

    tok = make_tokenizer()
    tok_path = os.path.join(FIX, "tokenizer.json")
    tok.save(tok_path)
    tok = Tokenizer.from_file(tok_path)
    print(f"tokenizer: vocab {tok.get_vocab_size()}, {EOS!r} = {tok.token_to_id(EOS)}")

    records = write_prefs()
    enc = encode_records(tok, records)
    for (p, c, r), rec in zip(enc, records):  # round trip sanity
        assert tok.decode(p) == rec["prompt"] and tok.decode(c[:-1]) == rec["chosen"]

    kinds = ["llama", "llama_tied", "llama_sharded", "qwen2", "gpt_neox", "gpt2"]
    for kind in kinds:
        d = os.path.join(FIX, kind)
        if os.path.isdir(d):
            shutil.rmtree(d)
        model = build(kind)
        if kind == "llama_sharded":
            model.save_pretrained(d, safe_serialization=True, max_shard_size="60KB")
            n_shards = len([f for f in os.listdir(d) if f.endswith(".safetensors")])
            assert n_shards >= 2 and os.path.exists(os.path.join(d, "model.safetensors.index.json")), os.listdir(d)
        else:
            model.save_pretrained(d, safe_serialization=True)
        shutil.copy(tok_path, os.path.join(d, "tokenizer.json"))
        # reload from disk to make sure the expectations come from the saved weights
        cls = type(model)
        loaded = cls.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
        exp = expected_json(loaded, enc)
        dump(exp, os.path.join(d, "expected.json"))
        r0 = exp["records"][0]
        print(f"{kind:14s} files={sorted(os.listdir(d))}")
        print(f"{'':14s} rec0 chosen={r0['chosen']:.4f} rejected={r0['rejected']:.4f} "
              f"mean tok logp={sum(x['chosen'] for x in exp['records']) / sum(len(x['chosen_ids']) for x in exp['records']):.3f}")

    traj = {"model": "llama", "batch_size": BATCH, "optimizer": "sgd", "algorithms": {}}
    for algo, hp in ALGOS.items():
        t = train(algo, hp["lr"], hp["beta"], enc, hp.get("label_smoothing", 0.0))
        traj["algorithms"][algo] = t
        print(f"{algo}: lr={hp['lr']} losses=" + ", ".join(f"{s['loss']:.4f}" for s in t["steps"])
              + " grad_norms=" + ", ".join(f"{s['grad_norm']:.2f}" for s in t["steps"]))
    dump(traj, os.path.join(FIX, "trajectories.json"))
    dump(loss_cases(), os.path.join(FIX, "dpo_losses.json"))

    total = 0
    for dp, _, fs in os.walk(FIX):
        total += sum(os.path.getsize(os.path.join(dp, f)) for f in fs)
    print(f"fixtures total: {total / 1024:.1f} KiB in {FIX}")


if __name__ == "__main__":
    sys.exit(main())
