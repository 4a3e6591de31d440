"""engine.api.generate (looper_math.engine) on a tiny random Llama with a char-level tokenizer (CPU, seconds)."""

from __future__ import annotations

import string

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from tokenizers.processors import TemplateProcessing

from looper_math.engine import api, decoder, kernels, scheduler
from looper_math.engine.api import GenRequest, encode_prompts, generate, throughput_stats
from looper_math.engine.options import FastOptions

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Char-level tokenizer: every printable ASCII char is a token; BOS is prepended like Llama's."""
    vocab = {t: i for i, t in enumerate(SPECIALS + list(string.printable))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", vocab["<s>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def tiny_model(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config).eval()
    # random init is near-uniform; sharpen it so greedy is robust to float noise from padding
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
        model.lm_head.weight[: len(SPECIALS)] = 0.0  # specials (EOS included) lose to the best char
    return model


@pytest.fixture(scope="module", params=["hf", "fast"])
def engine(request):
    return request.param


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def model(tok):
    return tiny_model(tok)


PROMPTS = ["Q: 1+2?\nA:", "Question: a much longer prompt with many characters\nAnswer:", "hi", "Tom has 3 apples."]


def run(model, tok, reqs, **kw):
    kw.setdefault("max_new_tokens", 12)
    return generate(model, tok, reqs, progress=False, **kw)


def test_no_double_bos(tok):
    plain, templated = encode_prompts(tok, ["ab", "<s>ab"])
    assert plain == templated == [tok.bos_token_id, *tok("ab", add_special_tokens=False)["input_ids"]]


def test_batched_greedy_equals_one_at_a_time_and_plain_generate(model, tok, engine):
    reqs = [GenRequest(p) for p in PROMPTS]
    batched = run(model, tok, reqs, batch_size=4, engine=engine)
    single = [run(model, tok, [r], batch_size=1, engine=engine)[0] for r in reqs]
    assert [r.text for r in batched] == [r.text for r in single]
    assert all(r.num_tokens == 12 and not r.finished for r in batched)
    for p, res in zip(PROMPTS, single):  # against model.generate itself, unpadded
        ids = tok(p, return_tensors="pt")["input_ids"]
        out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
        assert res.text == tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_sampling_is_per_request_and_batch_independent(model, tok, engine):
    reqs = [GenRequest(p, temperature=1.0, top_p=0.9, seed=7 + i) for i, p in enumerate(PROMPTS)]
    reqs.append(GenRequest(PROMPTS[0], temperature=0.0))  # greedy row sharing the batch
    together = run(model, tok, reqs, batch_size=8, engine=engine)
    pairs = run(model, tok, reqs[::-1], batch_size=2, engine=engine)[::-1]
    alone = [run(model, tok, [r], batch_size=1, engine=engine)[0] for r in reqs]
    assert [r.text for r in together] == [r.text for r in pairs] == [r.text for r in alone]
    greedy = run(model, tok, [GenRequest(PROMPTS[0])])[0]
    assert together[-1].text == greedy.text
    other_seed = run(model, tok, [GenRequest(PROMPTS[0], temperature=1.0, top_p=0.9, seed=1234)])[0]
    assert other_seed.text != together[0].text


def test_top_p_tiny_is_greedy(model, tok):
    sampled = run(model, tok, [GenRequest(p, temperature=1.0, top_p=1e-6, seed=3) for p in PROMPTS])
    greedy = run(model, tok, [GenRequest(p) for p in PROMPTS])
    assert [r.text for r in sampled] == [r.text for r in greedy]


def forced_eos_model(tok):
    m = tiny_model(tok)
    head = torch.nn.Linear(m.config.hidden_size, m.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.copy_(m.lm_head.weight)
        head.bias.zero_()
        head.bias[tok.eos_token_id] = 1e4
    m.lm_head = head
    return m


def test_forced_eos_counts_and_finishes(tok, engine):
    m = forced_eos_model(tok)
    reqs = [GenRequest(p) for p in PROMPTS] + [GenRequest(PROMPTS[1], temperature=1.0, seed=1)]
    res = run(m, tok, reqs, batch_size=3, engine=engine)
    assert all(r.num_tokens == 1 and r.finished and r.text == "" for r in res)
    res = run(m, tok, reqs, batch_size=3, min_new_tokens=4, engine=engine)
    assert all(r.num_tokens == 5 and r.finished for r in res)
    assert all(len(r.text) == 4 for r in res)  # char-level: 4 visible tokens, EOS skipped


def test_max_tokens_hit_is_unfinished(model, tok, engine):
    res = run(model, tok, [GenRequest(p) for p in PROMPTS], max_new_tokens=5, engine=engine)
    assert all(r.num_tokens == 5 and not r.finished and len(r.text) == 5 for r in res)


def test_stop_string_cuts_text_and_stops(model, tok, engine):
    full = run(model, tok, [GenRequest(PROMPTS[0])], max_new_tokens=20, engine=engine)[0].text
    k = next(i for i in range(2, 15) if full.find(full[i : i + 2]) == i)  # first occurrence mid-text
    stop = full[k : k + 2]
    other = run(model, tok, [GenRequest(PROMPTS[2])], max_new_tokens=20, engine=engine)[0]
    res = run(model, tok, [GenRequest(PROMPTS[0]), GenRequest(PROMPTS[2])], max_new_tokens=20,
              stop_strings=[stop], engine=engine)
    assert res[0].text == full[:k] and res[0].finished and res[0].num_tokens == k + 2
    j = other.text.find(stop)
    if j == -1:  # the batch-mate is unaffected
        assert res[1].text == other.text and res[1].num_tokens == 20 and not res[1].finished


def test_results_in_input_order_and_stats(model, tok, engine):
    reqs = [GenRequest(p) for p in PROMPTS]
    one_by_one = [run(model, tok, [r], engine=engine)[0].text for r in reqs]
    res = run(model, tok, reqs, batch_size=2, engine=engine)
    assert [r.text for r in res] == one_by_one
    stats = throughput_stats(res, 2.0)
    assert stats["tokens"] == 48 and stats["tokens_per_s"] == 24.0


def test_rejects_unknown_engine(model, tok):
    with pytest.raises(ValueError, match="engine"):
        run(model, tok, [GenRequest("x")], engine="vllm")


# ---- fast engine against the plain path ------------------------------------------------------------


def mixed_requests():
    """Greedy and sampled rows, several temperatures, duplicated prompts (shared prefill)."""
    reqs = [GenRequest(p) for p in PROMPTS]
    reqs += [GenRequest(p, temperature=0.7 + 0.1 * i, top_p=0.95, seed=100 + i) for i, p in enumerate(PROMPTS)]
    reqs += [GenRequest(PROMPTS[1], temperature=1.0, seed=200 + j) for j in range(4)]  # k samples, one prompt
    return reqs


@pytest.mark.parametrize("attn", ["sdpa", "bmm"])
@pytest.mark.parametrize("slots", [1, 3, 16])
def test_fast_equals_hf(model, tok, attn, slots):
    """Greedy and seeded samples are the same tokens as the plain path whatever the slot count
    (3 < requests exercises refilling finished slots)."""
    reqs = mixed_requests()
    hf = run(model, tok, reqs, batch_size=16, max_new_tokens=10, stop_strings=["*_"])
    fast = scheduler.generate_fast(
        model, tok, reqs, max_new_tokens=10, batch_size=slots, stop_strings=["*_"], progress=False,
        options=FastOptions(slots=slots, attn=attn, check_every=3),
    )
    assert fast == hf
    assert any(r.finished for r in hf) and any(not r.finished for r in hf)


def test_fast_stats_count_slot_occupancy_and_add_up_over_calls(model, tok):
    """``stats``: every decode step counts all slots; a slot counts as busy while it holds a request, so each
    request's tokens after the first (from the prefill) are busy slot-steps; one slot is never idle; a
    second call adds to the same dict; the plain engine leaves it alone."""
    reqs = mixed_requests()
    stats: dict = {}
    res = scheduler.generate_fast(model, tok, reqs, max_new_tokens=10, batch_size=3, progress=False,
                                  options=FastOptions(slots=3, check_every=2), stats=stats)
    assert stats["calls"] == 1 and stats["slot_steps"] % 3 == 0 and stats["slot_steps"] > 0
    assert sum(r.num_tokens - 1 for r in res) <= stats["busy_slot_steps"] <= stats["slot_steps"]
    assert stats["host_seconds"] >= 0 and stats["refill_seconds"] > 0
    one: dict = {}
    scheduler.generate_fast(model, tok, reqs[:4], max_new_tokens=10, batch_size=1, progress=False,
                            options=FastOptions(slots=1), stats=one)
    assert one["busy_slot_steps"] == one["slot_steps"] > 0
    before = dict(stats)
    api.generate(model, tok, reqs[:4], max_new_tokens=10, batch_size=1, engine="fast", stats=stats,
                 fast=FastOptions(slots=1), progress=False)
    assert stats["calls"] == 2 and stats["slot_steps"] == before["slot_steps"] + one["slot_steps"]
    plain: dict = {}
    api.generate(model, tok, reqs[:2], max_new_tokens=4, engine="hf", stats=plain, progress=False)
    assert plain == {}


def chunked_feed(reqs: list, size: int, log: list):
    """A feed handing out ``reqs`` ``size`` at a time; ``log`` records ("feed", n) and ("result", i) in order."""
    chunks = [reqs[i:i + size] for i in range(0, len(reqs), size)][::-1]

    def feed():
        more = chunks.pop() if chunks else []
        log.append(("feed", len(more)))
        return more
    return feed


@pytest.mark.parametrize("engine_name", ["hf", "fast"])
def test_stream_equals_generate_and_indexes_results_in_feed_order(model, tok, engine_name):
    """Requests fed in chunks give the same tokens as one ``generate`` call over the list, each result under its
    index in the order fed. The plain engine finishes a chunk before asking for the next; the fast engine, with
    more free slots than a chunk fills, asks for the next chunks before any result is in (no tail per chunk)."""
    reqs = mixed_requests()
    whole = run(model, tok, reqs, batch_size=16, max_new_tokens=10, stop_strings=["*_"])
    got: dict[int, object] = {}
    log: list = []

    def on_result(i, res):
        assert i not in got
        got[i] = res
        log.append(("result", i))

    api.generate_stream(model, tok, chunked_feed(reqs, 3, log), on_result, total=len(reqs),
                        longest_prompt=max(api.prompt_tokens(tok, [r.prompt for r in reqs])),
                        max_new_tokens=10, batch_size=8, stop_strings=["*_"], engine=engine_name, progress=False,
                        fast=FastOptions(slots=8, check_every=3))
    assert [got[i] for i in range(len(reqs))] == whole
    feeds_before_first_result = log[: log.index(next(e for e in log if e[0] == "result"))]
    assert log.count(("feed", 0)) == 1  # asked once more after the last chunk, then never again
    if engine_name == "hf":
        assert feeds_before_first_result == [("feed", 3)]
    else:
        assert feeds_before_first_result == [("feed", 3)] * 3  # 8 free slots: 3 + 3 + 3 requests before decoding


@pytest.mark.parametrize("engine_name", ["hf", "fast"])
def test_stream_of_nothing_builds_nothing(model, tok, engine_name, monkeypatch):
    """total = 0 (a complete run resumed): neither the feed nor a decoder is touched."""
    monkeypatch.setattr(scheduler, "FastDecoder", None)  # building one would fail
    log: list = []
    api.generate_stream(model, tok, chunked_feed([], 1, log), lambda i, r: log.append(i), total=0,
                        longest_prompt=1, max_new_tokens=4, engine=engine_name, progress=False)
    assert log == []


def test_stream_fast_rejects_a_prompt_or_sampling_the_call_was_not_built_for(model, tok):
    reqs = [GenRequest(PROMPTS[0]), GenRequest(PROMPTS[1])]
    short = api.prompt_tokens(tok, [PROMPTS[0]])[0]
    with pytest.raises(ValueError, match="longest_prompt"):
        scheduler.stream_fast(model, tok, chunked_feed(reqs, 1, []), lambda i, r: None, longest_prompt=short,
                              total=2, max_new_tokens=4, progress=False, options=FastOptions(slots=1),
                              sampled=False, truncate=False)
    sampled = [GenRequest(PROMPTS[0], temperature=0.7, top_p=0.9, seed=1)]
    for flags in ({"sampled": False, "truncate": False}, {"sampled": True, "truncate": False}):
        with pytest.raises(ValueError, match="temperature=0.7, top_p=0.9"):
            scheduler.stream_fast(model, tok, chunked_feed(sampled, 1, []), lambda i, r: None, longest_prompt=64,
                                  total=1, max_new_tokens=4, progress=False, options=FastOptions(slots=1),
                                  **flags)


def test_fast_decoder_is_freed_without_garbage_collection(model, tok, monkeypatch):
    """A decoder (its KV cache, on CUDA its graph pool) must go when a call returns, not at the next
    gc pass: rollout rounds size the next cache from free memory, and a lingering 32 GiB cache made
    the 512-slot benchmark run out of memory."""
    import gc
    import weakref

    made = []

    class Spy(decoder.FastDecoder):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(weakref.ref(self))

    monkeypatch.setattr(scheduler, "FastDecoder", Spy)
    gc.disable()
    try:
        scheduler.generate_fast(model, tok, mixed_requests(), max_new_tokens=5, batch_size=4, progress=False,
                                options=FastOptions(slots=4))
        assert made and made[0]() is None, "FastDecoder kept alive by a reference cycle"
    finally:
        gc.enable()


def test_fast_with_lora_adapter_equals_hf(tok):
    from peft import LoraConfig, get_peft_model

    m = get_peft_model(tiny_model(tok), LoraConfig(r=4, target_modules="all-linear", init_lora_weights=False))
    m.eval()
    reqs = mixed_requests()
    assert run(m, tok, reqs, engine="fast", batch_size=4) == run(m, tok, reqs, batch_size=16)


def test_fast_rejects_unsupported_architecture(tok):
    from transformers import GPT2Config, GPT2LMHeadModel

    m = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2)).eval()
    with pytest.raises(ValueError, match="engine='hf'"):
        run(m, tok, [GenRequest("x")], engine="fast")


