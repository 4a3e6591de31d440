"""Pieces shared by the SFT, DPO and GRPO recipes: LoRA config, non-finite guard, resume, final save.

Output folder layout of a training phase (``sft.output_dir`` / ``dpo.output_dir`` / ``grpo.output_dir``)::

    adapter_config.json, adapter_model.safetensors   the final adapter (PEFT, safetensors only)
    tokenizer files, resolved_config.yaml, looper_base_model.json, log_history.json
    train_summary.json                               written LAST: its presence means "complete"
    trainer/checkpoint-N/                            intermediate checkpoints (resume)

Intermediate checkpoints are written by transformers' Trainer in place (``checkpoint-N/``, weights and
optimizer/scheduler/RNG first, ``trainer_state.json`` last); a checkpoint counts only once its
``trainer_state.json`` parses and names step N, so a kill or a full disk mid-save leaves the previous one
as the resume point. The final adapter is written into a temp folder and its files renamed into place,
``train_summary.json`` last.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from looper_math.errors import NonFiniteLossError  # noqa: F401 - re-exported (its home is errors.py)

from looper_math.layout import summary_of, write_summary
from looper_math.runio import share_files


class NonFiniteGuard(TrainerCallback):
    """Stop loudly at the first non-finite gradient (checked before the optimizer step, so the weights
    are still finite) or non-finite logged loss. Cheap for LoRA: only trainable tensors are checked."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        for name, p in model.named_parameters():
            if p.requires_grad and p.grad is not None and not torch.isfinite(p.grad).all():
                raise NonFiniteLossError(
                    f"non-finite gradient in {name} at step {state.global_step + 1}; training stopped, "
                    f"no adapter saved (last good checkpoint, if any, is kept)")

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm"):
            v = (logs or {}).get(key)
            if isinstance(v, float) and not math.isfinite(v):
                raise NonFiniteLossError(f"non-finite {key}={v} at step {state.global_step}; training stopped, no adapter saved")


