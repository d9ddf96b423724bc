"""The hf provider's speed features keep predictions exact: bfloat16 decoding equals
transformers' own greedy generate in bfloat16, the shared instructions and few-shot
examples are computed once per eval, not once per batch, and continuous batching (rows that
end make room for the next prompts) gives every prompt the answer it gets alone."""

from __future__ import annotations

import pytest
import torch
from test_eval import prompts_for, wandering_model  # noqa: F401  (fixture)


def reference(model, prompts: list[str], max_new_tokens: int) -> list[str]:
    """transformers' generate, one prompt at a time (no padding at all)."""
    tok, out = model.tokenizer, []
    for prompt in prompts:
        ids = tok(prompt, add_special_tokens=False)["input_ids"]
        with torch.inference_mode():
            gen = model.load().generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                        max_new_tokens=max_new_tokens, do_sample=False, temperature=None, top_p=None,
                                        top_k=None, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        out.append(tok.decode(gen[0, len(ids):], skip_special_tokens=True).strip())
    return out


@pytest.fixture(scope="module")
def bf16_model(wandering_model):  # noqa: F811
    from evals.providers import HFModel

    return HFModel(wandering_model.base, None, "bfloat16")


@pytest.mark.parametrize("shared_system", [False, True])
def test_bfloat16_decoding_matches_transformers_generate(bf16_model, shared_system):
    prompts = prompts_for(bf16_model, shared_system)
    assert bf16_model.load().dtype == torch.bfloat16 and bf16_model.key.endswith(":bfloat16")
    ours = [g.text for g in bf16_model.generate(prompts, batch_size=1, max_new_tokens=12)]
    assert ours == reference(bf16_model, prompts, 12)


def test_the_shared_prefix_is_computed_once_per_eval(wandering_model):  # noqa: F811
    from evals.providers import HFModel

    model = HFModel(wandering_model.base, None)
    prompts = prompts_for(model, shared_system=True)
    texts = [g.text for g in model.generate(prompts, batch_size=2, max_new_tokens=8)]
    assert model.prefix_computations == 1  # four batches, one prefix computation
    assert texts == reference(model, prompts, 8)


def test_auto_dtype_follows_the_cpu():
    from pathlib import Path

    from evals.providers import resolve_dtype

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    expected = "bfloat16" if ("avx512_bf16" in flags or "amx_bf16" in flags) else "float32"
    assert resolve_dtype("auto") == expected
    assert resolve_dtype("float32") == "float32"


def test_a_resumed_bfloat16_run_decodes_its_groups_as_the_first_did(bf16_model):
    """bfloat16 rounding depends on a row's batch-mates, so groups are planned over every
    prompt and fully cached ones skipped: the rest are the very groups of a full run."""
    prompts = prompts_for(bf16_model, shared_system=True) + prompts_for(bf16_model, shared_system=False)
    full = bf16_model.generate(prompts, batch_size=2, max_new_tokens=12)
    lengths = [len(bf16_model.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    first_group = sorted(range(len(prompts)), key=lambda i: -lengths[i])[:2 * bf16_model.GROUP_BATCHES]
    assert len(first_group) < len(prompts)  # two groups: one cached, one decoded again
    committed = []
    rest = bf16_model.generate(prompts, batch_size=2, max_new_tokens=12, cached=first_group,
                               on_results=committed.extend)
    missing = [i for i in range(len(prompts)) if i not in first_group]
    assert [g.text for g in rest] == [full[i].text for i in missing]
    assert sorted(i for i, _ in committed) == missing


def test_continuous_batching_gives_each_prompt_its_answer_alone(wandering_model, monkeypatch):  # noqa: F811
    """Rows that end at different steps make room for the next prompts, joined to rows still
    decoding (left-padded to a common width, all-padding columns cut; newcomers without the
    batch's shared prefix wait for it to drain): every prompt still gets exactly its own
    greedy answer, whatever the slots."""
    from collections import Counter

    import evals.decoding as decoding

    model = wandering_model
    prompts = [model.tokenizer(p, add_special_tokens=False)["input_ids"]
               for p in prompts_for(model, shared_system=True) + prompts_for(model, shared_system=False)]
    joins = []  # (batch's prefix length, newcomers' prefix length)
    real = decoding.Batch.joined
    monkeypatch.setattr(decoding.Batch, "joined", lambda self, rows, filled: (
        joins.append((len(self.prefix_ids), len(filled.prefix_ids))), real(self, rows, filled))[1])
    with torch.inference_mode():
        free = decoding.decode_group(model.load(), model._prefill, prompts, 1, 24, eos=-1)  # no stop token
        # A stand-in stop token that each prompt reaches at a different step (or never).
        firsts = Counter(t for out in free for t in set(out[1:]))
        stop = max(firsts, key=lambda t: (len({out.index(t) for out in free if t in out[1:]}), firsts[t]))
        expected = [out[:out.index(stop) + 1] if stop in out else out for out in free]
        assert len({len(e) for e in expected}) >= 3, expected  # the rows really end at different steps
        for slots in (1, 2, 3, 5):
            ended = []
            assert decoding.decode_group(model.load(), model._prefill, prompts, slots, 24, stop, ended.append) == expected
            assert sorted(ended) == list(range(len(prompts)))
    assert {a for a, _ in joins} >= {0} and any(a for a, _ in joins)  # joins with and without a prefix
    assert all(a == b for a, b in joins)  # never rows of two prefixes in one batch
