"""The model registry (MLflow): one registered model per pipeline, aliases `candidate` and
`champion`, an audit log of every alias move, and a model card per version.

Read top to bottom:

1. `promote` registers an evaluated candidate as a model version (once per eval: promoting
   the same eval again finds that version) with its lineage as tags, writes its model card,
   moves `candidate` to it, and moves `champion` to it only when the eval report for exactly
   this version passed the gate and was measured against the champion that is current now.
   `force` (with a reason) overrides; the override is recorded.
2. Alias moves are serialised by a file lock and checked against the registry right before
   they happen (compare, then set), so concurrent promotions and rollbacks run one after the
   other and never leave the aliases half-moved: `candidate` always moves first, `champion`
   second, and a re-run completes whatever a crash left undone.
3. The registry keeps no history of aliases, so every move is appended to an audit log:
   a JSONL file and one registered-model tag per entry (`refit.audit.<seq>`). A move made
   outside refit (or by a run that crashed between the move and its entry) is found and
   recorded as `external` before the next move.
4. `rollback` moves `champion` back to the version it replaced (or a named one).
5. `status` gathers the newest output of every stage and the aliases, for `refit status`.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from pipelines.config import PipelineConfig
from pipelines.storage import dumps, file_sha256, read_latest, write_bytes_atomic

CANDIDATE = "candidate"
CHAMPION = "champion"
TAG_RUN = "refit.run_id"  # evals/runner.py finds the champion's run through this tag
TAG_EVAL = "refit.eval_id"
AUDIT_TAG = "refit.audit."


class RegistryError(RuntimeError):
    """A promotion or rollback that cannot proceed; the message says why and what to do."""


def model_name(config: PipelineConfig) -> str:
    return f"refit-{config.name}"


def client(config: PipelineConfig) -> Any:
    from mlflow.tracking import MlflowClient

    from pipelines import tracking

    tracking.setup(config)
    return MlflowClient()


def alias_version(config: PipelineConfig, alias: str, mlflow_client: Any = None) -> Any | None:
    """The model version an alias points at, or None when the model or alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return (mlflow_client or client(config)).get_model_version_by_alias(model_name(config), alias)
    except MlflowException:
        return None


def who() -> str:
    """user@host of whoever moves an alias; REFIT_USER overrides the user (a CI job can name
    the person or pipeline that triggered it)."""
    user = os.environ.get("REFIT_USER")
    if not user:
        try:
            user = getpass.getuser()
        except (KeyError, OSError):
            user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Paths:
    root: Path

    @property
    def audit(self) -> Path:
        return self.root / "audit.jsonl"

    @property
    def cards(self) -> Path:
        return self.root / "cards"

    @property
    def lock(self) -> Path:
        return self.root / "aliases.lock"

    def card(self, version: Any) -> Path:
        return self.cards / f"v{version}.md"


def paths(config: PipelineConfig) -> Paths:
    return Paths(Path(config.registry.dir) / config.name)


# --------------------------------------------------------------------------- the audit log


