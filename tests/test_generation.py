"""generation.generate on a tiny random Llama with a char-level tokenizer (CPU, seconds)."""

from __future__ import annotations

import string

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from tokenizers.processors import TemplateProcessing

from looper_math import generation
from looper_math.generation import GenRequest, encode_prompts, generate, throughput_stats

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
    fast = generation.generate_fast(
        model, tok, reqs, max_new_tokens=10, batch_size=slots, stop_strings=["*_"], progress=False,
        options=generation.FastOptions(slots=slots, attn=attn, check_every=3),
    )
    assert fast == hf
    assert any(r.finished for r in hf) and any(not r.finished for r in hf)


def test_fast_decoder_is_freed_without_garbage_collection(model, tok, monkeypatch):
    """A decoder (its KV cache, on CUDA its graph pool) must go when a call returns, not at the next
    gc pass: rollout rounds size the next cache from free memory, and a lingering 32 GiB cache made
    the 512-slot benchmark run out of memory."""
    import gc
    import weakref

    made = []

    class Spy(generation.FastDecoder):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(weakref.ref(self))

    monkeypatch.setattr(generation, "FastDecoder", Spy)
    gc.disable()
    try:
        generation.generate_fast(model, tok, mixed_requests(), max_new_tokens=5, batch_size=4, progress=False,
                                 options=generation.FastOptions(slots=4))
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