# ---- the fused decode layer (FastOptions.fuse) against the model's own modules ----------------------------


def tiny_qwen2(tokenizer, seed: int = 0):
    """Qwen2: q/k/v projections with biases (made non-zero here), 2 query heads per KV head."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0, 0.5)
            layer.input_layernorm.weight.uniform_(0.5, 1.5)
        model.lm_head.weight.mul_(20.0)
        model.lm_head.weight[: len(SPECIALS)] = 0.0
    return model


def fused_and_plain(m, tok, reqs, **kw):
    """A fused and an unfused FastDecoder over the same prefilled requests."""
    ids = encode_prompts(tok, [r.prompt for r in reqs])
    out = []
    for fuse in (True, False):
        d = decoder.FastDecoder(m, slots=len(reqs), cache_len=64, max_new_tokens=8, min_new_tokens=0,
                                eos=[tok.eos_token_id], pad=tok.pad_token_id, sampled=True, fuse=fuse, **kw)
        d.prefill(list(range(len(reqs))), ids, reqs)
        out.append(d)
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_fused_layer_equals_module_path(tok, arch):
    """Logits of several decode steps agree to float32 rounding, the KV caches too; generated tokens are equal
    (greedy and seeded samples, refills) and the model's weights are untouched (the fused ones are copies)."""
    m = tiny_model(tok) if arch == "llama" else tiny_qwen2(tok)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    reqs = mixed_requests()
    fused, plain = fused_and_plain(m, tok, reqs)
    assert fused.fuse_blocker is None and plain.fuse_blocker == "fuse=False"
    assert len(fused.fused) == m.config.num_hidden_layers and plain.fused is None
    with torch.no_grad():
        for _ in range(3):
            a, b = fused._logits(fused.tokens, fused.pos), plain._logits(plain.tokens, plain.pos)
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
            assert a.abs().max() > 1  # not a trivially small output
            fused.pos += 1
            plain.pos += 1
    for Kf, Kp in zip(fused.K + fused.V, plain.K + plain.V):
        torch.testing.assert_close(Kf, Kp, rtol=1e-5, atol=1e-5)
    runs = [scheduler.generate_fast(m, tok, reqs, max_new_tokens=10, batch_size=3, progress=False,
                                    options=FastOptions(slots=3, check_every=3, fuse=f)) for f in (True, False)]
    assert runs[0] == runs[1] == run(m, tok, reqs, batch_size=16, max_new_tokens=10)
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    ptrs = [v.data_ptr() for v in after.values()]
    assert len(set(ptrs)) == len(ptrs)  # no weight rebound to a shared (concatenated) storage


