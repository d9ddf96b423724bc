"""Per-example scoring: one function per scorer, looked up by the name each item carries.

An item's "scorer" says how its prediction is scored: "rag" (the pipeline's answer format:
SQuAD 2.0 F1 and exact match with refusals as the empty answer, refusal and false-refusal
rates, citations, format and groundedness), "text" (F1 and exact match on the raw text),
"numeric" (the final number) or "instruction" (every IFEval-style constraint holds). The
suites table (evals/suites.py) says which scorer each suite's items get.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from evals import metrics as M
from evals.checks import check_instruction, numeric_match

if TYPE_CHECKING:
    from pipelines.config import PipelineConfig

Scores = dict[str, float | None]


def score_instruction(item: dict[str, Any], text: str, config: PipelineConfig) -> Scores:
    return {"accuracy": float(check_instruction(text, item["check"]))}


def score_numeric(item: dict[str, Any], text: str, config: PipelineConfig) -> Scores:
    return {"accuracy": float(numeric_match(text, item["answers"]))}


def score_text(item: dict[str, Any], text: str, config: PipelineConfig) -> Scores:
    return {"f1": M.max_f1(text, item["answers"]), "exact_match": float(M.max_exact(text, item["answers"]))}


def score_rag(item: dict[str, Any], text: str, config: PipelineConfig) -> Scores:
    parsed = M.parse_output(text, config.output.format, config.output.idk_answer)
    predicted = "" if parsed.refusal else parsed.answer
    answerable = item["answerable"]
    f1 = M.max_f1(predicted, item["answers"])
    em = float(M.max_exact(predicted, item["answers"]))
    return {
        "f1": f1, "exact_match": em, "format_valid": float(parsed.format_valid),
        "refusal_accuracy": None if answerable else float(parsed.refusal),
        "false_refusal": float(parsed.refusal) if answerable else None,
        "citation_valid": M.citation_valid(parsed, item["contexts"], config.output.min_support) if answerable else None,
        "groundedness": M.groundedness(parsed, item["contexts"]),
        "f1_has_answer": f1 if answerable else None, "exact_match_has_answer": em if answerable else None,
        "f1_no_answer": None if answerable else f1, "exact_match_no_answer": None if answerable else em,
    }


SCORERS: dict[str, Callable[[dict[str, Any], str, PipelineConfig], Scores]] = {
    "rag": score_rag,
    "text": score_text,
    "numeric": score_numeric,
    "instruction": score_instruction,
}


def score(item: dict[str, Any], text: str, config: PipelineConfig) -> Scores:
    """The scores of one prediction, by the item's scorer."""
    return SCORERS[item["scorer"]](item, text, config)
