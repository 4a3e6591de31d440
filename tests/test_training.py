"""SFT and DPO on the tiny model, CPU: parameters move, frozen things stay, the losses mean what they say.

TRL's smoke-test pattern: snapshot the trainable parameters when the trainer is built, train, assert
every one changed, and that the frozen base weights (in memory and on disk) did not. The trainers are
the ones ``sft.py`` / ``dpo.py`` build: ``trl.SFTTrainer`` / ``trl.DPOTrainer`` are swapped for a
subclass that records (or stops right after) construction, so nothing here re-implements their setup.

Also: completion-only labels (prompt masked, EOS of every completion learned, also when pad == eos, one
BOS), DPO's first loss is ln 2 because the reference is the frozen SFT adapter (so policy == reference
at step 0), and ``dpo.nll_weight`` selects ``loss_type=["sigmoid", "sft"]`` (Iterative RPO).
The NaN guard and the safetensors-only rule in depth are in test_reliability.py / test_security.py.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import REPO, smoke_overrides

from looper_math.config import load_config, to_dict

SFT_SET = ("sft.max_steps=6", "sft.save_steps=3", "sft.logging_steps=1", "sft.learning_rate=1.0e-2", "lora.dropout=0.0")
DPO_SET = ("dpo.nll_weight=0.0", "dpo.max_steps=3", "dpo.logging_steps=1", "dpo.save_steps=3", "dpo.batch_size=4",
           "dpo.grad_accum=1", "lora.dropout=0.0")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# What transformers' Trainer writes into checkpoint-N besides the safetensors adapter: torch-format
# (pickle) optimizer, LR-scheduler and RNG state, read back on resume with torch.load(weights_only=True)
# (tests/test_security.py loads them that way). Its pickled training_args.bin is deleted (DropPickledArgs).
TRAINER_STATE_FILES = {"optimizer.pt", "scheduler.pt", "rng_state.pth"}

# Hand-written GSM8K-style pairs: the correct solution vs one with a wrong step and a wrong final line.
PAIRS = [
    ("Tom has 3 boxes with 4 apples in each box. How many apples does Tom have?",
     "Each box has 4 apples, so 3 boxes have 3*4 = 12 apples.\n#### 12",
     "Each box has 4 apples, so 3 boxes have 3+4 = 7 apples.\n#### 7"),
    ("Ana had 20 dollars and spent 8 dollars on lunch. How many dollars does she have left?",
     "She has 20-8 = 12 dollars left.\n#### 12",
     "She has 20+8 = 28 dollars left.\n#### 28"),
    ("A book costs 5 dollars. How much do 6 books cost?",
     "6 books cost 6*5 = 30 dollars.\n#### 30",
     "6 books cost 6+5 = 11 dollars.\n#### 11"),
    ("Mia reads 10 pages a day. How many pages does she read in 7 days?",
     "In 7 days she reads 7*10 = 70 pages.\n#### 70",
     "In 7 days she reads 10/7 = 1 pages.\n#### 1"),
]


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256(p) for p in sorted(Path(root).rglob("*")) if p.is_file()}


def make_cfg(run_dir: Path, tiny_model_dir: Path, *extra: str):
    """Like conftest's smoke_cfg, for module-scoped fixtures (own run dir, the session's tiny model copied in)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if not (run_dir / "tiny_model").exists():
        shutil.copytree(tiny_model_dir, run_dir / "tiny_model")
    return load_config(REPO / "configs" / "demo.yaml", smoke_overrides(run_dir) + list(extra))


def adapter_key(param_name: str) -> str:
    """Live PEFT parameter name -> key in adapter_model.safetensors (the adapter name is dropped on save)."""
    return param_name.replace(".default.", ".")


class _Built(Exception):
    """Raised right after a trainer is constructed, to inspect it without training."""


