"""Load the base model, tokenizer and LoRA adapters; build the tiny smoke-test model.

- ``trust_remote_code`` is False unless the config says otherwise.
- dtype ``auto``: bf16 on CUDA, fp32 on CPU.
- ``model.name_or_path: tiny`` builds (once, cached under ``run_dir/tiny_model``) a 2-layer Llama with a
  byte-level BPE tokenizer trained on the built-in problems, saved as safetensors. It is random: the
  smoke run proves the plumbing, not learning.
- A GGUF checkpoint (``model.gguf_file``) is dequantized by transformers and copied into a plain
  model (a GGUF-loaded model is marked quantized and can be neither trained nor saved as is).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from looper_math.errors import ModelError  # re-exported (its home is errors.py)

TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def resolve_device(cfg) -> str:
    if cfg.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ModelError("device: cuda requested but no CUDA device is available")
    return cfg.device


def resolve_dtype(cfg, device: str) -> torch.dtype:
    name = cfg.model.dtype
    if name == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    try:
        return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[name]
    except KeyError:
        raise ModelError(f"model.dtype: unknown dtype '{name}' (auto | bfloat16 | float16 | float32)") from None


def base_path(cfg) -> str:
    return str(cfg.path("tiny_model")) if cfg.model.name_or_path == "tiny" else cfg.model.name_or_path


def build_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """A tiny Llama + tokenizer trained on the built-in problems; saved once as safetensors."""
    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists() and (out_dir / "tokenizer.json").exists():
        return out_dir
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from looper_math.data import builtin_corpus_text

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(builtin_corpus_text(2000, seed) + ["Let's think step by step. #### Question: Answer:"], trainer)
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    hf_tok.chat_template = TINY_CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(hf_tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.pad_token_id,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    _pretrain_tiny(model, hf_tok, seed)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    hf_tok.save_pretrained(tmp)
    from looper_math.runio import replace_dir

    replace_dir(tmp, out_dir)
    return out_dir


def ensure_tiny_model(out_dir: Path) -> Path:
    """build_tiny_model, once per directory even when several processes ask at the same time (every
    rank of `accelerate launch` does; they used to build into the same temp folder and crash): a file
    lock serializes them and the first one builds. Under a
    launcher the build runs in a child process without the launcher's environment, so its small
    pretraining Trainer is a plain one-process CPU run, the same model as without a launcher."""
    import fcntl
    import subprocess
    import sys

    from looper_math.runio import launcher_rank

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists() and (out_dir / "tokenizer.json").exists():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.with_name(f".{out_dir.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out_dir / "config.json").exists() and (out_dir / "tokenizer.json").exists():
            return out_dir
        if launcher_rank() is None:
            return build_tiny_model(out_dir)
        launcher_vars = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                         "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
        env = {k: v for k, v in os.environ.items()
               if k not in launcher_vars and not k.startswith(("TORCHELASTIC_", "ACCELERATE_"))}
        code = "import sys; from looper_math.modeling import build_tiny_model; build_tiny_model(sys.argv[1])"
        subprocess.run([sys.executable, "-c", code, str(out_dir)], env=env, check=True)
    return out_dir


def _pretrain_tiny(model, tokenizer, seed: int, steps: int = 200) -> None:
    """A few hundred causal-LM steps on built-in problems (Abel prompt format), so the smoke model writes
    problem-shaped text and the later phases see a mix of right and wrong answers. transformers Trainer."""
    import datasets
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from looper_math.data import builtin_problems
    from looper_math.prompts import ABEL_TEMPLATE, sft_target

    texts = [ABEL_TEMPLATE.format(question=p.question) + sft_target(p.answer) + tokenizer.eos_token
             for p in builtin_problems(3000, seed=seed + 99, split="pretrain")]
    ds = datasets.Dataset.from_dict({"text": texts}).map(lambda b: tokenizer(b["text"], truncation=True, max_length=256),
                                                         batched=True, remove_columns=["text"])
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, max_steps=steps, per_device_train_batch_size=16, learning_rate=3e-3,
                                 lr_scheduler_type="cosine", warmup_steps=20, logging_steps=100, save_strategy="no",
                                 report_to="none", use_cpu=True, seed=seed, disable_tqdm=True)
        Trainer(model=model, args=args, train_dataset=ds,
                data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False)).train()
    model.eval()


def load_tokenizer(cfg):
    from transformers import AutoTokenizer

    path, kwargs = _source(cfg)
    try:
        tok = AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: cannot load tokenizer: {str(e).splitlines()[0][:200]}") from None
    if tok.pad_token is None:
        # pad == eos is safe: TRL masks labels by completion_mask, not by pad id, so EOS is still learned.
        tok.pad_token = tok.eos_token
    from looper_math.prompts import check_format

    try:
        check_format(cfg.model.prompt_format, tok)
    except ValueError as e:
        raise ModelError(f"{path}: {e}") from None
    return tok


def _source(cfg) -> tuple[str, dict]:
    """(path, from_pretrained kwargs shared by model and tokenizer); builds the tiny model if asked."""
    path = base_path(cfg)
    if cfg.model.name_or_path == "tiny":
        ensure_tiny_model(Path(path))
    _check_local(path)
    kwargs = {"trust_remote_code": cfg.model.trust_remote_code, "revision": cfg.model.revision}
    if cfg.model.gguf_file:
        kwargs["gguf_file"] = cfg.model.gguf_file
    return path, kwargs


def _check_local(path: str) -> None:
    p = Path(path)
    looks_local = p.is_absolute() or path.startswith((".", "~")) or p.exists() or path.count("/") != 1
    if looks_local and not p.exists():
        raise ModelError(f"model.name_or_path: '{path}' does not exist")


def load_model(cfg, device: str | None = None, dtype: torch.dtype | None = None):
    """The base model (no adapter), on device, in the configured dtype, eval mode."""
    from transformers import AutoModelForCausalLM

    device = device or resolve_device(cfg)
    dtype = dtype or resolve_dtype(cfg, device)
    path, kwargs = _source(cfg)
    kwargs["dtype"] = dtype
    if cfg.model.attn_implementation:
        kwargs["attn_implementation"] = cfg.model.attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelError(f"{path}: cannot load model: {str(e).splitlines()[0][:200]}") from None
    if cfg.model.gguf_file:
        model = _dequantized_copy(model, dtype, cfg.model.attn_implementation)
    return model.to(device).eval()


def _dequantized_copy(model, dtype, attn_implementation):
    """Copy a GGUF-loaded model into a plain one (transformers marks GGUF models quantized)."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    kwargs = {"dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    plain = AutoModelForCausalLM.from_config(config, **kwargs)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise ModelError(f"GGUF conversion: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if config.tie_word_embeddings:
        plain.tie_weights()
    return plain


def convert_gguf(src_dir: str, gguf_file: str, dst: Path, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Dequantize a GGUF checkpoint once into a plain safetensors folder (model + tokenizer)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_file, dtype=dtype)
    model = _dequantized_copy(model, dtype, None)
    tok = AutoTokenizer.from_pretrained(src_dir, gguf_file=gguf_file)
    dst = Path(dst)
    tmp = dst.with_name(dst.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    from looper_math.runio import replace_dir

    replace_dir(tmp, dst)
    return dst


def adapter_path(cfg, which: str | None) -> Path | None:
    """'sft' / 'dpo' -> the configured output dir; 'none' / None -> base model; anything else -> a path."""
    if which in (None, "none", "base"):
        return None
    if which == "sft":
        return cfg.path(cfg.sft.output_dir)
    if which == "dpo":
        return cfg.path(cfg.dpo.output_dir)
    return Path(which)


def check_adapter(path: Path, cfg) -> dict:
    """Validate an adapter folder before loading: exists, safetensors, made for this base model."""
    conf = path / "adapter_config.json"
    if not conf.exists():
        raise ModelError(f"{path}: no adapter_config.json (not a LoRA adapter folder; train it first?)")
    if not (path / "adapter_model.safetensors").exists():
        raise ModelError(f"{path}: no adapter_model.safetensors (only safetensors adapters are loaded)")
    meta = json.loads(conf.read_text())
    marker = path / "looper_base_model.json"
    if marker.exists():
        made_for = json.loads(marker.read_text()).get("base_model")
        if made_for != cfg.model.name_or_path:
            raise ModelError(f"{path}: adapter was trained on base model '{made_for}', config says '{cfg.model.name_or_path}'")
    return meta


def load_model_with_adapter(cfg, which: str | None, device: str | None = None, *, trainable: bool = False,
                            merge: bool = False):
    """(model, adapter_path_or_None). The adapter is loaded with PEFT. ``merge=True`` (generation only)
    folds the LoRA weights into this process's private copy of the base weights (PEFT
    ``merge_and_unload``), so decoding runs the plain model's kernels instead of base + two low-rank
    matmuls per projection (3.4x slower on the H200, issue 12); the adapter on disk is not touched and
    stays the artefact. In bf16 the merged weights round differently from base + LoRA at run time, so
    greedy outputs can differ at near-ties; in fp32 they are equal (tested)."""
    model = load_model(cfg, device)
    path = adapter_path(cfg, which)
    if path is None:
        return model, None
    check_adapter(path, cfg)
    from peft import PeftModel

    try:
        model = PeftModel.from_pretrained(model, str(path), is_trainable=trainable)
    except (RuntimeError, ValueError, KeyError) as e:
        lines = [x.strip() for x in str(e).splitlines() if x.strip()] or [type(e).__name__]
        detail = next((x for x in lines if x.startswith("size mismatch")), lines[0])  # torch's header line says nothing
        raise ModelError(f"{path}: adapter does not fit base model '{cfg.model.name_or_path}': {detail[:200]}") from None
    if trainable:
        return model, path
    if merge:
        model = model.merge_and_unload()
    return model.eval(), path


def write_base_marker(out_dir: Path, cfg) -> None:
    from looper_math.runio import atomic_write_json

    atomic_write_json(Path(out_dir) / "looper_base_model.json", {"base_model": cfg.model.name_or_path, "gguf_file": cfg.model.gguf_file})


def chat_end_token(tokenizer) -> str:
    """The special token that closes an assistant turn in the chat template (e.g. <|im_end|>)."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": "x"}, {"role": "assistant", "content": "ZQZQ"}], tokenize=False)
    after = text.split("ZQZQ", 1)[1]
    for tok in sorted(tokenizer.all_special_tokens + list(tokenizer.get_added_vocab()), key=len, reverse=True):
        if tok and after.startswith(tok):
            return tok
    return tokenizer.eos_token


def prepare_for_generation(model, tokenizer, prompt_format: str):
    """Stop on EOS and, for chat models, on the end-of-turn token; pad with the tokenizer's pad."""
    gc = model.generation_config
    eos = gc.eos_token_id if gc.eos_token_id is not None else tokenizer.eos_token_id
    eos = list(eos) if isinstance(eos, (list, tuple)) else [eos]
    if tokenizer.eos_token_id not in eos:
        eos.append(tokenizer.eos_token_id)
    if prompt_format == "chat":
        end = tokenizer.convert_tokens_to_ids(chat_end_token(tokenizer))
        if end not in eos:
            eos.append(end)
    gc.eos_token_id = eos
    gc.pad_token_id = tokenizer.pad_token_id
    return model
