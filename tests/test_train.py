"""`refit train` (LoRA backend) on a tiny Llama built in-process: the label mask, a step
that learns, resume after a crash, the adapter round trip, tracking, and the CLI."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
import torch
from conftest import rag_logs, read_jsonl


def train_config(ws, model_dir: Path, **train):
    settings = {"method": "sft", "max_steps": 6, "eval_steps": 3, "save_steps": 2, "batch_size": 4, "eval_batch_size": 8,
                "learning_rate": 5e-3, "lora": {"r": 4, "alpha": 8, "top_layers": None}, "precision": "fp32",
                "early_stopping_patience": None}
    settings.update(train)
    return ws.config(model={"base": str(model_dir), "max_seq_tokens": 4096},
                     curate={"inputs": ["logs"], "general_mix": {"path": None}, "idk": {"synthetic_fraction": 0.1},
                             "dedup": {"threshold": 0.9}},
                     split={"validation_fraction": 0.2, "min_validation": 5, "min_train": 10,
                            "regression": {"size": 8, "path": "state/regression.jsonl"}},
                     train=settings,
                     tracking={"uri": "sqlite:///artifacts/mlflow.db", "artifact_location": "artifacts/mlartifacts"})


@pytest.fixture
def split_ready(workspace, tiny_model_dir):
    workspace.write_logs("a.jsonl", rag_logs(70))
    cfg = train_config(workspace, tiny_model_dir)
    for stage in ("curate", "split"):
        result = workspace.run(stage, "--config", str(cfg))
        assert result.exit_code == 0, result.output
    return workspace, cfg


def _prepare(cfg_path: Path, work: Path):
    from pipelines.config import load_config
    from pipelines.train import build_trainer, resolve_split

    config = load_config(cfg_path)
    return build_trainer(config, resolve_split(config), work, callbacks=[])


def test_label_mask_covers_exactly_the_assistant_tokens(split_ready):
    ws, cfg = split_ready
    prepared = _prepare(cfg, ws.root / "work")
    tokenizer = prepared.tokenizer
    train_rows = read_jsonl(next((ws.root / "datasets" / "splits").glob("spl-*")) / "train.jsonl")
    answers = {r["ideal_answer"] for r in train_rows}
    dataset = prepared.trainer.train_dataset
    assert len(dataset) == len(train_rows)
    for row in dataset:
        labels = row["labels"]
        trained = [t for t, lab in zip(row["input_ids"], labels) if lab != -100]
        assert trained == [lab for lab in labels if lab != -100]
        text = tokenizer.decode(trained)
        # The answer, its end-of-turn token and the template's newline: nothing of the prompt.
        assert text.endswith("<|im_end|>\n")
        assert text.removesuffix("<|im_end|>\n") in answers
        first = next(i for i, lab in enumerate(labels) if lab != -100)
        assert all(lab == -100 for lab in labels[:first]) and all(lab != -100 for lab in labels[first:])
        assert tokenizer.decode(row["input_ids"][:first]).endswith("<|im_start|>assistant\n")
    assert prepared.mask["train"]["examples_without_answer"] == 0


def test_a_template_that_hides_the_answer_fails_loudly(split_ready, tmp_path):
    from conftest import build_tiny_model
    from transformers import AutoTokenizer

    from pipelines.train import TrainError

    ws, _ = split_ready
    # A chat template that drops assistant turns: trl would train on nothing, silently.
    broken = build_tiny_model(tmp_path / "broken-model", ws.tokenizer_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(broken))
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'assistant' %}{{'<|im_start|>' + m['role'] + '\\n' "
        "+ m['content'] + '<|im_end|>\\n'}}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{'<|im_start|>assistant\\n'}}{% endif %}")
    tokenizer.save_pretrained(broken)
    with pytest.raises(TrainError, match="every label of the train set is -100"):
        _prepare(train_config(ws, broken), ws.root / "work2")


def test_one_training_step_lowers_the_loss_on_a_repeated_batch(split_ready):
    ws, cfg = split_ready
    trainer = _prepare(cfg, ws.root / "work").trainer
    model = trainer.model
    batch = next(iter(trainer.get_train_dataloader()))
    model.train()
    before = trainer.compute_loss(model, dict(batch)).item()
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop we bypass
    trainer.training_step(model, dict(batch))
    trainer.optimizer.step()
    trainer.optimizer.zero_grad()
    after = trainer.compute_loss(model, dict(batch)).item()
    assert after < before
    # Only the adapter learned: the base weights are frozen.
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_custom_loss_matches_the_full_logits_loss(split_ready):
    ws, cfg = split_ready
    trainer = _prepare(cfg, ws.root / "work").trainer
    batch = next(iter(trainer.get_train_dataloader()))
    with torch.no_grad():
        ours = trainer.compute_loss(trainer.model, dict(batch)).item()
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        reference = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                      batch["labels"][:, 1:].reshape(-1), ignore_index=-100).item()
    assert ours == pytest.approx(reference, rel=1e-5)


class Crash(Exception):
    pass


def test_a_crashed_run_resumes_from_its_last_checkpoint(split_ready):
    from transformers import TrainerCallback

    from pipelines.config import load_config
    from pipelines.train import train

    ws, cfg = split_ready
    config = load_config(cfg)

    class CrashAtStep5(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 5:
                raise Crash("power cut")

    with pytest.raises(Crash):
        train(config, callbacks=[CrashAtStep5()])
    work = next((ws.root / "artifacts" / "runs").glob(".work-run-*"))
    assert sorted(p.name for p in work.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not list((ws.root / "artifacts" / "runs").glob("run-*"))  # nothing half-written
    state = json.loads((work / "refit_state.json").read_text())

    result = train(config)
    m = result.manifest
    assert m["steps"]["resumed_from"] == 4 and m["steps"]["done"] == 6
    assert m["mlflow"]["run_id"] == state["mlflow_run_id"]  # the same MLflow run continues
    assert m["losses"]["base_eval_loss"] == state["base_eval_loss"]
    assert not work.exists()


def test_adapter_reloads_with_peft_and_gives_the_same_logits(split_ready, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from pipelines.config import load_config
    from pipelines.train import train

    ws, cfg = split_ready
    result = train(load_config(cfg), track=False)
    adapter = result.path / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert (adapter / "adapter_model.safetensors").exists() and not config.get("modules_to_save")
    assert (adapter / "tokenizer.json").exists() and "chat_template" in (
        (adapter / "tokenizer_config.json").read_text() + "".join(p.name for p in adapter.iterdir()))
    trained = result.trainer.model.eval()
    ids = torch.tensor([[5, 17, 42, 99, 3, 250]])
    with torch.no_grad():
        expected = trained(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
        reloaded = PeftModel.from_pretrained(base, str(adapter)).eval()
        got = reloaded(input_ids=ids).logits
        untouched = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, untouched, atol=1e-4)  # the adapter changes something


def test_train_cli_end_to_end_tracks_and_is_a_noop_the_second_time(split_ready):
    ws, cfg = split_ready
    result = ws.run("train", "--config", str(cfg))
    assert result.exit_code == 0, result.output
    run = next((ws.root / "artifacts" / "runs").glob("run-*"))
    assert "Next:" in result.output and run.name in result.output
    m = json.loads((run / "manifest.json").read_text())
    assert m["losses"]["final_eval_loss"] < m["losses"]["base_eval_loss"]
    assert m["split"]["id"].startswith("spl-") and m["base_model"]["id"]
    assert 0 <= m["tokens"]["padding_share"] < 1 and m["tokens"]["tokens_per_second"] > 0
    assert m["hardware"]["batching"] == "grouped" and m["label_mask"]["train"]["trained_tokens"] > 0
    assert (run / "curves.png").stat().st_size > 1000
    history = json.loads((run / "log_history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4, 5, 6]
    # MLflow, on the project's SQLite file, with the artifact location set explicitly.
    db = sqlite3.connect(ws.root / "artifacts" / "mlflow.db")
    metrics = {k: n for k, n in db.execute("select key, count(*) from metrics where run_uuid = ? group by key",
                                            (m["mlflow"]["run_id"],))}
    assert metrics["loss"] == 6 and metrics["tokens_per_second"] == 6 and metrics["base_eval_loss"] == 1
    eval_steps = [s for (s,) in db.execute("select step from metrics where run_uuid = ? and key = 'eval_loss' "
                                           "order by step", (m["mlflow"]["run_id"],))]
    assert eval_steps == [0, 3, 6]  # the base model at step 0, then every eval_steps
    params = dict(db.execute("select key, value from params where run_uuid = ?", (m["mlflow"]["run_id"],)))
    assert params["split_id"] == m["split"]["id"] and params["lora_r"] == "4"
    location = db.execute("select artifact_location from experiments where name = 'refit-default'").fetchone()[0]
    assert location.startswith("file://") and location.endswith("artifacts/mlartifacts")
    assert not (ws.root / "mlruns").exists()
    again = ws.run("train", "--config", str(cfg))
    assert again.exit_code == 0 and "Nothing to do" in again.output


def test_force_replaces_a_finished_run(split_ready):
    from pipelines.config import load_config
    from pipelines.train import train

    ws, cfg = split_ready
    config = load_config(cfg)
    first = train(config, track=False)
    (first.path / "marker").write_text("old run")
    second = train(config, track=False, force=True)
    assert second.path == first.path and not (second.path / "marker").exists()
    assert json.loads((second.path / "manifest.json").read_text())["created_at"] == second.manifest["created_at"]


def test_train_without_a_split_is_a_clear_error(workspace, tiny_model_dir):
    result = workspace.run("train", "--config", str(train_config(workspace, tiny_model_dir)))
    assert result.exit_code == 1 and "run `make split` first" in result.output


def test_token_rate_window_starts_at_its_first_batch():
    """The step-1 rate once counted the base model's validation pass as training time (58
    tokens/s on the sample against ~540 for step 2): a window starts at its first batch."""
    import time

    from pipelines.train import TokenMeter

    meter = TokenMeter()
    time.sleep(0.5)  # the base model's validation, a checkpoint: not training
    meter.add({"input_ids": torch.ones(2, 50, dtype=torch.long), "attention_mask": torch.ones(2, 50)})
    time.sleep(0.05)
    assert meter.window()["tokens_per_second"] > 100 / 0.3  # 100 tokens in ~0.05 s, not in 0.55 s
    meter.add({"input_ids": torch.ones(1, 10, dtype=torch.long)})
    assert meter.real == 110 and meter.window_real == 10


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_freed_memory_goes_back_to_the_os_after_each_step():
    """glibc keeps what torch frees: heap chunks freed between live ones stay resident until
    malloc_trim. Training trims after every step and validation pass (FreedMemoryBack)."""
    from pipelines.train import lora_callbacks
    from pipelines.trainer import FreedMemoryBack, return_freed_memory

    def rss_mb() -> int:
        return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) // 1024

    chunks, pins = [], []
    for _ in range(3000):  # 100 KB each: below glibc's mmap threshold, so on the heap
        chunks.append(bytearray(100 * 1024))
        pins.append(bytearray(64))  # a live neighbour after each, so the heap cannot shrink from the top
    for chunk in chunks:
        chunk[::4096] = b"x" * len(chunk[::4096])  # touch every page
    del chunks
    held = rss_mb()
    return_freed_memory()
    assert held - rss_mb() > 150, "malloc_trim returned nothing"
    assert any(isinstance(c, FreedMemoryBack) for c in lora_callbacks(None, object()))
    assert pins
