"""The one prompt template: an example becomes chat messages here, and only here.

Training, evaluation and serving all call `render_messages`, so a model never sees a
different prompt at eval time than it was trained on. A RAG example renders as: the system
instructions, then one user turn holding the numbered documents with their ids and the
question, then (for training) the assistant's ideal answer. General instructions mixed in
against forgetting render as a plain chat with the general system prompt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pipelines.config import OutputConfig, PromptConfig

Message = dict[str, str]


def system_prompt(prompt: PromptConfig, output: OutputConfig) -> str:
    # str.replace, not str.format: the instructions contain literal JSON braces.
    return prompt.system.replace("{idk}", output.idk_answer)


def render_documents(contexts: Sequence[Mapping[str, Any]]) -> str:
    if not contexts:
        return "Documents: none were retrieved."
    blocks = [f"Document {i} [{ctx['id']}]:\n{ctx['text']}" for i, ctx in enumerate(contexts, 1)]
    return "Documents:\n\n" + "\n\n".join(blocks)


def render_user_turn(example: Mapping[str, Any]) -> str:
    return f"{render_documents(example.get('contexts') or [])}\n\nQuestion: {example['query']}"


def _turns(example: Mapping[str, Any], with_answer: bool) -> list[Message]:
    if example.get("kind") == "general":
        turns = [{"role": "user", "content": example["query"]}]
    else:
        turns = [{"role": "user", "content": render_user_turn(example)}]
    if with_answer:
        turns.append({"role": "assistant", "content": example["ideal_answer"]})
    return turns


def render_messages(
    example: Mapping[str, Any],
    prompt: PromptConfig,
    output: OutputConfig,
    *,
    with_answer: bool = True,
    baseline_shots: Sequence[Mapping[str, Any]] | None = None,
) -> list[Message]:
    """Messages for one example.

    `with_answer=False` gives the prompt a model completes. `baseline_shots` (a list, even
    empty) renders the prompt baseline instead of the fine-tuning prompt: the detailed
    instructions, then the few-shot examples as earlier user/assistant turns. General
    instructions render the same way for both: they test what the base model already does.
    """
    if example.get("kind") == "general":
        return [{"role": "system", "content": prompt.general_system}] + _turns(example, with_answer)
    if baseline_shots is None:
        return [{"role": "system", "content": system_prompt(prompt, output)}] + _turns(example, with_answer)
    shots: list[Message] = []
    for shot in baseline_shots:
        shots.extend(_turns(shot, with_answer=True))
    system = prompt.baseline_system.replace("{idk}", output.idk_answer)
    return [{"role": "system", "content": system}] + shots + _turns(example, with_answer)
