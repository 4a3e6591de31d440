"""Regime W: the multi-path coherence signal (arms, bandit, scores, reward).

A self-contained subpackage; the rest of the code reaches it only through ``arms.default_arms`` /
``arms.load_arms``, ``arms.Bandit``, ``scoring.score_group`` and ``reward.compute_reward``, so it can be
kept out of a public release or swapped without touching the phases.
"""

from looper_math.regime_w.arms import Arm, Bandit, default_arms, load_arms
from looper_math.regime_w.reward import compute_reward
from looper_math.regime_w.scoring import extract_steps, score_group

__all__ = ["Arm", "Bandit", "default_arms", "load_arms", "compute_reward", "extract_steps", "score_group"]
