"""The `train.dpo` section: direct preference optimisation (`train.method: dpo` or `sft+dpo`)
on the pairs curate derives from the logs and on context-contrast pairs made from the split's
examples (pipelines/contrast_pairs.py). Imported into pipelines/config.py."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class DpoSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    beta: float = Field(0.1, gt=0, le=2, description=(
        "how far the policy may move from the reference (LoRA: trl's DPOConfig.beta; OpenAI: "
        "method.dpo.hyperparameters.beta)"))
    # Contrast pairs alone by default: they target the measured failure (refusing answerable
    # questions), and the sample's 231 logged pairs would make the phase four times longer.
    pairs: list[Literal["logged", "contrast"]] = Field(["contrast"], min_length=1, description=(
        "LoRA backend: the pairs DPO trains on: logged (production's response vs the correction) and/or "
        "contrast (a question with its documents vs with only the ones its answer does not cite)"))
    contrast_fraction: float = Field(0.1, gt=0, le=1, description=(
        "contrast pairs: share of the split's RAG examples that each give two pairs"))
    contrast_refusal: Literal["uncited", "answer_removed"] = Field("uncited", description=(
        "contrast pairs: the documents of the refusal side: uncited (only those the answer does not cite) "
        "or answer_removed (all of them, less the sentences that hold the answer)"))
    learning_rate: float = Field(1e-4, gt=0, description="LoRA backend: peak learning rate of the DPO phase")
    epochs: float = Field(1.0, gt=0, description="LoRA backend: passes over the training pairs")
    max_steps: int | None = Field(None, ge=1, description="LoRA backend: overrides dpo.epochs when set")
    batch_size: int = Field(2, ge=1, description=(
        "LoRA backend: pairs per micro-batch (each pair is two rows; train.gradient_accumulation of them per step)"))