class Throughput(TrainerCallback):
    """Wall time and input tokens at every optimizer step, for a steady-state rate that leaves out the
    first steps (kernel selection, allocator growth, NCCL set-up under a launcher): what a long run gets.
    Under `accelerate launch` the Trainer counts the tokens of all processes."""

    def __init__(self):
        self.marks: list[tuple[float, int, int]] = []  # (time, step, tokens seen)

    def on_step_end(self, args, state, control, **kwargs):
        # no device sync of its own: NonFiniteGuard's gradient check already waits for each step's
        # backward, so the host clock is at most one step ahead, and averaged over many steps
        self.marks.append((time.perf_counter(), state.global_step, state.num_input_tokens_seen))

    def steady(self) -> dict:
        """Rates over the steps after the first 20 % (at least 2 steps skipped); {} if too few steps."""
        skip = max(2, len(self.marks) // 5)
        if len(self.marks) - skip < 2:
            return {}
        (t0, s0, n0), (t1, s1, n1) = self.marks[skip - 1], self.marks[-1]
        dt = t1 - t0
        out = {"steady_steps": s1 - s0, "steady_seconds_per_step": round(dt / (s1 - s0), 4)}
        if n1 > n0:
            out["steady_tokens_per_s"] = round((n1 - n0) / dt, 1)
        return out


def peak_memory(trainer) -> dict:
    """Peak memory of every process of the run, in GiB, rank order (one entry in one process): on CUDA
    ``max_memory_allocated`` / ``max_memory_reserved`` of this process's GPU since it started (model load
    and training), on CPU the peak resident set size. A collective under ``accelerate launch``: every rank
    calls it (the train functions build their summary on every rank)."""
    import resource

    if torch.cuda.is_available():
        mine = [torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30]
        keys = ("peak_allocated_gib", "peak_reserved_gib")
    else:  # ru_maxrss is in KiB on Linux
        mine, keys = [resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20], ("peak_rss_gib",)
    every = [mine]
    if trainer.args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        every = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(every, mine)
    return {k: [round(m[i], 3) for m in every] for i, k in enumerate(keys)}


def drop_too_long(items: list, length, max_length: int) -> tuple[list, int]:
    """(the items whose ``length(item)`` fits ``max_length``, how many were dropped). SFT and DPO drop
    and count over-long examples rather than truncate them (a cut would lose the answer and the EOS)."""
    kept = [x for x in items if length(x) <= max_length]
    return kept, len(items) - len(kept)


def configure_cuda_training() -> None:
    """Disable PyTorch's cuDNN SDPA backend for training.

    Its backward pass returns NaN query gradients when an attention mask is passed (any padded batch),
    the padded length L has L % 128 == 64, and a row's attention logsumexp is below about -88.7
    (pytorch/pytorch#196678; huggingface/trl#7181). Qwen2.5-0.5B's large-activation heads reach -386,
    so LoRA SFT diverged to NaN at the first batch padded to 192/320/448 tokens (torch 2.11, H100).
    SDPA then uses the flash / memory-efficient kernels, which are correct.
    """
    if torch.cuda.is_available():
        torch.backends.cuda.enable_cudnn_sdp(False)


class DropPickledArgs(TrainerCallback):
    """Delete the ``training_args.bin`` the Trainer pickles into each checkpoint: it is the one file there
    that only a full (code-executing) unpickle can read, and resume never reads it (the resolved config
    is the record). What stays is safetensors weights plus optimizer/scheduler/RNG state, which
    transformers reloads with ``torch.load(weights_only=True)``."""

    def on_save(self, args, state, control, **kwargs):
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        (ckpt / "training_args.bin").unlink(missing_ok=True)
        if ckpt.is_dir():
            share_files(ckpt)


class _AtMaxSteps(Exception):
    pass


class _StopIfFinished(TrainerCallback):
    def on_train_begin(self, args, state, control, **kwargs):
        if 0 < state.max_steps <= state.global_step:
            raise _AtMaxSteps


def train_or_finish(trainer, ckpt: str | None) -> float:
    """``trainer.train(resume_from_checkpoint=ckpt)``; returns the training loss.

    Resuming from the checkpoint of the last step (a kill between it and the final save) must not train:
    transformers 5 runs one more optimizer step before it looks at max_steps (found by
    tests/test_reliability.py). By on_train_begin the Trainer has restored weights and state from the
    checkpoint, so we stop there; the loss is then the mean of the logged losses.
    """
    trainer.add_callback(_StopIfFinished())
    try:
        return trainer.train(resume_from_checkpoint=ckpt).training_loss
    except _AtMaxSteps:
        logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        return sum(logged) / len(logged) if logged else float("nan")


def resume_and_train(trainer, out_dir: Path, mode: str, phase: str, on_resume=None) -> tuple[float, float, str | None]:
    """Train from the newest complete checkpoint when resuming (``on_resume(ckpt)`` runs first), else from
    scratch; returns (training loss, seconds, the checkpoint resumed from or None)."""
    ckpt = last_checkpoint(Path(out_dir) / "trainer") if mode == "resume" else None
    if ckpt:
        print(f"{phase}: resuming from {ckpt}")
        if on_resume is not None:
            on_resume(ckpt)
    t0 = time.time()
    loss = train_or_finish(trainer, ckpt)
    return loss, time.time() - t0, ckpt


def peft_lora_config(cfg):
    from peft import LoraConfig

    targets = cfg.lora.target_modules
    return LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                      target_modules="all-linear" if targets == ["all-linear"] else list(targets),
                      task_type="CAUSAL_LM", bias="none")


def _complete_checkpoint(p: Path) -> bool:
    """trainer_state.json is the Trainer's last write into checkpoint-N: it must exist, parse and name step N."""
    step = p.name.split("-")[-1]
    if not step.isdigit():
        return False
    try:
        return json.loads((p / "trainer_state.json").read_text()).get("global_step") == int(step)
    except (OSError, ValueError):  # missing, or torn by a kill mid-write
        return False


