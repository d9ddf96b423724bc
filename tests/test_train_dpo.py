"""`refit train` with train.method dpo and sft+dpo (LoRA backend) on a tiny Llama built
in-process: trl's DPOTrainer on split's preference pairs, the adapter as the policy and the
base model (adapter disabled) as the reference, through the real CLI."""

from __future__ import annotations

import json
import math
import re
import sqlite3

import pytest
from conftest import rag_logs
from test_train import train_config


@pytest.fixture
def pairs_ready(workspace, tiny_model_dir):
    workspace.write_logs("a.jsonl", rag_logs(60))
    return workspace, tiny_model_dir


def _first_step_loss(run):
    history = json.loads((run / "log_history.json").read_text())
    return next(h["loss"] for h in history if "loss" in h and h["step"] == 1)


def _curate_split(ws, cfg):
    for stage in ("curate", "split"):
        result = ws.run(stage, "--config", str(cfg))
        assert result.exit_code == 0, result.output


def test_dpo_trains_the_adapter_against_the_base_model_through_the_cli(pairs_ready):
    ws, model_dir = pairs_ready
    cfg = train_config(ws, model_dir, method="dpo", dpo={"max_steps": 4, "batch_size": 4, "learning_rate": 5e-3,
                                                        "beta": 0.1, "pairs": ["logged"]}, eval_steps=2)
    _curate_split(ws, cfg)
    result = ws.run("train", "--config", str(cfg))
    assert result.exit_code == 0, result.output
    run = next((ws.root / "artifacts" / "runs").glob("run-*"))
    m = json.loads((run / "manifest.json").read_text())
    assert m["method"] == "dpo" and m["dpo"]["beta"] == 0.1 and m["dpo"]["sft_phase"] is None
    # Before the first step the policy is the reference: the DPO loss is exactly log 2, so the
    # starting point is recorded without a pass, and the first step's measured loss shows it.
    assert m["losses"]["base_eval_loss"] == math.log(2)
    assert _first_step_loss(run) == pytest.approx(math.log(2), abs=1e-6)
    assert m["losses"]["final_eval_loss"] < m["losses"]["base_eval_loss"]
    assert m["dpo"]["rewards"]["margins"] > 0 and 0 <= m["dpo"]["rewards"]["accuracies"] <= 1
    assert "method dpo (beta 0.1): validation reward margin" in result.output
    assert m["steps"]["done"] == 4 and m["label_mask"]["train"]["trained_tokens"] > 0
    assert (run / "rewards.png").stat().st_size > 1000 and (run / "adapter" / "adapter_model.safetensors").exists()
    cfg_adapter = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert cfg_adapter["r"] == 4  # one plain LoRA adapter (no "ref" copy saved with it)
    db = sqlite3.connect(ws.root / "artifacts" / "mlflow.db")
    keys = {k for (k,) in db.execute("select distinct key from metrics where run_uuid = ?", (m["mlflow"]["run_id"],))}
    assert {"rewards/margins", "rewards/accuracies", "eval_rewards/margins", "eval_loss"} <= keys
    params = dict(db.execute("select key, value from params where run_uuid = ?", (m["mlflow"]["run_id"],)))
    assert params["method"] == "dpo"
    tags = dict(db.execute("select key, value from tags where run_uuid = ?", (m["mlflow"]["run_id"],)))
    assert tags["refit.method"] == "dpo"


def test_sft_then_dpo_starts_dpo_from_the_sft_adapter(pairs_ready):
    ws, model_dir = pairs_ready
    cfg = train_config(ws, model_dir, method="sft+dpo", max_steps=3, eval_steps=3,
                       dpo={"max_steps": 2, "batch_size": 4, "learning_rate": 5e-3, "pairs": ["logged"]})
    _curate_split(ws, cfg)
    result = ws.run("train", "--config", str(cfg))
    assert result.exit_code == 0, result.output
    run = next((ws.root / "artifacts" / "runs").glob("run-*"))
    m = json.loads((run / "manifest.json").read_text())
    phase = m["dpo"]["sft_phase"]
    assert m["method"] == "sft+dpo" and phase["steps"] == 3
    assert phase["final_eval_loss"] < phase["base_eval_loss"]  # the SFT phase learned
    # DPO's reference is the SFT adapter: at its first step the loss is log 2 again.
    assert m["losses"]["base_eval_loss"] == math.log(2)
    assert _first_step_loss(run) == pytest.approx(math.log(2), abs=1e-6)
    assert m["steps"]["done"] == 2
    # Off a terminal each phase's starting point is named, never with the other phase's steps.
    assert re.search(r"^  base model: validation loss ", result.output, re.M), result.output
    assert re.search(r"^  start of the next phase: validation loss ", result.output, re.M), result.output
    assert not re.search(r"step 0/\d+: validation loss", result.output), result.output


