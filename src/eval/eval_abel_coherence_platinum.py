"""Original project command, kept as a thin alias of `looper-math eval --adapter dpo` (default config: configs/abel7b.yaml)."""
from looper_math.cli import alias

if __name__ == "__main__":
    alias("eval", "--adapter", "dpo")
