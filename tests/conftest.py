"""Shared fixtures: a tiny tokenizer built in-process (no download), a way to run the real
CLI in a scratch workspace, and a builder for RAG log records."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
# The public reference data beside the checkout; REFIT_SHARED_DATA points elsewhere (a worktree).
SHARED_DATA = Path(os.environ.get("REFIT_SHARED_DATA") or REPO.parent / "shared" / "data")

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "Refunds are available within 30 days of purchase.",
    "The Team plan costs 12 dollars per user per month billed yearly.",
    "I don't know based on the provided documents.",
    '{"answer": "text [doc-id]", "citations": ["doc-id"]}',
    "How do I reset my password? Go to Settings, then Security, then Reset password.",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ 0123456789 .,;:!?'\"()[]{}<>-_/\\@#$%^&*+=~`|",
]


def build_tiny_tokenizer(target: Path) -> Path:
    """A byte-level BPE tokenizer with a ChatML template, trained in milliseconds on a few
    sentences: real tokenization behaviour without a model hub."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHATML
    fast.save_pretrained(target)
    return target


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_tokenizer(tmp_path_factory.mktemp("tiny-tokenizer"))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_tokenizer_dir))


@pytest.fixture
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_tokenizer_dir: Path) -> "Workspace":
    monkeypatch.chdir(tmp_path)
    return Workspace(tmp_path, tiny_tokenizer_dir)


class Workspace:
    """A scratch project folder with its own config, driven through the real CLI."""

    def __init__(self, root: Path, tokenizer_dir: Path):
        self.root = root
        self.tokenizer_dir = tokenizer_dir
        (root / "logs").mkdir()

    def config(self, **sections: Any) -> Path:
        data: dict[str, Any] = {
            "model": {"base": str(self.tokenizer_dir)},
            "curate": {"inputs": ["logs"], "general_mix": {"path": None}},
        }
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        path = self.root / "pipeline.yaml"
        path.write_text(yaml.safe_dump(data), encoding="utf-8")
        return path

    def write_logs(self, name: str, records: list[Any]) -> Path:
        path = self.root / "logs" / name
        with open(path, "wb") as fh:
            for record in records:
                fh.write(record if isinstance(record, bytes) else json.dumps(record).encode())
                fh.write(b"\n")
        return path

    def run(self, *args: str) -> Any:
        from pipelines.cli import app

        result = CliRunner().invoke(app, list(args), catch_exceptions=False)
        return result

    def curated(self) -> Path:
        latest = (self.root / "datasets" / "curated" / "LATEST").read_text().strip()
        return self.root / "datasets" / "curated" / latest


def ctx(doc_id: str, text: str, score: float = 0.8) -> dict[str, Any]:
    return {"id": doc_id, "text": text, "score": score}


REFUND = ctx("refund-policy", "Refunds are available within 30 days of purchase. After 30 days no refund is given.")
TEAM = ctx("team-plan", "The Team plan costs 12 dollars per user per month billed yearly.", 0.4)
EXPORT = ctx("data-export", "Admins can export all project data as CSV from Settings, then Export.", 0.3)


def answer(text: str, *cites: str) -> str:
    return json.dumps({"answer": text, "citations": list(cites)})


_counter = iter(range(1, 10**9))


def record(query: str = "Can I get a refund after 20 days?", *, contexts: list | None = None,
           response: str | None = None, rating: int | None = None, labels: list[str] | None = None,
           correction: str | None = None, comment: str | None = None, session: str | None = None,
           **extra: Any) -> dict[str, Any]:
    n = next(_counter)
    rec: dict[str, Any] = {
        "id": f"log-{n:05d}",
        "timestamp": f"2026-10-01T12:{n % 60:02d}:00Z",
        "session_id": session or f"s-{n}",
        "query": query,
        "contexts": [REFUND, TEAM] if contexts is None else contexts,
        "response": response if response is not None else answer("Yes, within 30 days [refund-policy].", "refund-policy"),
        "model": "assistant-v1",
    }
    if rating is not None or labels is not None or comment is not None:
        rec["feedback"] = {"rating": rating, "labels": labels or [], "comment": comment}
    if correction is not None:
        rec["correction"] = correction
    rec.update(extra)
    return rec


