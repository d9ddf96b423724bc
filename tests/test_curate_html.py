"""curate's report.html in a real headless Chromium: it renders, the three plots are there as
embedded images, and the page makes no request outside itself (Chromium's own network log,
checked against a control page that does make requests)."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import record
from test_rag_health import curate, curve_logs, known_logs

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         # Nothing resolves: a request that slipped out would fail, and still be in the net log.
         "--host-resolver-rules=MAP * ~NOTFOUND"]
PNG = b"\x89PNG\r\n\x1a\n"


def browser() -> str:
    for name in BROWSERS:
        if path := shutil.which(name):
            return path
    pytest.skip("no Chromium found: install Debian's chromium (sudo apt-get install -y chromium; .ci/run does) "
                "to run the browser test")


def run_browser(exe: str, page: Path, tmp: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    profile = tmp / f"profile-{name}"  # a fresh profile per run
    return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", f"--log-net-log={tmp / f'{name}.netlog.json'}",
                           *extra, page.as_uri()], capture_output=True, text=True, timeout=120, check=True)


def page_requests(netlog: Path) -> list[str]:
    """http(s) URLs the page itself asked for: requests whose network isolation key is the
    file:// page (Chromium's own background requests have other keys)."""
    log = json.loads(netlog.read_text())
    start = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    return [e["params"]["url"] for e in log["events"]
            if e["type"] == start and re.match(r"https?://", e["params"].get("url", ""))
            and "file://" in e["params"].get("network_isolation_key", "")]


def report_with_every_section(ws) -> Path:
    logs = [*known_logs(), *curve_logs()]
    for k in range(6):
        logs.append(record(f"Refund question number {k}?", timestamp="2026-10-03T10:00:00Z", retrieval={"index": "v2"}))
    ws.write_logs("a.jsonl", logs)
    _, folder = curate(ws, retriever="retrieval.index")
    return folder / "report.html"


def test_report_html_renders_in_chromium_with_its_plots_and_no_requests(workspace, tmp_path):
    exe = browser()
    page = report_with_every_section(workspace)
    shot = tmp_path / "report.png"
    run_browser(exe, page, tmp_path, "shot", f"--screenshot={shot}", "--window-size=1200,2400",
                "--hide-scrollbars")
    dom = run_browser(exe, page, tmp_path, "dom", "--dump-dom").stdout

    assert "Content-Security-Policy" in dom and "default-src 'none'" in dom
    assert "<script" not in dom.lower()
    assert re.search(r"id=\"verdict\"[^>]*>(fine-tune|hybrid|fix RAG|prompt-only)<", dom)
    for plot in ("plot-trends", "plot-buckets", "plot-topics"):
        found = re.search(rf'<img id="{plot}"[^>]*src="data:image/png;base64,([^"]+)"', dom)
        assert found, f"{plot} missing from the rendered page"
        image = base64.b64decode(found.group(1))
        assert image.startswith(PNG) and len(image) > 5_000, plot
    assert not re.search(r"(src|href)=\"(https?:)?//", dom), "a link or image points outside the page"
    assert page_requests(tmp_path / "dom.netlog.json") == []

    assert shot.read_bytes().startswith(PNG)
    from PIL import Image

    with Image.open(shot) as img:
        assert img.size == (1200, 2400)
        colours = img.convert("RGB").resize((120, 240)).getcolors(maxcolors=120 * 240)
    assert colours is not None and len(colours) > 50, "the screenshot is (nearly) blank"


def test_the_request_check_sees_a_page_that_reaches_out(tmp_path):
    """The control for the check above: a page with an external image and stylesheet."""
    exe = browser()
    page = tmp_path / "control.html"
    page.write_text("<!doctype html><img src='http://example.invalid/x.png'>"
                    "<link rel='stylesheet' href='https://cdn.example.invalid/a.css'>", encoding="utf-8")
    run_browser(exe, page, tmp_path, "control", "--dump-dom")
    assert sorted(page_requests(tmp_path / "control.netlog.json")) == [
        "http://example.invalid/x.png", "https://cdn.example.invalid/a.css"]