def test_dpo_without_pairs_is_a_clear_error(workspace, tiny_model_dir):
    logs = rag_logs(60)
    for rec in logs:
        rec["response"] = ""  # no production response: no rejected side, no pair
    workspace.write_logs("a.jsonl", logs)
    # Logged pairs need a production response; contrast pairs need answers citing some of
    # several documents (these have one each).
    _curate_split(workspace, train_config(workspace, tiny_model_dir, method="dpo"))
    for pairs in (["logged"], ["contrast"], ["logged", "contrast"]):
        cfg = train_config(workspace, tiny_model_dir, method="dpo", dpo={"pairs": pairs})
        result = workspace.run("train", "--config", str(cfg))
        assert result.exit_code != 0
        assert f"no train preference pairs of the kinds train.dpo.pairs asks for ({', '.join(pairs)})" in result.output
        assert "Traceback" not in result.output


class Crash(Exception):
    pass


def test_a_crash_in_the_dpo_phase_resumes_without_redoing_sft(pairs_ready):
    from transformers import TrainerCallback

    from pipelines.config import load_config
    from pipelines.train import train

    ws, model_dir = pairs_ready
    cfg = train_config(ws, model_dir, method="sft+dpo", max_steps=2, eval_steps=2,
                       dpo={"max_steps": 4, "batch_size": 4, "learning_rate": 5e-3, "pairs": ["logged"]})
    _curate_split(ws, cfg)
    config = load_config(cfg)

    class Phases(TrainerCallback):
        def __init__(self, crash_in: int | None):
            self.begun, self.crash_in = 0, crash_in

        def on_train_begin(self, args, state, control, **kwargs):
            self.begun += 1

        def on_step_end(self, args, state, control, **kwargs):
            if self.begun == self.crash_in and state.global_step == 3:
                raise Crash("power cut in the DPO phase")

    with pytest.raises(Crash):
        train(config, callbacks=[Phases(crash_in=2)])
    work = next((ws.root / "artifacts" / "runs").glob(".work-run-*"))
    assert (work / "sft-adapter" / "adapter_config.json").exists() and (work / "checkpoint-2").exists()
    assert not list((ws.root / "artifacts" / "runs").glob("run-*"))
    again = Phases(crash_in=None)
    m = train(config, callbacks=[again]).manifest
    assert again.begun == 1  # only the DPO phase ran: the SFT adapter was kept
    assert m["steps"]["resumed_from"] == 2 and m["steps"]["done"] == 4 and m["dpo"]["sft_phase"]["steps"] == 2
    assert not work.exists()


