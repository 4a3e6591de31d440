"""Regime W arms (instruction + sampling settings) and the bandit that spreads k samples over them.

An arm is one reasoning strategy: an instruction appended to the question prompt and the sampling
settings used with it. Every instruction ends by demanding the canonical final line ``#### <number>``
so that the one answer extractor (``looper_math.answers``) works the same on every arm.

The eight default arms, and why they differ:

Wolfram family (computational: make the arithmetic explicit so that it can be checked and re-run)
  ``wolfram_stepwise``   one arithmetic operation per line, ``a op b = c``. The most checkable form:
                         it feeds s_path's calculator check and s_cf's dataflow program directly.
                         Low temperature (0.6): this is the "careful clerk".
  ``wolfram_equations``  name every given quantity first (``apples = 12``), then compute the unknowns
                         from the names. Separates reading the problem from doing the arithmetic.
  ``wolfram_multiway``   expand every quantity reachable from the givens in one or two operations,
                         then pick the one the question asks for. Explores the space of derivations
                         (Wolfram's multiway systems) instead of committing to the first path; highest
                         temperature (1.0) because its point is breadth.
  ``wolfram_formula``    rewrite the question as one closed-form formula over the givens, then
                         evaluate it in steps. Catches problems whose structure is one expression.

Maudlin family (counterfactual / explanatory: say why each step holds, test it against variations)
  ``maudlin_causal``     state, for each step, which fact of the problem makes that operation the right
                         one. Forces the "because" that wrong-operation errors lack.
  ``maudlin_vary_input`` solve, then change one given number and check that the answer moves in the
                         direction and by the amount the reasoning predicts (a counterfactual check).
  ``maudlin_substitute`` solve, then substitute the answer back into the conditions of the problem and
                         verify every one of them (verification by back-substitution).
  ``maudlin_decompose``  list the sub-questions first, answer them in order, then combine
                         (least-to-most decomposition, Zhou et al. 2023).

Temperatures span 0.6-1.0 and top_p 0.9-1.0 so that the family of samples for one question covers
both careful and exploratory decoding.

Allocation (``Bandit.allocate_round``, one call per round of questions): ``uniform`` gives each
question one sample per arm when k equals the number of arms (sample_idx i on arm i), and otherwise
splits the round's pulls evenly over the arms. ``ucb`` (UCB1, Auer et al. 2002, with fantasised pulls
inside the round) and ``thompson`` (Gaussian Thompson sampling, one posterior draw per sample) allocate
from running per-arm reward statistics that ``update`` feeds after each round. Both keep the
exploration floor per round: the round's k * n pulls are allocated jointly and every arm first gets
ceil(exploration_floor * k * n) of them, so each arm's share of every round (hence of the run) is at
least the floor; the policy places the rest. Each arm's pulls are dealt out over the round's questions
so that an arm is compared on as many questions as its pulls allow. With k = 8 and one question per
round every arm is pulled once. Allocation is a pure function of (stats, seed, question ids of the
round): the generator is seeded from a blake2b hash, never Python's salted ``hash()``, and a resumed run
rebuilds the stats by calling ``update`` on the rows already on disk, in file order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from looper_math.seeds import stable_seed

__all__ = ["Arm", "Bandit", "default_arms", "load_arms", "stable_seed"]

FAMILIES = ("wolfram", "maudlin")
ALLOCATIONS = ("uniform", "ucb", "thompson")

_FINAL = (
    'Finish with exactly one final line of the form "#### <number>": the final numeric answer only, '
    "no units, no words."
)


@dataclass
class Arm:
    name: str
    family: str  # "wolfram" | "maudlin"
    instruction: str
    temperature: float
    top_p: float


def default_arms() -> list[Arm]:
    """The eight built-in arms (four Wolfram, four Maudlin); see the module docstring."""
    return [
        Arm(
            "wolfram_stepwise",
            "wolfram",
            "Solve the problem step by step. Write each step as a single arithmetic operation on its own "
            'line in the form "a op b = c", using only numbers from the problem or results of earlier '
            "steps. " + _FINAL,
            0.6,
            0.95,
        ),
        Arm(
            "wolfram_equations",
            "wolfram",
            "First name every quantity given in the problem and every quantity you need (for example "
            '"price per book = 4"). Then compute each unknown quantity from the named ones, one equation '
            'per line, writing the arithmetic as "a op b = c". ' + _FINAL,
            0.7,
            0.95,
        ),
        Arm(
            "wolfram_multiway",
            "wolfram",
            "List every quantity that can be computed from the given numbers in one or two operations, "
            'each as "a op b = c". Then decide which of these quantities the question asks for and '
            "continue the computation from it until you reach the answer. " + _FINAL,
            1.0,
            1.0,
        ),
        Arm(
            "wolfram_formula",
            "wolfram",
            "Rewrite the problem as one formula that gives the answer in terms of the given numbers. "
            'Then evaluate the formula step by step, each step as "a op b = c". ' + _FINAL,
            0.6,
            0.9,
        ),
        Arm(
            "maudlin_causal",
            "maudlin",
            "Solve the problem step by step. Before each calculation, say in one sentence which fact in "
            "the problem makes this operation the right one, then write the calculation as "
            '"a op b = c". ' + _FINAL,
            0.8,
            0.95,
        ),
        Arm(
            "maudlin_vary_input",
            "maudlin",
            'Solve the problem step by step, writing each calculation as "a op b = c". Then check the '
            "solution: change one of the given numbers, predict how the answer should change, and "
            "confirm that your steps give that change. If the check fails, fix the solution. " + _FINAL,
            0.8,
            0.95,
        ),
        Arm(
            "maudlin_substitute",
            "maudlin",
            'Solve the problem step by step, writing each calculation as "a op b = c". Then verify the '
            "answer by substituting it back into every condition stated in the problem. If a condition "
            "fails, fix the solution. " + _FINAL,
            0.7,
            0.95,
        ),
        Arm(
            "maudlin_decompose",
            "maudlin",
            "First list the sub-questions that must be answered to solve the problem, in order. Then "
            'answer each sub-question with its calculation written as "a op b = c", and combine the '
            "answers. " + _FINAL,
            0.9,
            0.95,
        ),
    ]


def load_arms(cfg: Any) -> list[Arm]:
    """Arms from ``cfg.arms`` (the ``regime_w`` config section, or anything with an ``arms`` list of dicts),
    or the defaults when that list is empty.

    Fails with a one-line ValueError naming ``regime_w.arms[i].field`` for a missing or unknown field,
    a wrong type, a family other than wolfram|maudlin, sampling settings out of range, an instruction
    that does not ask for the ``####`` final line, or a duplicate name.
    """
    if not cfg.arms:
        return default_arms()
    names = [f.name for f in fields(Arm)]
    arms: list[Arm] = []
    for i, d in enumerate(cfg.arms):
        where = f"regime_w.arms[{i}]"
        if not isinstance(d, dict):
            raise ValueError(f"{where}: expected a mapping with fields {', '.join(names)}")
        for key in d:
            if key not in names:
                raise ValueError(f"{where}.{key}: unknown field (expected {', '.join(names)})")
        for key in names:
            if key not in d:
                raise ValueError(f"{where}.{key}: missing field")
        for key in ("name", "family", "instruction"):
            if not isinstance(d[key], str) or not d[key].strip():
                raise ValueError(f"{where}.{key}: expected a non-empty string, got {d[key]!r}")
        for key in ("temperature", "top_p"):
            if isinstance(d[key], bool) or not isinstance(d[key], (int, float)):
                raise ValueError(f"{where}.{key}: expected a number, got {d[key]!r}")
        if d["family"] not in FAMILIES:
            raise ValueError(f"{where}.family: expected one of {FAMILIES}, got {d['family']!r}")
        if not 0.0 < d["temperature"] <= 2.0:
            raise ValueError(f"{where}.temperature: expected 0 < temperature <= 2, got {d['temperature']}")
        if not 0.0 < d["top_p"] <= 1.0:
            raise ValueError(f"{where}.top_p: expected 0 < top_p <= 1, got {d['top_p']}")
        if "####" not in d["instruction"]:
            raise ValueError(f"{where}.instruction: must ask for the final line '#### <number>'")
        if d["name"] in {a.name for a in arms}:
            raise ValueError(f"{where}.name: duplicate arm name {d['name']!r}")
        arms.append(Arm(d["name"], d["family"], d["instruction"], float(d["temperature"]), float(d["top_p"])))
    return arms


class Bandit:
    """Allocates k samples per question over the arms; see the module docstring for the policies."""

    def __init__(
        self,
        arms: list[Arm],
        allocation: str = "ucb",
        k: int = 8,
        exploration_floor: float = 0.05,
        ucb_c: float = 1.0,
        seed: int = 0,
    ):
        if not arms:
            raise ValueError("Bandit: needs at least one arm")
        if allocation not in ALLOCATIONS:
            raise ValueError(f"regime_w.allocation: expected one of {ALLOCATIONS}, got {allocation!r}")
        if k < 1:
            raise ValueError(f"Bandit: k must be >= 1, got {k}")
        if not 0.0 <= exploration_floor <= 1.0 / len(arms):
            raise ValueError(
                f"regime_w.exploration_floor: expected 0 <= floor <= 1/#arms = {1.0 / len(arms):.4g}, got {exploration_floor}"
            )
        self.names = [a.name for a in arms]
        if len(set(self.names)) != len(self.names):
            raise ValueError("Bandit: arm names must be unique")
        self.allocation = allocation
        self.k = k
        self.floor = exploration_floor
        self.ucb_c = ucb_c
        self.seed = seed
        n = len(arms)
        self.pulls = np.zeros(n, dtype=np.int64)
        self.reward_sum = np.zeros(n)
        self.reward_sq_sum = np.zeros(n)
        self.correct_sum = np.zeros(n, dtype=np.int64)

    # -- allocation ---------------------------------------------------------------------------
    def allocate_round(self, question_ids: list[str]) -> dict[str, list[str]]:
        """k arm names for every question of one round; a pure function of (stats, seed, question_ids).

        The round's T = k * len(question_ids) pulls are allocated jointly: each arm first gets its floor,
        ceil(exploration_floor * T) pulls (at most T // #arms), so its share of the round is at least the
        floor; the policy allocates the rest. Each arm's pulls are then dealt out over the questions (in
        an order shuffled from the seed) so that an arm with m pulls is on min(m, n) different questions.
        """
        if len(set(question_ids)) != len(question_ids):
            raise ValueError("Bandit.allocate_round: question ids must be distinct")
        n_arms, n_q = len(self.names), len(question_ids)
        if n_q == 0:
            return {}
        total = self.k * n_q
        if self.allocation == "uniform":
            # k == #arms keeps sample_idx i on arm i; otherwise k consecutive arms from a question-dependent
            # offset. Per question, never per round, so shards of a run allocate exactly as one process does.
            offsets = {q: 0 if self.k == n_arms else stable_seed(self.seed, "offset", q) % n_arms for q in question_ids}
            return {q: [self.names[(offsets[q] + j) % n_arms] for j in range(self.k)] for q in question_ids}
        rng = np.random.default_rng(stable_seed(self.seed, "allocate", *question_ids))
        counts = np.full(n_arms, min(math.ceil(self.floor * total - 1e-9), total // n_arms), dtype=np.int64)
        rest = total - int(counts.sum())
        means = self._posterior_means()
        if self.allocation == "ucb":
            # UCB1 with fantasised pulls: real pulls + this round's picks so far
            fantasy = self.pulls.astype(float) + counts
            tiebreak = rng.random(n_arms) * 1e-12
            for _ in range(rest):
                with np.errstate(divide="ignore", invalid="ignore"):
                    bonus = self.ucb_c * np.sqrt(math.log(max(fantasy.sum(), 1.0)) / fantasy)
                a = int(np.argmax(np.where(fantasy == 0, np.inf, means + bonus) + tiebreak))
                fantasy[a] += 1
                counts[a] += 1
        else:  # thompson: one posterior draw per sample
            sd = self._reward_sd() / np.sqrt(self.pulls + 1.0)
            draws = means + sd * rng.standard_normal((rest, n_arms))
            counts += np.bincount(np.argmax(draws, axis=1), minlength=n_arms) if rest else 0
        # deal: the arms' pulls in arm order, position p to the p-th question of a shuffled order
        # (mod n), so every question gets k and each arm is spread over as many questions as it can be
        order = [question_ids[i] for i in rng.permutation(n_q)]
        out: dict[str, list[str]] = {q: [] for q in question_ids}
        p = 0
        for a, c in enumerate(counts):
            for _ in range(int(c)):
                out[order[p % n_q]].append(self.names[a])
                p += 1
        return out

    def _posterior_means(self) -> np.ndarray:
        # one pseudo-observation at the pooled mean: unpulled arms start at the average arm
        total = self.pulls.sum()
        prior = self.reward_sum.sum() / total if total else 0.0
        return (self.reward_sum + prior) / (self.pulls + 1.0)

    def _reward_sd(self) -> float:
        total = self.pulls.sum()
        if total < 2:
            return 1.0
        mean = self.reward_sum.sum() / total
        var = max(self.reward_sq_sum.sum() / total - mean * mean, 0.0)
        return max(math.sqrt(var), 0.05)  # a floor so a run of identical rewards cannot stop exploration

    # -- statistics ---------------------------------------------------------------------------
    def update(self, rows: list[dict]) -> None:
        """Add finished trajectories (each with ``arm``, ``reward``, ``correct``) to the per-arm stats.

        Additive and applied in row order, so replaying the rows already on disk (in file order)
        rebuilds exactly the state of the run that wrote them.
        """
        index = {name: i for i, name in enumerate(self.names)}
        for row in rows:
            if row["arm"] not in index:
                raise ValueError(f"Bandit.update: unknown arm {row['arm']!r} (arms: {', '.join(self.names)})")
            i = index[row["arm"]]
            r = float(row["reward"])
            self.pulls[i] += 1
            self.reward_sum[i] += r
            self.reward_sq_sum[i] += r * r
            self.correct_sum[i] += int(bool(row["correct"]))

    def stats(self) -> dict[str, dict]:
        """Per arm: pulls, mean_reward and accuracy (0.0 for an arm never pulled)."""
        out = {}
        for i, name in enumerate(self.names):
            p = int(self.pulls[i])
            out[name] = {
                "pulls": p,
                "mean_reward": float(self.reward_sum[i] / p) if p else 0.0,
                "accuracy": float(self.correct_sum[i] / p) if p else 0.0,
            }
        return out

    def state_dict(self) -> dict:
        return {
            "arms": list(self.names),
            "allocation": self.allocation,
            "pulls": self.pulls.tolist(),
            "reward_sum": self.reward_sum.tolist(),
            "reward_sq_sum": self.reward_sq_sum.tolist(),
            "correct_sum": self.correct_sum.tolist(),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["arms"] != self.names:
            raise ValueError(f"Bandit.load_state_dict: arms {state['arms']} differ from {self.names}")
        self.pulls = np.array(state["pulls"], dtype=np.int64)
        self.reward_sum = np.array(state["reward_sum"], dtype=float)
        self.reward_sq_sum = np.array(state["reward_sq_sum"], dtype=float)
        self.correct_sum = np.array(state["correct_sum"], dtype=np.int64)
