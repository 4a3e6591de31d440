"""Shared helpers for the GPU benchmarks: the random-weight Abel-7B-002 shape, a synthetic word
tokenizer that covers its vocabulary, JSON-line output, timing.

Throughput and memory do not depend on the weights, so every benchmark builds the architecture with
random bf16 weights directly on the GPU (seconds, no download). ``--tiny`` swaps in a 2-layer model
on CPU so the scripts can be smoke-tested anywhere.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

H100_BW = 3.35e12  # bytes/s, H100 SXM HBM3 (NVIDIA datasheet)
H100_BF16_DENSE = 989e12  # FLOP/s, H100 SXM dense bf16 (NVIDIA datasheet)
H200_BW = 4.8e12  # bytes/s, H200 HBM3e (NVIDIA datasheet)


def hbm_bandwidth() -> tuple[float, str]:
    """(bytes/s, source) for the current CUDA device by name; the H100 figure elsewhere (CPU smoke runs)."""
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    if "H200" in name:
        return H200_BW, "H200 4.8e12"
    if "H100" in name:
        return H100_BW, "H100 3.35e12"
    return H100_BW, f"unknown device {name!r}: H100 3.35e12 assumed"

ABEL_7B = dict(  # GAIR/Abel-7B-002 (Mistral-7B architecture)
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, vocab_size=32000, max_position_embeddings=32768, sliding_window=4096,
    rms_norm_eps=1e-5, rope_theta=10000.0,
)
TINY = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, vocab_size=512, max_position_embeddings=4096, sliding_window=4096,
)


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="2-layer model on CPU, tiny shapes (smoke test)")
    p.add_argument("--quick", action="store_true", help="fewer tokens/steps (fits run_all.sh's budget)")
    p.add_argument("--out", default=os.environ.get("OUT"), help="directory for results.jsonl (default $OUT)")
    return p


class Reporter:
    """Prints one JSON line per figure and appends it to <out>/<bench>.jsonl when --out is set."""

    def __init__(self, bench: str, out: str | None):
        self.bench = bench
        self.path = Path(out) / f"{bench}.jsonl" if out else None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, figure: str, **fields) -> dict:
        row = {"bench": self.bench, "figure": figure, **fields}
        line = json.dumps(row, default=str)
        print(line, flush=True)
        if self.path:
            with open(self.path, "a") as f:
                f.write(line + "\n")
        return row


def device_info() -> dict:
    if not torch.cuda.is_available():
        return {"device": "cpu", "torch": torch.__version__}
    import transformers

    return {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "transformers": transformers.__version__}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Timer:
    def __enter__(self):
        sync()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        sync()
        self.seconds = time.perf_counter() - self.t0


def word_tokenizer(vocab_size: int):
    """Word-level tokenizer over ``w0 .. w{V-5}`` plus <pad>/<s>/</s>/<unk>; BOS prepended, decode
    joins with spaces. Prompts of exactly n tokens are ``" ".join(words)``; any id decodes."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials + [f"w{i}" for i in range(vocab_size - len(specials))])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def random_prompt(rng, n_tokens: int, vocab_size: int) -> str:
    """n_tokens words (the BOS the tokenizer adds comes on top)."""
    ids = rng.integers(4, vocab_size, size=n_tokens)
    return " ".join(f"w{i - 4}" for i in ids)


def build_model(tiny: bool, *, train: bool = False):
    """Random-weight Mistral of the Abel-7B-002 shape in bf16 on the GPU, or the tiny one on CPU."""
    from transformers import MistralConfig, MistralForCausalLM

    shape = TINY if tiny else ABEL_7B
    config = MistralConfig(**shape, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    device = "cpu" if tiny else "cuda"
    dtype = torch.float32 if tiny else torch.bfloat16
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = MistralForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.pad_token_id = 0
    return model.train(train)


def param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def kv_bytes_per_token(config, dtype_bytes: int = 2) -> int:
    head_dim = config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * dtype_bytes


def peak_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def free_memory() -> None:
    """Drop what the last setup left (cycles first, then the allocator's cached blocks)."""
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


class StepClock:
    """TrainerCallback: wall time, steps and non-padding tokens from the end of the warm-up steps on."""

    def __init__(self, warmup: int):
        from transformers import TrainerCallback

        clock = self

        class _CB(TrainerCallback):
            def on_step_end(self, args, state, control, **kw):
                sync()
                now = (time.perf_counter(), state.global_step, state.num_input_tokens_seen)
                if state.global_step == warmup:
                    clock.t0, clock.s0, clock.tok0 = now
                clock.t1, clock.s1, clock.tok1 = now

        self.callback = _CB()
        self.t0 = self.t1 = 0.0
        self.s0 = self.s1 = self.tok0 = self.tok1 = 0

    def tokens_per_s(self) -> float:
        return (self.tok1 - self.tok0) / (self.t1 - self.t0)
