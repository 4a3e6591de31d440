"""The transformers internals the engine reads (src/looper_math/engine/hf_internals.py), each checked on tiny
Llama, Mistral and Qwen2 models (the fast engine's ``FAST_SUPPORTED``), so a transformers upgrade that moves or
changes one fails here with the symbol's name instead of a wrong decode on a GPU; and a scan of the engine's
sources that keeps every such read in that one module. CPU, a few seconds.
"""

from __future__ import annotations

import ast
import inspect
import pathlib

import pytest
import torch
import transformers
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config,
                          Qwen2ForCausalLM)

from looper_math.engine import hf_internals, kernels
from looper_math.engine.options import FAST_SUPPORTED
from test_generation import tiny_tokenizer

SRC = pathlib.Path(__file__).resolve().parents[1] / "src" / "looper_math"
ARCHS = {"llama": (LlamaConfig, LlamaForCausalLM), "mistral": (MistralConfig, MistralForCausalLM),
         "qwen2": (Qwen2Config, Qwen2ForCausalLM)}
# the adapter's functions and the tests below that check them (a new adapter function needs a check here)
CHECKED = {"stop_string_criteria", "rotary_apply", "rotary_cos_sin", "attn_head_dim", "attn_kv_groups", "attn_scaling",
           "rms_norm_eps", "is_rms_norm", "cache_kv"}


def need(ok: bool, symbol: str, what: str) -> None:
    assert ok, f"transformers {transformers.__version__}: {symbol} {what} (src/looper_math/engine/hf_internals.py relies on it)"


def tiny(arch: str):
    """6 query heads over 2 KV heads (3 per group), head_dim 8, random non-unit norm weights."""
    cfg_cls, model_cls = ARCHS[arch]
    torch.manual_seed(0)
    m = model_cls(cfg_cls(vocab_size=40, hidden_size=48, intermediate_size=64, num_hidden_layers=2, num_attention_heads=6,
                          num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5)).eval()
    with torch.no_grad():
        for layer in m.model.layers:
            layer.input_layernorm.weight.uniform_(0.5, 1.5)
    return m


@pytest.fixture(scope="module", params=sorted(ARCHS))
def model(request):
    return tiny(request.param)


def test_every_supported_type_and_adapter_function_is_checked():
    assert set(ARCHS) == set(FAST_SUPPORTED), "a model type the fast engine supports needs its tiny model here"
    fns = {n for n, f in vars(hf_internals).items() if inspect.isfunction(f) and f.__module__ == hf_internals.__name__}
    assert fns == CHECKED
    assert all(getattr(hf_internals, n).__doc__ for n in fns), "each adapter function says what it relies on"


def test_module_tree_the_decoder_walks(model):
    """The names FastDecoder, fuse_blocker and _FusedLayer read (not wrapped: they are the checkpoints' keys)."""
    kind = type(model).__name__
    need(hasattr(model, "model") and model.get_output_embeddings() is model.lm_head, f"{kind}.model / lm_head", "missing")
    base = model.model
    for name in ("embed_tokens", "layers", "norm"):
        need(hasattr(base, name), f"{type(base).__name__}.{name}", "missing")
    for layer in base.layers:
        for path in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                     "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm"):
            need(isinstance(layer.get_submodule(path), torch.nn.Module), f"{type(layer).__name__}.{path}", "missing")