def test_fused_layer_steps_aside_for_unmerged_lora_and_other_activations(tok):
    """An unmerged LoRA layer or a non-SiLU MLP keeps the module path; the decoder says why."""
    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(tiny_model(tok), LoraConfig(r=4, target_modules=["q_proj", "down_proj"], init_lora_weights=False))
    gelu = tiny_model(tok)
    gelu.config.hidden_act = "gelu"
    reqs = [GenRequest(p) for p in PROMPTS]
    blockers = []
    for m in (lora.eval(), gelu):
        d = decoder.FastDecoder(m, slots=2, cache_len=64, max_new_tokens=4, min_new_tokens=0,
                                eos=[tok.eos_token_id], pad=tok.pad_token_id, sampled=False)
        assert d.fused is None
        blockers.append(d.fuse_blocker)
    assert "layer 0 q_proj" in blockers[0] and "not a plain nn.Linear" in blockers[0]
    assert "gelu" in blockers[1]
    assert decoder.FastDecoder(tiny_model(tok), slots=2, cache_len=64, max_new_tokens=4, min_new_tokens=0,
                               eos=[tok.eos_token_id], pad=tok.pad_token_id, sampled=False,
                               compile=True).fuse_blocker == "compile=True"
    assert run(lora, tok, reqs, engine="fast", batch_size=2) == run(lora, tok, reqs, batch_size=4)


