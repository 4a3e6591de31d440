"""Run directories, atomic writes and append-only JSONL with exactly-once resume.

Rules every phase follows:
- Summaries, configs and checkpoints are written to a temporary sibling and renamed (``os.replace`` is
  atomic on POSIX), so a crash leaves either the old file or the new one, never half of one.
- Row outputs (rollouts, eval) are append-only JSONL keyed by a tuple of fields. Each row is written
  as one ``write`` of a complete line followed by flush+fsync. On resume a torn last line (a kill in
  the middle of a write) is detected, reported and truncated away; rows already there are skipped; a
  damaged line before the last is refused (``--overwrite`` rebuilds the file), never dropped.
- An existing non-empty output is never overwritten or extended unless the user said ``--overwrite``
  or ``--resume``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from looper_math.errors import DataError, OutputExistsError, StaleOutputError, UsageError  # noqa: F401 - re-exported (their home is errors.py)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_json(path: str | Path) -> Any:
    """A JSON file (a summary); a missing or corrupt one raises DataError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: invalid JSON ({e.__class__.__name__}: {str(e)[:80]})") from None


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks (a model file need not fit in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # the mode open() gives a new file; mkstemp's 0o600 hid reports from others
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def share_files(root: str | Path) -> None:
    """Give every file under ``root`` the mode a plain ``open()`` gives (safetensors writes 0o600)."""
    mode = 0o666 & ~_umask()
    for p in Path(root).rglob("*"):
        if p.is_file():
            os.chmod(p, mode)


def replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written temp directory into place; the previous one is removed only afterwards."""
    final_dir = Path(final_dir)
    os.chmod(tmp_dir, 0o777 & ~_umask())  # the mode mkdir() gives; mkdtemp's is 0o700
    share_files(tmp_dir)
    old = final_dir.with_name(f".{final_dir.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final_dir.exists():
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    if old.exists():
        shutil.rmtree(old)


def check_output(path: str | Path, *, resume: bool, overwrite: bool, resumable: bool = True) -> str:
    """Decide what to do with an existing output. Returns 'fresh', 'resume' or 'overwrite'.

    A file or directory that exists and is non-empty needs --resume or --overwrite. Nothing is deleted
    here: on 'overwrite' the phase replaces the old output only once its inputs have been validated and
    it is about to write (``clear_output``, a truncating ``JsonlAppender`` or an atomic rename), so a
    refused run leaves the old output as it was.
    """
    path = Path(path)
    if resume and overwrite:
        raise UsageError("--resume and --overwrite are mutually exclusive")
    exists = path.exists() and (path.stat().st_size > 0 if path.is_file() else any(path.iterdir()))
    if not exists:
        return "fresh"
    if overwrite:
        return "overwrite"
    if resume:
        return "resume"
    hint = "pass --resume to continue it or --overwrite to replace it" if resumable else "pass --overwrite to replace it"
    raise OutputExistsError(f"{path} already exists: {hint}")


def clear_output(path: str | Path) -> None:
    """Remove an output that --overwrite replaces (call it right before writing the new one)."""
    path = Path(path)
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def read_jsonl(path: str | Path, *, allow_torn_tail: bool = False) -> Iterator[dict]:
    """Yield objects of a JSONL file; a bad line raises DataError naming file and line.

    With allow_torn_tail, a last line without its newline that does not parse is skipped (it is the
    trace of a killed writer); use ``repair_jsonl`` to cut it off before appending.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    lines = data.split(b"\n")
    last = len(lines) - 1
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if allow_torn_tail and i == last:
                return
            raise DataError(f"{path}:{i + 1}: invalid JSON ({e.__class__.__name__}: {str(e)[:80]})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{i + 1}: expected a JSON object, got {type(obj).__name__}")
        yield obj


def repair_jsonl(path: str | Path) -> int:
    """Truncate a torn trailing line (no final newline). Returns bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb+") as f:
        data = f.read()
        if data.endswith(b"\n"):
            return 0
        cut = data.rfind(b"\n") + 1
        f.truncate(cut)
        f.flush()
        os.fsync(f.fileno())
    return size - cut


class JsonlAppender:
    """Append-only JSONL keyed by ``key_fields``; rows with keys already present are refused.

    Open with ``mode`` from ``check_output``: 'resume' repairs a torn tail and loads existing keys;
    'overwrite' truncates the old file.
    """

    def __init__(self, path: str | Path, key_fields: tuple[str, ...], mode: str):
        self.path = Path(path)
        self.key_fields = key_fields
        self.keys: set[tuple] = set()
        self.torn_bytes = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if mode == "resume" and self.path.exists():
            self.torn_bytes = repair_jsonl(self.path)
            try:
                rows = list(read_jsonl(self.path))
            except DataError as e:  # a damaged row before the last is data lost mid-file: not ours to drop
                raise DataError(f"{e}; only a torn last line is repaired on resume: rebuild the file with --overwrite") from None
            for i, row in enumerate(rows):
                try:
                    key = tuple(row[k] for k in key_fields)
                except KeyError as e:
                    raise DataError(f"{self.path}: row {i + 1} lacks key field {e}") from None
                if key in self.keys:
                    raise DataError(f"{self.path}: duplicate key {key} at row {i + 1}")
                self.keys.add(key)
        self._f = open(self.path, "wb" if mode == "overwrite" else "ab")

    def key_of(self, row: dict) -> tuple:
        return tuple(row[k] for k in self.key_fields)

    def __contains__(self, key: tuple) -> bool:
        return key in self.keys

    def write(self, rows: Iterable[dict]) -> None:
        buf = b""
        new = []
        for row in rows:
            key = self.key_of(row)
            if key in self.keys:
                raise DataError(f"{self.path}: key {key} written twice")
            new.append(key)
            buf += json.dumps(row, ensure_ascii=False).encode() + b"\n"
        if not buf:
            return
        self._f.write(buf)
        self._f.flush()
        os.fsync(self._f.fileno())
        self.keys.update(new)

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def parse_shard(spec: str | None) -> tuple[int, int] | None:
    """'i/n' -> (i, n) with 0 <= i < n; None stays None."""
    if spec is None:
        return None
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise UsageError(f"--shard {spec!r}: expected i/n, e.g. 0/2") from None
    if not (n >= 1 and 0 <= i < n):
        raise UsageError(f"--shard {spec!r}: need 0 <= i < n")
    return i, n


def launcher_rank() -> tuple[int, int, int | None] | None:
    """(RANK, WORLD_SIZE, LOCAL_RANK) when started by a multi-process launcher (``accelerate launch``,
    ``torchrun``) with WORLD_SIZE > 1; None otherwise."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return None
    rank = os.environ.get("RANK", os.environ.get("LOCAL_RANK"))
    if world <= 1 or rank is None or not rank.isdigit():
        return None
    local = os.environ.get("LOCAL_RANK")
    return int(rank), world, int(local) if local is not None and local.isdigit() else None


def resolve_shard(spec: str | None) -> tuple[int, int] | None:
    """The shard this process takes: ``--shard i/n`` if given, else RANK/WORLD_SIZE under a launcher
    (``accelerate launch`` / ``torchrun`` with several processes), else None (everything).

    Under a launcher the process is also bound to GPU LOCAL_RANK (when CUDA is available), so "cuda"
    in the rest of the code means this process's own GPU.
    """
    sh = parse_shard(spec)
    launched = launcher_rank()
    gpu = None
    if launched is not None and launched[2] is not None:
        import torch

        if torch.cuda.is_available():
            gpu = launched[2] % torch.cuda.device_count()
            torch.cuda.set_device(gpu)
    if sh is None and launched is not None:
        sh = (launched[0], launched[1])
        print(f"shard {sh[0]}/{sh[1]} (from the launcher's RANK/WORLD_SIZE{f', on cuda:{gpu}' if gpu is not None else ''})")
    return sh


def shard_path(path: Path, shard: tuple[int, int] | None) -> Path:
    """Each shard writes its own append-only file: out.jsonl -> out.shard-0-of-2.jsonl."""
    if shard is None:
        return path
    return path.with_name(f"{path.stem}.shard-{shard[0]}-of-{shard[1]}{path.suffix}")


def take_shard(items: list, shard: tuple[int, int] | None) -> list:
    return items if shard is None else items[shard[0]::shard[1]]


def merge_shards(output: Path, n: int, key_fields: tuple[str, ...], *, overwrite: bool = False) -> int:
    """Merge out.shard-i-of-n.jsonl (i < n) into out.jsonl; every key must appear exactly once.

    Rows are interleaved back into the unsharded order: ``take_shard`` gave problem j to shard j % n,
    so groups of rows (by ``key_fields[0]``, e.g. question_id) are taken round-robin from the shards.
    """
    output = Path(output)
    if n < 1:
        raise UsageError(f"--shards {n}: need at least 1 shard")
    check_output(output, resume=False, overwrite=overwrite, resumable=False)
    seen: dict[tuple, str] = {}
    groups: list[list[list[str]]] = []  # per shard: rows grouped by key_fields[0], in file order
    for i in range(n):
        part = shard_path(output, (i, n))
        if not part.exists():
            raise DataError(f"{part}: shard file missing (shard {i}/{n} not run or not finished)")
        mine: dict[Any, list[str]] = {}
        for j, row in enumerate(read_jsonl(part), 1):
            try:
                key = tuple(row[k] for k in key_fields)
            except KeyError as e:
                raise DataError(f"{part}:{j}: row lacks key field {e}") from None
            if key in seen:
                raise DataError(f"{part}:{j}: key {key} also in {seen[key]}")
            seen[key] = part.name
            mine.setdefault(key[0], []).append(json.dumps(row, ensure_ascii=False))
        groups.append(list(mine.values()))
    lines: list[str] = []
    for g in range(max((len(x) for x in groups), default=0)):
        for shard_groups in groups:
            if g < len(shard_groups):
                lines.extend(shard_groups[g])
    atomic_write_text(output, "\n".join(lines) + ("\n" if lines else ""))
    return len(lines)
