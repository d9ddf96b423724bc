"""OpenAI chat fine-tuning files: the format checks and the billing estimate of OpenAI's
data-preparation recipe ("Data preparation and analysis for chat model fine-tuning").

Shared by `refit split` (which validates its exports), the OpenAI training backend (which
refuses to upload a file that fails) and the local fine-tuning API server (which rejects
such an upload the way the real service does).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

# The recipe's constants.
ALLOWED_MESSAGE_KEYS = ("role", "content", "name", "function_call", "weight")
ALLOWED_ROLES = ("system", "user", "assistant", "function")
MIN_EXAMPLES = 10
TARGET_EPOCHS = 3
MIN_TARGET_EXAMPLES = 100
MAX_TARGET_EXAMPLES = 25_000
MIN_DEFAULT_EPOCHS = 1
MAX_DEFAULT_EPOCHS = 25


class FormatError(ValueError):
    """A file that fails a format check; the message names the line and the check."""


@dataclass
class FormatReport:
    examples: int = 0
    errors: Counter = field(default_factory=Counter)
    first_error: dict[str, int] = field(default_factory=dict)  # check -> first line number
    missing_system: int = 0
    missing_user: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors and self.examples >= MIN_EXAMPLES

    def problems(self) -> list[str]:
        out = [f"{check} ({n} example(s), first at line {self.first_error[check]})"
               for check, n in sorted(self.errors.items())]
        if self.examples < MIN_EXAMPLES:
            out.append(f"too_few_examples ({self.examples} < the minimum of {MIN_EXAMPLES})")
        return out


def example_errors(example: Any) -> list[str]:
    """The recipe's checks for one parsed line, in its order; [] when the example is valid."""
    if not isinstance(example, dict):
        return ["data_type"]
    messages = example.get("messages", None)
    if not messages:
        return ["missing_messages_list"]
    if not isinstance(messages, list):
        return ["data_type"]
    errors: list[str] = []
    for message in messages:
        if not isinstance(message, dict):
            errors.append("data_type")
            continue
        if "role" not in message or "content" not in message:
            errors.append("message_missing_key")
        if any(k not in ALLOWED_MESSAGE_KEYS for k in message):
            errors.append("message_unrecognized_key")
        if message.get("role", None) not in ALLOWED_ROLES:
            errors.append("unrecognized_role")
        content = message.get("content", None)
        function_call = message.get("function_call", None)
        if (not content and not function_call) or not isinstance(content, str):
            errors.append("missing_content")
    if not any(isinstance(m, dict) and m.get("role", None) == "assistant" for m in messages):
        errors.append("example_missing_assistant_message")
    return list(dict.fromkeys(errors))


def check_lines(lines: list[bytes], example_check: Callable[[Any], list[str]] | None = None) -> FormatReport:
    """Check each JSONL line with `example_check` (default: the chat SFT format)."""
    report = FormatReport()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        report.examples += 1
        try:
            example = orjson.loads(line)
        except orjson.JSONDecodeError:
            example, errors = None, ["invalid_json"]
        else:
            errors = (example_check or example_errors)(example)
        if example_check is None and not errors:
            roles = {m.get("role") for m in example["messages"]}
            report.missing_system += "system" not in roles
            report.missing_user += "user" not in roles
        for check in errors:
            report.errors[check] += 1
            report.first_error.setdefault(check, number)
    return report


def check_file(path: Path) -> FormatReport:
    return check_lines(path.read_bytes().splitlines())


def require_valid(path: Path) -> FormatReport:
    """Raise FormatError naming the first failing line and check."""
    report = check_file(path)
    if not report.ok:
        raise FormatError(f"{path}: fails OpenAI's chat fine-tuning format checks: " + "; ".join(report.problems()))
    return report


