"""A random-weight model folder from a config + tokenizer folder (throughput runs need no real weights).

    python bench/random_model.py SRC_DIR OUT_DIR [--device cuda]
SRC_DIR holds config.json and the tokenizer files (no weights); OUT_DIR gets bf16 safetensors + them.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src")
    p.add_argument("out")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args()
    src, out = Path(a.src), Path(a.out)
    config = AutoConfig.from_pretrained(src)
    torch.manual_seed(0)
    with torch.device(a.device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "config.json" and not f.name.endswith((".safetensors", ".bin", ".gguf")):
            shutil.copy(f, out / f.name)
    print(f"{out}: {sum(p.numel() for p in model.parameters()) / 1e6:.0f}M parameters, random bf16")


if __name__ == "__main__":
    main()
