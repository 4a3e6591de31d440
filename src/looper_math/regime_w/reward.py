"""The Regime W reward of one trajectory.

    reward = alpha_correct * correct + beta_coherence * s_wm - length_penalty * num_tokens

Correctness dominates with the defaults (alpha 1.0, beta 0.5, s_wm in [0, 1]): a correct trajectory
with the worst coherence outranks an incorrect one with the best, unless it is over a thousand tokens
longer (0.0005 per token). The same ``correct`` that the rollout rows store comes from
``looper_math.answers``, the extractor that evaluation uses.
"""

from __future__ import annotations


def compute_reward(
    correct: bool,
    s_wm: float,
    num_tokens: int,
    alpha_correct: float,
    beta_coherence: float,
    length_penalty: float,
) -> float:
    """alpha_correct * correct + beta_coherence * s_wm - length_penalty * num_tokens."""
    if not 0.0 <= s_wm <= 1.0:
        raise ValueError(f"compute_reward: s_wm must be in [0, 1], got {s_wm}")
    if num_tokens < 0:
        raise ValueError(f"compute_reward: num_tokens must be >= 0, got {num_tokens}")
    return alpha_correct * float(bool(correct)) + beta_coherence * s_wm - length_penalty * num_tokens
