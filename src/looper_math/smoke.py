"""The smoke-run model: a tiny Llama and BPE tokenizer built on the spot and briefly pretrained on the
built-in problems (``model.name_or_path: tiny``, ``configs/demo.yaml``), so every phase runs end to end on
CPU in seconds with no network. It knows the task (built-in problems, the Abel prompt, SFT targets); model
loading (``modeling``) only asks :func:`ensure_tiny_model` for the folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

TINY_CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def build_tiny_model(out_dir: Path, seed: int = 0) -> Path:
    """A tiny Llama + tokenizer trained on the built-in problems; saved once as safetensors."""
    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists() and (out_dir / "tokenizer.json").exists():
        return out_dir
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from looper_math.data import builtin_corpus_text

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>", "<pad>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(builtin_corpus_text(2000, seed) + ["Let's think step by step. #### Question: Answer:"], trainer)
    from tokenizers.processors import TemplateProcessing

    tok.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))])
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")
    hf_tok.chat_template = TINY_CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(hf_tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=hf_tok.bos_token_id, eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.pad_token_id,
                         tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    _pretrain_tiny(model, hf_tok, seed)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    hf_tok.save_pretrained(tmp)
    from looper_math.runio import replace_dir

    replace_dir(tmp, out_dir)
    return out_dir


def ensure_tiny_model(out_dir: Path) -> Path:
    """build_tiny_model, once per directory even when several processes ask at the same time (every
    rank of `accelerate launch` does; they used to build into the same temp folder and crash): a file
    lock serializes them and the first one builds. Under a
    launcher the build runs in a child process without the launcher's environment, so its small
    pretraining Trainer is a plain one-process CPU run, the same model as without a launcher."""
    import fcntl
    import subprocess
    import sys

    from looper_math.runio import launcher_rank

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists() and (out_dir / "tokenizer.json").exists():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.with_name(f".{out_dir.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out_dir / "config.json").exists() and (out_dir / "tokenizer.json").exists():
            return out_dir
        if launcher_rank() is None:
            return build_tiny_model(out_dir)
        launcher_vars = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                         "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
        env = {k: v for k, v in os.environ.items()
               if k not in launcher_vars and not k.startswith(("TORCHELASTIC_", "ACCELERATE_"))}
        code = "import sys; from looper_math.smoke import build_tiny_model; build_tiny_model(sys.argv[1])"
        subprocess.run([sys.executable, "-c", code, str(out_dir)], env=env, check=True)
    return out_dir


def _pretrain_tiny(model, tokenizer, seed: int, steps: int = 200) -> None:
    """A few hundred causal-LM steps on built-in problems (Abel prompt format), so the smoke model writes
    problem-shaped text and the later phases see a mix of right and wrong answers. transformers Trainer."""
    import datasets
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from looper_math.data import builtin_problems
    from looper_math.prompts import ABEL_TEMPLATE, sft_target

    texts = [ABEL_TEMPLATE.format(question=p.question) + sft_target(p.answer) + tokenizer.eos_token
             for p in builtin_problems(3000, seed=seed + 99, split="pretrain")]
    ds = datasets.Dataset.from_dict({"text": texts}).map(lambda b: tokenizer(b["text"], truncation=True, max_length=256),
                                                         batched=True, remove_columns=["text"])
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, max_steps=steps, per_device_train_batch_size=16, learning_rate=3e-3,
                                 lr_scheduler_type="cosine", warmup_steps=20, logging_steps=100, save_strategy="no",
                                 report_to="none", use_cpu=True, seed=seed, disable_tqdm=True)
        Trainer(model=model, args=args, train_dataset=ds,
                data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False)).train()
    model.eval()
