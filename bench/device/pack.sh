# Sourced by bench/stage_lib.sh: what comes back from a device call. At most 8 files of 16 MiB come back per call,
# so a stage's results travel as one archive; adapters (*.safetensors), trainer state and rollouts stay on the
# machine (too large; an adapter that must outlive the session is split by hand, see bench/README.md).
#   pack_results ARCHIVE DIR...   each DIR's outputs/, logs/, data/ and checkpoints/*/{train_summary.json,
#                                 resolved_config.yaml} -> ARCHIVE (tar.gz); a DIR that does not exist is skipped
pack_results() {
  local archive="$1" d files=(); shift
  mkdir -p "$(dirname "$archive")"
  for d in "$@"; do
    [ -d "$d" ] || continue
    files+=($(ls -d "$d/outputs" "$d/logs" "$d/data" "$d"/checkpoints/*/train_summary.json "$d"/checkpoints/*/resolved_config.yaml 2>/dev/null))
  done
  tar czf "$archive" --exclude='*.safetensors' --exclude='trainer' --exclude='rollouts_*.jsonl' "${files[@]}" 2>/dev/null
}
