#!/usr/bin/env bash
# Cut a large file (the model) into parts that each fit one device call beside this checkout: a call carries
# the working tree (tracked + untracked-not-ignored files) and the carried paths, 64 MiB in all, so the part
# size is 64 MiB minus the tree minus a 4 MiB margin (55 MiB parts stopped fitting once the repo passed 9 MiB).
# `cat DIR/part_* > FILE` joins them (bench/device/device_env.sh does, then checks DIR/SHA256).
# Usage: bash bench/device/ferry.sh FILE [DIR]     (default DIR .ferry, git-ignored); prints the per-call carry list.
set -euo pipefail
f="${1:?file}"; d="${2:-.ferry}"
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
part=$(( (64 - 4) * 1024 * 1024 - tree ))
part=$(( part / 1048576 * 1048576 ))  # whole MiB
[ "$part" -ge $((8 * 1048576)) ] || { echo "ferry: the tree ($tree bytes) leaves no room for parts"; exit 1; }
rm -rf "$d"; mkdir -p "$d"
split -b "$part" -d -a 3 "$f" "$d/part_"
sha256sum "$f" | cut -d' ' -f1 | sed "s|\$|  $(basename "$f")|" > "$d/SHA256"
echo "tree $((tree / 1048576)) MiB -> parts of $((part / 1048576)) MiB:"
for p in "$d"/part_*; do echo "  carry [\"$p\"]; cp $p \$M/  ($(du -m "$p" | cut -f1) MiB)"; done
echo "first call also: carry .whl, .gsm8k and $d/SHA256; the last: then run the experiment (device_env.sh joins)"
