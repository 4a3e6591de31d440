"""Per-row seeded sampling, the same for both engines: each request's uniforms from its own seed
(``draw_uniforms``) and inverse-CDF sampling of its temperature-scaled, top-p-truncated distribution
(``sample_rows``); see the contract in ``looper_math.engine.api``."""

from __future__ import annotations

import torch

from looper_math.engine.requests import GenRequest


# ----------------------------------------------------------------------------------------------------
# Per-row seeded sampling


def draw_uniforms(requests: list[GenRequest], steps: int) -> torch.Tensor:
    """[rows, steps] uniforms; row i comes from a torch.Generator seeded with requests[i].seed, so a
    request's draws are the same whatever batch it lands in."""
    rows = []
    for r in requests:
        g = torch.Generator().manual_seed(int(r.seed))
        rows.append(torch.rand(steps, generator=g, dtype=torch.float64))
    return torch.stack(rows).to(torch.float32)


def sample_rows(
    scores: torch.Tensor,
    uniforms: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    greedy: torch.Tensor,
    truncate: bool = True,
) -> torch.Tensor:
    """Inverse-CDF sampling per row; returns token ids [B].

    scores [B, V] float32 (already processed, e.g. -inf on a blocked EOS); uniforms [B] in [0, 1);
    temperature / top_p [B]; greedy [B] bool (those rows take the argmax). Rows with top_p < 1 keep the
    smallest prefix of the sorted distribution whose mass reaches top_p (as transformers'
    TopPLogitsWarper) and invert the CDF in sorted order. Rows with top_p >= 1 invert the CDF in
    vocabulary order: the same distribution without sorting the vocabulary, which at a 152k vocabulary
    and thousands of rows costs more than the rest of a small model's decode step. Which path a row
    takes depends on its own top_p only, so its token never depends on the other rows of its batch.
    ``truncate=False`` (the caller knows no row has top_p < 1) skips the sorted path entirely."""
    t = torch.where(greedy, torch.ones_like(temperature), temperature)
    scaled = scores / t[:, None]
    u = uniforms[:, None]
    vocab = scores.shape[-1]
    cum = torch.softmax(scaled, dim=-1).cumsum(-1)
    plain = torch.searchsorted(cum, u * cum[:, -1:], right=True).clamp_(max=vocab - 1).squeeze(1)
    sampled = plain
    if truncate:
        sorted_logits, sorted_idx = torch.sort(scaled, dim=-1, descending=True, stable=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        cum = probs.cumsum(-1)
        probs = probs * ((cum - probs) < top_p[:, None])
        cum = probs.cumsum(-1)
        j = torch.searchsorted(cum, u * cum[:, -1:], right=True).clamp_(max=vocab - 1)
        sampled = torch.where(top_p < 1, sorted_idx.gather(1, j).squeeze(1), plain)
    return torch.where(greedy, scores.argmax(-1), sampled)
