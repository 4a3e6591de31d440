# Sourced by the GPU-machine scripts (bench/stage_lib.sh for the staged ones, bench/gpu_pipeline.sh,
# bench/multigpu_h200.sh): put the carried wheels on the path (installed once per machine into /tmp/site, found
# there by later calls that do not carry them) and, where the model came in parts (bench/device/ferry.sh), join
# them, check the SHA256 and convert the GGUF into a plain bf16 folder $M/qwen05 (once), linked as .models/qwen05.
# Needs M, WHEELS; exits on error.
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 TOKENIZERS_PARALLELISM=false
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  [ -d /tmp/site ] || python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$WHEELS"/*.whl || exit 1
fi
# /tmp/site stays on a warm machine: later calls need not carry the wheels again
if [ -d /tmp/site ]; then export PYTHONPATH="/tmp/site:$PWD/src"; else export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"; fi
if [ -f "$M/SHA256" ] && [ ! -f "$M/qwen05/config.json" ]; then
  cat "$M"/part_* > "$M/model.gguf" || exit 1
  want=$(cut -d' ' -f1 "$M/SHA256"); got=$(sha256sum "$M/model.gguf" | cut -d' ' -f1)
  [ "$want" = "$got" ] || { echo "model.gguf SHA256 mismatch: $got != $want"; exit 1; }
  python3 -m looper_math.cli convert-gguf "$M" model.gguf "$M/qwen05" || exit 1
fi
# configs/qwen05_gpu.yaml reads .models/qwen05 (`looper-math prepare model` where PyPI is reachable): here a link to
# the folder converted from the carried parts, unless the checkout has its own
if [ -f "$M/qwen05/config.json" ] && [ ! -e .models/qwen05 ]; then
  mkdir -p .models && ln -s "$(cd "$M" && pwd)/qwen05" .models/qwen05 || exit 1
fi
