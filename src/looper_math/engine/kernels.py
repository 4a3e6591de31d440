"""The fast decoder's kernels: the attention cores (``FastOptions.attn``: sdpa, bmm, flex with its ``FlexDecodeMask``)
and the fused decode layer (``FastOptions.fuse``: ``_fused_layers`` over ``_FusedLayer`` weight copies, and
``fuse_blocker`` that says whether a model allows it)."""

from __future__ import annotations

import torch

from looper_math.engine import hf_internals


def _attend_sdpa(q, K, V, mask, scale):
    """q [B, Hkv, G, D] (the G query heads sharing a KV head folded into the query axis, so K/V are
    read once and never repeated); K/V [B, Hkv, L, D]; mask [B, 1, 1, L] bool."""
    return torch.nn.functional.scaled_dot_product_attention(q, K, V, attn_mask=mask, scale=scale)


def _attend_bmm(q, K, V, mask, scale):
    scores = torch.matmul(q, K.transpose(-1, -2)).float() * scale
    scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1).to(V.dtype), V)


_FLEX_COMPILED = None


def _flex_compiled():
    """``torch.compile(flex_attention)``, created once per process (the fused Triton kernel; without compile
    flex_attention materializes the full score matrix). ``dynamic=False``: the decode kernel (flex_decoding)
    needs static batch and head counts, and each decoder's shapes are fixed anyway."""
    global _FLEX_COMPILED
    if _FLEX_COMPILED is None:
        import torch._dynamo

        from torch.nn.attention.flex_attention import flex_attention

        # one compile per (slots, cache length): past dynamo's default limit of 8 it would fall back to eager
        # flex_attention, whose CPU-side tensors break CUDA-graph capture (seen in a bench sweeping 5 slot counts)
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        _FLEX_COMPILED = torch.compile(flex_attention, dynamic=False)
    return _FLEX_COMPILED


def _attend_flex(q, K, V, block_mask, scale):
    """FlexAttention over the slot caches with a ``FlexDecodeMask.block_mask``; plain (uncompiled)
    flex_attention: the CPU path, and the one traced when the whole decoder layer is torch.compiled.
    q [B, Hkv, G, D] folded as for sdpa: flex then sees Hq == Hkv (no enable_gqa), so its decode kernel
    applies whatever G is (with enable_gqa it requires Hq / Hkv to be a power of two, e.g. not Qwen2's 7),
    and K/V are read once per KV head."""
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention(q, K, V, block_mask=block_mask, scale=scale)


def _attend_flex_compiled(q, K, V, block_mask, scale):
    """``_attend_flex`` through the process-wide compiled flex_attention (CUDA, layer not compiled)."""
    return _flex_compiled()(q, K, V, block_mask=block_mask, scale=scale)


class FlexDecodeMask:
    """The decode step's BlockMask for attn="flex": one query row per slot (q_len = the G folded query heads)
    against that slot's cache [0, kv_len), kv_len a multiple of ``block``.

    Valid positions of slot b are 0..pos[b] (pos[b]: where this step's token is written, so inclusive).
    Blocks wholly below pos[b] + 1 are "full" (no mask_mod applied), the block holding pos[b] (if it is not
    complete) is the one "partial" block, where ``mask_mod`` (kv_idx <= pos[b], reading the live ``pos``
    tensor) cuts the tail; blocks above are never read. All tensors have fixed shapes and addresses and
    ``update()`` rewrites them in place from ``pos`` with device ops only (no host sync), so the same
    BlockMask object serves every step of a captured CUDA graph.
    """

    def __init__(self, pos: torch.Tensor, q_len: int, kv_len: int, block: int):
        from torch.nn.attention.flex_attention import BlockMask

        if kv_len % block:
            raise ValueError(f"kv_len {kv_len} is not a multiple of the flex block {block}")
        B, dev = pos.shape[0], pos.device
        self.pos, self.block, self.kv_len, self.n_blocks = pos, block, kv_len, kv_len // block
        idx = torch.arange(self.n_blocks, dtype=torch.int32, device=dev).expand(B, 1, 1, self.n_blocks)
        self.full_num = torch.zeros(B, 1, 1, dtype=torch.int32, device=dev)
        self.full_idx = idx.contiguous()  # fixed: blocks 0..full_num-1
        self.partial_num = torch.zeros(B, 1, 1, dtype=torch.int32, device=dev)  # 0 or 1
        self.partial_idx = idx.contiguous()  # [..., 0] rewritten: the block holding pos

        def mask_mod(b, h, q_idx, kv_idx):
            return kv_idx <= pos[b]

        # q blocks are only for the backward pass (compute_q_blocks=False: nothing stale to keep in sync)
        self.block_mask = BlockMask.from_kv_blocks(
            self.partial_num, self.partial_idx, self.full_num, self.full_idx, BLOCK_SIZE=(128, block),
            mask_mod=mask_mod, seq_lengths=(q_len, kv_len), compute_q_blocks=False,
        )
        self.update()

    def update(self) -> None:
        B = self.pos.shape[0]
        n = (self.pos + 1).clamp(1, self.kv_len)  # valid positions per slot
        full = torch.div(n, self.block, rounding_mode="floor")
        self.full_num.copy_(full.view(B, 1, 1))
        self.partial_num.copy_((n % self.block != 0).view(B, 1, 1))
        self.partial_idx[:, 0, 0, 0].copy_(full.clamp(max=self.n_blocks - 1))


