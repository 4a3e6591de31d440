"""Every transformers internal the engine relies on, behind one small function each.

The fast decoder re-implements the Llama / Mistral / Qwen2 decode step around the model's own modules, so it
reads things transformers does not promise to keep: a modeling file's ``apply_rotary_pos_emb``, the rotary
module's call convention, attention and RMSNorm attributes, the cache's per-layer tensors, the norm class names,
a stopping criterion imported from its submodule. They are read here and nowhere else in ``looper_math.engine``
(tests/test_engine_internals.py checks both: each one still behaves as its docstring says on tiny Llama /
Mistral / Qwen2 models, and no other engine module imports a transformers submodule or reads these attributes),
so a transformers upgrade that moves one fails that test with the symbol's name instead of a wrong decode.
Checked against transformers 5.25.0.

Not wrapped: the module tree the decoder walks (``causal.model.embed_tokens / .layers[i].self_attn.{q,k,v,o}_proj
/ .mlp.{gate,up,down}_proj / .input_layernorm / .post_attention_layernorm / .norm``). Those names are the
checkpoints' state-dict keys and PEFT's ``target_modules``, so they cannot move without breaking every saved
model; the test still checks them on each supported model type.
"""

from __future__ import annotations

import importlib

from transformers.generation.stopping_criteria import StopStringCriteria

# weight * normed(x), as engine.kernels._rms_norm (the fused path re-implements these classes' forward)
RMS_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm")


def stop_string_criteria(tokenizer, stop_strings: list[str]):
    """transformers' ``StopStringCriteria`` (imported from ``transformers.generation.stopping_criteria``):
    built with ``tokenizer=`` / ``stop_strings=``, called as ``(input_ids, scores)`` -> bool per row, True where
    the row's text ends with a stop string."""
    return StopStringCriteria(tokenizer=tokenizer, stop_strings=stop_strings)


def rotary_apply(causal):
    """The ``apply_rotary_pos_emb(q, k, cos, sin)`` of the modeling file that defines ``causal``'s class
    (``transformers.models.<type>.modeling_<type>``; a hub-kernel-wrapped callable in transformers 5), returning
    the rotated (q, k): ``x * cos + rotate_half(x) * sin`` with cos / sin unsqueezed at dim 1."""
    return importlib.import_module(type(causal).__module__).apply_rotary_pos_emb


def rotary_cos_sin(decoder, h, position_ids):
    """(cos, sin) [B, T, head_dim] for ``position_ids`` [B, T] from the base model's ``rotary_emb`` module
    (``LlamaRotaryEmbedding.forward(x, position_ids)``: x only gives the dtype and device)."""
    return decoder.rotary_emb(h, position_ids)


def attn_head_dim(attn) -> int:
    """The attention module's ``head_dim`` attribute (set in ``LlamaAttention.__init__``)."""
    return attn.head_dim


def attn_kv_groups(attn) -> int:
    """The attention module's ``num_key_value_groups``: query heads per KV head."""
    return attn.num_key_value_groups


def attn_scaling(attn) -> float:
    """The attention module's ``scaling``: the softmax scale it passes to its attention function
    (head_dim ** -0.5 for these models)."""
    return attn.scaling


def rms_norm_eps(norm) -> float:
    """The RMSNorm module's ``variance_epsilon`` (the config's ``rms_norm_eps``)."""
    return norm.variance_epsilon


def is_rms_norm(norm) -> bool:
    """Whether ``norm`` is one of the RMSNorm classes (``RMS_NORMS``, by class name) whose forward the fused
    path re-implements."""
    return type(norm).__name__ in RMS_NORMS


def cache_kv(past_key_values) -> list:
    """(keys, values) per layer, each [B, Hkv, T, head_dim], of the ``DynamicCache`` a base model's forward
    returned as ``out.past_key_values``: its ``layers`` (``DynamicLayer``) and their ``keys`` / ``values``.
    transformers 5.25 renamed the output field to ``cache`` and keeps ``past_key_values`` as a deprecated
    alias (``transformers/utils/generic.py``, a one-time warning); the decoder still reads the alias (moved
    here unchanged; switching to ``cache`` needs the oldest transformers that pyproject allows to have it)."""
    return [(layer.keys, layer.values) for layer in past_key_values.layers]
