"""Issue 11, item 1 for the OpenAI backend: `train --backend openai --force` killed while it
rebuilds the run folder (its result download held up by the local API server) keeps the old
run folder whole, LATEST on it, and pays for nothing new."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from test_openai_backend import FAST, SECRET, project, serve, split_template, tracking_dir  # noqa: F401
from test_stage_kill import _snapshot

SLOW_REBUILD = {**FAST, "faults": [{"route": "GET /v1/files/{id}/content", "nth": 2, "delay_s": 60}]}


def test_a_killed_openai_force_rebuild_keeps_the_old_run(project):  # noqa: F811
    with serve(SLOW_REBUILD) as server:
        project.use(server)
        first = project.train("--yes")
        assert first.exit_code == 0, first.output
        (run,) = project.runs()
        runs = run.parent
        before = _snapshot(run)
        env = {**os.environ, "OPENAI_BASE_URL": server.url, "OPENAI_API_KEY": SECRET}
        child = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "train", "--config", str(project.cfg),
                                  "--backend", "openai", "--force", "--yes"], cwd=project.root, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while not list(runs.glob(".tmp-run-*")):  # the new folder is being built
                assert child.poll() is None and time.monotonic() < deadline
                time.sleep(0.01)
            time.sleep(0.2)
            os.kill(child.pid, signal.SIGKILL)
        finally:
            child.kill()
            assert child.wait() == -signal.SIGKILL
        assert _snapshot(run) == before
        assert (runs / "LATEST").read_text().strip() == run.name
        assert server.jobs_created == 1
        again = project.train("--yes")
        assert again.exit_code == 0 and "Nothing to do" in again.output, again.output
        assert not list(runs.glob(".tmp-run-*"))