# ---- the fused decode layer (FastOptions.fuse) ----------------------------------------------------------
# The module path below costs ~38 kernels per layer per step: the models' RMSNorm (7 ops), rotary (rotate_half:
# slice, neg, cat, two muls, add, for q and k), three q/k/v and two gate/up GEMMs, SiLU, the mul and the
# residual adds. With plain nn.Linear projections (no LoRA left unmerged) the fused path runs the same math as
# ~11 kernels: q/k/v and gate/up each one GEMM over concatenated weights (a copy: the model is not touched),
# and the elementwise parts as three small functions that torch.compile fuses into one Triton kernel each on
# CUDA (residual add + RMSNorm; split + rotary; SiLU * up). On CPU they run eagerly (the tests compare them
# with the module path).


def _rms_norm(h, w, eps: float):
    """The models' RMSNorm (Llama / Mistral / Qwen2): in float32, then back to h's dtype, times the weight."""
    x = h.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return w * x.to(h.dtype)


def _add_rms_norm(h, delta, w, eps: float):
    """The residual add and the next RMSNorm: (h + delta, norm(h + delta))."""
    h = h + delta
    return h, _rms_norm(h, w, eps)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _split_rope(qkv, cos, sin, Hkv: int, G: int, D: int):
    """[B, 1, (Hkv*G + 2*Hkv) * D] -> q [B, Hkv, G, D] (query heads folded per KV head, as the attention
    cores take them) and k, v [B, Hkv, 1, D], rotary applied to q and k as the models' apply_rotary_pos_emb."""
    B = qkv.shape[0]
    q, k, v = qkv.view(B, Hkv * G + 2 * Hkv, D).split([Hkv * G, Hkv, Hkv], dim=1)
    cos, sin = cos.view(B, 1, D), sin.view(B, 1, D)
    q = q * cos + _rotate_half(q) * sin
    k = k * cos + _rotate_half(k) * sin
    return q.view(B, Hkv, G, D), k.view(B, Hkv, 1, D), v.reshape(B, Hkv, 1, D)


def _silu_mul(gu, inter: int):
    g, u = gu.split(inter, dim=-1)
    return torch.nn.functional.silu(g) * u


_FUSED_PARTS = None


def _fused_parts(compiled: bool):
    """(add_rms_norm, rms_norm, split_rope, silu_mul): compiled once per process on CUDA, eager otherwise.
    Default (automatic) dynamic shapes: the first slot count gets a static kernel, a second one a kernel for any
    batch, so calls with varying slot counts (eval's chunks) stop recompiling after two."""
    global _FUSED_PARTS
    eager = (_add_rms_norm, _rms_norm, _split_rope, _silu_mul)
    if not compiled:
        return eager
    if _FUSED_PARTS is None:
        # emulate_precision_casts: round where eager rounds to bf16 (rotary's products, the norm's cast before
        # the weight). Without it the fused path agreed with hf's bf16 greedy output on 0.719 of the GPU test's
        # rows against the module path's 0.812; with it on 0.812 (bench/RESULTS.md section 1, session 9)
        _FUSED_PARTS = tuple(torch.compile(f, fullgraph=True, options={"emulate_precision_casts": True}) for f in eager)
    return _FUSED_PARTS


