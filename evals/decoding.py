"""Greedy decoding of a group of prompts with continuous batching, for the hf provider.

A batch decoded as a block runs as many steps as its longest answer, so one answer that runs
to max_new_tokens holds every other row's slot for the whole of it (on the sample, half the
decode steps of 32-prompt blocks were such idle tails). Here a group's prompts stream through
`slots` rows: when half the rows have ended, those rows are dropped and the next prompts of
the group are prefilled and joined to the batch, so steps track the tokens actually generated.

A prefix every prompt of a batch shares (the baseline's instructions and few-shot examples:
941 of its ~1,150 tokens) is kept once, not copied into every row: `shared_prefix_attention`
attends each row to it and to the row's own keys. Rows hold only what follows the prefix, so
the baseline's cache is a quarter the size and a decode step reads a quarter of the keys.

The rows' keys and values live in buffers with room for the answers (`GrowingLayer`): a decode
step writes one column per layer, where transformers' DynamicLayer concatenates (copies) the
whole cache per layer per token, which for the baseline's 1,150-token prompts is most of a
step's memory traffic.

Rows are left-padded; each row's positions come from its attention mask, so padding never
shifts a row and batch-mates never change its tokens (in float32; bfloat16 rounds according
to the batch's shape, which is why the caller plans groups over every prompt: see
HFModel.generate).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

# Keys and values of a shared prefix, per layer: [1, kv heads, prefix length, head dim] each.
Prefix = list[tuple[torch.Tensor, torch.Tensor]]

ATTENTION = "refit_shared_prefix"


def shared_prefix_attention(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, shared_prefix: Prefix | None = None,
                            **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, over a shared prefix and then each row's own keys.

    `key`/`value` are the rows' own (what follows the prefix), `attention_mask` their sdpa
    mask (True: attend); every row sees the whole prefix. A prefill (many queries) runs SDPA on
    the prefix broadcast in front of the rows' keys; a decode step (one query) scores the
    prefix once for all rows, as one matrix product, without copying it per row."""
    if shared_prefix is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    prefix_keys, prefix_values = shared_prefix[module.layer_idx]
    rows, heads, queries, dim = query.shape
    width = prefix_keys.shape[2]
    if attention_mask is None:  # no padding: causal over the rows' own keys
        attention_mask = torch.ones(queries, key.shape[2], dtype=torch.bool).tril(key.shape[2] - queries)
        attention_mask = attention_mask.expand(rows, 1, -1, -1)
    seen = attention_mask.new_ones((*attention_mask.shape[:3], width))
    if queries > 1:
        keys = torch.cat([prefix_keys.expand(rows, -1, -1, -1), key], dim=2)
        values = torch.cat([prefix_values.expand(rows, -1, -1, -1), value], dim=2)
        return sdpa_attention_forward(module, query, keys, values, torch.cat([seen, attention_mask], dim=-1), **kwargs)
    groups = key.shape[1]
    grouped = query.reshape(rows, groups, heads // groups, dim)  # the query heads of each key head
    scale = kwargs.get("scaling") or dim ** -0.5
    # Prefix: all rows' queries against one copy of its keys, per key head.
    by_head = grouped.transpose(0, 1).reshape(groups, -1, dim)
    prefix_scores = (by_head @ prefix_keys[0].transpose(1, 2)).reshape(groups, rows, -1, width).transpose(0, 1)
    own_scores = (grouped @ key.transpose(2, 3)).masked_fill(~attention_mask.bool(), float("-inf"))
    weights = (torch.cat([prefix_scores, own_scores], dim=-1).float() * scale).softmax(-1).to(query.dtype)
    prefix_part = weights[..., :width].transpose(0, 1).reshape(groups, -1, width) @ prefix_values[0]
    output = prefix_part.reshape(groups, rows, -1, dim).transpose(0, 1) + weights[..., width:] @ value
    return output.reshape(rows, heads, 1, dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(ATTENTION, shared_prefix_attention)
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION, sdpa_mask)


class GrowingLayer(DynamicLayer):
    """A cache layer whose keys and values are views into buffers with `room` free columns:
    `update` writes the new columns in place instead of concatenating."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, room: int):
        super().__init__()
        self.dtype, self.device, self.is_initialized = keys.dtype, keys.device, True
        self.length = 0
        self._buffers(keys.shape[0], keys.shape[1], keys.shape[-2] + room, keys.shape[-1])
        self.update(keys, values)

    def _buffers(self, rows: int, heads: int, capacity: int, dim: int) -> None:
        old = (self.key_buffer, self.value_buffer) if self.length else None
        self.key_buffer = torch.empty((rows, heads, capacity, dim), dtype=self.dtype, device=self.device)
        self.value_buffer = torch.empty_like(self.key_buffer)
        if old is not None:
            self.key_buffer[:, :, :self.length] = old[0][:, :, :self.length]
            self.value_buffer[:, :, :self.length] = old[1][:, :, :self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        end = self.length + key_states.shape[-2]
        if end > self.key_buffer.shape[-2]:  # out of room: double, as a list does
            b, h, capacity, d = self.key_buffer.shape
            self._buffers(b, h, max(end, 2 * capacity), d)
        self.key_buffer[:, :, self.length:end] = key_states
        self.value_buffer[:, :, self.length:end] = value_states
        self.length = end
        self.keys, self.values = self.key_buffer[:, :, :end], self.value_buffer[:, :, :end]
        return self.keys, self.values


def growing_cache(layers: list[tuple[torch.Tensor, torch.Tensor]], room: int) -> DynamicCache:
    cache = DynamicCache()
    cache.layers = [GrowingLayer(keys, values, room) for keys, values in layers]
    return cache


@dataclass
class Prefilled:
    """Prompts run through the model: their own keys and values per layer (after the shared
    prefix, when there is one), their attention mask (0 over left padding) and each row's
    next token (the first of its answer, straight after a prefill)."""

    layers: list[tuple[torch.Tensor, torch.Tensor]]
    mask: torch.Tensor
    tokens: torch.Tensor
    prefix: Prefix | None = None
    prefix_ids: tuple[int, ...] = ()


class Batch:
    """The rows decoding together: which prompt each row is, whether it is still going, its
    last token, the shared prefix, the rows' attention mask and cache."""

    def __init__(self, rows: list[int], alive: list[bool], state: Prefilled, room: int):
        # Columns that are padding in every row are cut: attention over them is pure waste.
        start = int(state.mask.any(0).nonzero()[0]) if state.mask.any() else 0
        self.rows, self.alive, self.last, self.room = rows, alive, state.tokens, room
        self.prefix, self.prefix_ids = state.prefix, state.prefix_ids
        self.mask = state.mask[:, start:]
        self.cache = growing_cache([(k[:, :, start:], v[:, :, start:]) for k, v in state.layers], room)

    @property
    def size(self) -> int:
        return len(self.rows)

    def state(self, index: torch.Tensor | None = None) -> Prefilled:
        layers = [(layer.keys, layer.values) for layer in self.cache.layers]
        if index is not None:
            layers = [(k[index], v[index]) for k, v in layers]
        mask, last = (self.mask, self.last) if index is None else (self.mask[index], self.last[index])
        return Prefilled(layers, mask, last, self.prefix, self.prefix_ids)

    def positions(self) -> torch.Tensor:
        """Each row's position for its next token: the prefix, then its own real tokens."""
        return len(self.prefix_ids) + self.mask.sum(-1, keepdim=True) - 1

    def keep_alive(self) -> Batch:
        keep = [i for i, going in enumerate(self.alive) if going]
        index = torch.tensor(keep, dtype=torch.long)
        return Batch([self.rows[i] for i in keep], [True] * len(keep), self.state(index), self.room)

    def joined(self, rows: list[int], filled: Prefilled) -> Batch:
        """This batch and newly prefilled rows of the same prefix, the shorter side left-padded
        to the longer."""
        mine = self.state()
        width = max(mine.mask.shape[1], filled.mask.shape[1])

        def pad(tensor: torch.Tensor, dim: int) -> torch.Tensor:
            missing = width - tensor.shape[dim]
            if not missing:
                return tensor
            shape = list(tensor.shape)
            shape[dim] = missing
            return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)

        layers = [(torch.cat([pad(k, 2), pad(nk, 2)]), torch.cat([pad(v, 2), pad(nv, 2)]))
                  for (k, v), (nk, nv) in zip(mine.layers, filled.layers)]
        state = Prefilled(layers, torch.cat([pad(mine.mask, 1), pad(filled.mask, 1)]),
                          torch.cat([mine.tokens, filled.tokens]), filled.prefix, filled.prefix_ids)
        return Batch(self.rows + rows, self.alive + [True] * len(rows), state, self.room)