def default_epochs(n_examples: int) -> int:
    """OpenAI's default: 3 epochs, clamped so that n_examples x epochs lands in
    [100, 25,000] with epochs in [1, 25]."""
    if n_examples <= 0:
        return 0
    epochs = TARGET_EPOCHS
    if n_examples * TARGET_EPOCHS < MIN_TARGET_EXAMPLES:
        epochs = min(MAX_DEFAULT_EPOCHS, MIN_TARGET_EXAMPLES // n_examples)
    elif n_examples * TARGET_EPOCHS > MAX_TARGET_EXAMPLES:
        epochs = max(MIN_DEFAULT_EPOCHS, MAX_TARGET_EXAMPLES // n_examples)
    return epochs


def billing_estimate(example_tokens: list[int], max_tokens_per_example: int, price_per_million: float,
                     n_epochs: int | None = None) -> dict[str, Any]:
    """Billed tokens: every example counts up to the per-example cap, times the epochs."""
    epochs = n_epochs if n_epochs is not None else default_epochs(len(example_tokens))
    per_epoch = sum(min(max_tokens_per_example, n) for n in example_tokens)
    billed = per_epoch * epochs
    return {
        "examples": len(example_tokens),
        "epochs": epochs,
        "tokens_per_epoch": per_epoch,
        "billed_tokens": billed,
        "price_per_million_tokens": price_per_million,
        "estimated_cost": round(billed * price_per_million / 1e6, 4),
        "over_max_tokens": sum(n > max_tokens_per_example for n in example_tokens),
    }


# --------------------------------------------------------------------------- preference (DPO) files

DPO_KEYS = ("input", "preferred_output", "non_preferred_output")
DPO_INPUT_KEYS = ("messages", "tools", "parallel_tool_calls")


def _output_errors(output: Any) -> list[str]:
    """One side of a pair: a list of exactly one assistant message with text content."""
    if not isinstance(output, list) or len(output) != 1 or not isinstance(output[0], dict):
        return ["output_not_one_message"]
    message = output[0]
    errors = []
    if any(k not in ALLOWED_MESSAGE_KEYS for k in message):
        errors.append("message_unrecognized_key")
    if message.get("role") != "assistant":
        errors.append("output_not_assistant")
    if not isinstance(message.get("content"), str) or not message["content"].strip():
        errors.append("missing_content")
    return errors


def dpo_example_errors(example: Any) -> list[str]:
    """The checks for one line of a preference file (`method.type: dpo`): an `input` whose
    messages end with the user's turn, and one assistant message on each side, different."""
    if not isinstance(example, dict):
        return ["data_type"]
    errors = ["unrecognized_key"] if any(k not in DPO_KEYS for k in example) else []
    inp = example.get("input")
    if not isinstance(inp, dict) or not inp.get("messages"):
        return errors + ["missing_input_messages"]
    if any(k not in DPO_INPUT_KEYS for k in inp):
        errors.append("unrecognized_key")
    messages = inp["messages"]
    if not isinstance(messages, list):
        return errors + ["data_type"]
    for message in messages:
        if not isinstance(message, dict):
            errors.append("data_type")
            continue
        if message.get("role") not in ALLOWED_ROLES or any(k not in ALLOWED_MESSAGE_KEYS for k in message):
            errors.append("unrecognized_role" if message.get("role") not in ALLOWED_ROLES else "message_unrecognized_key")
        if not isinstance(message.get("content"), str) or not message["content"]:
            errors.append("missing_content")
    if not isinstance(messages[-1], dict) or messages[-1].get("role") != "user":
        errors.append("input_not_ending_with_user")
    for side in ("preferred_output", "non_preferred_output"):
        errors += _output_errors(example.get(side)) if side in example else [f"missing_{side}"]
    if not errors and example["preferred_output"][0]["content"] == example["non_preferred_output"][0]["content"]:
        errors.append("identical_outputs")
    return list(dict.fromkeys(errors))


def check_dpo_lines(lines: list[bytes]) -> FormatReport:
    return check_lines(lines, dpo_example_errors)


def require_valid_dpo(path: Path) -> FormatReport:
    """Raise FormatError naming the first failing line and check of a preference file."""
    report = check_dpo_lines(path.read_bytes().splitlines())
    if not report.ok:
        raise FormatError(f"{path}: fails OpenAI's preference (DPO) format checks: " + "; ".join(report.problems()))
    return report