def fuse_blocker(causal, fuse: bool = True, compile: bool = False) -> str | None:
    """Why the fused decode layer will not stand in for this model's layers (None: it will): not asked for
    (``fuse``), ``compile`` (that compiles the module path's layer), or the model: it needs plain nn.Linear
    projections (a LoRA layer left unmerged, or a quantized one, keeps the module path), SiLU, and the RMSNorm
    the fused path re-implements."""
    if compile:
        return "compile=True"
    if not fuse:
        return "fuse=False"
    cfg = causal.config
    if getattr(cfg, "hidden_act", None) not in ("silu", "swish"):
        return f"hidden_act {getattr(cfg, 'hidden_act', None)!r} is not silu"
    for i, layer in enumerate(causal.model.layers):
        a, m = layer.self_attn, layer.mlp
        for name, mod in (("q_proj", a.q_proj), ("k_proj", a.k_proj), ("v_proj", a.v_proj), ("o_proj", a.o_proj),
                          ("gate_proj", m.gate_proj), ("up_proj", m.up_proj), ("down_proj", m.down_proj)):
            if type(mod) is not torch.nn.Linear:
                return f"layer {i} {name} is a {type(mod).__name__}, not a plain nn.Linear"
        for name, norm in (("input_layernorm", layer.input_layernorm),
                           ("post_attention_layernorm", layer.post_attention_layernorm)):
            if not hf_internals.is_rms_norm(norm):
                return f"layer {i} {name} is a {type(norm).__name__}"
        if (a.q_proj.bias is None) != (a.k_proj.bias is None) or (a.q_proj.bias is None) != (a.v_proj.bias is None):
            return f"layer {i}: q/k/v projections differ in bias"
        if (m.gate_proj.bias is None) != (m.up_proj.bias is None):
            return f"layer {i}: gate/up projections differ in bias"
    if not hf_internals.is_rms_norm(causal.model.norm):
        return f"the final norm is a {type(causal.model.norm).__name__}"
    return None


def fused_copy_bytes(causal) -> int:
    """GPU memory the fused path's concatenated q/k/v and gate/up copies take (8.4 GiB on the 7B shape)."""
    n = 0
    for layer in causal.model.layers:
        a, m = layer.self_attn, layer.mlp
        for mod in (a.q_proj, a.k_proj, a.v_proj, m.gate_proj, m.up_proj):
            n += sum(t.numel() * t.element_size() for t in (mod.weight, mod.bias) if t is not None)
    return n


def _cat_or_none(tensors):
    return None if tensors[0] is None else torch.cat(tensors)


class _FusedLayer:
    """One decoder layer's weights for the fused path: q/k/v and gate/up concatenated (copies), the rest the
    model's own tensors."""

    def __init__(self, layer):
        a, m = layer.self_attn, layer.mlp
        with torch.no_grad():
            self.qkv_w = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight])
            self.qkv_b = _cat_or_none([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias])
            self.gu_w = torch.cat([m.gate_proj.weight, m.up_proj.weight])
            self.gu_b = _cat_or_none([m.gate_proj.bias, m.up_proj.bias])
        self.o_w, self.o_b = a.o_proj.weight, a.o_proj.bias
        self.down_w, self.down_b = m.down_proj.weight, m.down_proj.bias
        self.ln1, self.eps1 = layer.input_layernorm.weight, float(hf_internals.rms_norm_eps(layer.input_layernorm))
        self.ln2 = layer.post_attention_layernorm.weight
        self.eps2 = float(hf_internals.rms_norm_eps(layer.post_attention_layernorm))
        self.inter = m.gate_proj.weight.shape[0]
        self.scaling = hf_internals.attn_scaling(a)


def _fused_layers(fl: list, parts, h, cos, sin, Ks, Vs, write, mask, attend, final_w, final_eps: float,
                  Hkv: int, G: int, D: int):
    """All decoder layers and the final norm on the fused path; returns the normed last hidden state."""
    add_norm, norm, split_rope, silu_mul = parts
    F = torch.nn.functional
    B = h.shape[0]
    x = norm(h, fl[0].ln1, fl[0].eps1)
    for i, (w, K, V) in enumerate(zip(fl, Ks, Vs)):
        q, k, v = split_rope(F.linear(x, w.qkv_w, w.qkv_b), cos, sin, Hkv, G, D)
        K.scatter_(2, write, k)
        V.scatter_(2, write, v)
        o = attend(q, K, V, mask, w.scaling)
        h, x = add_norm(h, F.linear(o.reshape(B, 1, Hkv * G * D), w.o_w, w.o_b), w.ln2, w.eps2)
        d = F.linear(silu_mul(F.linear(x, w.gu_w, w.gu_b), w.inter), w.down_w, w.down_b)
        nxt = fl[i + 1] if i + 1 < len(fl) else None
        h, x = add_norm(h, d, nxt.ln1 if nxt else final_w, nxt.eps1 if nxt else final_eps)
    return x