def test_the_compact_lm_head_matches_trls_head_and_its_gradients(tiny_model_dir):
    """DPO's LM head on a CPU projects only the answer positions (pipelines/trainer.py): its
    log-probabilities, metrics, loss and gradients equal trl's head, which scores every position."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from pipelines.trainer import project_labelled_positions_only

    torch.manual_seed(0)
    models = [AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32) for _ in range(2)]
    fields = ("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs")
    for model in models:
        add_fused_lm_head(model, outputs=fields)
    assert project_labelled_positions_only(models[1]) is True
    ids = torch.randint(3, models[0].config.vocab_size, (3, 12))
    labels = ids.clone()
    labels[:, :8] = -100  # the prompt
    labels[2, 10:] = -100  # a shorter answer, then padding
    outs = [model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels, fused_lm_head=True)
            for model in models]
    for name in fields:
        assert torch.allclose(outs[0][name].float(), outs[1][name].float(), atol=1e-5), name
    assert torch.equal(outs[0].label_mask, outs[1].label_mask)
    assert torch.allclose(outs[0].loss, outs[1].loss, atol=1e-6)
    for out in outs:
        out.log_probs.sum().backward()
    grads = [dict(m.named_parameters())["model.layers.0.mlp.up_proj.weight"].grad for m in models]
    assert torch.allclose(grads[0], grads[1], atol=1e-5)
    plain = models[1](input_ids=ids).logits  # without fused_lm_head: the model's own forward
    assert plain.shape == (3, 12, models[0].config.vocab_size)


def test_the_reference_pass_reuses_the_policys_states_below_the_adapted_layers(tiny_model_dir):
    """DPO's reference pass on the batch the policy just ran starts at the first adapted layer
    (pipelines/trainer.py FrozenLayersReuse): its log-probabilities equal a full reference pass
    bit for bit, and the layers below run once for both passes."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head, use_adapter

    from pipelines.trainer import project_labelled_positions_only

    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj"], layers_to_transform=[1],
                      init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(base, lora)
    model.add_adapter("ref", lora)  # a differently initialised reference, as trl's copy is after training
    model.set_adapter("default")
    add_fused_lm_head(base, outputs=("log_probs", "entropy", "mean_logits", "is_top1", "log_sum_sq_probs"))
    assert project_labelled_positions_only(base) is True
    lower_runs = []
    base.model.layers[0].register_forward_hook(lambda *a: lower_runs.append(1))
    ids = torch.randint(3, base.config.vocab_size, (4, 14))
    mask = torch.ones_like(ids)
    mask[3, 11:] = 0  # padding
    labels = ids.masked_fill(torch.arange(14) < 9, -100)
    model.train()

    def reference(input_ids, attention_mask):
        with torch.no_grad(), use_adapter(model, "ref"):
            return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)

    policy = model(input_ids=ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    reused = reference(ids, mask)
    assert len(lower_runs) == 1  # the reference pass did not run layer 0 again
    full = reference(ids.clone(), mask.clone())  # other tensors: nothing to reuse
    assert len(lower_runs) == 2
    assert torch.equal(reused.log_probs, full.log_probs) and torch.equal(reused.entropy, full.entropy)
    assert not torch.equal(reused.log_probs, policy.log_probs)  # the reference adapter did run on top
    policy.loss.backward()  # the policy's graph is intact
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and ".default." in n)


def test_reusing_the_frozen_layers_trains_the_same_adapter(pairs_ready, monkeypatch):
    """sft+dpo with only the top layer adapted, through the CLI, with DPO's reference pass and
    SFT's repeated validation batches starting at the adapted layer (the default) and without:
    the same adapter, byte for byte, and the same losses."""
    from pipelines.trainer import FrozenLayersReuse

    ws, model_dir = pairs_ready
    cfg = train_config(ws, model_dir, method="sft+dpo", max_steps=2, eval_steps=2, lora={"r": 4, "alpha": 8,
                                                                                       "top_layers": 1},
                       dpo={"max_steps": 3, "batch_size": 4, "learning_rate": 5e-3, "pairs": ["logged"]})
    _curate_split(ws, cfg)
    attach, reuses = FrozenLayersReuse.attach, []

    def counted(model):
        found = attach(model)
        reuses.append(found)
        return found

    outcomes = []
    for reuse in (counted, lambda model: None):
        monkeypatch.setattr(FrozenLayersReuse, "attach", staticmethod(reuse))
        result = ws.run("train", "--config", str(cfg), "--force")
        assert result.exit_code == 0, result.output
        run = max((ws.root / "artifacts" / "runs").glob("run-*"), key=lambda p: p.stat().st_mtime)
        m = json.loads((run / "manifest.json").read_text())
        outcomes.append(((run / "adapter" / "adapter_model.safetensors").read_bytes(), m["losses"], m["dpo"]["rewards"]))
    sft_phase, dpo_phase = reuses
    assert sft_phase.first == dpo_phase.first == 1
    assert sft_phase.reused == len(sft_phase.stored) > 0  # the second validation pass, batch by batch
    assert dpo_phase.reused >= 3  # every training step's reference pass, and validation's
    assert outcomes[0] == outcomes[1]
