"""A tiny training run with LdvizCallback, used by the tests in-process (`run(...)`) and as a
script (`python train_script.py ...`, also under torchrun).

Trainers: dpo (TRL DPOTrainer), sft (transformers Trainer on prompt + chosen), trl-sft (TRL
SFTTrainer, prompt-completion data). Data order is file order (train_sampling_strategy
"sequential"), so any number of processes sees the same global batches."""

from __future__ import annotations

import argparse
import json
import os
import sys


def load_records(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


class SftDataset:
    """prompt + chosen ids with EOS, prompt positions masked out of the labels."""

    def __init__(self, records, tok, eos_id):
        self.items = []
        for r in records:
            p = tok(r["prompt"], add_special_tokens=False)["input_ids"]
            c = tok(r["chosen"], add_special_tokens=False)["input_ids"] + [eos_id]
            self.items.append({"input_ids": p + c, "labels": [-100] * len(p) + c})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def collate(pad_id):
    import torch

    def f(batch):
        t = max(len(b["input_ids"]) for b in batch)
        ids = torch.full((len(batch), t), pad_id, dtype=torch.long)
        labels = torch.full((len(batch), t), -100, dtype=torch.long)
        mask = torch.zeros((len(batch), t), dtype=torch.long)
        for i, b in enumerate(batch):
            n = len(b["input_ids"])
            ids[i, :n] = torch.tensor(b["input_ids"])
            labels[i, :n] = torch.tensor(b["labels"])
            mask[i, :n] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}

    return f


def run(*, trainer: str, model_dir: str, data: str, probes: str, out: str, output_dir: str,
        per_device: int = 2, grad_accum: int = 1, steps: int = 4, every: int = 3, lr: float = 1e-3,
        optim: str = "adamw_torch", transfer_prompts=None, overwrite: bool = False, bf16=None,
        fail_at_step: int = 0):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ldviz_record import LdvizCallback

    torch.manual_seed(0)
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    records = load_records(data)
    cb = LdvizCallback(probes=probes, every_examples=every, out=out, transfer_prompts=transfer_prompts,
                       overwrite=overwrite)
    common = dict(
        output_dir=output_dir,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=grad_accum,
        max_steps=steps,
        learning_rate=lr,
        optim=optim,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        data_seed=0,
        train_sampling_strategy="sequential",
        disable_tqdm=True,
        dataloader_num_workers=0,
        lr_scheduler_type="constant",
    )
    if bf16 is not None:  # None: the config's default (TRL's is bf16 autocast, also on the CPU)
        common["bf16"] = bf16
    callbacks = [cb]
    if fail_at_step:
        from transformers import TrainerCallback

        class Fail(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step >= fail_at_step:
                    raise RuntimeError(f"failing on purpose at step {state.global_step}")

        callbacks.append(Fail())
    if trainer == "dpo":
        from datasets import Dataset
        from trl import DPOConfig, DPOTrainer

        ds = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in records])
        args = DPOConfig(**common, beta=0.1, max_length=128)
        t = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=callbacks)
    elif trainer == "trl-sft":
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        ds = Dataset.from_list([{"prompt": r["prompt"], "completion": r["chosen"]} for r in records])
        args = SFTConfig(**common, max_length=128)
        t = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=callbacks)
    elif trainer == "sft":
        from transformers import Trainer, TrainingArguments

        args = TrainingArguments(**common, remove_unused_columns=False)
        eos = tok.eos_token_id if tok.eos_token_id is not None else 0
        t = Trainer(model=model, args=args, train_dataset=SftDataset(records, tok, eos),
                    data_collator=collate(eos), processing_class=tok, callbacks=callbacks)
    else:
        raise ValueError(trainer)
    t.train()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--trainer", default="dpo")
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--probes", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--output-dir", required=True)
    ap.add_argument("--per-device", type=int, default=2)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--every", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--optim", default="adamw_torch")
    ap.add_argument("--fp32", action="store_true", help="train without mixed precision (bf16=False)")
    ap.add_argument("--fail-at-step", type=int, default=0, help="raise an exception after this step")
    a = ap.parse_args(argv)
    run(trainer=a.trainer, model_dir=a.model, data=a.data, probes=a.probes, out=a.out,
        output_dir=a.output_dir, per_device=a.per_device, grad_accum=a.grad_accum, steps=a.steps,
        every=a.every, lr=a.lr, optim=a.optim, bf16=False if a.fp32 else None,
        fail_at_step=a.fail_at_step)
    # Under torchrun, tear the process group down before the interpreter exits: left to exit,
    # gloo's threads can be destroyed while still joinable, and a rank aborts
    # ("terminate called without an active exception", exit -6) after a finished run.
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