def decode_group(model: Any, prefill: Callable[[list[list[int]]], Prefilled], prompts: list[list[int]], slots: int,
                 max_new_tokens: int, eos: int, on_row: Callable[[int], None] = lambda i: None) -> list[list[int]]:
    """Greedy completions (token ids) of `prompts`, at most `slots` rows at a time, in the
    prompts' order; `on_row(i)` as prompt i's answer ends.

    Rows decoding together share one prefix (or none): newcomers with another prefix wait,
    prefilled, until the batch has drained, instead of having every row's copy of the prefix
    made (which on the sample cost 2.5 GB at the turn from the baseline's RAG prompts to its
    short guard prompts)."""
    queue = deque(range(len(prompts)))
    outputs: list[list[int]] = [[] for _ in prompts]
    batch: Batch | None = None
    waiting: tuple[list[int], Prefilled] | None = None

    def record(rows: list[int], tokens: list[int], alive: list[bool]) -> None:
        for position, (row, token) in enumerate(zip(rows, tokens)):
            if alive[position]:
                outputs[row].append(token)
                if token == eos or len(outputs[row]) >= max_new_tokens:
                    alive[position] = False
                    on_row(row)

    def admit(rows: list[int], filled: Prefilled) -> Batch:
        """`rows` into the batch (a new one when there is none); their first tokens recorded."""
        grown = (Batch(rows, [True] * len(rows), filled, max_new_tokens)
                 if batch is None else batch.joined(rows, filled))
        new, alive = grown.size - len(rows), grown.alive[grown.size - len(rows):]
        record(rows, grown.last[new:].tolist(), alive)
        grown.alive[new:] = alive
        return grown

    while True:
        going = sum(batch.alive) if batch else 0
        if batch is None or going <= batch.size // 2:
            # Half the rows have ended: drop them, and fill their slots from the queue.
            batch = batch.keep_alive() if batch is not None and going else None
            if waiting is not None and batch is None:
                batch, waiting = admit(*waiting), None
                continue
            take = [queue.popleft() for _ in range(min(slots - (batch.size if batch else 0), len(queue)))] \
                if waiting is None else []
            if take:
                filled = prefill([prompts[i] for i in take])
                if batch is None or filled.prefix_ids == batch.prefix_ids:
                    batch = admit(take, filled)
                else:
                    waiting = (take, filled)
            if batch is None or not any(batch.alive):
                if not queue and waiting is None:
                    return outputs
                batch = None
                continue
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones((batch.size, 1))], dim=1)
        logits = model(input_ids=batch.last[:, None], attention_mask=batch.mask, position_ids=batch.positions(),
                       past_key_values=batch.cache, use_cache=True, shared_prefix=batch.prefix).logits
        batch.last = logits[:, -1].argmax(-1)
        record(batch.rows, batch.last.tolist(), batch.alive)
