"""The eval suites: one table, name -> where the items come from, how they are scored, the
primary metric, and the scoring version.

- `validation` and `regression` come from the run's split (toggled by eval.suites.validation
  and eval.suites.regression).
- Guard suites are files `evals/suites/<name>.jsonl` (refit's three are written by
  `python -m evals.guards`), listed in eval.suites.guards. Adding one is one entry in SUITES
  plus its data file; the config accepts every guard name in this table.
- User suites (eval.suites.user) are the user's files, in USER_SUITE's shape.

A suite's `version` is part of the eval id: bump it when that suite's scoring changes (its
scorer, the metrics it reports, its primary metric), and evals scored the old way are stale.
Generations are cached by prompt and decoding settings, so a bump re-scores without
re-generating.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import orjson

from pipelines.storage import iter_jsonl

if TYPE_CHECKING:
    from pipelines.config import PipelineConfig

GUARD_DIR = Path(__file__).resolve().parent / "suites"

Item = dict[str, Any]


class SuiteError(RuntimeError):
    """A suite that cannot be loaded; the message names it and the file."""


# --------------------------------------------------------------------------- items


def split_item(example: dict[str, Any], config: PipelineConfig, suite: str) -> Item:
    """A split example as an eval item: the gold answer is the ideal answer's text; an
    "I don't know" ideal answer makes the item unanswerable (SQuAD 2.0's NoAns)."""
    from evals import metrics as M  # here, not at the top: the config imports this table, and numpy is slow
    from pipelines.answers import AnswerContract

    item = {"id": example["id"], "suite": suite, "kind": example.get("kind", "rag"), "query": example["query"],
            "contexts": [{"id": c["id"], "text": c["text"]} for c in example.get("contexts") or []],
            "label": example.get("label") or "none"}
    if item["kind"] == "general":
        item.update(answers=[example["ideal_answer"]], answerable=True, scorer="text")
        return item
    gold = M.parse_output(example["ideal_answer"], config.output.format, config.output.idk_answer)
    answerable = not gold.refusal
    # Did the logged contexts hold the answer? The report splits answer quality by it.
    in_context = answerable and AnswerContract(config.output).supported(gold, [c["text"] for c in item["contexts"]])
    item.update(answers=[gold.answer] if answerable else [], answerable=answerable, scorer="rag",
                answer_in_context=in_context)
    return item


def load_split_suite(name: str, config: PipelineConfig, split_path: Path) -> tuple[list[Item], str]:
    path = split_path / f"{name}.jsonl"
    return [split_item(e, config, name) for e in iter_jsonl(path)], str(path)


def load_guard_suite(name: str, config: PipelineConfig, split_path: Path) -> tuple[list[Item], str]:
    path = GUARD_DIR / f"{name}.jsonl"
    scorer = SUITES[name].scorer
    return [{**item, "scorer": scorer} for item in iter_jsonl(path)][:config.eval.suites.guard_limit], str(path)


def _squad_items(path: Path) -> list[Item]:
    items = []
    data = orjson.loads(path.read_bytes())
    for article in data.get("data", []):
        for p, paragraph in enumerate(article["paragraphs"]):
            doc = {"id": f"{article.get('title', 'doc')}-{p}".replace(" ", "_"), "text": paragraph["context"]}
            for qa in paragraph["qas"]:
                answers = [a["text"] for a in qa.get("answers", [])]
                items.append({"id": str(qa["id"]), "query": qa["question"], "contexts": [doc], "answers": answers,
                              "answerable": not qa.get("is_impossible", False) and bool(answers)})
    return items


def _jsonl_items(path: Path, name: str) -> list[Item]:
    items = []
    for n, row in enumerate(iter_jsonl(path), 1):
        query = row.get("question") or row.get("query")
        if not isinstance(query, str):
            raise SuiteError(f"{path}:{n}: a suite row needs a 'question' string")
        contexts = row.get("contexts")
        if contexts is None and row.get("context"):
            contexts = [{"id": "context", "text": row["context"]}]
        answers = row.get("answers")
        if answers is None and isinstance(row.get("answer"), str):
            answer = row["answer"]  # GSM8K: the reasoning, then "#### <number>"
            answers = [answer.rsplit("####", 1)[1].strip().replace(",", "")] if "####" in answer else [answer]
        if not isinstance(answers, list):
            raise SuiteError(f"{path}:{n}: a suite row needs 'answers' (a list) or 'answer'")
        items.append({"id": str(row.get("id", f"{name}-{n}")), "query": query,
                      "contexts": [{"id": str(c["id"]), "text": c["text"]} for c in contexts or []],
                      "answers": [str(a) for a in answers], "answerable": bool(answers)})
    return items


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def user_items(path: Path, name: str, limit: int | None) -> list[Item]:
    """JSONL {question, context(s), answers}, GSM8K JSONL, or SQuAD 2.0 JSON; each item's
    scorer follows from its shape: numeric answers without documents, documents, or neither."""
    items = _squad_items(path) if path.suffix == ".json" else _jsonl_items(path, name)
    out = []
    for item in items[:limit]:
        numeric = bool(item["answers"]) and all(_is_number(a) for a in item["answers"])
        scorer = "numeric" if numeric and not item["contexts"] else ("rag" if item["contexts"] else "text")
        out.append({**item, "suite": name, "kind": "rag" if item["contexts"] else "general",
                    "label": "answerable" if item["answerable"] else "unanswerable", "scorer": scorer})
    return out


def load_user_suite(name: str, config: PipelineConfig, split_path: Path) -> tuple[list[Item], str]:
    user = next(u for u in config.eval.suites.user if u.name == name)
    path = Path(user.path)
    if not path.exists():
        raise SuiteError(f"eval.suites.user {user.name!r}: {path} does not exist")
    return user_items(path, user.name, user.limit), str(path)


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class SuiteSpec:
    kind: Literal["split", "guard", "user"]
    load: Callable[[str, PipelineConfig, Path], tuple[list[Item], str]]  # (name, config, split) -> items, source
    scorer: str | None  # a name in evals.scorers.SCORERS; None: the loader sets each item's scorer
    # A metric name, "gate" (eval.gate.primary_metric) or "auto" (accuracy when every item is
    # scored numeric or instruction, the gate's metric when any is rag, else f1).
    primary_metric: str
    version: int


SUITES: dict[str, SuiteSpec] = {
    # 2: answers read through pipelines/answers.py (one support threshold, output.min_support).
    "validation": SuiteSpec("split", load_split_suite, None, "auto", 2),
    "regression": SuiteSpec("split", load_split_suite, None, "auto", 2),
    "instruction_following": SuiteSpec("guard", load_guard_suite, "instruction", "accuracy", 1),
    "arithmetic": SuiteSpec("guard", load_guard_suite, "numeric", "accuracy", 1),
    "refusal": SuiteSpec("guard", load_guard_suite, "rag", "gate", 2),
}
USER_SUITE = SuiteSpec("user", load_user_suite, None, "auto", 2)  # each of eval.suites.user

GUARD_SUITES = tuple(name for name, spec in SUITES.items() if spec.kind == "guard")


def check_guard_names(names: list[str]) -> list[str]:
    """For the config: every name is a guard suite of the table."""
    unknown = [n for n in names if n not in GUARD_SUITES]
    if unknown:
        raise ValueError(f"unknown guard suite {unknown[0]!r}; known: {', '.join(GUARD_SUITES)}")
    return names


# --------------------------------------------------------------------------- loading


@dataclass
class Suite:
    name: str
    items: list[Item]
    source: str  # where the items came from
    sha256: str  # of the items as scored
    spec: SuiteSpec

    def primary_metric(self, config: PipelineConfig) -> str:
        chosen = self.spec.primary_metric
        if chosen == "gate":
            return config.eval.gate.primary_metric
        if chosen != "auto":
            return chosen
        scorers = {item["scorer"] for item in self.items}
        if scorers <= {"instruction", "numeric"}:
            return "accuracy"
        return config.eval.gate.primary_metric if "rag" in scorers else "f1"


def _suite(name: str, items: list[Item], source: str, spec: SuiteSpec) -> Suite:
    if not items:
        raise SuiteError(f"suite {name!r} ({source}) has no items")
    digest = hashlib.sha256(b"".join(orjson.dumps(i, option=orjson.OPT_SORT_KEYS) for i in items)).hexdigest()
    return Suite(name, items, source, digest, spec)


def load_suites(config: PipelineConfig, split_path: Path) -> list[Suite]:
    """The enabled suites, in report order: the split's, the guards, then the user's."""
    cfg = config.eval.suites
    names = [n for n, on in (("validation", cfg.validation), ("regression", cfg.regression)) if on] + cfg.guards
    specs = [(name, SUITES[name]) for name in names] + [(user.name, USER_SUITE) for user in cfg.user]
    return [_suite(name, *spec.load(name, config, split_path), spec) for name, spec in specs]


def suite_versions(suites: list[Suite]) -> dict[str, int]:
    """What the eval id records of how each suite is scored."""
    return {s.name: s.spec.version for s in suites}
