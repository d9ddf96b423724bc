"""Chat completions: an ft: model (or one of its checkpoints) answers with the assistant turn of
the training or validation example whose prompt matches exactly; any other prompt gets the
configured fallback; `usage` counts tokens the way api.approx_tokens estimates them."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from .api import ApiError, approx_tokens, messages_tokens, prompt_key
from .jobs import advance

if TYPE_CHECKING:
    from .state import FakeOpenAI


def answers(api: FakeOpenAI, model: str) -> dict[str, str] | None:
    """prompt -> answer for an ft: model (or one of its checkpoints); None if unknown."""
    if model in api.answer_index:
        return api.answer_index[model]
    for job in api.jobs.values():
        advance(api, job)
        names = {job.obj["fine_tuned_model"]} | {c["fine_tuned_model_checkpoint"] for c in job.checkpoints}
        if model in names:
            index: dict[str, str] = {}
            for file_id in (job.obj["training_file"], job.obj["validation_file"]):
                for example in api.files[file_id].examples if file_id else []:
                    if isinstance(example.get("input"), dict):  # a preference pair: the preferred answer
                        preferred = (example.get("preferred_output") or [{}])[0]
                        index.setdefault(prompt_key(example["input"].get("messages") or []),
                                         preferred.get("content") or "")
                        continue
                    messages = example.get("messages") or []
                    if messages and messages[-1].get("role") == "assistant":
                        index.setdefault(prompt_key(messages[:-1]), messages[-1].get("content") or "")
            api.answer_index[model] = index
            return index
    return None


def _check_request(body: dict[str, Any]) -> tuple[str, list[dict[str, Any]]]:
    model, messages = body.get("model"), body.get("messages")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "Missing required parameter: 'model'.", param="model")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "Missing required parameter: 'messages'.", param="messages")
    if body.get("stream"):
        raise ApiError(400, "This server does not stream; call without stream=true.", param="stream")
    if body.get("n") not in (None, 1):
        raise ApiError(400, "This server returns one choice (n=1).", param="n")
    return model, messages


def _completion(completion_id: str, model: str, content: str, finish: str, prompt_tokens: int) -> dict[str, Any]:
    completion_tokens = approx_tokens(content)
    return {
        "id": completion_id, "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None,
                                             "annotations": []},
                     "logprobs": None, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens,
                  "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
        "service_tier": "default", "system_fingerprint": None,
    }


def chat(api: FakeOpenAI, body: dict[str, Any]) -> dict[str, Any]:
    model, messages = _check_request(body)
    with api.lock:
        index = answers(api, model) if model.startswith("ft:") else {}
        completion_id = api.new_id("chatcmpl-", 29)
    if index is None:
        raise ApiError(404, f"The model `{model}` does not exist or you do not have access to it.",
                       code="model_not_found")
    content = index.get(prompt_key(messages), api.settings.chat_fallback)
    finish = "stop"
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and approx_tokens(content) > limit:
        content, finish = content[: limit * 4], "length"
    return _completion(completion_id, model, content, finish, messages_tokens(messages))
