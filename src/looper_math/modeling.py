"""Load the base model, tokenizer and LoRA adapters.

- ``trust_remote_code`` is False unless the config says otherwise.
- dtype ``auto``: bf16 on CUDA, fp32 on CPU.
- ``model.name_or_path: tiny`` loads ``run_dir/tiny_model``, which ``smoke.ensure_tiny_model`` builds once
  (a 2-layer Llama briefly pretrained on the built-in problems): the smoke run proves the plumbing, not learning.
- A GGUF checkpoint (``model.gguf_file``) is dequantized by transformers and copied into a plain
  model (a GGUF-loaded model is marked quantized and can be neither trained nor saved as is).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from looper_math.errors import ModelError  # re-exported (its home is errors.py)
from looper_math.phases import TRAINED


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
        from looper_math.smoke import ensure_tiny_model

        ensure_tiny_model(Path(path))
    _check_local(path)
    kwargs = {"trust_remote_code": cfg.model.trust_remote_code, "revision": cfg.model.revision}
    if cfg.model.gguf_file:
        kwargs["gguf_file"] = cfg.model.gguf_file
    return path, kwargs


def _looks_local(path: str) -> bool:
    """A path on disk rather than a hub repo id (``owner/name``)."""
    p = Path(path)
    return p.is_absolute() or path.startswith((".", "~")) or p.exists() or path.count("/") != 1


def _check_local(path: str) -> None:
    if _looks_local(path) and not Path(path).exists():
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


GGUF_MAGIC = b"GGUF"  # the first 4 bytes of every GGUF file (ggml's docs/gguf.md, "File Structure")


def check_gguf(src_dir: str, gguf_file: str) -> None:
    """A local GGUF file exists and starts with the GGUF magic; a hub repo id (``owner/name``, not on disk)
    is left to transformers. ModelError naming the file otherwise."""
    if not Path(src_dir).exists():
        if _looks_local(src_dir):
            raise ModelError(f"{src_dir}: folder not found")
        return  # a hub repo: transformers downloads the file
    f = Path(src_dir) / gguf_file
    if not f.is_file():
        raise ModelError(f"{f}: GGUF file not found")
    with open(f, "rb") as fh:
        head = fh.read(4)
    if head != GGUF_MAGIC:
        raise ModelError(f"{f}: not a GGUF file (starts with {head!r}, expected {GGUF_MAGIC!r})")


def convert_gguf(src_dir: str, gguf_file: str, dst: Path, dtype: torch.dtype = torch.bfloat16, overwrite: bool = False) -> Path:
    """Dequantize a GGUF checkpoint once into a plain safetensors folder (model + tokenizer); an existing
    DST is replaced only with ``overwrite``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from looper_math.runio import check_output

    check_gguf(src_dir, gguf_file)
    check_output(dst, resume=False, overwrite=overwrite, resumable=False)
    try:
        model = AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=gguf_file, dtype=dtype)
    except (OSError, ValueError) as e:
        raise ModelError(f"{Path(src_dir) / gguf_file}: cannot load GGUF model: {str(e).splitlines()[0][:200]}") from None
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
    """A trained adapter's name (phases.TRAINED: 'sft' / 'dpo' / 'grpo') -> its configured output dir; 'none' / None ->
    base model; anything else -> a path."""
    if which in (None, "none", "base"):
        return None
    if which in TRAINED:
        return cfg.path(TRAINED[which].output_in(cfg))
    return Path(which)


def _same_base_model(made_for: str, name: str) -> bool:
    """One name, or two paths of one local folder: bench/device/device_env.sh links .models/qwen05 (the config's path since
    `looper-math prepare`) to /root/m/qwen05, the path the adapters of earlier sessions record."""
    return made_for == name or (Path(made_for).exists() and Path(made_for).resolve() == Path(name).resolve())


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
        if not _same_base_model(made_for, cfg.model.name_or_path):
            raise ModelError(f"{path}: adapter was trained on base model '{made_for}', config says '{cfg.model.name_or_path}'")
    return meta


def load_model_with_adapter(cfg, which: str | None, device: str | None = None, *, trainable: bool = False,
                            merge: bool = False):
    """(model, adapter_path_or_None). The adapter is loaded with PEFT. ``merge=True`` (generation only)
    folds the LoRA weights into this process's private copy of the base weights (PEFT
    ``merge_and_unload``), so decoding runs the plain model's kernels instead of base + two low-rank
    matmuls per projection (3.4x slower on the H200); the adapter on disk is not touched and
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
