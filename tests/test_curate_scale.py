"""curate at scale (issue 12): the outputs are byte-identical whatever the number of worker
processes and shards, on the shipped sample and on 50,000 generated records, and a SIGKILL
of a multi-worker curate leaves nothing behind: the next run gives the same outputs."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from conftest import REPO

SAMPLE_LOGS = REPO / "datasets" / "samples" / "logs"
# What describes the run rather than the data: left out of the comparison.
RUN_KEYS = ("created_at", "timings", "run")
_CREATED = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file of a curated dataset; the manifest without RUN_KEYS, the reports with the
    creation time blanked (each states when it was made)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        if path.name == "manifest.json":
            manifest = json.loads(data)
            for key in RUN_KEYS:
                manifest.pop(key, None)
            data = json.dumps(manifest, sort_keys=True).encode()
        elif path.name in ("report.md", "report.html"):
            data = _CREATED.sub("<created>", data.decode()).encode()
        out[str(path.relative_to(folder))] = data
    return out


def curate(ws, *args: str, **curate_keys) -> tuple[Path, dict]:
    cfg = ws.config(curate={"inputs": ["logs"], "general_mix": {"path": None}, **curate_keys})
    result = ws.run("curate", "--config", str(cfg), *args)
    assert result.exit_code == 0, result.output
    out = ws.curated()
    return out, json.loads((out / "manifest.json").read_text())


def assert_same(a: dict[str, bytes], b: dict[str, bytes]) -> None:
    assert sorted(a) == sorted(b)
    for name in a:
        assert a[name] == b[name], f"{name} differs"


def accounting_holds(m: dict) -> bool:
    c = m["counts"]
    return c["read"] == c["kept"] + c["quarantined"] + c["backlog"] + sum(c["filtered"].values())


def test_the_sample_is_byte_identical_with_one_or_two_workers(workspace):
    for path in SAMPLE_LOGS.iterdir():
        (workspace.root / "logs" / path.name).symlink_to(path)
    one, m1 = curate(workspace, workers=1)
    first = snapshot(one)
    # 64 KiB shards: the two plain files are cut into byte ranges, the .gz stays whole.
    two, m2 = curate(workspace, "--force", workers=2, shard_bytes=65536)
    assert two == one  # run-only keys are not part of the dataset id
    assert m1["run"] == {"engine": "local", "workers": 1, "shards": 3}
    assert m2["run"]["workers"] == 2 and m2["run"]["shards"] > 10
    assert_same(first, snapshot(two))
    assert accounting_holds(m2) and m2["counts"]["read"] == m1["counts"]["read"] > 900


@pytest.fixture(scope="module")
def big_logs(tmp_path_factory) -> Path:
    """50,000 generated records (~60 MiB; ~1% malformed, PII, repeated questions)."""
    sys.path.insert(0, str(REPO / "scripts"))
    from bench_curate import generate

    path = tmp_path_factory.mktemp("big") / "big.jsonl"
    generate(path, 50_000, seed=3)
    return path


@pytest.fixture(scope="module")
def big_reference(big_logs, tiny_tokenizer_dir, tmp_path_factory) -> dict[str, bytes]:
    """The 50k set curated by one process, in one shard per 16 MiB."""
    from conftest import Workspace

    root = tmp_path_factory.mktemp("big-ref")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        ws = Workspace(root, tiny_tokenizer_dir)
        (root / "logs" / "big.jsonl").symlink_to(big_logs)
        out, manifest = curate(ws, workers=1)
        assert accounting_holds(manifest) and manifest["counts"]["read"] == 50_000
        return snapshot(out)
    finally:
        os.chdir(cwd)


def test_fifty_thousand_records_are_byte_identical_with_two_workers(workspace, big_logs, big_reference):
    (workspace.root / "logs" / "big.jsonl").symlink_to(big_logs)
    out, manifest = curate(workspace, workers=2, shard_bytes=1 << 20)
    assert manifest["run"]["shards"] >= 50
    assert accounting_holds(manifest)
    assert_same(big_reference, snapshot(out))


def test_a_killed_multi_worker_curate_leaves_nothing_and_the_rerun_is_the_same(workspace, big_logs, big_reference):
    (workspace.root / "logs" / "big.jsonl").symlink_to(big_logs)
    cfg = workspace.config(curate={"inputs": ["logs"], "general_mix": {"path": None}, "workers": 2,
                                   "shard_bytes": 1 << 20})
    curated = workspace.root / "datasets" / "curated"
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "curate", "--config", str(cfg)],
                            cwd=workspace.root, env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    # Kill once the workers have spooled a few shards into the run's temporary folder.
    while not (curated.is_dir() and len([p for p in curated.glob(".tmp-cur-*/.shard-*")]) >= 4):
        assert proc.poll() is None, "curate ended before the kill"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    family = psutil.Process(proc.pid).children(recursive=True)
    assert len(family) >= 3  # the fork server and two workers
    # curate and its workers count tokens with the Rust tokenizer: none has loaded torch
    # (some 300 MB a process, against issue 12's memory bound).
    loaded = {Path(m.path).name for p in [psutil.Process(proc.pid), *family] for m in p.memory_maps()}
    assert any(name.startswith("tokenizers") for name in loaded)
    assert not [name for name in loaded if name.startswith("libtorch")]
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    gone, alive = psutil.wait_procs(family, timeout=20)
    assert not alive, f"workers outlived the killed curate: {alive}"
    assert not (curated / "LATEST").exists()
    result = workspace.run("curate", "--config", str(cfg))
    assert result.exit_code == 0, result.output
    assert "removed" in result.output and "left by a killed run" in result.output.replace("\n", " ")
    assert not [p for p in curated.iterdir() if p.name.startswith((".tmp-", ".old-"))]
    assert_same(big_reference, snapshot(workspace.curated()))


def test_curate_keeps_a_few_bytes_per_candidate_in_memory_and_the_band_keys_on_disk(tmp_path):
    """Issue 12's flat memory: the merging process keeps 12-13 bytes per training candidate
    (rank, label, two flags, fingerprint); the 14 MinHash band keys (112 bytes) go to one
    file per band and dedup reads them one band at a time."""
    import tracemalloc

    import numpy as np

    from pipelines.accounting import Accounting
    from pipelines.curate import Candidates
    from pipelines.curate_shard import Shard, ShardResult

    n, bands = 100_000, 14
    rng = np.random.default_rng(0)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    candidates = Candidates(bands, Accounting(), tmp_path)
    for index in range(4):
        result = ShardResult(Shard(index, "logs.jsonl"))
        for i in range(n // 4):
            result.ranks.append(4)
            result.labels.append("bad_format" if i % 3 else "hallucination")
            result.from_record.append(1)
            result.refusals.append(i % 7 == 0)
            result.fingerprints.append(int(rng.integers(0, 2**63)) + 2**63 - 1)
        keys = rng.integers(0, 2**63, size=(n // 4, bands), dtype=np.uint64)
        keys[1::2] = keys[::2]  # every odd row a duplicate of the row before
        result.band_keys = keys
        candidates.extend(result, tmp_path / f"spool-{index}")
        del result, keys
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(candidates) == n
    assert held / n < 24, f"{held / n:.0f} bytes per candidate in memory"
    assert sorted(p.name for p in tmp_path.glob(".bands-*")) == [f".bands-{b:02d}.u64" for b in range(bands)]
    assert all(p.stat().st_size == 8 * n for p in tmp_path.glob(".bands-*"))
    candidates.dedup()
    assert int(candidates.is_rep.sum()) == n // 2
    assert candidates.is_rep[1::2].all() and not candidates.is_rep[::2].any()  # the newest copy on ties
    assert not list(tmp_path.glob(".bands-*"))
    assert candidates.accounting.filtered == {"duplicate_near": n // 2}  # their fingerprints differ