def recording(trainer_cls, seen: dict, *, stop: bool = False):
    """A subclass of trainer_cls that stores itself and a copy of every parameter once constructed."""

    class Recording(trainer_cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen["trainer"] = self
            seen["init"] = {n: p.detach().clone() for n, p in self.model.named_parameters()}
            if stop:
                raise _Built

    return Recording


# --------------------------------------------------------------------------------------------- SFT


@pytest.fixture(scope="module")
def sft_run(tmp_path_factory, tiny_model_dir):
    """One 6-step SFT run (lr high enough that every LoRA weight moves), recorded."""
    import trl

    from looper_math.sft import train_sft

    cfg = make_cfg(tmp_path_factory.mktemp("train"), tiny_model_dir, *SFT_SET)
    base_file = cfg.path("tiny_model") / "model.safetensors"
    base_hash = sha256(base_file)
    seen: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trl, "SFTTrainer", recording(trl.SFTTrainer, seen))
        summary = train_sft(cfg)
    return SimpleNamespace(cfg=cfg, out=cfg.path(cfg.sft.output_dir), summary=summary, base_file=base_file,
                           base_hash=base_hash, **seen)


def test_sft_trains_every_lora_weight_and_leaves_the_base_untouched(sft_run):
    trainer, init = sft_run.trainer, sft_run.init
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable), sorted(trainable)[:4]
    # every targeted projection of both layers got an adapter
    assert len(trainable) == 2 * 2 * len(sft_run.cfg.lora.target_modules)
    assert all(not init[n].any() for n in trainable if "lora_B" in n), "lora_B must start at zero"

    saved = load_file(sft_run.out / "adapter_model.safetensors")
    assert set(saved) == {adapter_key(n) for n in trainable}
    for n in sorted(trainable):
        final = saved[adapter_key(n)]
        assert not torch.equal(final, init[n]), f"{n} did not change"
        if "lora_B" in n:
            assert final.abs().sum() > 0, f"{n} is still zero"

    live = dict(trainer.model.named_parameters())
    frozen = [n for n in init if n not in trainable]
    assert frozen
    for n in frozen:
        assert torch.equal(live[n], init[n]), f"frozen base weight {n} changed"
    assert sha256(sft_run.base_file) == sft_run.base_hash, "base model file on disk changed"


def test_sft_output_folder(sft_run):
    """Safetensors-only final adapter, finite losses for every step, resolved config next to it."""
    out, cfg = sft_run.out, sft_run.cfg
    assert (out / "adapter_model.safetensors").exists() and (out / "adapter_config.json").exists()
    assert not [p.name for p in out.iterdir() if p.suffix in PICKLE_SUFFIXES], "pickle in the final adapter folder"
    assert not (out / "ref").exists()
    pickled = [p for p in out.rglob("*") if p.suffix in PICKLE_SUFFIXES]
    for p in pickled:  # only the Trainer's resume state inside trainer/checkpoint-N (see TRAINER_STATE_FILES)
        assert p.name in TRAINER_STATE_FILES and p.parent.parent == out / "trainer", p
    ckpts = sorted((out / "trainer").glob("checkpoint-*"))
    assert [c.name for c in ckpts] == ["checkpoint-3", "checkpoint-6"]
    for c in ckpts:
        assert (c / "adapter_model.safetensors").exists() and not (c / "training_args.bin").exists()

    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 6 and summary["phase"] == "sft"
    assert [s for s, _ in summary["losses"]] == [1, 2, 3, 4, 5, 6]
    assert all(math.isfinite(v) for _, v in summary["losses"]) and math.isfinite(summary["train_loss"])
    assert summary["losses"][-1][1] < summary["losses"][0][1], "loss did not go down at lr 1e-2"
    assert yaml.safe_load((out / "resolved_config.yaml").read_text()) == to_dict(cfg)
    assert json.loads((out / "looper_base_model.json").read_text())["base_model"] == "tiny"
    # the shared scaffold (train_common.TrainerRun): the settings fingerprint, the KV cache off in training,
    # sft.save_total_limit reaching the Trainer
    from looper_math.config import fingerprint

    assert summary["settings_fingerprint"] == sft_run.summary["settings_fingerprint"] == fingerprint(cfg, "sft")
    assert sft_run.trainer.model.config.use_cache is False and sft_run.trainer.args.save_total_limit == cfg.sft.save_total_limit


