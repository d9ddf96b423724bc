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
            from evals.decoding import ATTENTION

            # SDPA, with a shared prefix kept once instead of copied into every row.
            model.config._attn_implementation = ATTENTION
            self.model = model.eval()
        return self.model

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    # Prompts decoded, and committed to the cache, together: batch_size rows at a time, a row
    # that ends making room for the group's next prompt (evals/decoding.py). Bigger groups
    # leave fewer idle tails; a kill loses at most the group in flight.
    GROUP_BATCHES = 4

    def generate(self, prompts: Sequence[str], *, batch_size: int, max_new_tokens: int,
                 on_done: Callable[[int], None] = lambda n: None,
                 on_results: Callable[[list[tuple[int, Generation]]], None] = lambda done: None,
                 cached: Collection[int] = ()) -> list[Generation]:
        """Greedy completions of the prompts not in `cached`, in prompt order; `on_results` gets
        each group's (prompt index, generation) pairs as soon as the group ends (the runner
        commits them to the cache).

        Groups are planned over all the prompts, cached or not, and a group whose prompts are
        all cached is skipped: a resumed eval decodes every remaining group with the same
        batch-mates, in the same order, as an uninterrupted run would, so even bfloat16 (whose
        rounding depends on the batch's shape) gives the same answers."""
        import torch

        encoded = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        # Longest first: little padding per batch, and an out-of-memory shows on batch one.
        order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
        results: list[Generation | None] = [None] * len(prompts)
        cached = set(cached)
        group_size = batch_size * self.GROUP_BATCHES
        for start in range(0, len(order), group_size):
            group = order[start:start + group_size]
            wanted = [row for row in group if row not in cached]
            if not wanted:
                continue
            with torch.inference_mode():
                completions = self._decode([encoded[i] for i in group], batch_size, max_new_tokens,
                                           on_row=lambda j, group=group: on_done(1) if group[j] not in cached else None)
            for row, tokens in zip(group, completions):
                if row not in cached:
                    text = self.tokenizer.decode(tokens, skip_special_tokens=True).strip()
                    results[row] = Generation(text, len(encoded[row]), len(tokens))
            on_results([(row, results[row]) for row in wanted])
        asked = [i for i in range(len(prompts)) if i not in cached]
        missing = [i for i in asked if results[i] is None]
        if missing:  # a dropped prediction would shift every later one onto the wrong prompt
            raise ProviderError(f"generation returned nothing for {len(missing)} of {len(asked)} prompts "
                               f"(first: prompt {missing[0]}); predictions would not line up with prompts")
        return [results[i] for i in asked]  # type: ignore[misc]

    def _decode(self, prompts: list[list[int]], slots: int, max_new_tokens: int,
                on_row: Callable[[int], None]) -> list[list[int]]:
        from evals.decoding import decode_group

        return decode_group(self.load(), self._prefill, prompts, slots, max_new_tokens, self.tokenizer.eos_token_id,
                            on_row)

    # Prompts that share at least this many leading tokens (the same system prompt and
    # few-shot examples) reuse one computation of that prefix.
    MIN_SHARED_PREFIX = 32

    # Shared prefixes kept at once: one per prompt family (the baseline's instructions and
    # few-shot examples, the fine-tune prompt, the general-instruction prompt).
    PREFIXES_KEPT = 4

    def _shared_length(self, prompts: list[list[int]]) -> int:
        """How many leading tokens the prompts share, cut back to the start of the last turn
        they share (ChatML's <|im_start|>): the baseline's instructions and few-shot examples
        then end at the same token in every batch, so their keys and values are computed
        once per eval instead of once per batch. A lone prompt uses a kept prefix it starts with."""
        if len(prompts) == 1:
            kept = self.__dict__.get("_prefixes", {})
            fits = [len(k) for k in kept if len(k) < len(prompts[0]) and tuple(prompts[0][:len(k)]) == k]
            return max(fits, default=0)
        shared, shortest = 0, min(len(p) for p in prompts)
        while shared < shortest - 1 and all(p[shared] == prompts[0][shared] for p in prompts):
            shared += 1
        turn = self.tokenizer.convert_tokens_to_ids("<|im_start|>")
        if isinstance(turn, int) and turn != self.tokenizer.unk_token_id and turn in prompts[0][1:shared]:
            shared = max(i for i in range(1, shared) if prompts[0][i] == turn)
        return 0 if shared < self.MIN_SHARED_PREFIX else shared

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
                        logits_to_keep=torch.tensor([-1]))
            kept[key] = [(layer.keys, layer.values) for layer in cache.layers]
            self.prefix_computations = getattr(self, "prefix_computations", 0) + 1
            while len(kept) > self.PREFIXES_KEPT:
                kept.pop(next(iter(kept)))
        kept[key] = kept.pop(key)  # most recently used last
        return kept[key]

    def _prefill(self, prompts: list[list[int]]) -> Any:
        """Prompts through the model, up to each one's first generated token: a prefix they
        all share (the baseline's long instructions and few-shot examples) comes from
        `_prefix_states` and stays shared (evals/decoding.py); the rest is left-padded, with
        positions from the attention mask.

        The last position's logits are asked for by index (`logits_to_keep=tensor([-1])`), not
        as `logits_to_keep=1`: an int makes transformers slice the hidden states, and torch's
        matmul of a non-contiguous 3-D input by a weight that needs no gradient (a merged
        adapter's model) copies the whole LM head once per row: 2.3 s instead of 8 ms for a
        32-row prefill of SmolLM2, and 1.8 GB of memory. An index gathers a contiguous copy."""
        import torch
        from transformers import DynamicCache

        from evals.decoding import Prefilled

        model = self.load()
        shared = self._shared_length(prompts)
        prefix = self._prefix_states(prompts[0][:shared]) if shared else None
        rest = [p[shared:] for p in prompts]
        width = max(len(r) for r in rest)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rest])
        attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rest])
        positions = shared + (attention_mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=model.config)
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                       past_key_values=cache, use_cache=True, logits_to_keep=torch.tensor([-1]),
                       shared_prefix=prefix).logits
        return Prefilled([(layer.keys, layer.values) for layer in cache.layers], attention_mask,
                         logits[:, -1].argmax(-1),
                         prefix, tuple(prompts[0][:shared]))


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
