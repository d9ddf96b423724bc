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

The model card is written by `pipelines/model_card.py`; `refit status` gathers the aliases
through `pipelines/status.py`.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import socket
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from evals.gate import champion_refusals
from pipelines.config import PipelineConfig
from pipelines.stage import utc_now as now
from pipelines.storage import dumps, file_sha256, write_bytes_atomic

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


def _parse_entries(records: Iterable[bytes | str]) -> list[dict[str, Any]]:
    out = []
    for record in records:
        try:
            out.append(orjson.loads(record))
        except orjson.JSONDecodeError:
            continue  # a torn last line from a crash; the registry tag has the entry
    return out


def _torn(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) != b"\n"


def _entries_from_file(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return _parse_entries(line for line in path.read_bytes().splitlines() if line.strip())


def _entries_from_registry(mlflow_client: Any, name: str) -> list[dict[str, Any]]:
    from mlflow.exceptions import MlflowException

    try:
        tags = mlflow_client.get_registered_model(name).tags
    except MlflowException:
        return []
    return _parse_entries(value for key, value in tags.items() if key.startswith(AUDIT_TAG))


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
        if handle.tell() and _torn(path):  # a crash mid-append left a line without its newline
            handle.write(b"\n")
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


def stage_manifest(folder: Path) -> dict[str, Any] | None:
    """A stage output's manifest, or None when it is gone or torn: the model card and `refit
    status` show what they can."""
    try:
        return orjson.loads((folder / "manifest.json").read_bytes())
    except (FileNotFoundError, orjson.JSONDecodeError):
        return None


def _read(path: Path, model: Any) -> dict[str, Any]:
    from pipelines.contracts import ContractError, read_manifest

    try:
        return read_manifest(path, model)
    except ContractError as exc:
        raise RegistryError(str(exc)) from None


def load_evaluated(config: PipelineConfig, eval_id: str | None) -> Evaluated:
    from pipelines.contracts import EvalManifest, EvalReport, RunManifest
    from pipelines.storage import resolve_stage_output

    path = resolve_stage_output(Path(config.eval.output_dir), eval_id, "eval", "eval", RegistryError)
    if not (path / "report.json").exists():
        raise RegistryError(f"eval {path.name} has no report.json; run `make eval` again")
    report = _read(path / "report.json", EvalReport)
    manifest = _read(path / "manifest.json", EvalManifest)
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
    run = _read(run_path / "manifest.json", RunManifest)
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


def _versions_tagged(mlflow_client: Any, name: str, tag: str, value: str) -> list[Any]:
    """The versions of `name` whose `tag` is `value`, oldest first."""
    from mlflow.exceptions import MlflowException

    try:
        found = mlflow_client.search_model_versions(f"name = '{name}' and tags.`{tag}` = '{value}'")
    except MlflowException:  # a server without tag filters
        found = [v for v in mlflow_client.search_model_versions(f"name = '{name}'") if v.tags.get(tag) == value]
    return sorted(found, key=lambda v: int(v.version))


def _find_version(mlflow_client: Any, name: str, eval_id: str) -> Any | None:
    found = _versions_tagged(mlflow_client, name, TAG_EVAL, eval_id)
    return found[0] if found else None


def versions_of_run(config: PipelineConfig, run_id: str, mlflow_client: Any = None) -> list[Any]:
    from mlflow.exceptions import MlflowException

    c = mlflow_client or client(config)
    try:
        return _versions_tagged(c, model_name(config), TAG_RUN, run_id)
    except MlflowException:
        return []


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


def _register(config: PipelineConfig, mlflow_client: Any, ev: Evaluated) -> tuple[Any, bool]:
    """The version of this eval (True: created now), with its lineage complete from the start."""
    from pipelines.model_card import lineage_tags

    name = model_name(config)
    version = _find_version(mlflow_client, name, ev.eval_id)
    if version is not None:
        return version, False
    source, mlflow_run = _source(config, mlflow_client, ev)
    version = mlflow_client.create_model_version(
        name, source, run_id=mlflow_run, tags=lineage_tags(config, ev),
        description=f"run {ev.run['id']}, eval {ev.eval_id}: gate {ev.report['gate']['summary']}; "
                    f"{fmt_primary(ev.report)}")
    return version, True


def _write_card(config: PipelineConfig, mlflow_client: Any, version: Any, ev: Evaluated) -> Path:
    """The version's model card (written again if a crash lost it)."""
    from pipelines.model_card import model_card

    card = paths(config).card(version.version)
    if not card.exists():
        text = model_card(config, version, ev)
        write_bytes_atomic(card, text.encode())
        if version.run_id:  # next to the version's files in the run's artifacts
            mlflow_client.log_text(version.run_id, text, f"model_cards/v{version.version}.md")
        mlflow_client.set_model_version_tag(model_name(config), version.version, "refit.model_card", str(card))
    return card


def _decide(config: PipelineConfig, mlflow_client: Any, ev: Evaluated, version: Any, created: bool,
            card: Path) -> PromoteResult:
    """Should champion move? Only for a passing report measured against today's champion."""
    gate = ev.report["gate"]
    champion = alias_version(config, CHAMPION, mlflow_client)
    before = str(champion.version) if champion is not None else None
    measured = (ev.manifest.get("champion") or {}).get("registry_version")
    measured = str(measured) if measured is not None else None
    refused = champion_refusals(gate, champion_source=config.eval.champion, measured=measured, current=before,
                                version=str(version.version))
    return PromoteResult(str(version.version), ev.eval_id, ev.run["id"], created, gate["passed"], False,
                         before, before, refused=refused, failed_rules=[r for r in gate["rules"] if not r["passed"]],
                         card=card)


def _move_champion(config: PipelineConfig, mlflow_client: Any, entries: list[dict[str, Any]], version: Any,
                   ev: Evaluated, result: PromoteResult, *, force: bool, reason: str | None) -> None:
    """Move champion to `version` when nothing refuses it, or when forced (recorded as such)."""
    name = model_name(config)
    if result.champion_before == result.version:
        result.refused = []
        return
    if result.refused and not force:
        return
    if result.refused:
        result.forced = True
        mlflow_client.set_model_version_tag(name, version.version, "refit.forced", "true")
        mlflow_client.set_model_version_tag(name, version.version, "refit.force_reason", reason or "")
        move = _move(config, mlflow_client, entries, CHAMPION, version, action="force-promote", reason=reason or "",
                     extra={"overrode": result.refused})
    else:
        move = _move(config, mlflow_client, entries, CHAMPION, version, action="promote",
                     reason=f"gate passed: {fmt_primary(ev.report)}")
    if move:
        result.moves.append(move)
    result.champion_after = result.version
    mlflow_client.set_model_version_tag(name, version.version, "refit.promoted_at", now())


def promote(config: PipelineConfig, eval_id: str | None = None, *, force: bool = False,
            reason: str | None = None) -> PromoteResult:
    """Register the evaluated candidate; move `candidate`, and `champion` when allowed."""
    if force and not (reason or "").strip():
        raise RegistryError("--force needs --reason: say why the gate is overridden; it goes in the audit log")
    ev = load_evaluated(config, eval_id)
    c = client(config)
    with _locked(config):
        _ensure_model(config, c)
        entries = history(config, c)
        _reconcile(config, c, entries)
        version, created = _register(config, c, ev)
        card = _write_card(config, c, version, ev)
        result = _decide(config, c, ev, version, created, card)
        # Candidate first, then champion, so a crash in between leaves champion where it was.
        passed = "passed" if ev.report["gate"]["passed"] else "failed"
        move = _move(config, c, entries, CANDIDATE, version, action="register",
                     reason=f"registered from eval {ev.eval_id} (gate {passed})")
        if move:
            result.moves.append(move)
        _move_champion(config, c, entries, version, ev, result, force=force, reason=reason)
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
