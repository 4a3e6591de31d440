"""engine='fast' on CUDA (CUDA-graph decode) against the plain path, on the tiny model.

Run on the GPU machine: PYTHONPATH=src python -m pytest tests/test_gpu_engine.py -m gpu -q
"""

from __future__ import annotations

import pytest
import torch

from looper_math.engine import decoder, scheduler
from looper_math.engine.api import GenRequest, generate
from looper_math.engine.options import FastOptions
from test_generation import PROMPTS, mixed_requests, tiny_model, tiny_qwen2, tiny_tokenizer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def cuda_model(tok, dtype):
    return tiny_model(tok).to(device="cuda", dtype=dtype)


@pytest.mark.parametrize("attn", ["sdpa", "bmm", "flex"])
@pytest.mark.parametrize("compile, fuse", [(False, True), (False, False), (True, False)])
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_fast_greedy_and_samples_equal_hf_fp32(tok, attn, compile, fuse, arch):
    """fuse=True: the fused layer with its compiled parts (Triton) under the CUDA graph; Qwen2 has q/k/v biases."""
    m = (tiny_model(tok) if arch == "llama" else tiny_qwen2(tok)).to(device="cuda", dtype=torch.float32)
    reqs = mixed_requests() * 3  # 42 requests through 8 slots: refills under the CUDA graph
    hf = generate(m, tok, reqs, max_new_tokens=24, batch_size=64, stop_strings=["*_"], progress=False)
    seen = []
    real = decoder.FastDecoder.capture

    def spy(dec):
        seen.append(dec.fused is not None)
        return real(dec)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(decoder.FastDecoder, "capture", spy)
        got = scheduler.generate_fast(m, tok, reqs, max_new_tokens=24, batch_size=8, stop_strings=["*_"], progress=False,
                                      options=FastOptions(slots=8, attn=attn, compile=compile, fuse=fuse))
    assert seen == [fuse]
    assert got == hf


@pytest.mark.parametrize("fuse", [True, False])
def test_fast_greedy_bf16_agrees_with_hf_as_often_as_hf_agrees_with_itself(tok, fuse):
    """In bf16 greedy outputs depend on batch composition (padding changes the kernels' reductions)
    in the plain path too: on the H100 the real 0.5B model gave 152/300 identical completions between
    hf batch 150 and hf batch 48. So the fast engine must agree with hf about as often as hf at one
    batch size agrees with hf at another, not more than that (fp32 equality is tested above)."""
    m = cuda_model(tok, torch.bfloat16)
    reqs = [GenRequest(p + str(i)) for i in range(16) for p in PROMPTS]
    hf = generate(m, tok, reqs, max_new_tokens=32, batch_size=64, progress=False)
    hf_small = generate(m, tok, reqs, max_new_tokens=32, batch_size=5, progress=False)
    fa = generate(m, tok, reqs, max_new_tokens=32, batch_size=64, progress=False, engine="fast",
                  fast=FastOptions(fuse=fuse))
    control = sum(a.text == b.text for a, b in zip(hf, hf_small)) / len(reqs)
    same = sum(a.text == b.text for a, b in zip(hf, fa)) / len(reqs)
    print(f"bf16 identical rows: hf vs fast (fuse={fuse}) {same:.3f}, hf batch 64 vs 5 {control:.3f}")
    assert same >= control - 0.15, (same, control)


def test_fast_forced_length_and_eos_on_cuda(tok):
    m = cuda_model(tok, torch.float32)
    res = generate(m, tok, [GenRequest(p, temperature=1.0, seed=i) for i, p in enumerate(PROMPTS)],
                   max_new_tokens=40, min_new_tokens=40, engine="fast", progress=False)
    assert all(r.num_tokens == 40 and not r.finished for r in res)


@pytest.mark.parametrize("block", [16, 128])
@pytest.mark.parametrize("compile", [False, True])
def test_flex_equals_sdpa_under_cuda_graph_fp32(tok, monkeypatch, compile, block):
    """attn='flex' (compiled flex_attention, BlockMask updated in place inside the captured step) gives the
    same tokens as sdpa over the whole cache: greedy and seeded samples, refills, prompts up to 142 tokens and
    64 new ones (cache_len 256; block 16: every slot crosses several block edges while decoding)."""
    from test_generation import LONG_PROMPT

    m = cuda_model(tok, torch.float32)
    reqs = mixed_requests() * 2 + [GenRequest(LONG_PROMPT), GenRequest(LONG_PROMPT[:70], temperature=1.0, seed=5)]
    graphs = []

    class Spy(decoder.FastDecoder):
        def capture(self):
            super().capture()
            graphs.append(self.graph is not None)

    monkeypatch.setattr(scheduler, "FastDecoder", Spy)
    call = dict(max_new_tokens=64, batch_size=8, stop_strings=["*_"], progress=False)
    sdpa = scheduler.generate_fast(m, tok, reqs, **call, options=FastOptions(slots=8, compile=compile))
    flex = scheduler.generate_fast(m, tok, reqs, **call, options=FastOptions(
slots=8, attn="flex", flex_block=block, compile=compile))
    assert graphs == [True, True]
    assert flex == sdpa