@pytest.mark.parametrize("pad_is_eos", [False, True], ids=["own_pad", "pad_eq_eos"])
def test_sft_labels_mask_the_prompt_and_learn_eos(pad_is_eos, smoke_cfg, monkeypatch):
    """The SFTTrainer as sft.py builds it (stopped before training): prompt tokens are -100, every
    completion token and the final EOS are labels, one BOS, and collation keeps the EOS label even when
    pad == eos (Llama-2 / Abel tokenizers have no pad; load_tokenizer then sets pad = eos)."""
    import trl

    import looper_math.sft as sft_mod
    from looper_math.modeling import load_tokenizer

    if pad_is_eos:
        def tokenizer_pad_eos(cfg):
            tok = load_tokenizer(cfg)
            tok.pad_token = tok.eos_token
            return tok

        monkeypatch.setattr(sft_mod, "load_tokenizer", tokenizer_pad_eos)
    seen: dict = {}
    monkeypatch.setattr(trl, "SFTTrainer", recording(trl.SFTTrainer, seen, stop=True))
    cfg = smoke_cfg("sft.limit=6")
    with pytest.raises(_Built):
        sft_mod.train_sft(cfg)
    trainer = seen["trainer"]
    tok = trainer.processing_class
    assert (tok.pad_token_id == tok.eos_token_id) == pad_is_eos
    raw, _ = sft_mod.build_dataset(cfg, load_tokenizer(cfg))
    ds = trainer.train_dataset
    assert len(ds) == len(raw) == 6

    for ex, row in zip(ds, raw):
        ids, labels = ex["input_ids"], ex["labels"]
        prompt_ids = tok(row["prompt"]).input_ids  # what generation feeds the model (with its BOS)
        n = len(prompt_ids)
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1, "double BOS"
        assert ids[:n] == prompt_ids, "training prompt differs from the generation prompt"
        assert labels[:n] == [-100] * n, "loss on prompt tokens"
        assert labels[n:] == ids[n:], "a completion token is not learned"
        assert ids[-1] == labels[-1] == tok.eos_token_id, "EOS not at the end of the completion / not learned"
        assert tok.decode(ids[n:]) == row["completion"] + tok.eos_token

    batch = trainer.data_collator([ds[i] for i in range(len(ds))])
    lengths = [len(ex["input_ids"]) for ex in ds]
    assert len(set(lengths)) > 1, "need different lengths to exercise padding"
    for i, n in enumerate(lengths):
        real = batch["attention_mask"][i].bool()
        assert int(real.sum()) == n
        labels = batch["labels"][i]
        assert labels[real].tolist() == ds[i]["labels"], "collation changed the labels of real tokens"
        assert (labels[~real] == -100).all(), "padding is learned"
        assert labels[real][-1] == tok.eos_token_id


# --------------------------------------------------------------------------------------------- DPO


def write_pairs(path: Path, tokenizer) -> Path:
    from looper_math.prompts import build_prompt

    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{"prompt": build_prompt(tokenizer, "abel", q), "chosen": good, "rejected": bad} for q, good, bad in PAIRS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def dpo_run(sft_run):
    """3 steps of plain DPO (nll_weight 0) from the SFT adapter above, on the hand-written pairs, recorded."""
    import trl

    from looper_math.dpo import train_dpo
    from looper_math.modeling import load_tokenizer

    cfg = load_config(REPO / "configs" / "demo.yaml", smoke_overrides(Path(sft_run.cfg.run_dir)) + list(SFT_SET) + list(DPO_SET))
    write_pairs(cfg.path(cfg.prefs.output), load_tokenizer(cfg))
    sft_dir = cfg.path(cfg.sft.output_dir)
    sft_before = tree_hashes(sft_dir)
    seen: dict = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(trl, "DPOTrainer", recording(trl.DPOTrainer, seen))
        summary = train_dpo(cfg)
    return SimpleNamespace(cfg=cfg, out=cfg.path(cfg.dpo.output_dir), sft_dir=sft_dir, sft_before=sft_before,
                           summary=summary, **seen)