def build_tiny_model(target: Path, tokenizer_dir: Path) -> Path:
    """A two-layer Llama with the tiny tokenizer's vocabulary, built in-process and saved as
    a local Hugging Face folder: the same loading path as the real base model, in a second."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return target


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer_dir: Path) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), tiny_tokenizer_dir)


NOUNS = ("invoice board sprint label webhook seat backup theme widget report calendar comment mention export "
         "import token session folder template reminder avatar badge budget channel chart column dashboard "
         "deadline domain draft emoji epic field filter goal guest holiday icon inbox").split()
VERBS = ("archive rename share delete restore duplicate pin lock").split()
BEHAVIOUR_LABELS = ["bad_format", "missing_citation", "wrong_tone", "hallucination"]


def rag_logs(n: int, offset: int = 0, sessions: int = 0) -> list[dict]:
    """n distinct answered questions with corrections, labels spread over four behaviours;
    the first `sessions * 3` records come in sessions of three."""
    out = []
    for k in range(offset, offset + n):
        noun, verb = NOUNS[k % len(NOUNS)], VERBS[(k // len(NOUNS)) % len(VERBS)]
        doc = ctx(f"doc-{k}", f"To {verb} a {noun}, open the {noun} menu and choose {verb.capitalize()} ({k}).")
        session = f"sess-{(k - offset) // 3}" if k - offset < sessions * 3 else None
        out.append(record(f"How can I {verb} a {noun} in my workspace number {k}?", contexts=[doc],
                          response=f"Open the {noun} menu.", rating=-1, labels=[BEHAVIOUR_LABELS[k % 4]],
                          session=session,
                          correction=answer(f"Open the {noun} menu and choose {verb.capitalize()} [doc-{k}].", f"doc-{k}")))
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


# --------------------------------------------------------------------------- a tiny trained pipeline
# Shared by the registry and retrain tests: the whole pipeline on a two-layer Llama, with evals
# small enough to run in seconds (a handful of guard items, six new tokens, 200 resamples).

TINY_EVAL = {"max_new_tokens": 6, "bootstrap_resamples": 200, "hf": {"batch_size": 8}, "suites": {"guard_limit": 4}}
# A gate the tiny model passes; the default gate fails it (it does not beat the baseline).
PASSING_GATE = {"min_improvement": -1.0, "champion_tolerance": 1.0, "guard_margin": 1.0, "format_floor": 0.0}


def tiny_pipeline_config(ws: "Workspace", model_dir: Path, *, gate: dict | None = None, **sections: Any) -> Path:
    """A pipeline YAML for `ws` that trains the tiny model for two steps and evaluates fast;
    `gate` replaces eval.gate; other sections are merged over the defaults here."""
    data: dict[str, Any] = {
        "model": {"base": str(model_dir), "max_seq_tokens": 4096},
        "curate": {"inputs": ["logs"], "general_mix": {"path": None}, "idk": {"synthetic_fraction": 0.1},
                   "dedup": {"threshold": 0.9}},
        "split": {"validation_fraction": 0.2, "min_validation": 5, "min_train": 10,
                  "regression": {"size": 6, "path": "state/regression.jsonl"}},
        "train": {"method": "sft", "max_steps": 2, "eval_steps": 2, "save_steps": 2, "batch_size": 4, "eval_batch_size": 8,
                  "lora": {"r": 4, "alpha": 8, "top_layers": None}, "precision": "fp32",
                  "early_stopping_patience": None},
        "tracking": {"uri": "sqlite:///artifacts/mlflow.db", "artifact_location": "artifacts/mlartifacts"},
        "eval": {**TINY_EVAL, **({"gate": gate} if gate is not None else {})},
    }
    for key, value in sections.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and isinstance(data.get(key), dict) else value
    path = ws.root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def copy_project(source: Path, ws: "Workspace") -> "Workspace":
    """Copy a project's state (paths in its manifests are relative to its root) into `ws`."""
    import shutil

    for name in ("logs", "datasets", "artifacts", "state"):
        if (source / name).exists():
            shutil.copytree(source / name, ws.root / name, dirs_exist_ok=True)
    return ws


def _kill_in_eval(*args: Any, **kwargs: Any) -> Any:
    """Stands in for the eval stage: the scheduler kills the run (SIGTERM) mid-way."""
    import os
    import signal
    import time

    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)  # the CLI's SIGTERM handler interrupts this
    raise AssertionError("SIGTERM did not stop the retrain")


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_tokenizer_dir: Path) -> dict:
    """The pipeline run once on the tiny model, in two projects (tests copy them):

    - `killed`: `refit retrain` from nothing, killed (SIGTERM) when it reached eval: curated,
      split and trained, its summary and exit code in `killed_result`.
    - `evaluated`: a copy of it, then evaluated twice: with PASSING_GATE (eval id `passed`) and
      with the default gate, which the tiny model fails (eval id `failed`); nothing promoted.
    """
    import os
    import shutil

    from pipelines import retrain

    base = tmp_path_factory.mktemp("tiny-pipeline")
    killed, evaluated = base / "killed", base / "evaluated"
    killed.mkdir()
    cwd = os.getcwd()
    out: dict[str, Any] = {"killed": killed, "evaluated": evaluated}
    try:
        os.chdir(killed)
        ws = Workspace(killed, tiny_tokenizer_dir)
        ws.write_logs("a.jsonl", rag_logs(70))
        cfg = tiny_pipeline_config(ws, tiny_model_dir, gate=PASSING_GATE)
        real_eval = retrain.Stages.eval
        retrain.Stages.eval = staticmethod(_kill_in_eval)
        try:
            out["killed_result"] = ws.run("retrain", "--config", str(cfg))
        finally:
            retrain.Stages.eval = real_eval
        shutil.copytree(killed, evaluated)
        os.chdir(evaluated)
        ws = Workspace.__new__(Workspace)
        ws.root, ws.tokenizer_dir = evaluated, tiny_tokenizer_dir
        for name, gate in (("passed", PASSING_GATE), ("failed", None)):
            cfg = tiny_pipeline_config(ws, tiny_model_dir, gate=gate)
            result = ws.run("eval", "--config", str(cfg))
            assert result.exit_code == (0 if name == "passed" else 3), result.output
            out[name] = (evaluated / "artifacts" / "evals" / "LATEST").read_text().strip()
    finally:
        os.chdir(cwd)
    assert out["passed"] != out["failed"]
    return out
