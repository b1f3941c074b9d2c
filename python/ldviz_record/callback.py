"""`LdvizCallback`: a `transformers.TrainerCallback` that writes an ldviz run file while
`Trainer`, TRL's `SFTTrainer` or `DPOTrainer` trains.

    from ldviz_record import LdvizCallback
    trainer = DPOTrainer(..., callbacks=[LdvizCallback(probes="probes.jsonl", every_examples=64,
                                                        out="runs/dpo.jsonl")])

Probes are scored at t = 0 (on_train_begin, before any update), whenever the examples seen
(global steps x the global batch) pass a multiple of `every_examples`, and after the last
step; TRL's logged metrics become step records; an end record closes the file.
"""

from __future__ import annotations

import atexit
import os
import time
from typing import Any, Optional

from transformers import TrainerCallback

from . import __version__
from .jsonio import RunWriter
from .probes import read_probes
from .recorder import ALGOS, Recorder, dist_rank_world, model_info, resolve_eos_id, step_record
from .scoring import text_tokenizer


def unwrap(model):
    """The module to call: DataParallel/DistributedDataParallel unwrapped (their forward would
    sync buffers); DeepSpeed engines and FSDP wrappers are kept as the trainer passes them
    (under FSDP the wrapper's forward gathers the shards)."""
    import torch

    while isinstance(model, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def input_device(model, args):
    """Where the input ids go: the input embedding's device, or the process's device
    (args.device) when the weights are partitioned (ZeRO-3, FSDP) or not materialized."""
    import torch

    try:
        w = model.get_input_embeddings().weight
    except Exception:
        w = next(iter(model.parameters()), None)
    partitioned = bool(getattr(args, "deepspeed", None)) or bool(getattr(args, "fsdp", None))
    if w is None or partitioned or w.numel() == 0 or w.device.type == "meta" or hasattr(w, "ds_id"):
        return getattr(args, "device", torch.device("cpu"))
    return w.device


def algo_of(args) -> tuple:
    """(algo key, phase name) from the trainer's arguments class: DPOConfig -> its loss_type
    when ldviz knows it (sigmoid -> dpo, ipo, hinge, robust; others -> dpo), CPOConfig with
    simpo -> simpo, anything else (SFTConfig, TrainingArguments) -> sft."""
    names = [c.__name__ for c in type(args).__mro__]
    loss = getattr(args, "loss_type", None)
    if isinstance(loss, (list, tuple)):
        loss = loss[0] if len(loss) == 1 else "sigmoid"
    if "CPOConfig" in names and loss == "simpo":
        return "simpo", "simpo"
    if "DPOConfig" in names or "CPOConfig" in names:
        algo = {"sigmoid": "dpo", "ipo": "ipo", "hinge": "hinge", "robust": "robust"}.get(str(loss), "dpo")
        return algo, algo
    return "sft", "sft"


def optim_kind(name: str) -> str:
    n = str(getattr(name, "value", name)).lower()
    if n.startswith("sgd"):
        return "sgd"
    if "rmsprop" in n:
        return "rmsprop"
    return "adamw"


class LdvizCallback(TrainerCallback):
    """Records an ldviz run file (RUNFILE.md) during `Trainer.train()`.

    probes: the probe file (`ldviz probes --model M --data D --out probes.jsonl`).
    every_examples: evaluate every N training examples (global batch x steps); default: the
        probe file's eval_every (`ldviz probes --eval-every`), else 64.
    out: the run file (refused when it exists and `overwrite` is False).
    top_k, transfer_prompts: top next tokens per position; the transfer matrix's size (0 =
        off); default: the probe file's. transfer_every: the matrix every this many examples
        (0 = four times every_examples), and always at t = 0 and at the end.
    tokenizer: default the trainer's processing_class. eos_id: default as ldviz picks it.
    algo: override the algorithm key derived from the arguments class (sft, dpo, ipo, ...).
    rows_per_forward: responses of one prompt per forward pass (memory vs speed).
    mixed_precision: score under the trainer's autocast (bf16/fp16) instead of the weights'
        own dtype (default False: float32 weights are scored in float32, as ldviz does).
    overwrite: replace an existing run file.
    """

    def __init__(
        self,
        probes: str = "probes.jsonl",
        every_examples: Optional[int] = None,
        out: str = "runs/ldviz.jsonl",
        top_k: Optional[int] = None,
        transfer_prompts: Optional[int] = None,
        transfer_every: int = 0,
        tokenizer: Any = None,
        eos_id: Optional[int] = None,
        algo: Optional[str] = None,
        rows_per_forward: int = 8,
        mixed_precision: bool = False,
        overwrite: bool = False,
    ):
        self.probe_file = read_probes(probes)
        pf = self.probe_file
        self.every = int(every_examples or pf.eval_every() or 64)
        if self.every <= 0:
            raise ValueError(f"every_examples must be positive, got {every_examples}")
        self.out = out
        self.top_k = int(top_k if top_k is not None else (pf.top_k if pf.top_k is not None else 5))
        m = transfer_prompts if transfer_prompts is not None else pf.transfer_prompts
        self.transfer_prompts = int(m if m is not None else 16)
        self.transfer_every = int(transfer_every) if transfer_every else 4 * self.every
        self.tokenizer = tokenizer
        self.eos_id = eos_id
        if algo is not None and algo not in ALGOS:
            raise ValueError(f"algo {algo!r} is not one ldviz knows ({', '.join(ALGOS)})")
        self.algo = algo
        self.rows_per_forward = rows_per_forward
        self.mixed_precision = bool(mixed_precision)
        self.overwrite = overwrite
        if not overwrite and os.environ.get("RANK", "0") == "0" and os.path.exists(out) and os.path.getsize(out) > 0:
            raise FileExistsError(f"{out}: run file exists (pass overwrite=True to replace it)")
        self.recorder: Optional[Recorder] = None
        self.writer: Optional[RunWriter] = None
        self._model_info: Optional[dict] = None
        self._rank, self._world = 0, 1
        self._last_eval: Optional[int] = None
        self._last_transfer: Optional[int] = None
        self._step_t0: Optional[float] = None
        self._step_ms = 0.0
        self._phase = "sft"
        self._algo = "sft"
        self._gb = 1
        self._epe = 1
        self._max_steps = 0
        self._created = False
        self._step = 0

    # --- helpers --------------------------------------------------------------------------

    def _write(self, rec: dict, sync: bool = False) -> None:
        if self.writer is not None:
            self.writer.write(rec, sync=sync)

    def _examples(self, step: int) -> int:
        return step * self._gb

    def _epoch(self, examples: int) -> float:
        return examples / max(1, self._epe)

    def _evaluate(self, args, state, model, final: bool) -> None:
        step = int(state.global_step)
        if self._last_eval == step or self.recorder is None:
            return
        ex = self._examples(step)
        transfer = final or self._last_transfer is None or ex >= self._last_transfer + self.transfer_every
        m = unwrap(model)
        recs = self.recorder.evaluate(
            m, input_device(m, args), step=step, examples=ex, epoch=self._epoch(ex), phase=self._phase,
            transfer=transfer, rank=self._rank, world=self._world, mixed_precision=self.mixed_precision,
        )
        if transfer and self.recorder.transfer:
            self._last_transfer = ex
        for r in recs or []:
            self._write(r, sync=r["type"] == "eval")
        self._last_eval = step

    # --- Trainer events -------------------------------------------------------------------

    def on_init_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        # the model before the trainer wraps or shards it: its parameter count and fingerprint
        if model is not None:
            tok = text_tokenizer(self.tokenizer or processing_class) if (self.tokenizer or processing_class) else None
            try:
                eos = self.eos_id if self.eos_id is not None else resolve_eos_id(model, tok)
                self._model_info = model_info(model, eos)
            except Exception:
                self._model_info = None

    def on_train_begin(self, args, state, control, model=None, processing_class=None, train_dataloader=None, **kwargs):
        tok = self.tokenizer or processing_class
        if tok is None:
            raise ValueError("LdvizCallback needs a tokenizer: the trainer has no processing_class; pass tokenizer=")
        tok = text_tokenizer(tok)
        m = unwrap(model)
        eos = self.eos_id if self.eos_id is not None else resolve_eos_id(m, tok)
        self.recorder = Recorder(
            self.probe_file, tok, eos, top_k=self.top_k, transfer_prompts=self.transfer_prompts,
            rows_per_forward=self.rows_per_forward,
        )
        self._rank, self._world = dist_rank_world()
        if self._world == 1 and getattr(args, "world_size", 1) > 1:
            self._rank, self._world = int(args.process_index), int(args.world_size)
        self._gb = int(args.per_device_train_batch_size) * int(args.gradient_accumulation_steps) * int(max(1, args.world_size))
        self._max_steps = int(state.max_steps or 0)
        epe = None
        ds = getattr(train_dataloader, "dataset", None)
        try:
            epe = len(ds) if ds is not None else None
        except TypeError:
            epe = None
        if not epe:
            epochs = float(getattr(state, "num_train_epochs", 0) or 0)
            epe = int(round(self._max_steps * self._gb / epochs)) if epochs > 0 else self._max_steps * self._gb
        self._epe = max(1, int(epe))
        self._algo, self._phase = algo_of(args)
        if self.algo is not None:
            self._algo = self.algo
            self._phase = self.algo
        self._last_eval = None
        self._last_transfer = None
        if self._rank == 0:
            if self.writer is not None:  # train() restarted without ending (auto_find_batch_size)
                self.writer.close()
            # a file this callback wrote before (an earlier train() call) is its own to replace
            self.writer = RunWriter(self.out, overwrite=self.overwrite or self._created)
            self._created = True
            atexit.register(self._at_exit)
            info = self._model_info or model_info(m, eos)
            info["eos_id"] = int(eos)
            self._write(self._header(args, info), sync=True)
            v = self.recorder.header_vocab()
            if v is not None:
                self._write(v)
            step = int(state.global_step)
            ex = self._examples(step)
            self._write({"type": "phase", "name": self._phase, "algo": self._algo, "step": step, "examples": ex})
        self._evaluate(args, state, model, final=False)

    def _header(self, args, info: dict) -> dict:
        pf = self.probe_file
        warm = 0
        try:
            warm = int(args.get_warmup_steps(self._max_steps))
        except Exception:
            warm = int(getattr(args, "warmup_steps", 0) or 0)
        mgn = getattr(args, "max_grad_norm", None)
        optim = {
            "kind": optim_kind(getattr(args, "optim", "adamw")),
            "lr": float(args.learning_rate),
            "momentum": 0.0,
            "weight_decay": float(getattr(args, "weight_decay", 0.0) or 0.0),
            "warmup": warm,
            "max_grad_norm": float(mgn) if mgn else None,
            "adam_betas": [float(getattr(args, "adam_beta1", 0.9)), float(getattr(args, "adam_beta2", 0.999))],
            "rms_alpha": 0.99,
            "eps": float(getattr(args, "adam_epsilon", 1e-8)),
        }
        config = {
            "model": info["path"],
            "algo": self._algo,
            "phases": [{"name": self._phase, "algo": self._algo, "duration": {"steps": self._max_steps},
                        "optim": optim, "on_policy": False}],
            "batch_size": self._gb,
            "seed": int(getattr(args, "seed", 0)),
            "shuffle": getattr(args, "train_sampling_strategy", "random") != "sequential",
            "eval_every": self.every,
            "lengths": {"max_prompt": pf.max_prompt, "max_total": pf.max_total},
            "top_k": self.top_k,
            "transfer_prompts": self.transfer_prompts,
            "transfer_every": self.transfer_every,
            "influence_every": 0,
            "device": "cuda" if str(getattr(args, "device", "cpu")).startswith("cuda") else "cpu",
            "precision": "bf16" if getattr(args, "bf16", False) else "f32",
        }
        if getattr(args, "beta", None) is not None:
            config["beta"] = float(args.beta)
        ls = getattr(args, "label_smoothing", None)
        if isinstance(ls, (int, float)):
            config["label_smoothing"] = float(ls)
        gamma = getattr(args, "simpo_gamma", None)
        if isinstance(gamma, (int, float)):
            config["gamma"] = float(gamma)
        loss = getattr(args, "loss_type", None)
        extra = {
            "name": "ldviz-record",
            "version": __version__,
            "trainer_args": type(args).__name__,
            "loss_type": list(loss) if isinstance(loss, (list, tuple)) else loss,
            "optim": str(getattr(getattr(args, "optim", None), "value", getattr(args, "optim", None))),
            "lr_scheduler_type": str(getattr(getattr(args, "lr_scheduler_type", None), "value", getattr(args, "lr_scheduler_type", None))),
            "per_device_train_batch_size": int(args.per_device_train_batch_size),
            "gradient_accumulation_steps": int(args.gradient_accumulation_steps),
            "world_size": int(max(1, args.world_size)),
            "device": str(getattr(args, "device", "")),
            "probes": os.path.abspath(pf.path),
        }
        return self.recorder.header(
            model=info,
            config=config,
            phases=[{"name": self._phase, "algo": self._algo, "steps": self._max_steps}],
            batch_size=self._gb,
            examples_per_epoch=self._epe,
            extra=extra,
        )

    def on_step_begin(self, args, state, control, **kwargs):
        self._step_t0 = time.perf_counter()

    def _at_exit(self) -> None:
        """At interpreter exit with the file still open (an exception escaped train()): an
        `end` record with reason `error`, so readers following the file stop waiting."""
        if self.writer is not None:
            try:
                self._write({"type": "end", "reason": "error", "step": int(self._step),
                             "message": "the training process exited before training ended (an exception in train()?)"},
                            sync=True)
                self.writer.close()
            except Exception:
                pass
            self.writer = None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._step = int(state.global_step)
        if self._step_t0 is not None:
            self._step_ms = (time.perf_counter() - self._step_t0) * 1e3
        step = int(state.global_step)
        before, now = self._examples(step - 1), self._examples(step)
        last = bool(control.should_training_stop) or (self._max_steps > 0 and step >= self._max_steps)
        if now // self.every > before // self.every or last:
            self._evaluate(args, state, model, final=last)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.writer is None or not logs or "train_runtime" in logs:
            return
        step = int(state.global_step)
        ex = self._examples(step)
        self._write(step_record(step=step, examples=ex, epoch=self._epoch(ex), phase=self._phase,
                                logs=logs, wall_ms=self._step_ms))

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.recorder is None:
            return
        if self._last_eval != int(state.global_step):
            self._evaluate(args, state, model, final=True)
        step = int(state.global_step)
        reason = "completed" if self._max_steps <= 0 or step >= self._max_steps else "stopped"
        self._write({"type": "end", "reason": reason, "step": step, "message": None}, sync=True)
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        atexit.unregister(self._at_exit)