def test_fused_copies_are_counted_and_reserved_when_sizing_slots(tok, monkeypatch):
    """fused_copy_bytes is the q/k/v + gate/up weights (and biases); fast_slots takes them off the free memory
    before giving half of it to the KV cache (on CUDA; here a stand-in device and memory query)."""
    from types import SimpleNamespace

    m = tiny_qwen2(tok)
    c, L = m.config, m.config.num_hidden_layers
    hd = c.hidden_size // c.num_attention_heads
    qkv = (c.num_attention_heads + 2 * c.num_key_value_heads) * hd * (c.hidden_size + 1)  # weights + biases
    assert kernels.fused_copy_bytes(m) == L * 4 * (qkv + 2 * c.intermediate_size * c.hidden_size)
    fake = SimpleNamespace(device=torch.device("cuda"), config=c, dtype=torch.bfloat16)
    per_slot = 2 * L * c.num_key_value_heads * hd * 64 * 2 + 16 * c.vocab_size
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000 * per_slot, 0))
    assert scheduler.fast_slots(fake, 1, 64, 10_000) == 500
    assert scheduler.fast_slots(fake, 1, 64, 10_000, reserve=400 * per_slot) == 300
    assert scheduler.fast_slots(fake, 8, 64, 10_000, reserve=2000 * per_slot) == 8  # never below batch_size


