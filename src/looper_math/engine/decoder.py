"""``FastDecoder``: the fast engine's slots over a static per-slot KV cache, the decode step (the model's own modules
through ``_decode_layer``, or the fused path of ``engine.kernels``) and its CUDA graph, and prefill into slots."""

from __future__ import annotations

import torch

from looper_math.engine import hf_internals
from looper_math.engine.kernels import (FlexDecodeMask, _attend_bmm, _attend_flex, _attend_flex_compiled, _attend_sdpa,
                                        _fused_layers, _fused_parts, _FusedLayer, fuse_blocker, fused_copy_bytes)
from looper_math.engine.options import FAST_SUPPORTED, FastOptions, _alloc_len, _check_attn
from looper_math.engine.requests import GenRequest
from looper_math.engine.sampling import draw_uniforms, sample_rows


def _causal_lm(model):
    from peft import PeftModel

    return model.get_base_model() if isinstance(model, PeftModel) else model


def _decode_layer(layer, h, cos, sin, K, V, write, mask, rope, attend, Hkv: int, G: int, D: int):
    """One decoder layer for one new token per slot; writes its K/V into the slot caches K/V."""
    B = h.shape[0]
    a = layer.self_attn
    x = layer.input_layernorm(h)
    q = a.q_proj(x).view(B, 1, Hkv * G, D).transpose(1, 2)
    k = a.k_proj(x).view(B, 1, Hkv, D).transpose(1, 2)
    v = a.v_proj(x).view(B, 1, Hkv, D).transpose(1, 2)
    q, k = rope(q, k, cos, sin)
    K.scatter_(2, write, k)
    V.scatter_(2, write, v)
    o = attend(q.reshape(B, Hkv, G, D), K, V, mask, hf_internals.attn_scaling(a))
    h = h + a.o_proj(o.reshape(B, 1, Hkv * G * D))
    return h + layer.mlp(layer.post_attention_layernorm(h))