def last_checkpoint(trainer_dir: Path) -> str | None:
    """Newest complete checkpoint-N folder (see _complete_checkpoint) or None."""
    if not trainer_dir.is_dir():
        return None
    done = [p for p in trainer_dir.glob("checkpoint-*") if _complete_checkpoint(p)]
    return str(max(done, key=lambda p: int(p.name.split("-")[-1]))) if done else None


def is_complete(out_dir: Path) -> bool:
    return summary_of(Path(out_dir)).exists()


def launched_state(device: str):
    """accelerate's ``PartialState`` when started by ``accelerate launch`` / ``torchrun`` with several
    processes (DDP, DeepSpeed, FSDP), else None (one process, nothing changes). Creating it joins the
    process group and binds this process to its GPU, so "cuda" below means cuda:LOCAL_RANK."""
    from looper_math.runio import launcher_rank

    if launcher_rank() is None:
        return None
    from accelerate import PartialState

    return PartialState(cpu=device == "cpu")


def is_main(state) -> bool:
    return state is None or state.is_main_process


def wait_for_all(state) -> None:
    """Barrier across the launched processes (no-op in one process)."""
    if state is not None:
        state.wait_for_everyone()


def prepare_output(state, mode: str, out_dir: Path, cfg) -> None:
    """Once the inputs and model have loaded: the main process clears an --overwrite'd output and writes
    the resolved config; every rank has decided `mode` before, and waits for it after."""
    from looper_math.config import save_resolved
    from looper_math.runio import clear_output

    wait_for_all(state)
    if is_main(state):
        if mode == "overwrite":
            clear_output(out_dir)
        save_resolved(cfg, out_dir)
    wait_for_all(state)


def save_final(trainer, tokenizer, out_dir: Path, cfg, summary: dict) -> None:
    """Write the final adapter: temp folder first, then rename file by file, train_summary.json last.

    Called by every process of a multi-process run: ``trainer.save_model`` gathers the weights where they
    are sharded (DeepSpeed ZeRO-3, FSDP) and writes on the main process only; everything else here is
    main-process work, and all processes return once the adapter is complete.
    """
    from looper_math.config import save_resolved
    from looper_math.modeling import write_base_marker

    out_dir = Path(out_dir)
    main = trainer.is_world_process_zero()
    tmp = out_dir / ".final.tmp"
    if main:
        summary_of(out_dir).unlink(missing_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))  # PEFT adapter only, safetensors; collective under ZeRO-3/FSDP
    if main:
        (tmp / "training_args.bin").unlink(missing_ok=True)  # pickled; never read (see DropPickledArgs)
        tokenizer.save_pretrained(tmp)
        save_resolved(cfg, tmp)
        write_base_marker(tmp, cfg)
        (tmp / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
        share_files(tmp)
        for f in tmp.iterdir():
            if f.is_file():
                os.replace(f, out_dir / f.name)
        shutil.rmtree(tmp)
        write_summary(out_dir, summary)
    trainer.accelerator.wait_for_everyone()


def losses(log_history: list[dict]) -> list[tuple[int, float]]:
    return [(h["step"], h["loss"]) for h in log_history if "loss" in h]


def loss_line(log_history: list[dict]) -> str:
    """The last logged loss, and the mean of all logged losses named as a mean. (The Trainer's
    ``training_loss`` is a mean too, and after a resume only over the resumed steps.) The log history
    holds the steps before a resume as well: the Trainer restores it from the checkpoint."""
    logged = losses(log_history)
    if not logged:
        return "no loss logged"
    step, last = logged[-1]
    mean = sum(v for _, v in logged) / len(logged)
    return f"last logged loss {last:.4f} (step {step}), mean of {len(logged)} logged losses {mean:.4f}"
