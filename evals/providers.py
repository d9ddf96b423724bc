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
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from pipelines.storage import file_sha256


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


def resolve_dtype(setting: str) -> str:
    """eval.hf.dtype: "auto" is bfloat16 where the CPU multiplies bfloat16 natively (AVX512-BF16
    or AMX: about 1.7x faster here, and training already uses it), else float32."""
    if setting != "auto":
        return setting
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "float32"
    return "bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"


class HFModel:
    """A base model, optionally with a PEFT adapter merged in, generating greedily in
    batches with left padding (the prompt's last token is every row's last column).

    Only the tokenizer loads up front: the cache key and the prompts need nothing more, so
    a fully cached re-run never loads the weights."""

    def __init__(self, base: str, adapter: Path | None = None, dtype: str = "float32"):
        from transformers import AutoTokenizer

        from pipelines.models import base_model_id, local_model_dir

        self.base, self.adapter, self.dtype = base, adapter, resolve_dtype(dtype)
        # The adapter folder holds the tokenizer and chat template it was trained with.
        self.tokenizer = AutoTokenizer.from_pretrained(str(adapter or local_model_dir(base, with_weights=False)))
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model: Any = None
        self.key = f"hf:{base_model_id(base)}:{self.dtype}"
        if adapter is not None:
            self.key += f":adapter={file_sha256(Path(adapter) / 'adapter_model.safetensors')[:16]}"

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
                 on_done: Callable[[int], None] = lambda n: None,
                 on_results: Callable[[list[tuple[int, Generation]]], None] = lambda done: None,
                 cached: Collection[int] = ()) -> list[Generation]:
        """Greedy completions of the prompts not in `cached`, in prompt order; `on_results` gets
        each batch's (prompt index, generation) pairs as soon as the batch ends (the runner
        commits them to the cache).

        Batches are planned over all the prompts, cached or not, and a batch whose prompts are
        all cached is skipped: a resumed eval decodes every remaining batch with the same
        batch-mates as an uninterrupted run would, so even bfloat16 (whose rounding depends on
        the batch's shape) gives the same answers."""
        import torch

        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        # Longest first: little padding per batch, and an out-of-memory shows on batch one.
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        results: list[Generation | None] = [None] * len(prompts)
        eos = self.tokenizer.eos_token_id
        cached = set(cached)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            wanted = [row for row in rows if row not in cached]
            if not wanted:
                continue
            with torch.inference_mode():
                completions = self._greedy([encoded[i] for i in rows], max_new_tokens, eos)
            for row, tokens in zip(rows, completions):
                if row not in cached:
                    text = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
                    results[row] = Generation(text, len(encoded[row]), len(tokens))
            on_results([(row, results[row]) for row in wanted])
            on_done(len(wanted))
        asked = [i for i in range(len(prompts)) if i not in cached]
        missing = [i for i in asked if results[i] is None]
        if missing:  # a dropped prediction would shift every later one onto the wrong prompt
            raise ProviderError(f"generation returned nothing for {len(missing)} of {len(asked)} prompts "
                               f"(first: prompt {missing[0]}); predictions would not line up with prompts")
        return [results[i] for i in asked]  # type: ignore[misc]


    # Prompts in a batch that share at least this many leading tokens (the same system
    # prompt and few-shot examples) reuse one computation of that prefix.
    MIN_SHARED_PREFIX = 32

    # Shared prefixes kept at once: one per prompt family (the baseline's instructions and
    # few-shot examples, the fine-tune prompt, the general-instruction prompt).
    PREFIXES_KEPT = 4

    def _shared_length(self, prompts: list[list[int]]) -> int:
        """How many leading tokens the batch shares, cut back to the start of the last turn
        they share (ChatML's <|im_start|>): the baseline's instructions and few-shot examples
        then end at the same token in every batch, so their keys and values are computed
        once per eval instead of once per batch."""
        shared, shortest = 0, min(len(p) for p in prompts)
        while shared < shortest - 1 and all(p[shared] == prompts[0][shared] for p in prompts):
            shared += 1
        turn = self.tokenizer.convert_tokens_to_ids("<|im_start|>")
        if isinstance(turn, int) and turn != self.tokenizer.unk_token_id and turn in prompts[0][1:shared]:
            shared = max(i for i in range(1, shared) if prompts[0][i] == turn)
        return 0 if shared < self.MIN_SHARED_PREFIX or len(prompts) == 1 else shared

    def _prefix_states(self, prefix: list[int]) -> list[tuple[Any, Any]]:
        """Keys and values of a shared prompt prefix, computed once and kept for later
        batches (a few prefixes, the least recently used dropped first)."""
        import torch
        from transformers import DynamicCache

        key = tuple(prefix)
        kept: dict[tuple[int, ...], list[tuple[Any, Any]]] = self.__dict__.setdefault("_prefixes", {})
        if key not in kept:
            cache = DynamicCache(config=self.load().config)
            ids = torch.tensor([prefix])
            self.load()(input_ids=ids, attention_mask=torch.ones_like(ids), past_key_values=cache, use_cache=True,
                        logits_to_keep=1)
            kept[key] = [(layer.keys, layer.values) for layer in cache.layers]
            self.prefix_computations = getattr(self, "prefix_computations", 0) + 1
            while len(kept) > self.PREFIXES_KEPT:
                kept.pop(next(iter(kept)))
        kept[key] = kept.pop(key)  # most recently used last
        return kept[key]

    def _greedy(self, prompts: list[list[int]], max_new_tokens: int, eos: int) -> list[list[int]]:
        """Greedy decoding of one batch with a KV cache.

        - A prefix every prompt shares (the baseline's long instructions and few-shot
          examples) is computed once, not once per prompt.
        - The rest is left-padded; positions come from the attention mask, so padding never
          shifts a row's positions and batch-mates never change its tokens.
        - Each row leaves the batch (and the cache) as soon as it ends: a batch costs what its
          answers cost, not max_new_tokens steps for every row.
        """
        import torch
        from transformers import DynamicCache

        model = self.load()
        shared = self._shared_length(prompts)
        batch = len(prompts)
        cache = DynamicCache(config=model.config)
        if shared:
            for index, (keys, values) in enumerate(self._prefix_states(prompts[0][:shared])):
                cache.update(keys.expand(batch, -1, -1, -1).contiguous(),
                             values.expand(batch, -1, -1, -1).contiguous(), index)
        rest = [p[shared:] for p in prompts]
        width = max(len(r) for r in rest)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rest])
        attention_mask = torch.tensor([[1] * shared + [0] * (width - len(r)) + [1] * len(r) for r in rest])
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                       past_key_values=cache, use_cache=True, logits_to_keep=1).logits
        alive = torch.arange(batch)
        outputs: list[list[int]] = [[] for _ in range(batch)]
        for step in range(max_new_tokens):
            tokens = logits[:, -1].argmax(-1)
            for row, token in zip(alive.tolist(), tokens.tolist()):
                outputs[row].append(token)
            keep = (tokens != eos).nonzero().squeeze(1)
            if keep.numel() == 0 or step == max_new_tokens - 1:
                break
            if keep.numel() < alive.numel():
                alive, tokens, attention_mask = alive[keep], tokens[keep], attention_mask[keep]
                for layer in cache.layers:
                    layer.batch_select_indices(keep)
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((attention_mask.shape[0], 1))], dim=1)
            positions = attention_mask.sum(-1, keepdim=True) - 1
            logits = model(input_ids=tokens[:, None], attention_mask=attention_mask, position_ids=positions,
                           past_key_values=cache, use_cache=True).logits
        return outputs


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
                 on_done: Callable[[int], None] = lambda n: None,
                 on_results: Callable[[list[tuple[int, Generation]]], None] = lambda done: None) -> list[Generation]:
        """Completions of `prompts`; `on_results` gets each (prompt index, generation) as its
        request completes, so a paid answer is kept even if a later request fails."""
        return asyncio.run(self._generate_all(prompts, max_new_tokens, on_done, on_results))

    async def _generate_all(self, prompts: Sequence[list[dict[str, str]]], max_new_tokens: int,
                            on_done: Callable[[int], None],
                            on_results: Callable[[list[tuple[int, Generation]]], None]) -> list[Generation]:
        import openai

        limit = asyncio.Semaphore(self.concurrency)
        async with openai.AsyncOpenAI(api_key=self.api_key, base_url=self.base_url, timeout=self.timeout_s,
                                      max_retries=self.max_retries) as client:

            async def one(index: int, messages: list[dict[str, str]]) -> Generation:
                async with limit:
                    try:
                        response = await client.chat.completions.create(
                            model=self.model, messages=messages, temperature=0, max_tokens=max_new_tokens)
                    except openai.APIError as exc:
                        # The SDK's message never holds the key; keep only status and message.
                        status = getattr(exc, "status_code", None)
                        raise ProviderError(f"{self.model} at {self.base_url}: "
                                            f"{f'HTTP {status}: ' if status else ''}{exc.message}") from None
                usage = response.usage
                generation = Generation(response.choices[0].message.content or "",
                                        usage.prompt_tokens if usage else 0, usage.completion_tokens if usage else 0)
                on_results([(index, generation)])
                on_done(1)
                return generation

            return list(await asyncio.gather(*(one(i, m) for i, m in enumerate(prompts))))