class FastDecoder:
    """``slots`` sequences decoding together over a static per-slot KV cache.

    Unlike transformers' StaticCache, each slot has its own write position, so a finished slot is
    refilled with the next request while the others keep decoding (continuous batching), and the
    prompt sits at positions [0, n) of its slot with no padding inside the cache. Prefill is the
    model's own forward (right padded, so causal attention needs no mask; identical prompts are
    prefilled once and copied to every slot that asks for them, e.g. the k samples of a question);
    its K/V are copied into the slots. The decode step re-implements the Llama/Mistral/Qwen2 layer
    loop around the model's own modules (norms, projections, MLP, rotary; LoRA layers included),
    replacing only attention: one query token per slot against its cache with a per-slot length
    mask, grouped-query heads folded so K/V are read once. Sampling (the same ``sample_rows`` as the
    hf engine, with per-request seeded uniforms), EOS/min/max bookkeeping all run on device inside
    the step, so on CUDA the whole step is captured once as a CUDA graph and replayed.
    ``attn`` picks the attention core (``ATTN_CORES``, see ``FastOptions.attn``); with "flex" the cache is
    padded to a multiple of ``flex_block`` and ``FlexDecodeMask`` limits each slot's reads to its own length.
    ``fuse``: where the weights are plain (``fuse_blocker`` is None) the step runs ``_fused_layers`` instead of
    the modules; ``fuse_blocker`` holds the reason it does not (``fused`` is then None).
    """

    def __init__(self, model, *, slots: int, cache_len: int, max_new_tokens: int, min_new_tokens: int,
                 eos: list[int], pad: int, sampled: bool, attn: str = FastOptions.attn, compile: bool = FastOptions.compile,
                 truncate: bool = True, prefill_tokens: int = FastOptions.prefill_tokens,
                 flex_block: int = FastOptions.flex_block, fuse: bool = FastOptions.fuse):
        causal = _causal_lm(model)
        config = causal.config
        if config.model_type not in FAST_SUPPORTED:
            raise ValueError(f"engine='fast' supports {FAST_SUPPORTED}, not {config.model_type!r}; use engine='hf'")
        window = getattr(config, "sliding_window", None)  # absent on Llama configs
        if window is not None and getattr(config, "use_sliding_window", True) and cache_len > window:
            raise ValueError(f"cache length {cache_len} exceeds the sliding window {window}; use engine='hf'")
        _check_attn(attn, flex_block)
        self.rope = hf_internals.rotary_apply(causal)
        self.decoder = causal.model
        self.lm_head = causal.get_output_embeddings()
        self.device = causal.device
        dtype = self.decoder.embed_tokens.weight.dtype
        first = self.decoder.layers[0].self_attn
        self.head_dim = hf_internals.attn_head_dim(first)
        self.kv_heads = config.num_key_value_heads
        self.groups = hf_internals.attn_kv_groups(first)
        B, L, dev = slots, _alloc_len(cache_len, attn, flex_block), self.device
        self.slots, self.cache_len, self.attn = B, cache_len, attn
        if attn == "flex":  # the compiled kernel on CUDA (traced with the layer when that is compiled)
            self.attend = _attend_flex_compiled if dev.type == "cuda" and not compile else _attend_flex
        else:
            self.attend = {"sdpa": _attend_sdpa, "bmm": _attend_bmm}[attn]
        self.max_new, self.min_new, self.sampled, self.truncate = max_new_tokens, min_new_tokens, sampled, truncate
        self.prefill_tokens = prefill_tokens
        self.K = [torch.zeros(B, self.kv_heads, L, self.head_dim, dtype=dtype, device=dev) for _ in self.decoder.layers]
        self.V = [torch.zeros_like(k) for k in self.K]
        self.eos = torch.tensor(eos, device=dev)
        self.eos_cols = torch.zeros(self.lm_head.weight.shape[0], dtype=torch.bool, device=dev)
        self.eos_cols[self.eos] = True
        self.pad = pad
        self.cols = torch.arange(L, device=dev)
        # per-slot state, updated in place (fixed addresses for the CUDA graph)
        self.tokens = torch.full((B,), pad, dtype=torch.long, device=dev)  # last token, not yet in cache
        self.pos = torch.zeros(B, dtype=torch.long, device=dev)  # where that token's K/V go
        self.count = torch.zeros(B, dtype=torch.long, device=dev)  # tokens generated so far
        self.active = torch.zeros(B, dtype=torch.bool, device=dev)
        self.hit_eos = torch.zeros(B, dtype=torch.bool, device=dev)
        self.out = torch.full((B, max_new_tokens), pad, dtype=torch.long, device=dev)
        self.uniforms = torch.zeros(B, max_new_tokens, dtype=torch.float32, device=dev)
        self.temperature = torch.zeros(B, dtype=torch.float32, device=dev)
        self.top_p = torch.ones(B, dtype=torch.float32, device=dev)
        self.greedy = torch.ones(B, dtype=torch.bool, device=dev)
        self.flex = FlexDecodeMask(self.pos, self.groups, L, flex_block) if attn == "flex" else None
        # regional compilation: one compiled layer reused by all layers (fuses the norms, rotary and
        # residual adds that otherwise cost ~45 small kernels per layer per step)
        self._layer = torch.compile(_decode_layer, dynamic=False) if compile else _decode_layer
        self.fuse_blocker = fuse_blocker(causal, fuse, compile)
        if self.fuse_blocker is None and dev.type == "cuda":  # after the KV cache: the copies must fit beside it
            need, free = fused_copy_bytes(causal), torch.cuda.mem_get_info(dev)[0]
            if need * 1.05 + 2**28 > free:
                self.fuse_blocker = f"not enough free GPU memory for the fused weight copies ({need / 2**30:.1f} GiB)"
        self.fused = None if self.fuse_blocker else [_FusedLayer(layer) for layer in self.decoder.layers]
        self.parts = _fused_parts(compiled=dev.type == "cuda") if self.fused else None
        self.graph = None

    # -- decode -------------------------------------------------------------------------------------
    def _logits(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        B, Hkv, G, D = self.slots, self.kv_heads, self.groups, self.head_dim
        h = self.decoder.embed_tokens(tokens[:, None])
        cos, sin = hf_internals.rotary_cos_sin(self.decoder, h, pos[:, None])
        if self.flex is not None:  # its mask_mod reads self.pos, the only pos this is called with
            self.flex.update()
            mask = self.flex.block_mask
        else:
            mask = (self.cols[None, :] <= pos[:, None])[:, None, None, :]
        write = pos.view(B, 1, 1, 1).expand(B, Hkv, 1, D)
        if self.fused is not None:
            norm = self.decoder.norm
            x = _fused_layers(self.fused, self.parts, h, cos, sin, self.K, self.V, write, mask, self.attend,
                              norm.weight, float(hf_internals.rms_norm_eps(norm)), Hkv, G, D)
            return self.lm_head(x[:, 0]).float()
        for layer, K, V in zip(self.decoder.layers, self.K, self.V):
            h = self._layer(layer, h, cos, sin, K, V, write, mask, self.rope, self.attend, Hkv, G, D)
        return self.lm_head(self.decoder.norm(h)[:, 0]).float()

    def _choose(self, logits: torch.Tensor, count: torch.Tensor, rows_greedy, rows_t, rows_p, rows_u):
        if self.min_new > 0:
            logits = logits.masked_fill((count < self.min_new)[:, None] & self.eos_cols[None, :], float("-inf"))
        u = rows_u.gather(1, count.clamp(max=self.max_new - 1)[:, None]).squeeze(1)
        if self.sampled:
            return sample_rows(logits, u, rows_t, rows_p, rows_greedy, self.truncate)
        return logits.argmax(-1)

    def _step(self) -> None:
        logits = self._logits(self.tokens, self.pos)
        nxt = self._choose(logits, self.count, self.greedy, self.temperature, self.top_p, self.uniforms)
        act = self.active
        col = self.count.clamp(max=self.max_new - 1)[:, None]
        self.out.scatter_(1, col, torch.where(act, nxt, self.out.gather(1, col)[:, 0])[:, None])
        eos_now = (nxt[:, None] == self.eos[None, :]).any(-1) & act
        self.hit_eos |= eos_now
        self.count += act
        self.pos += act
        self.active &= ~eos_now & (self.count < self.max_new)
        self.tokens.copy_(torch.where(act, nxt, self.tokens))

    def capture(self) -> None:
        """Warm up and capture one decode step as a CUDA graph. Call while every slot is inactive
        (warm-up steps only touch position 0 of free slots, which a prefill overwrites)."""
        if self.device.type != "cuda":
            return
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step()

    def release(self) -> None:
        """Free the KV cache and the graph's memory pool now (not at the next garbage collection):
        a rollout round's decoder must be gone before the next round sizes and allocates its own."""
        self.graph = None
        self.K, self.V = [], []
        self.flex = None
        self.fused = None  # the concatenated weight copies
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def step(self) -> None:
        if self.graph is not None:
            self.graph.replay()
        else:
            self._step()

    # -- prefill ------------------------------------------------------------------------------------
    def prefill(self, slots: list[int], prompts: list[list[int]], reqs: list[GenRequest]) -> None:
        """Put requests into free slots: prompt K/V into the cache, first token sampled."""
        unique: dict[tuple[int, ...], int] = {}
        src = [unique.setdefault(tuple(p), len(unique)) for p in prompts]
        uniq = list(unique)
        dev = self.device
        slot_t = torch.tensor(slots, device=dev)
        src_t = torch.tensor(src, device=dev)
        logits_u = []
        width = max(len(p) for p in uniq)
        rows_per_chunk = max(1, self.prefill_tokens // width)
        for c0 in range(0, len(uniq), rows_per_chunk):
            chunk = uniq[c0 : c0 + rows_per_chunk]
            w = max(len(p) for p in chunk)
            ids = torch.full((len(chunk), w), self.pad, dtype=torch.long)
            for i, p in enumerate(chunk):
                ids[i, : len(p)] = torch.tensor(p)
            # right padding: causal attention keeps real tokens from seeing the pads after them
            out = self.decoder(input_ids=ids.to(dev), use_cache=True)
            last = torch.tensor([len(p) - 1 for p in chunk], device=dev)
            hidden = out.last_hidden_state[torch.arange(len(chunk), device=dev), last]
            logits_u.append(self.lm_head(hidden).float())
            in_chunk = (src_t >= c0) & (src_t < c0 + len(chunk))
            dst, local = slot_t[in_chunk], src_t[in_chunk] - c0
            for (keys, values), K, V in zip(hf_internals.cache_kv(out.past_key_values), self.K, self.V):
                K[dst, :, :w] = keys[local]
                V[dst, :, :w] = values[local]
            del out
        logits = torch.cat(logits_u)[src_t]
        n = len(slots)
        self.uniforms[slot_t] = draw_uniforms(reqs, self.max_new).to(dev)
        self.temperature[slot_t] = torch.tensor([float(r.temperature) for r in reqs], device=dev)
        self.top_p[slot_t] = torch.tensor([float(r.top_p) for r in reqs], device=dev)
        self.greedy[slot_t] = self.temperature[slot_t] <= 0
        zero = torch.zeros(n, dtype=torch.long, device=dev)
        tok0 = self._choose(logits, zero, self.greedy[slot_t], self.temperature[slot_t], self.top_p[slot_t],
                            self.uniforms[slot_t])
        eos0 = (tok0[:, None] == self.eos[None, :]).any(-1)
        self.tokens[slot_t] = tok0
        self.out[slot_t] = self.pad
        self.out[slot_t, 0] = tok0
        self.count[slot_t] = 1
        self.pos[slot_t] = torch.tensor([len(p) for p in prompts], device=dev)
        self.hit_eos[slot_t] = eos0
        self.active[slot_t] = ~eos0 & (self.max_new > 1)
