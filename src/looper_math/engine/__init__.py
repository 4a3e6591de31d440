"""The generation engines behind one interface (``looper_math.engine.api.generate``; its docstring is the contract).

- ``api``: ``generate`` / ``generate_stream`` and the names the phases import;
- ``requests``: ``GenRequest`` / ``GenResult``, tokenization, batching and progress shared by the engines;
- ``sampling``: per-row seeded sampling (both engines);
- ``hf``: ``engine="hf"``, transformers' ``model.generate``, the reference path;
- ``options``: ``FastOptions`` and the fast engine's cache sizes;
- ``kernels``: the fast decoder's attention cores and fused decode layer;
- ``decoder``: ``FastDecoder``, the static per-slot KV cache and the CUDA-graph decode step;
- ``scheduler``: ``stream_fast`` / ``generate_fast``, continuous batching over one decoder;
- ``hf_internals``: the only module that reads transformers internals (tests/test_engine_internals.py).
"""
