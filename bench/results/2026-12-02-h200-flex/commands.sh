# Issue 12 goal 3, session 7 (2026-12-02), one NVIDIA H200 (fresh machine, 246 s wall), code at ce8a2f9.
# One call, carrying .whl (the wheels, into /tmp/site); the 7B shape with random bf16 weights, no model transfer.
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:src HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
# attn="flex" == sdpa under CUDA-graph capture, fp32, tiny model (6 passed) -> flex_test.txt
timeout 110 python -m pytest tests/test_gpu_engine.py -m gpu -q -k flex -p no:cacheprovider | tail -15 | tee $OUT/flex_test.txt
# sdpa sweep at 256/512 slots, k=8 shared prompts, variants bmm / flex / compile at 256 slots (the same requests as
# the 256-slot sweep point), one kernel profile per attention core at 512 slots -> decode.jsonl
timeout 330 python bench/bench_decode.py --slots 256,512 --profile --profile-attn sdpa,flex --deadline-s 260 --out $OUT | tee $OUT/log.txt
