"""The hf provider's speed features keep predictions exact: bfloat16 decoding equals
transformers' own greedy generate in bfloat16, and the shared instructions and few-shot
examples are computed once per eval, not once per batch."""

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


def test_a_resumed_bfloat16_run_decodes_its_batches_as_the_first_did(bf16_model):
    """bfloat16 rounding depends on a row's batch-mates, so batches are planned over every
    prompt and fully cached ones skipped: the rest are the very batches of a full run."""
    prompts = prompts_for(bf16_model, shared_system=True)
    full = bf16_model.generate(prompts, batch_size=2, max_new_tokens=12)
    lengths = [len(bf16_model.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    first_batch = sorted(range(len(prompts)), key=lambda i: -lengths[i])[:2]
    committed = []
    rest = bf16_model.generate(prompts, batch_size=2, max_new_tokens=12, cached=first_batch,
                               on_results=committed.extend)
    missing = [i for i in range(len(prompts)) if i not in first_batch]
    assert [g.text for g in rest] == [full[i].text for i in missing]
    assert sorted(i for i, _ in committed) == missing
