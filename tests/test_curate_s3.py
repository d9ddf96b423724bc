"""curate reads gzipped logs straight from object storage (issue 12 item 3): a real S3 API on
localhost (moto's server mode), credentials and endpoint from the environment only, and the
outputs equal those of a local read of the same files."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from conftest import REPO

SAMPLE_LOGS = REPO / "datasets" / "samples" / "logs"
BUCKET = "refit-logs"


@pytest.fixture
def s3(monkeypatch):
    """A moto S3 server on a free local port; AWS_* point boto (and s3fs) at it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://{host}:{port}"}.items():
        monkeypatch.setenv(key, value)
    try:
        yield
    finally:
        server.stop()


def _gzipped_sample(folder: Path) -> dict[str, bytes]:
    """The shipped sample's logs, each gzipped, plus one log with a bad line."""
    out = {}
    for path in sorted(SAMPLE_LOGS.iterdir()):
        data = path.read_bytes()
        out[path.name if path.suffix == ".gz" else path.name + ".gz"] = data if path.suffix == ".gz" else gzip.compress(
            data, mtime=0)
    out["2026-10-22.jsonl.gz"] = gzip.compress(b'{"query": "fine", "contexts": []}\n{"query": broken\n', mtime=0)
    for name, data in out.items():
        (folder / name).write_bytes(data)
    return out


def _normalised(folder: Path, prefix: str) -> dict[str, list]:
    """The JSONL outputs with the input's location written as `<in>/` and the ids derived
    from it (example and pair ids hash the file path) left out."""
    def clean(value):
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items() if k not in ("id", "example_id")}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value.replace(prefix, "<in>/") if isinstance(value, str) else value

    return {name: [clean(json.loads(line)) for line in (folder / name).read_text().splitlines()]
            for name in ("examples.jsonl", "preferences.jsonl", "rag_backlog.jsonl", "quarantine.jsonl")}


def test_gzipped_logs_in_s3_curate_like_the_same_files_on_disk(workspace, s3):
    import boto3

    files = _gzipped_sample(workspace.root / "logs")
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    for name, data in files.items():
        client.put_object(Bucket=BUCKET, Key=f"rag/{name}", Body=data)
    client.put_object(Bucket=BUCKET, Key="other/ignored.jsonl.gz", Body=files["2026-10-22.jsonl.gz"])

    cfg = workspace.config(curate={"inputs": [f"s3://{BUCKET}/rag/2026-10-*.jsonl.gz"], "general_mix": {"path": None}})
    result = workspace.run("curate", "--config", str(cfg))
    assert result.exit_code == 0, result.output
    remote = workspace.curated()
    m = json.loads((remote / "manifest.json").read_text())
    assert [e["path"] for e in m["inputs"]] == [f"s3://{BUCKET}/rag/{n}" for n in sorted(files)]
    assert all(e["etag"] and e["bytes"] == len(files[e["path"].rsplit("/", 1)[-1]]) for e in m["inputs"])
    bad = [q for q in map(json.loads, (remote / "quarantine.jsonl").read_text().splitlines())
           if q["file"].endswith("2026-10-22.jsonl.gz")]
    assert [(q["file"], q["line"]) for q in bad] == [(f"s3://{BUCKET}/rag/2026-10-22.jsonl.gz", 2)]

    cfg = workspace.config(curate={"inputs": ["logs"], "general_mix": {"path": None}})
    result = workspace.run("curate", "--config", str(cfg))
    assert result.exit_code == 0, result.output
    local = workspace.curated()
    assert local != remote
    ml = json.loads((local / "manifest.json").read_text())
    skip = ("inputs", "id", "config_hash", "created_at", "timings", "run", "files")
    assert {k: v for k, v in m.items() if k not in skip} == {k: v for k, v in ml.items() if k not in skip}
    assert _normalised(remote, f"s3://{BUCKET}/rag/") == _normalised(local, "logs/")


def test_credentials_in_the_config_are_refused_and_a_missing_bucket_is_one_line(workspace, s3):
    cfg = workspace.config(curate={"inputs": ["s3://nowhere/*.jsonl.gz"], "storage_options": {"key": "AKIA..."}})
    result = workspace.run("curate", "--config", str(cfg))
    assert result.exit_code == 2
    assert "storage_options.key: credentials are never read from the config" in result.output
    cfg = workspace.config(curate={"inputs": ["s3://nowhere/logs/*.jsonl.gz"]})
    result = workspace.run("curate", "--config", str(cfg))
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "s3://nowhere/logs/*.jsonl.gz" in result.output, result.output