def test_attention_attributes(model):
    c = model.config
    attn = model.model.layers[0].self_attn
    kind = type(attn).__name__
    need(hf_internals.attn_head_dim(attn) == c.hidden_size // c.num_attention_heads, f"{kind}.head_dim", "changed")
    need(hf_internals.attn_kv_groups(attn) == c.num_attention_heads // c.num_key_value_heads,
         f"{kind}.num_key_value_groups", "changed")
    need(hf_internals.attn_scaling(attn) == (c.hidden_size // c.num_attention_heads) ** -0.5, f"{kind}.scaling",
         "is no longer head_dim ** -0.5")


def test_rotary_matches_the_fused_path(model):
    """rotary_cos_sin gives [B, T, D] tables; the modeling file's apply_rotary_pos_emb rotates q and k as
    kernels._split_rope does (x * cos + rotate_half(x) * sin), the fused path's stand-in for it."""
    B, Hkv, G, D = 3, 2, 3, 8
    h = model.model.embed_tokens(torch.tensor([[5], [6], [7]]))
    pos = torch.tensor([[0], [9], [70]])
    cos, sin = hf_internals.rotary_cos_sin(model.model, h, pos)
    kind = type(model.model.rotary_emb).__name__
    need(cos.shape == sin.shape == (B, 1, D), f"{kind}.forward(x, position_ids)", f"gives {tuple(cos.shape)}, not (B, 1, D)")
    rope = hf_internals.rotary_apply(model)
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(B, 1, (Hkv * G + 2 * Hkv) * D, generator=g)
    q_fused, k_fused, _ = kernels._split_rope(qkv, cos, sin, Hkv, G, D)
    q, k, _ = qkv.view(B, 1, Hkv * G + 2 * Hkv, D).transpose(1, 2).split([Hkv * G, Hkv, Hkv], dim=1)
    q_rot, k_rot = rope(q, k, cos, sin)
    symbol = f"{type(model).__module__}.apply_rotary_pos_emb"
    need(q_rot.shape == q.shape and k_rot.shape == k.shape, symbol, "changed its shapes")
    torch.testing.assert_close(q_rot.reshape(B, Hkv, G, D), q_fused, msg=f"{symbol} no longer rotates as _split_rope")
    torch.testing.assert_close(k_rot, k_fused, msg=f"{symbol} no longer rotates as _split_rope")


def test_rms_norm_is_the_one_the_fused_path_reimplements(model):
    for norm in (model.model.layers[0].input_layernorm, model.model.norm):
        kind = type(norm).__name__
        need(hf_internals.is_rms_norm(norm), kind, f"is not one of {hf_internals.RMS_NORMS}")
        need(hf_internals.rms_norm_eps(norm) == model.config.rms_norm_eps, f"{kind}.variance_epsilon", "changed")
        h = torch.randn(2, 1, model.config.hidden_size, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(norm(h), kernels._rms_norm(h, norm.weight, hf_internals.rms_norm_eps(norm)),
                                   msg=f"{kind}.forward is no longer weight * x / rms(x) (kernels._rms_norm)")


def test_cache_kv_holds_each_layers_rotated_keys_and_values(model):
    """What prefill copies into the slots: per layer [B, Hkv, T, D], the keys after rotary."""
    ids = torch.tensor([[3, 4, 5, 6], [7, 8, 9, 10]])
    with torch.no_grad():
        out = model.model(input_ids=ids, use_cache=True)
        kv = hf_internals.cache_kv(out.past_key_values)
        need(len(kv) == model.config.num_hidden_layers, "DynamicCache.layers", "has no entry per decoder layer")
        B, T, Hkv, D = 2, 4, 2, 8
        need(all(k.shape == v.shape == (B, Hkv, T, D) for k, v in kv), "DynamicLayer.keys / .values", "changed shape")
        layer = model.model.layers[0]
        h = model.model.embed_tokens(ids)
        x = layer.input_layernorm(h)
        k = layer.self_attn.k_proj(x).view(B, T, Hkv, D).transpose(1, 2)
        v = layer.self_attn.v_proj(x).view(B, T, Hkv, D).transpose(1, 2)
        cos, sin = hf_internals.rotary_cos_sin(model.model, h, torch.arange(T)[None].expand(B, T))
        _, k_rot = hf_internals.rotary_apply(model)(k, k, cos, sin)
    torch.testing.assert_close(kv[0][0], k_rot, msg="DynamicLayer.keys are no longer the rotated keys")
    torch.testing.assert_close(kv[0][1], v, msg="DynamicLayer.values are no longer v_proj's output")


def test_stop_string_criteria_flags_rows_that_end_in_a_stop_string():
    tok = tiny_tokenizer()
    crit = hf_internals.stop_string_criteria(tok, ["*_"])
    ids = torch.tensor([tok("ab*_", add_special_tokens=False)["input_ids"], tok("a*_b", add_special_tokens=False)["input_ids"]])
    got = crit(ids, None)
    need(got.dtype == torch.bool and got.tolist() == [True, False], "transformers.generation.stopping_criteria."
         "StopStringCriteria(tokenizer=, stop_strings=)(input_ids, scores)", f"gave {got.tolist()}, not [True, False]")


# ---- only the adapter reaches into transformers ------------------------------------------------------------

# attributes hf_internals wraps; ``scaling`` and ``head_dim`` are left out: the engine's own objects use the names
WRAPPED_ATTRIBUTES = {"rotary_emb", "apply_rotary_pos_emb", "variance_epsilon", "num_key_value_groups"}


def internal_reads(source: str) -> list[str]:
    """Lines of ``source`` that import a transformers submodule or a private name, import importlib (the dynamic
    import of a modeling file), read an attribute the adapter wraps, or the cache's ``past_key_values.layers``."""
    found = []
    for n in ast.walk(ast.parse(source)):
        if isinstance(n, ast.Import):
            found += [f"{n.lineno}: import {a.name}" for a in n.names
                      if a.name.startswith("transformers.") or a.name == "importlib"]
        elif isinstance(n, ast.ImportFrom) and n.module:
            if n.module.startswith("transformers.") or n.module == "importlib":
                found.append(f"{n.lineno}: from {n.module} import ...")
            elif n.module == "transformers":
                found += [f"{n.lineno}: from transformers import {a.name}" for a in n.names if a.name.startswith("_")]
        elif isinstance(n, ast.Attribute):
            if n.attr in WRAPPED_ATTRIBUTES or (
                    n.attr == "layers" and isinstance(n.value, ast.Attribute) and n.value.attr == "past_key_values"):
                found.append(f"{n.lineno}: .{n.attr}")
    return sorted(found, key=lambda hit: int(hit.split(":")[0]))


def test_the_scan_finds_what_generation_py_read_before_the_adapter():
    old = ("import importlib\nfrom transformers.generation.stopping_criteria import StopStringCriteria\n"
           "from transformers import GenerationConfig, _private\ncos, sin = dec.rotary_emb(h, p)\n"
           "for c in out.past_key_values.layers: pass\neps = float(norm.variance_epsilon)\n")
    assert internal_reads(old) == ["1: import importlib", "2: from transformers.generation.stopping_criteria import ...",
                                   "3: from transformers import _private", "4: .rotary_emb", "5: .layers", "6: .variance_epsilon"]


def test_only_the_adapter_reads_transformers_internals():
    files = sorted((SRC / "engine").glob("*.py")) + [SRC / "generation.py"]
    assert len(files) > 5 and (SRC / "engine" / "hf_internals.py") in files
    bad = {f"{f.relative_to(SRC.parents[1])}:{hit}" for f in files if f.name != "hf_internals.py"
           for hit in internal_reads(f.read_text())}
    assert not bad, f"transformers internals read outside engine/hf_internals.py: {sorted(bad)}"
