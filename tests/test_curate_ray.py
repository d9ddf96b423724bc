"""curate.engine: ray (issue 12 item 2): the same shard function on a local Ray instance with
two CPUs gives byte-identical outputs to the local engine; without ray installed, one line."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import REPO
from test_curate_scale import SAMPLE_LOGS, assert_same, curate, snapshot


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    try:
        yield ray
    finally:
        ray.shutdown()


def test_the_ray_engine_is_byte_identical_to_the_local_one(workspace, local_ray):
    for path in SAMPLE_LOGS.iterdir():
        (workspace.root / "logs" / path.name).symlink_to(path)
    local, m1 = curate(workspace, workers=1)
    expected = snapshot(local)
    out, m2 = curate(workspace, "--force", engine="ray", shard_bytes=65536)
    assert out == local
    assert m2["run"]["engine"] == "ray" and m2["run"]["shards"] > 10
    assert_same(expected, snapshot(out))


def test_the_ray_engine_without_ray_installed_is_one_line(workspace):
    (workspace.root / "logs" / "a.jsonl").symlink_to(SAMPLE_LOGS / "2026-10-01.jsonl")
    cfg = workspace.config(curate={"inputs": ["logs"], "general_mix": {"path": None}, "engine": "ray"})
    # `import ray` fails as it does where the package is not installed.
    code = "import sys; sys.modules['ray'] = None; from pipelines.cli import app; app()"
    result = subprocess.run([sys.executable, "-c", code, "curate", "--config", str(cfg)], cwd=workspace.root,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert "ray is not installed: pip install 'refit[ray]'" in result.stderr + result.stdout