def _entries_from_file(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        if line.strip():
            try:
                out.append(orjson.loads(line))
            except orjson.JSONDecodeError:
                continue  # a torn last line from a crash; the registry tag has the entry
    return out


def _entries_from_registry(mlflow_client: Any, name: str) -> list[dict[str, Any]]:
    from mlflow.exceptions import MlflowException

    try:
        tags = mlflow_client.get_registered_model(name).tags
    except MlflowException:
        return []
    out = []
    for key, value in tags.items():
        if key.startswith(AUDIT_TAG):
            try:
                out.append(orjson.loads(value))
            except orjson.JSONDecodeError:
                continue
    return out


def history(config: PipelineConfig, mlflow_client: Any = None) -> list[dict[str, Any]]:
    """Every alias move, oldest first: the registry's copy (shared by everyone who uses that
    registry) merged with the local JSONL file."""
    by_seq: dict[int, dict[str, Any]] = {}
    for entry in _entries_from_file(paths(config).audit):
        by_seq[int(entry["seq"])] = entry
    for entry in _entries_from_registry(mlflow_client or client(config), model_name(config)):
        by_seq[int(entry["seq"])] = entry
    return [by_seq[k] for k in sorted(by_seq)]


def _append_audit(config: PipelineConfig, mlflow_client: Any, entries: list[dict[str, Any]],
                  **entry: Any) -> dict[str, Any]:
    """Append one alias move. Called with the alias lock held, right after the move."""
    seq = max((int(e["seq"]) for e in entries), default=0) + 1
    record = {"seq": seq, "at": now(), "who": who(), "pipeline": config.name, "model": model_name(config), **entry}
    if isinstance(record.get("reason"), str) and len(record["reason"]) > 2000:
        record["reason"] = record["reason"][:2000] + "..."
    line = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    path = paths(config).audit
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as handle:
        handle.write(line + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
    mlflow_client.set_registered_model_tag(model_name(config), f"{AUDIT_TAG}{seq:06d}", line.decode())
    entries.append(record)
    return record


def _audited_alias(entries: list[dict[str, Any]], alias: str) -> str | None:
    for entry in reversed(entries):
        if entry["alias"] == alias:
            return entry["to_version"]
    return None


def _reconcile(config: PipelineConfig, mlflow_client: Any, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Record alias moves the log does not know about (made outside refit, or by a run that
    crashed between a move and its entry), so the log always ends where the registry is."""
    added = []
    for alias in (CANDIDATE, CHAMPION):
        version = alias_version(config, alias, mlflow_client)
        actual = str(version.version) if version is not None else None
        audited = _audited_alias(entries, alias)
        if actual != audited:
            added.append(_append_audit(
                config, mlflow_client, entries, alias=alias, from_version=audited, to_version=actual,
                action="external", actor_known=False,
                reason="found in the registry: moved outside refit, or by a run that stopped before recording it",
                eval_id=version.tags.get(TAG_EVAL) if version is not None else None,
                report=version.tags.get("refit.eval_report") if version is not None else None,
                run_id=version.tags.get(TAG_RUN) if version is not None else None))
    return added


def _move(config: PipelineConfig, mlflow_client: Any, entries: list[dict[str, Any]], alias: str, version: Any,
          *, action: str, reason: str, extra: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Compare, set, record. None when the alias already points at `version`."""
    current = alias_version(config, alias, mlflow_client)
    before = str(current.version) if current is not None else None
    target = str(version.version)
    if before == target:
        return None
    mlflow_client.set_registered_model_alias(model_name(config), alias, target)
    return _append_audit(config, mlflow_client, entries, alias=alias, from_version=before, to_version=target,
                         action=action, reason=reason, eval_id=version.tags.get(TAG_EVAL),
                         report=version.tags.get("refit.eval_report"), run_id=version.tags.get(TAG_RUN),
                         gate=version.tags.get("refit.gate"), **(extra or {}))


@contextlib.contextmanager
def _locked(config: PipelineConfig) -> Iterator[None]:
    """Alias moves one at a time (promotions and rollbacks wait for each other)."""
    from pipelines.locks import LockHeld, hold

    try:
        with hold(paths(config).lock, wait_s=config.registry.lock_timeout_s, what="alias moves"):
            yield
    except LockHeld as exc:
        raise RegistryError(f"another promotion or rollback is still moving aliases ({exc}); "
                            f"waited {config.registry.lock_timeout_s:.0f}s") from None


# --------------------------------------------------------------------------- promote


@dataclass
class Evaluated:
    """An eval and everything its candidate came from."""

    eval_id: str
    path: Path
    report: dict[str, Any]
    manifest: dict[str, Any]
    run_path: Path
    run: dict[str, Any]


def load_evaluated(config: PipelineConfig, eval_id: str | None) -> Evaluated:
    from pipelines.storage import resolve_stage_output

    path = resolve_stage_output(Path(config.eval.output_dir), eval_id, "eval", "eval", RegistryError)
    if not (path / "report.json").exists():
        raise RegistryError(f"eval {path.name} has no report.json; run `make eval` again")
    report = orjson.loads((path / "report.json").read_bytes())
    manifest = orjson.loads((path / "manifest.json").read_bytes())
    if report.get("pipeline", config.name) != config.name:
        raise RegistryError(f"eval {path.name} belongs to pipeline {report['pipeline']!r}, not {config.name!r}")
    run_id = report["run"]["id"]
    run_path = Path(config.train.output_dir) / run_id
    if not (run_path / "manifest.json").exists():
        raise RegistryError(f"the evaluated run {run_id} is not in {config.train.output_dir}; restore it, or "
                            "train and evaluate again")
    recorded = (manifest.get("run") or {}).get("manifest_sha256")
    if recorded and file_sha256(run_path / "manifest.json") != recorded:
        raise RegistryError(f"run {run_id} changed after eval {path.name} measured it; run `make eval` again")
    run = orjson.loads((run_path / "manifest.json").read_bytes())
    return Evaluated(path.name, path, report, manifest, run_path, run)


def primary(report: dict[str, Any]) -> dict[str, Any]:
    return (report.get("gate") or {}).get("primary") or {}


def fmt_primary(report: dict[str, Any]) -> str:
    p = primary(report)
    if p.get("delta") is None:
        return f"{p.get('suite', '?')}/{p.get('metric', '?')} vs baseline: n/a"
    level = f"{report.get('confidence', 0.95):.0%}"
    return (f"{p['suite']}/{p['metric']} vs baseline {p['delta']:+.3f} [{p['low']:+.3f}, {p['high']:+.3f}] "
            f"{level} CI, n={p['n']}")


def lineage_tags(config: PipelineConfig, ev: Evaluated) -> dict[str, str]:
    run, report = ev.run, ev.report
    dataset = run.get("dataset") or ev.manifest.get("dataset") or {}
    base = run.get("base_model") or {}
    p = primary(report)
    champion = ev.manifest.get("champion") or {}
    tags = {
        "refit.pipeline": config.name,
        TAG_RUN: run["id"],
        "refit.backend": run.get("backend", "lora"),
        "refit.base_model": str(base.get("id") or base.get("name") or config.model.base),
        "refit.dataset_id": str(dataset.get("id")),
        "refit.dataset_sha256": str(dataset.get("examples_sha256")),
        "refit.split_id": str((run.get("split") or {}).get("id")),
        "refit.config_hash": str(run.get("config_hash")),
        TAG_EVAL: ev.eval_id,
        "refit.eval_report": str(ev.path / "report.json"),
        "refit.eval_config_hash": str(ev.manifest.get("config_hash")),
        "refit.gate": "passed" if report["gate"]["passed"] else "failed",
        "refit.gate_failed": ",".join(report["gate"]["failed"]) or "none",
        "refit.primary": fmt_primary(report),
        "refit.primary_metric": f"{p.get('suite')}/{p.get('metric')}",
        "refit.champion_at_eval": str(champion.get("registry_version") or "none"),
        "refit.code_version": str(ev.manifest.get("code_version")),
    }
    for key in ("delta", "low", "high", "n"):
        if p.get(key) is not None:
            tags[f"refit.primary_{key}"] = f"{p[key]:.6g}" if isinstance(p[key], float) else str(p[key])
    if run.get("backend") == "openai":
        tags["refit.openai_model"] = run["openai"]["fine_tuned_model"]
    else:
        tags["refit.adapter"] = str(ev.run_path / run.get("adapter", {}).get("path", "adapter"))
    return tags


def _source(config: PipelineConfig, mlflow_client: Any, ev: Evaluated) -> tuple[str, str | None]:
    """Where the version's files live: the adapter folder (or, for an OpenAI fine-tune, a
    small JSON holding the `ft:` model id), logged once under `model/` in the run's MLflow
    artifacts so that any client of the registry can fetch it. Without an MLflow run, the
    local folder."""
    from mlflow.exceptions import MlflowException

    run_id = (ev.run.get("mlflow") or {}).get("run_id")
    with tempfile.TemporaryDirectory(prefix="refit-model-") as tmp:
        if ev.run.get("backend") == "openai":
            folder = Path(tmp)
            o = ev.run["openai"]
            (folder / "openai_model.json").write_bytes(dumps({
                "fine_tuned_model": o["fine_tuned_model"], "base_model": o.get("model"), "base_url": o.get("base_url"),
                "job_id": o.get("job_id"), "run_id": ev.run["id"]}))
        else:
            folder = ev.run_path / ev.run.get("adapter", {}).get("path", "adapter")
        if run_id:
            try:
                info = mlflow_client.get_run(run_id).info
                if not mlflow_client.list_artifacts(run_id, "model"):
                    mlflow_client.log_artifacts(run_id, str(folder), artifact_path="model")
                return f"{info.artifact_uri.rstrip('/')}/model", run_id
            except MlflowException:
                pass  # the run lives in another tracking store: register the local files
        if ev.run.get("backend") == "openai":  # kept beside the audit log, not inside the run's folder
            folder = paths(config).root / "models" / ev.run["id"]
            if not (folder / "openai_model.json").exists():
                write_bytes_atomic(folder / "openai_model.json", (Path(tmp) / "openai_model.json").read_bytes())
        return folder.resolve().as_uri(), None


def _find_version(mlflow_client: Any, name: str, eval_id: str) -> Any | None:
    from mlflow.exceptions import MlflowException

    try:
        found = mlflow_client.search_model_versions(f"name = '{name}' and tags.`{TAG_EVAL}` = '{eval_id}'")
    except MlflowException:  # a server without tag filters
        found = [v for v in mlflow_client.search_model_versions(f"name = '{name}'") if v.tags.get(TAG_EVAL) == eval_id]
    return min(found, key=lambda v: int(v.version)) if found else None


def versions_of_run(config: PipelineConfig, run_id: str, mlflow_client: Any = None) -> list[Any]:
    from mlflow.exceptions import MlflowException

    c = mlflow_client or client(config)
    name = model_name(config)
    try:
        found = c.search_model_versions(f"name = '{name}' and tags.`{TAG_RUN}` = '{run_id}'")
    except MlflowException:
        try:
            found = [v for v in c.search_model_versions(f"name = '{name}'") if v.tags.get(TAG_RUN) == run_id]
        except MlflowException:
            return []
    return sorted(found, key=lambda v: int(v.version))


def _ensure_model(config: PipelineConfig, mlflow_client: Any) -> None:
    from mlflow.exceptions import MlflowException

    name = model_name(config)
    try:
        mlflow_client.get_registered_model(name)
    except MlflowException:
        try:
            mlflow_client.create_registered_model(
                name, tags={"refit.pipeline": config.name},
                description=f"refit pipeline {config.name!r}: fine-tunes that passed (or were forced past) its eval "
                            "gate. Aliases: candidate (newest registered), champion (serving). Alias history: "
                            "the refit.audit.* tags, or `refit history`.")
        except MlflowException:
            mlflow_client.get_registered_model(name)  # created by someone else meanwhile


@dataclass
class PromoteResult:
    version: str
    eval_id: str
    run_id: str
    created: bool  # False: this eval was already registered as `version`
    passed: bool
    forced: bool
    champion_before: str | None
    champion_after: str | None
    moves: list[dict[str, Any]] = field(default_factory=list)
    # Why `champion` did not move: the failed gate rules, or a note that the eval is stale.
    refused: list[str] = field(default_factory=list)
    failed_rules: list[dict[str, Any]] = field(default_factory=list)
    card: Path | None = None

    @property
    def champion_moved(self) -> bool:
        return any(m["alias"] == CHAMPION for m in self.moves)

    @property
    def is_champion(self) -> bool:
        return self.champion_after == self.version


def promote(config: PipelineConfig, eval_id: str | None = None, *, force: bool = False,
            reason: str | None = None) -> PromoteResult:
    """Register the evaluated candidate; move `candidate`, and `champion` when allowed."""
    if force and not (reason or "").strip():
        raise RegistryError("--force needs --reason: say why the gate is overridden; it goes in the audit log")
    ev = load_evaluated(config, eval_id)
    report = ev.report
    gate = report["gate"]
    c = client(config)
    name = model_name(config)
    with _locked(config):
        _ensure_model(config, c)
        entries = history(config, c)
        _reconcile(config, c, entries)

        # 1. The version: once per eval, with its lineage complete from the start.
        version = _find_version(c, name, ev.eval_id)
        created = version is None
        if version is None:
            source, mlflow_run = _source(config, c, ev)
            version = c.create_model_version(
                name, source, run_id=mlflow_run, tags=lineage_tags(config, ev),
                description=f"run {ev.run['id']}, eval {ev.eval_id}: gate {gate['summary']}; {fmt_primary(report)}")
        # 2. Its model card (written again if a crash lost it).
        card = paths(config).card(version.version)
        if not card.exists():
            text = model_card(config, version, ev)
            write_bytes_atomic(card, text.encode())
            if version.run_id:  # next to the version's files in the run's artifacts
                c.log_text(version.run_id, text, f"model_cards/v{version.version}.md")
            c.set_model_version_tag(name, version.version, "refit.model_card", str(card))

        # 3. Should champion move? Only for a passing report measured against today's champion.
        champion = alias_version(config, CHAMPION, c)
        before = str(champion.version) if champion is not None else None
        refused: list[str] = []
        failed_rules = [r for r in gate["rules"] if not r["passed"]]
        if not gate["passed"]:
            refused.append(f"the gate failed: {', '.join(gate['failed'])}")
        measured = (ev.manifest.get("champion") or {}).get("registry_version")
        measured = str(measured) if measured is not None else None
        if config.eval.champion == "registry" and before not in (measured, str(version.version)):
            refused.append(f"the champion moved since this eval measured against it ({measured or 'none'} -> "
                           f"{before}); run `make eval` again")

        # 4. Move: candidate first, then champion.
        result = PromoteResult(str(version.version), ev.eval_id, ev.run["id"], created, gate["passed"], False,
                               before, before, refused=refused, failed_rules=failed_rules, card=card)
        move = _move(config, c, entries, CANDIDATE, version, action="register",
                     reason=f"registered from eval {ev.eval_id} (gate {'passed' if gate['passed'] else 'failed'})")
        if move:
            result.moves.append(move)
        if before == str(version.version):
            result.refused = []
        elif not refused or force:
            if refused:
                result.forced = True
                c.set_model_version_tag(name, version.version, "refit.forced", "true")
                c.set_model_version_tag(name, version.version, "refit.force_reason", reason or "")
                move = _move(config, c, entries, CHAMPION, version, action="force-promote", reason=reason or "",
                             extra={"overrode": refused})
            else:
                move = _move(config, c, entries, CHAMPION, version, action="promote",
                             reason=f"gate passed: {fmt_primary(report)}")
            if move:
                result.moves.append(move)
            result.champion_after = str(version.version)
            c.set_model_version_tag(name, version.version, "refit.promoted_at", now())
    return result


# --------------------------------------------------------------------------- rollback


@dataclass
class RollbackResult:
    from_version: str
    to_version: str
    entry: dict[str, Any]
    run_id: str | None
    run_missing: bool


def rollback(config: PipelineConfig, *, reason: str, version: str | None = None) -> RollbackResult:
    """Move `champion` back to the version it replaced (or to `version`), audited."""
    from mlflow.exceptions import MlflowException

    if not (reason or "").strip():
        raise RegistryError("a rollback needs --reason; it goes in the audit log")
    c = client(config)
    name = model_name(config)
    with _locked(config):
        entries = history(config, c)
        _reconcile(config, c, entries)
        current = alias_version(config, CHAMPION, c)
        if current is None:
            raise RegistryError(f"{name} has no champion to roll back")
        if version is None:
            # The version the current champion replaced when it was promoted (not when it was
            # itself rolled back to), so repeated rollbacks walk further back.
            previous = next((e for e in reversed(entries) if e["alias"] == CHAMPION
                             and e["to_version"] == str(current.version)
                             and e["action"] in ("promote", "force-promote", "external")), None)
            if previous is None or previous["from_version"] is None:
                raise RegistryError(f"no champion before v{current.version} is recorded; name one with --version")
            version = previous["from_version"]
        try:
            target = c.get_model_version(name, str(version))
        except MlflowException:
            raise RegistryError(f"{name} has no version {version}") from None
        if str(target.version) == str(current.version):
            raise RegistryError(f"v{current.version} is already the champion")
        entry = _move(config, c, entries, CHAMPION, target, action="rollback", reason=reason)
        assert entry is not None
    run_id = target.tags.get(TAG_RUN)
    missing = bool(run_id) and not (Path(config.train.output_dir) / run_id / "manifest.json").exists()
    return RollbackResult(str(current.version), str(target.version), entry, run_id, missing)


# --------------------------------------------------------------------------- model card


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _ci(m: dict[str, Any] | None, signed: bool = False) -> str:
    if not m or m.get("mean" if not signed else "delta") is None:
        return "n/a"
    value = m["delta"] if signed else m["mean"]
    f = "{:+.3f}" if signed else "{:.3f}"
    if m.get("low") is None:
        return f.format(value)
    return f"{f.format(value)} [{f.format(m['low'])}, {f.format(m['high'])}]"


def _read_manifest(path: Path) -> dict[str, Any] | None:
    try:
        return orjson.loads((path / "manifest.json").read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None


def intended_use(config: PipelineConfig) -> str:
    if config.registry.intended_use:
        return config.registry.intended_use
    fmt = ("a JSON object {\"answer\": ..., \"citations\": [...]}" if config.output.format == "json"
           else "prose with inline [doc-id] citations")
    return (f"Answering users' questions from the documents a retrieval system supplies, in {fmt}, citing the "
            f"documents it uses, and replying \"{config.output.idk_answer}\" when they lack the answer. Serve it "
            "with the same prompt template and system prompt it was trained with (below); the eval measured it "
            "that way. It is not a source of knowledge: questions whose answer is not in the retrieved documents "
            "are a retrieval problem (see the curated dataset's RAG backlog), and it was not evaluated beyond the "
            "suites listed above.")


def model_card(config: PipelineConfig, version: Any, ev: Evaluated) -> str:
    """Markdown: base model, data lineage, training settings, eval table with intervals,
    guard results, intended use and known failure labels."""
    run, report = ev.run, ev.report
    gate = report["gate"]
    level = f"{report.get('confidence', 0.95):.0%}"
    dataset = run.get("dataset") or {}
    split_ref = run.get("split") or {}
    curated = _read_manifest(Path(dataset["path"])) if dataset.get("path") else None
    split_m = _read_manifest(Path(split_ref["path"])) if split_ref.get("path") else None
    base = run.get("base_model") or {}
    lines = [
        f"# {model_name(config)} v{version.version}",
        "",
        f"Gate: **{'PASS' if gate['passed'] else 'FAIL'}** ({gate['summary']}). Primary: {fmt_primary(report)}.",
        f"Registered {now()} by {who()} from eval `{ev.eval_id}` (`{ev.path / 'report.json'}`); run `{run['id']}`"
        + (f", MLflow run `{run['mlflow']['run_id']}`" if (run.get("mlflow") or {}).get("run_id") else "") + ".",
        "",
        "## Model",
        "",
    ]
    if run.get("backend") == "openai":
        o = run["openai"]
        lines += [f"- Backend: OpenAI fine-tuning; base model `{o.get('model')}`",
                  f"- Model id: `{o['fine_tuned_model']}` at {o.get('base_url') or 'the OpenAI API'}",
                  f"- Job: `{o.get('job_id')}`, {o.get('trained_tokens') or '?'} trained tokens"]
    else:
        ident = f"`{base['id']}`, " if base.get("id") and base.get("id") != base.get("name") else ""
        lines += [f"- Backend: LoRA adapter (PEFT format) on `{base.get('name', config.model.base)}` "
                  f"({ident}{base.get('parameters', 0):,} parameters)",
                  f"- Adapter: `{ev.run_path / run.get('adapter', {}).get('path', 'adapter')}` "
                  f"({run.get('adapter', {}).get('trainable_parameters', 0):,} trainable parameters), also under "
                  "`model/` in the MLflow run's artifacts"]
    lines += ["", "## Data lineage", ""]
    if curated:
        c = curated["counts"]
        lines.append(f"- Logs: {len(curated.get('inputs', []))} file(s), {c['read']:,} lines read")
        for item in curated.get("inputs", [])[:20]:
            lines.append(f"  - `{item['path']}` (sha256 `{item['sha256'][:16]}...`)")
        sha = str(dataset.get("examples_sha256", "?"))[:16]
        lines.append(f"- Curated dataset `{curated['id']}` (examples sha256 `{sha}...`): "
                     f"{c['examples']} examples ({c['kept']} kept from the logs, "
                     f"{sum(c.get('added', {}).values())} derived), {c['backlog']} to the RAG backlog, "
                     f"{c['quarantined']} quarantined; decision: {curated['decision']['verdict']}")
        by_source = curated.get("examples_by_source") or {}
        if by_source:
            lines.append("- Examples by source: " + ", ".join(f"{k} {v}" for k, v in sorted(by_source.items())))
    else:
        lines.append(f"- Curated dataset `{dataset.get('id')}` (examples sha256 `{dataset.get('examples_sha256')}`)")
    if split_m:
        sc = split_m["counts"]
        lines.append(f"- Split `{split_m['id']}`: train {sc['train']}, validation {sc['validation']}, "
                     f"frozen regression set {sc['regression']} (`{config.regression_path()}`, never trained on)")
    else:
        lines.append(f"- Split `{split_ref.get('id')}`")
    lines += ["", "## Training settings", ""]
    t = run.get("config") or {}
    if run.get("backend") == "openai":
        hyper = run["openai"].get("hyperparameters") or {}
        settings = [("method", "supervised"), *((k, v) for k, v in hyper.items()),
                    ("suffix", run["openai"].get("suffix")), ("seed", run["openai"].get("seed"))]
    else:
        lora = t.get("lora") or {}
        steps = run.get("steps") or {}
        hardware = run.get("hardware") or {}
        settings = [("LoRA rank / alpha / dropout", f"{lora.get('r')} / {lora.get('alpha')} / {lora.get('dropout')}"),
                    ("target modules", ", ".join(lora.get("target_modules") or [])),
                    ("adapted layers", f"top {lora['top_layers']}" if lora.get("top_layers") else "all"),
                    ("steps", f"{steps.get('done')} of {steps.get('max')}"
                              + (" (early stopped)" if steps.get("early_stopped") else "")),
                    ("epochs / max steps", f"{t.get('epochs')} / {t.get('max_steps')}"),
                    ("batch size x accumulation", f"{t.get('batch_size')} x {t.get('gradient_accumulation')}"),
                    ("learning rate, schedule, warmup", f"{t.get('learning_rate')}, {t.get('lr_scheduler')}, "
                                                        f"{t.get('warmup_fraction')}"),
                    ("max length", t.get("max_length")),
                    ("precision, batching, device", f"{hardware.get('precision')}, {hardware.get('batching')}, "
                                                    f"{hardware.get('device')}"),
                    ("seed", t.get("seed"))]
    losses = run.get("losses") or {}
    settings.append(("validation loss: base -> final (best)",
                     f"{_pct(losses.get('base_eval_loss'))} -> {_pct(losses.get('final_eval_loss'))} "
                     f"({_pct(losses.get('best_eval_loss'))})"))
    settings.append(("train config hash", f"`{str(run.get('config_hash'))[:16]}...`"))
    lines += ["| setting | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in settings)]

    lines += ["", f"## Evaluation ({level} bootstrap intervals)", ""]
    others = [c for c in report["contenders"] if c != "candidate"]
    header = ["suite", "n", "metric", "candidate"] + [f"{o}" for o in others] + [f"candidate - {o}" for o in others]
    lines += ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    first = (gate.get("primary") or {}).get("suite", "validation")
    order = sorted(report["suites"],
                   key=lambda n: (n != first, n != "regression", n not in config.eval.suites.guards, n))
    for name in order:
        suite = report["suites"][name]
        metric = suite["primary_metric"]
        row = [name, str(suite["n"]), metric, _ci(suite["contenders"]["candidate"]["metrics"].get(metric))]
        row += [_pct((suite["contenders"].get(o, {}).get("metrics", {}).get(metric) or {}).get("mean")) for o in others]
        row += [_ci(suite["comparisons"].get(o, {}).get(metric), signed=True) for o in others]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Contenders: " + "; ".join(f"{k}: {v['model']}" + (f" (registry v{v['registry_version']})"
                                                                      if v.get("registry_version") else "")
                                             for k, v in report["contenders"].items()) + "."]

    lines += ["", "## Gate and guard results", "", "| rule | result | value | needs | detail |",
              "| --- | --- | --- | --- | --- |"]
    for r in gate["rules"]:
        value = "n/a" if r["value"] is None else f"{r['value']:+.3f}"
        lines.append(f"| {r['rule']} | {'pass' if r['passed'] else 'FAIL'} | {value} | {r['threshold']} | "
                     f"{r['detail'].replace('|', '/')} |")

    lines += ["", "## Intended use", "", intended_use(config), "", "System prompt:", ""]
    lines += ["> " + line for line in config.prompt.system.replace("{idk}", config.output.idk_answer).splitlines()]

    lines += ["", "## Known failure labels", ""]
    suite_name = (gate.get("primary") or {}).get("suite", "validation")
    primary_suite = report["suites"].get(suite_name)
    if primary_suite:
        metric = primary_suite["primary_metric"]
        labels = primary_suite["contenders"]["candidate"].get("labels") or {}
        base_labels = (primary_suite["contenders"].get("baseline") or {}).get("labels") or {}
        ranked = sorted(((lab, v) for lab, v in labels.items() if v.get(metric) is not None),
                        key=lambda kv: kv[1][metric])
        if ranked:
            lines += [f"Per failure label on {suite_name} ({metric}, weakest first):", "",
                      "| label | n | candidate | baseline |", "| --- | --- | --- | --- |"]
            for lab, v in ranked:
                theirs = (base_labels.get(lab) or {}).get(metric)
                lines.append(f"| {lab} | {v['n']} | {_pct(v[metric])} | {_pct(theirs)} |")
            lines.append("")
    if curated:
        knowledge = {lab: v.get("backlog", 0) for lab, v in (curated.get("labels") or {}).items() if v.get("backlog")}
        if knowledge:
            lines.append("Not fixed by this model (routed to the RAG backlog): "
                         + ", ".join(f"{k} ({v})" for k, v in sorted(knowledge.items(), key=lambda kv: -kv[1])) + ".")
        weak = (curated.get("labels") or {}).get("weak_reasoning", {}).get("filtered")
        if weak:
            lines.append(f"Not trained on: weak_reasoning ({weak} logs; a stronger base model or task decomposition).")
    lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- status


def _describe_version(v: Any) -> dict[str, Any]:
    return {"version": str(v.version), "run_id": v.tags.get(TAG_RUN), "eval_id": v.tags.get(TAG_EVAL),
            "gate": v.tags.get("refit.gate"), "primary": v.tags.get("refit.primary"),
            "dataset_id": v.tags.get("refit.dataset_id"), "forced": v.tags.get("refit.forced") == "true",
            "source": v.source}


def status(config: PipelineConfig) -> dict[str, Any]:
    """The newest output of every stage and the registry's aliases (for `refit status`)."""
    out: dict[str, Any] = {"pipeline": config.name, "model": model_name(config)}
    stages = (("dataset", config.curate.output_dir), ("split", config.split.output_dir),
              ("run", config.train.output_dir), ("eval", config.eval.output_dir))
    for key, folder in stages:
        ident = read_latest(Path(folder))
        manifest = _read_manifest(Path(folder) / ident) if ident else None
        out[key] = {"id": ident, "created_at": (manifest or {}).get("created_at")} if ident else None
        if not manifest:
            continue
        if key == "dataset":
            out[key]["examples"] = manifest["counts"]["examples"]
            out[key]["decision"] = manifest["decision"]["verdict"]
        elif key == "split":
            out[key]["counts"] = {k: manifest["counts"][k] for k in ("train", "validation", "regression")}
            out[key]["dataset"] = manifest["dataset"]["id"]
        elif key == "run":
            out[key]["backend"] = manifest.get("backend", "lora")
            out[key]["split"] = manifest["split"]["id"]
            out[key]["final_eval_loss"] = (manifest.get("losses") or {}).get("final_eval_loss")
        elif key == "eval":
            out[key]["run"] = manifest["run"]["id"]
            gate = manifest.get("gate") or {}
            out[key]["gate"] = {"passed": gate.get("passed"), "failed": gate.get("failed")}
            try:
                report = orjson.loads((Path(folder) / ident / "report.json").read_bytes())
                out[key]["primary"] = fmt_primary(report)
            except FileNotFoundError:
                pass
    try:
        c = client(config)
        for alias in (CHAMPION, CANDIDATE):
            v = alias_version(config, alias, c)
            out[alias] = _describe_version(v) if v is not None else None
        entries = history(config, c)
        last = next((e for e in reversed(entries) if e["alias"] == CHAMPION), None)
        out["last_champion_move"] = last
        if out.get("run"):
            decided = versions_of_run(config, out["run"]["id"], c)
            out["run"]["versions"] = [str(v.version) for v in decided]
    except Exception as exc:  # noqa: BLE001 - status must show what it can
        out["registry_error"] = f"{type(exc).__name__}: {exc}"
    summary = Path(config.retrain.dir) / config.name / "last.json"
    if summary.exists():
        try:
            s = orjson.loads(summary.read_bytes())
            out["last_retrain"] = {k: s.get(k) for k in ("outcome", "exit_code", "finished_at", "message")}
        except orjson.JSONDecodeError:
            pass
    return out