# ---- attn="flex": FlexAttention with a block-sparse mask against sdpa over the whole cache ---------------

LONG_PROMPT = "Long: " + "the quick brown fox jumps over the lazy dog; " * 3  # 142 tokens: cache_len 192


def eos_for_char_model(tok, char: str):
    """The tiny model with EOS scoring just above ``char``: a row stops on EOS wherever its greedy
    continuation would have produced ``char`` (some rows stop early, others run to the budget)."""
    m = tiny_model(tok)
    head = torch.nn.Linear(m.config.hidden_size, m.config.vocab_size, bias=True)
    c = tok.convert_tokens_to_ids(char)
    with torch.no_grad():
        head.weight.copy_(m.lm_head.weight)
        head.bias.zero_()
        head.weight[tok.eos_token_id] = head.weight[c]
        head.bias[tok.eos_token_id] = 1e-2
    m.lm_head = head
    return m


def flex_requests(sampled: bool):
    """More requests than slots (refills mid-run), prompt lengths from 2 to 142 tokens."""
    prompts = PROMPTS + [LONG_PROMPT] + [p + str(i) for i, p in enumerate(PROMPTS)] + ["Q", LONG_PROMPT[:90]]
    if not sampled:
        return [GenRequest(p) for p in prompts]
    return [GenRequest(p, temperature=0.8 + 0.1 * (i % 3), top_p=0.9 if i % 2 else 1.0, seed=300 + i)
            for i, p in enumerate(prompts)] + [GenRequest(PROMPTS[0])]


