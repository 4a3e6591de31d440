"""``engine="hf"``: transformers' batched ``model.generate`` (dynamic cache), the reference path. Sampling rides
on a ``LogitsProcessor`` (``PerRowSampler``: the engine's own per-row sampling, generate itself runs greedy) and
stops on a ``StoppingCriteria`` that records each row's first stop (``StopRecorder``)."""

from __future__ import annotations

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria
from transformers import StoppingCriteriaList

from looper_math.engine import hf_internals
from looper_math.engine.requests import (GenRequest, GenResult, _Progress, cut_at_stop, encode_prompts, eos_ids,
                                         left_pad, length_sorted_batches, pad_id)
from looper_math.engine.sampling import draw_uniforms, sample_rows


class PerRowSampler(LogitsProcessor):
    """Samples each row with its own temperature / top_p / seeded uniforms, and hands generate()
    logits that are -inf except at the chosen token (generate runs with do_sample=False)."""

    def __init__(self, requests: list[GenRequest], prompt_width: int, steps: int, device):
        self.prompt_width = prompt_width
        self.uniforms = draw_uniforms(requests, steps).to(device)
        self.temperature = torch.tensor([float(r.temperature) for r in requests], device=device)
        self.top_p = torch.tensor([float(r.top_p) for r in requests], device=device)
        self.greedy = self.temperature <= 0
        self.truncate = bool((self.top_p < 1).any())

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_width
        tok = sample_rows(scores.float(), self.uniforms[:, step], self.temperature, self.top_p, self.greedy, self.truncate)
        forced = torch.full_like(scores, float("-inf"))
        forced.scatter_(1, tok[:, None], 0.0)
        # greedy rows keep their exact logits so they match plain greedy generate bit for bit
        return torch.where(self.greedy[:, None], scores, forced)


class StopRecorder(StoppingCriteria):
    """EOS or stop-string stop, recording per row the first decode step at which it happened
    (on device, no host sync), so num_tokens is exact even when pad == eos."""

    def __init__(self, eos: list[int], stop_strings: list[str] | None, tokenizer, prompt_width: int, rows: int, device):
        self.eos = torch.tensor(eos, device=device)
        self.stop = hf_internals.stop_string_criteria(tokenizer, stop_strings) if stop_strings else None
        self.prompt_width = prompt_width
        self.first_stop = torch.full((rows,), -1, dtype=torch.long, device=device)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = torch.isin(input_ids[:, -1], self.eos)
        if self.stop is not None:
            done = done | self.stop(input_ids, scores)
        step = input_ids.shape[1] - self.prompt_width - 1
        self.first_stop = torch.where((self.first_stop < 0) & done, step, self.first_stop)
        return done


def results_from_ids(
    tokenizer, gen_ids: torch.Tensor, first_stop: list[int], stop_strings: list[str] | None
) -> list[GenResult]:
    """gen_ids [B, T] generated ids (prompt removed); first_stop per row (-1: never stopped)."""
    out = []
    for row, fs in zip(gen_ids.tolist(), first_stop):
        n = fs + 1 if fs >= 0 else len(row)
        text, cut = cut_at_stop(tokenizer.decode(row[:n], skip_special_tokens=True), stop_strings)
        out.append(GenResult(text=text, num_tokens=n, finished=fs >= 0 or cut, token_ids=row[:n]))
    return out


@torch.inference_mode()
def _generate_hf(model, tokenizer, requests, *, max_new_tokens, batch_size, stop_strings, progress,
                 min_new_tokens, desc) -> list[GenResult]:
    device = model.device
    eos = eos_ids(model, tokenizer)
    pad = pad_id(tokenizer, eos)
    ids = encode_prompts(tokenizer, [r.prompt for r in requests])
    results: list[GenResult | None] = [None] * len(requests)
    bar = _Progress(progress, len(requests), desc)
    try:
        for batch in length_sorted_batches([len(x) for x in ids], batch_size):
            input_ids, mask = left_pad([ids[i] for i in batch], pad, device)
            width = input_ids.shape[1]
            reqs = [requests[i] for i in batch]
            processors = LogitsProcessorList()
            if any(r.temperature > 0 for r in reqs):
                processors.append(PerRowSampler(reqs, width, max_new_tokens, device))
            recorder = StopRecorder(eos, stop_strings, tokenizer, width, len(batch), device)
            config = GenerationConfig(
                max_new_tokens=max_new_tokens,
                min_new_tokens=min_new_tokens or None,
                do_sample=False,
                # only what the request says shapes the distribution, never a hub generation_config
                repetition_penalty=1.0,
                no_repeat_ngram_size=0,
                eos_token_id=eos,
                pad_token_id=pad,
                bos_token_id=tokenizer.bos_token_id,
            )
            out = model.generate(
                input_ids=input_ids,
                attention_mask=mask,
                generation_config=config,
                logits_processor=processors,
                stopping_criteria=StoppingCriteriaList([recorder]),
            )
            batch_results = results_from_ids(tokenizer, out[:, width:], recorder.first_stop.tolist(), stop_strings)
            for i, res in zip(batch, batch_results):
                results[i] = res
            bar.update(len(batch), sum(r.num_tokens for r in batch_results))
    finally:
        bar.close()
    return results  # type: ignore[return-value]