def test_dpo_first_loss_is_ln2_against_the_frozen_sft_reference(dpo_run):
    hist = json.loads((dpo_run.out / "log_history.json").read_text())
    logged = [h for h in hist if "loss" in h]
    assert [h["step"] for h in logged] == [1, 2, 3]
    first = logged[0]
    assert first == dpo_run.summary["first_logged"]
    # policy == reference at step 0 (both the SFT adapter): every pair's implicit reward margin is 0
    assert abs(first["loss"] - math.log(2)) < 1e-4, first
    assert abs(first["rewards/margins"]) < 1e-4, first
    assert all(math.isfinite(h["loss"]) for h in logged)
    assert dpo_run.trainer.args.loss_type == ["sigmoid"]

    # ln 2 says policy == reference; both must be the SFT adapter (not, say, the bare base model):
    # the policy starts from the SFT weights ...
    sft = load_file(dpo_run.sft_dir / "adapter_model.safetensors")
    policy = {adapter_key(n): t for n, t in dpo_run.init.items() if ".default." in n}
    assert set(policy) == set(sft) and all(torch.equal(policy[k], sft[k]) for k in sft)
    # ... and the reference TRL used is a frozen copy of it: in the last checkpoint it still equals SFT
    ckpt = dpo_run.out / "trainer" / "checkpoint-3"
    ref = load_file(ckpt / "ref" / "adapter_model.safetensors")
    assert set(ref) == set(sft) and all(torch.equal(ref[k], sft[k]) for k in sft), "reference adapter moved"
    assert not any(p.requires_grad for n, p in dpo_run.trainer.model.named_parameters() if ".ref." in n)


def test_dpo_moves_every_weight_and_leaves_sft_untouched(dpo_run):
    sft = load_file(dpo_run.sft_dir / "adapter_model.safetensors")
    dpo = load_file(dpo_run.out / "adapter_model.safetensors")
    assert set(dpo) == set(sft), "the final DPO adapter must hold only the trained adapter (no 'ref' copy)"
    unchanged = [k for k in sft if torch.equal(dpo[k], sft[k])]
    assert not unchanged, f"{len(unchanged)} DPO tensors equal the SFT start, e.g. {unchanged[:2]}"
    assert tree_hashes(dpo_run.sft_dir) == dpo_run.sft_before, "DPO modified the SFT adapter folder"
    assert not [p.name for p in dpo_run.out.iterdir() if p.suffix in PICKLE_SUFFIXES or p.is_dir() and p.name == "ref"]
    summary = json.loads((dpo_run.out / "train_summary.json").read_text())
    assert summary["pairs"] == len(PAIRS) and summary["steps"] == 3 and summary["init_adapter"] == str(dpo_run.sft_dir)
    assert yaml.safe_load((dpo_run.out / "resolved_config.yaml").read_text())["dpo"]["nll_weight"] == 0.0
    from looper_math.config import fingerprint

    assert summary["settings_fingerprint"] == dpo_run.summary["settings_fingerprint"] == fingerprint(dpo_run.cfg, "dpo")
    # dpo.save_total_limit (default 2: the value dpo.py hard-coded before the key existed) reaches the Trainer
    assert dpo_run.cfg.dpo.save_total_limit == 2 and dpo_run.trainer.args.save_total_limit == 2
    assert dpo_run.trainer.model.config.use_cache is False


def test_dpo_nll_weight_adds_the_sft_loss(dpo_run, monkeypatch):
    """nll_weight=1 -> DPO + NLL on chosen (Iterative RPO): loss_type ["sigmoid", "sft"], weights [1, 1]."""
    import trl

    from looper_math.dpo import train_dpo

    cfg = load_config(REPO / "configs" / "demo.yaml", smoke_overrides(Path(dpo_run.cfg.run_dir)) + list(SFT_SET) + list(DPO_SET)
                      + ["dpo.nll_weight=1.0", "dpo.output_dir=checkpoints/dpo_nll"])
    seen: dict = {}
    monkeypatch.setattr(trl, "DPOTrainer", recording(trl.DPOTrainer, seen, stop=True))
    with pytest.raises(_Built):
        train_dpo(cfg)
    args = seen["trainer"].args
    assert args.loss_type == ["sigmoid", "sft"] and args.loss_weights == [1.0, 1.0]
    resolved = yaml.safe_load((cfg.path("checkpoints/dpo_nll") / "resolved_config.yaml").read_text())
    assert resolved["dpo"]["nll_weight"] == 1.0