def fast_run(m, tok, reqs, attn, seen=None, monkeypatch=None, **opts):
    if seen is not None:  # record each decoder's cache shapes
        class Spy(decoder.FastDecoder):
            def __init__(self, *a, **kw):
                super().__init__(*a, **kw)
                seen.append((self.cache_len, self.K[0].shape[2]))

        monkeypatch.setattr(scheduler, "FastDecoder", Spy)
    return scheduler.generate_fast(m, tok, reqs, max_new_tokens=12, batch_size=3, progress=False,
                                   options=FastOptions(slots=3, attn=attn, check_every=2, **opts))


@pytest.fixture(params=["eager", "block_sparse"])
def flex_kernel(request, monkeypatch):
    """The CPU flex path as is (eager flex_attention: mask_mod everywhere), or with a stand-in that reads
    only the blocks the BlockMask lists (so the per-step in-place block update is checked end to end). The
    stand-in must be called: patched anywhere but where FastDecoder looks the name up, the test would pass
    on the eager kernel without checking the block lists."""
    calls = []
    if request.param == "block_sparse":
        monkeypatch.setattr(decoder, "_attend_flex", lambda *a: calls.append(1) or block_sparse_attend(*a))
    yield request.param
    assert (len(calls) > 0) == (request.param == "block_sparse"), "the block-sparse stand-in was not the kernel used"


@pytest.mark.parametrize("block", [16, 128])
def test_flex_greedy_equals_sdpa_with_refills_eos_and_padded_cache(tok, monkeypatch, flex_kernel, block):
    """Block 128: cache_len 192 is not a multiple of it, the cache is padded to 256; block 16: slots cross
    many block edges while decoding."""
    m = eos_for_char_model(tok, "h")
    reqs = flex_requests(sampled=False)
    sdpa = fast_run(m, tok, reqs, "sdpa")
    seen = []
    flex = fast_run(m, tok, reqs, "flex", seen, monkeypatch, flex_block=block)
    assert seen == [(192, 256 if block == 128 else 192)]
    assert flex == sdpa
    assert any(r.finished and r.num_tokens < 12 for r in sdpa) and any(not r.finished for r in sdpa)


def test_flex_seeded_samples_equal_sdpa(model, tok, flex_kernel):
    reqs = flex_requests(sampled=True)
    sdpa = fast_run(model, tok, reqs, "sdpa")
    assert fast_run(model, tok, reqs, "flex") == sdpa  # default block 64: 192 = 3 blocks, no padding
    assert len({r.text for r in sdpa}) > len(reqs) // 2


def test_fast_rejects_unknown_attn_and_bad_flex_block(model, tok):
    with pytest.raises(ValueError, match="attn must be one of"):
        FastOptions(attn="flash")
    with pytest.raises(ValueError, match="flex_block"):
        FastOptions(attn="flex", flex_block=48)
    with pytest.raises(ValueError, match="attn must be one of"):
        decoder.FastDecoder(model, slots=1, cache_len=64, max_new_tokens=4, min_new_tokens=0,
                            eos=[tok.eos_token_id], pad=tok.pad_token_id, sampled=False, attn="Flex")


