"""The `train.dpo` section: direct preference optimisation on the pairs curate derives from
the logs (`train.method: dpo` or `sft+dpo`). Imported into pipelines/config.py."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class DpoSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    beta: float = Field(0.1, gt=0, le=2, description=(
        "how far the policy may move from the reference (LoRA: trl's DPOConfig.beta; OpenAI: "
        "method.dpo.hyperparameters.beta)"))
    learning_rate: float = Field(5e-5, gt=0, description="LoRA backend: peak learning rate of the DPO phase")
    epochs: float = Field(1.0, gt=0, description="LoRA backend: passes over the training pairs")
    max_steps: int | None = Field(None, ge=1, description="LoRA backend: overrides dpo.epochs when set")
    batch_size: int = Field(4, ge=1, description="LoRA backend: pairs per optimizer step (each pair is two rows)")
