"""Issue 11, item 1 for the registry's own files: an audit log whose last line a crash tore
keeps every later entry readable (the next append starts on a new line)."""

from __future__ import annotations

from conftest import PASSING_GATE, copy_project, tiny_pipeline_config


def test_an_append_after_a_torn_audit_line_starts_on_its_own_line(tiny_pipeline, workspace, tiny_model_dir):
    from pipelines.config import load_config
    from pipelines.registry import _entries_from_file, paths

    copy_project(tiny_pipeline["evaluated"], workspace)
    cfg = tiny_pipeline_config(workspace, tiny_model_dir, gate=PASSING_GATE)
    first = workspace.run("promote", "--config", str(cfg), "--eval", tiny_pipeline["failed"], "--force",
                          "--reason", "first")
    assert first.exit_code == 0, first.output
    audit = paths(load_config(cfg)).audit
    before = _entries_from_file(audit)
    with open(audit, "ab") as handle:  # killed halfway through writing an entry
        handle.write(b'{"seq": 99, "action": "prom')
    second = workspace.run("promote", "--config", str(cfg), "--eval", tiny_pipeline["passed"], "--force",
                           "--reason", "second")
    assert second.exit_code == 0, second.output
    after = _entries_from_file(audit)
    assert len(after) > len(before) and after[: len(before)] == before
    assert [e["seq"] for e in after] == list(range(1, len(after) + 1)), after  # no entry lost
    assert after[-1]["reason"] == "second"