def flex_case(lengths, kv_len=192, block=64, Hkv=2, G=3, D=16, seed=0):
    """Random q/K/V for slots of the given lengths (valid positions 0..len-1), the engine's FlexDecodeMask
    for them, and the boolean mask the sdpa path uses."""
    g = torch.Generator().manual_seed(seed)
    B = len(lengths)
    q = torch.randn(B, Hkv, G, D, generator=g)
    K, V = torch.randn(B, Hkv, kv_len, D, generator=g), torch.randn(B, Hkv, kv_len, D, generator=g)
    pos = torch.tensor(lengths) - 1
    fm = kernels.FlexDecodeMask(pos, G, kv_len, block)
    return q, K, V, pos, fm


def block_sparse_mask(bm) -> torch.Tensor:
    """[B, kv_len] bool: what a block-sparse kernel attends to under the decode BlockMask ``bm`` -- the
    full blocks whole, the partial blocks through mask_mod, every other block skipped. (The eager CPU
    flex_attention applies mask_mod to every position and ignores the block lists, so this checks them.)"""
    from torch.nn.attention.flex_attention import _ordered_to_dense

    B, kv_len, blk = bm.kv_num_blocks.shape[0], bm.seq_lengths[1], bm.BLOCK_SIZE[1]
    n = kv_len // blk

    def blocks(num, idx):
        return _ordered_to_dense(num, idx, n)[:, 0, 0].bool().repeat_interleave(blk, 1)

    full, part = blocks(bm.full_kv_num_blocks, bm.full_kv_indices), blocks(bm.kv_num_blocks, bm.kv_indices)
    b, kv = torch.arange(B)[:, None].expand(B, kv_len), torch.arange(kv_len)[None].expand(B, kv_len)
    mod = bm.mask_mod(b, torch.zeros_like(b), torch.zeros_like(b), kv)
    assert not (full & part).any(), "a block listed both full and partial"
    return full | (part & mod)


def block_sparse_attend(q, K, V, bm, scale):
    """A stand-in for the compiled kernel: sdpa over exactly the positions the block lists + mask_mod allow."""
    return kernels._attend_sdpa(q, K, V, block_sparse_mask(bm)[:, None, None, :], scale)


@pytest.mark.parametrize("block", [16, 64])
def test_flex_attention_equals_sdpa_length_mask(block):
    """Slots of length 1, at block edges, and at full length (192); then the same mask object after pos
    moves in place (as the captured decode step does)."""
    lengths = [1, 64, 65, 130, 191, 192]
    q, K, V, pos, fm = flex_case(lengths, block=block)
    bm, ptrs = fm.block_mask, [t.data_ptr() for t in fm.block_mask.as_tuple() if torch.is_tensor(t)]
    for step in range(3):
        want = torch.arange(fm.kv_len)[None] <= pos[:, None]
        assert torch.equal(block_sparse_mask(fm.block_mask), want)
        got = kernels._attend_flex(q, K, V, fm.block_mask, 0.25)
        ref = kernels._attend_sdpa(q, K, V, want[:, None, None, :], 0.25)
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
        pos += torch.tensor([1, 1, 0, 2, 1, 0])  # slot 5 stays at full length
        fm.update()
        assert fm.block_mask is bm and [t.data_ptr() for t in bm.as_tuple() if torch.is_tensor(t)] == ptrs


@pytest.mark.slow
def test_flex_attention_compiled_on_cpu_skips_blocks():
    """The compiled (inductor, block-sparse) kernel on CPU reads only the listed blocks: equal to sdpa, and
    wrong if the block lists are (~10 s of compile)."""
    from torch.nn.attention.flex_attention import flex_attention

    q, K, V, pos, fm = flex_case([1, 64, 65, 130, 191, 192])
    want = (torch.arange(fm.kv_len)[None] <= pos[:, None])[:, None, None, :]
    flex = torch.compile(flex_attention, dynamic=False)
    got = flex(q, K, V, block_mask=fm.block_mask, scale=0.25)
    torch.testing.assert_close(got, kernels._attend_sdpa(q, K, V, want, 0.25), rtol=1e-5, atol=1e-5)
    fm.full_num.zero_()  # the full blocks dropped: the kernel must now give something else
    assert not torch.allclose(flex(q, K, V, block_mask=fm.block_mask, scale=0.25), got, atol=1e-3)
