"""Where predictions come from: in-process transformers (`hf`) or any server that speaks
OpenAI's chat completions API (`openai`: OpenAI itself, vLLM, the local dev server), behind
one on-disk cache.

The cache key is (model, the exact prompt, the decoding settings): re-running an eval only
generates what is new, and a change to any of the three misses the cache instead of
returning a stale answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson


class ProviderError(RuntimeError):
    """A model that cannot be loaded or a server that keeps failing."""


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int


# --------------------------------------------------------------------------- the cache


class GenerationCache:
    """One SQLite file: safe across processes, and a crash never leaves it half-written."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(path), timeout=60)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS generations (key TEXT PRIMARY KEY, model TEXT, text TEXT, "
                        "prompt_tokens INTEGER, completion_tokens INTEGER, created REAL)")
        self.db.commit()

    @staticmethod
    def key(model_key: str, prompt: Any, decoding: dict[str, Any]) -> str:
        payload = orjson.dumps({"model": model_key, "prompt": prompt, "decoding": decoding}, option=orjson.OPT_SORT_KEYS)
        return hashlib.sha256(payload).hexdigest()

    def get_many(self, keys: Sequence[str]) -> dict[str, Generation]:
        found: dict[str, Generation] = {}
        unique = list(dict.fromkeys(keys))
        for start in range(0, len(unique), 500):
            chunk = unique[start:start + 500]
            rows = self.db.execute(
                f"SELECT key, text, prompt_tokens, completion_tokens FROM generations WHERE key IN "
                f"({','.join('?' * len(chunk))})", chunk).fetchall()
            for key, text, prompt_tokens, completion_tokens in rows:
                found[key] = Generation(text, prompt_tokens, completion_tokens)
        return found

    def put_many(self, model_key: str, items: Sequence[tuple[str, Generation]]) -> None:
        now = time.time()
        self.db.executemany("INSERT OR REPLACE INTO generations VALUES (?, ?, ?, ?, ?, ?)",
                            [(k, model_key, g.text, g.prompt_tokens, g.completion_tokens, now) for k, g in items])
        self.db.commit()

    def close(self) -> None:
        self.db.close()


# --------------------------------------------------------------------------- hf


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class HFModel:
    """A base model, optionally with a PEFT adapter merged in, generating greedily in
    batches with left padding (the prompt's last token is every row's last column).

    Only the tokenizer loads up front: the cache key and the prompts need nothing more, so
    a fully cached re-run never loads the weights."""

    def __init__(self, base: str, adapter: Path | None = None, dtype: str = "float32"):
        from transformers import AutoTokenizer

        from pipelines.models import base_model_id, local_model_dir

        self.base, self.adapter, self.dtype = base, adapter, dtype
        # The adapter folder holds the tokenizer and chat template it was trained with.
        self.tokenizer = AutoTokenizer.from_pretrained(str(adapter or local_model_dir(base, with_weights=False)))
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model: Any = None
        self.key = f"hf:{base_model_id(base)}:{dtype}"
        if adapter is not None:
            self.key += f":adapter={_sha256_file(Path(adapter) / 'adapter_model.safetensors')[:16]}"

    def load(self) -> Any:
        if self.model is None:
            import torch
            from transformers import AutoModelForCausalLM

            from pipelines.models import local_model_dir

            model = AutoModelForCausalLM.from_pretrained(str(local_model_dir(self.base, with_weights=True)),
                                                         dtype=getattr(torch, self.dtype))
            if self.adapter is not None:
                from peft import PeftModel

                # Merged, the adapter costs nothing per token at generation time.
                model = PeftModel.from_pretrained(model, str(self.adapter)).merge_and_unload()
            self.model = model.eval()
        return self.model

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def generate(self, prompts: Sequence[str], *, batch_size: int, max_new_tokens: int,
                 on_done: Callable[[int], None] = lambda n: None) -> list[Generation]:
        import torch

        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        # Longest first: little padding per batch, and an out-of-memory shows on batch one.
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        results: list[Generation | None] = [None] * len(prompts)
        eos = self.tokenizer.eos_token_id
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            batch = self.tokenizer.pad({"input_ids": [encoded[i] for i in rows]}, return_tensors="pt")
            with torch.inference_mode():
                out = self.load().generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                          temperature=None, top_p=None, top_k=None,
                                          eos_token_id=eos, pad_token_id=pad)
            new = out[:, batch["input_ids"].shape[1]:]
            for row, tokens in zip(rows, new.tolist()):
                if eos in tokens:
                    tokens = tokens[:tokens.index(eos) + 1]
                text = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
                results[row] = Generation(text, len(encoded[row]), len(tokens))
            on_done(len(rows))
        return [r for r in results if r is not None]


# --------------------------------------------------------------------------- openai


class OpenAIModel:
    """Chat completions with bounded concurrency; the SDK retries 429s (honouring
    Retry-After), 5xx, timeouts and dropped connections with backoff."""

    def __init__(self, model: str, *, base_url: str | None, api_key_env: str, concurrency: int,
                 timeout_s: float, max_retries: int):
        self.model = model
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        self.api_key = os.environ.get(api_key_env)
        if not self.api_key:
            raise ProviderError(f"the openai provider needs an API key in ${api_key_env}")
        self.concurrency = concurrency
        self.timeout_s = timeout_s
        self.max_retries = max_retries
        self.key = f"openai:{self.base_url.rstrip('/')}:{model}"

    def generate(self, prompts: Sequence[list[dict[str, str]]], *, max_new_tokens: int,
                 on_done: Callable[[int], None] = lambda n: None) -> list[Generation]:
        return asyncio.run(self._generate_all(prompts, max_new_tokens, on_done))

    async def _generate_all(self, prompts: Sequence[list[dict[str, str]]], max_new_tokens: int,
                            on_done: Callable[[int], None]) -> list[Generation]:
        import openai

        limit = asyncio.Semaphore(self.concurrency)
        async with openai.AsyncOpenAI(api_key=self.api_key, base_url=self.base_url, timeout=self.timeout_s,
                                      max_retries=self.max_retries) as client:

            async def one(messages: list[dict[str, str]]) -> Generation:
                async with limit:
                    try:
                        response = await client.chat.completions.create(
                            model=self.model, messages=messages, temperature=0, max_tokens=max_new_tokens)
                    except openai.APIError as exc:
                        # The SDK's message never holds the key; keep only status and message.
                        status = getattr(exc, "status_code", None)
                        raise ProviderError(f"{self.model} at {self.base_url}: "
                                            f"{f'HTTP {status}: ' if status else ''}{exc.message}") from None
                on_done(1)
                usage = response.usage
                return Generation(response.choices[0].message.content or "",
                                  usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0)

            return list(await asyncio.gather(*(one(m) for m in prompts)))
