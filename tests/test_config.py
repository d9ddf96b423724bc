"""The shipped YAML and the embedded defaults are one configuration, rendered from the models
with every key commented; overrides are validated exactly like the file."""

from __future__ import annotations

import re
import sys

import pytest
import yaml
from conftest import REPO

DEFAULT = REPO / "pipelines" / "configs" / "default.yaml"


def test_default_yaml_is_exactly_the_embedded_defaults():
    from pipelines.config import PipelineConfig, load_config

    assert load_config(DEFAULT) == PipelineConfig()
    assert load_config(None) == PipelineConfig()


def test_default_yaml_sets_every_field_and_says_what_it_is():
    from pipelines.config import PipelineConfig

    data = yaml.safe_load(DEFAULT.read_text())

    def keys(model, prefix=""):
        for name in type(model).model_fields:
            value = getattr(model, name)
            if hasattr(type(value), "model_fields"):
                yield from keys(value, f"{prefix}{name}.")
            else:
                yield f"{prefix}{name}"

    def lookup(path):
        node = data
        for part in path.split("."):
            node = node[part]
        return node

    missing = []
    for path in keys(PipelineConfig()):
        try:
            lookup(path)
        except (KeyError, TypeError):
            missing.append(path)
    assert not missing, f"default.yaml does not show: {missing}"
    # Every leaf line carries a comment, on it or on the comment line right above it.
    lines = DEFAULT.read_text().splitlines()
    bare = [line for i, line in enumerate(lines)
            if re.match(r"\s*[a-z_]+: \S", line) and "#" not in line
            and not (i and lines[i - 1].strip().startswith("#"))]
    assert not bare, f"uncommented keys in default.yaml: {bare}"


def _leaf_fields(model_class, prefix=""):
    from pydantic import BaseModel

    for name, field in model_class.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _leaf_fields(field.annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field


def test_default_yaml_is_rendered_from_the_models():
    """default.yaml is generated (scripts/gen_default_config.py): the committed file is
    exactly what the models render, so keys, defaults and comments cannot drift."""
    sys.path.insert(0, str(REPO / "scripts"))
    from gen_default_config import render_default_yaml

    text = DEFAULT.read_text()
    assert text == render_default_yaml(), "default.yaml is out of date: run scripts/gen_default_config.py"
    assert text.startswith("# Run it: make all")


def test_every_setting_says_what_it_is():
    from pipelines.config import PipelineConfig, UserSuiteConfig

    bare = [path for model in (PipelineConfig, UserSuiteConfig) for path, field in _leaf_fields(model)
            if not field.description]
    assert not bare, f"fields without Field(description=...): {bare}"


def test_overrides_are_read_as_yaml_and_win_over_the_file(tmp_path):
    from pipelines.config import load_config

    cfg = tmp_path / "p.yaml"
    cfg.write_text("train:\n  epochs: 3\n  learning_rate: 0.001\n")
    config = load_config(cfg, ["train.epochs=2", "split.dataset=cur-abc", "curate.inputs=[a, 'b c']",
                               "train.max_steps=null", "eval.suites.regression=false", "name=other"])
    assert config.train.epochs == 2.0 and config.train.learning_rate == 0.001  # the rest of the file stays
    assert config.split.dataset == "cur-abc" and config.curate.inputs == ["a", "b c"]
    assert config.train.max_steps is None and config.eval.suites.regression is False and config.name == "other"
    assert load_config(None, ["train.epochs=5"]).train.epochs == 5.0
    # Code may pass Python values by key.
    assert load_config(None, {"curate.inputs": ["x"]}).curate.inputs == ["x"]


@pytest.mark.parametrize("override, message", [
    ("train.epochz=3", "--set train.epochz: unknown key (did you mean 'epochs'?)"),
    ("trian.epochs=3", "--set trian.epochs: trian: unknown key (did you mean 'train'?)"),
    ("train.epochs=many", "--set train.epochs: Input should be a valid number"),
    ("train.epochs=-1", "--set train.epochs: Input should be greater than 0"),
    ("train.epochs", "--set train.epochs: expected dotted.key=value"),
    ("=3", "--set =3: expected dotted.key=value"),
    ("train..epochs=3", "expected dotted.key=value"),
    ("train.epochs.x=1", "--set train.epochs.x: train.epochs is a value, not a section"),
    ("train.epochs=[1", "--set train.epochs: the value is not valid YAML"),
])
def test_a_bad_override_is_an_error_naming_it(tmp_path, override, message):
    from pipelines.config import ConfigError, load_config

    cfg = tmp_path / "p.yaml"
    cfg.write_text("train:\n  epochs: 3\n")
    with pytest.raises(ConfigError) as error:
        load_config(cfg, [override])
    assert message in str(error.value)


def test_a_bad_key_in_the_file_is_still_named_by_its_path(tmp_path):
    from pipelines.config import ConfigError, load_config

    cfg = tmp_path / "p.yaml"
    cfg.write_text("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError) as error:
        load_config(cfg, ["train.epochs=2"])
    assert "  train.epochz: unknown key (did you mean 'epochs'?)" in str(error.value)
    assert "--set" not in str(error.value)


def test_a_moved_key_names_where_it_went(tmp_path):
    from pipelines.config import ConfigError, load_config

    path = tmp_path / "old.yaml"
    path.write_text("curate:\n  min_context_support: 0.5\n")
    with pytest.raises(ConfigError, match=r"curate.min_context_support: unknown key \(moved to 'output.min_support'\)"):
        load_config(path)


def test_train_method_auto_is_sft_then_dpo_locally_and_sft_on_openai():
    """OpenAI's API has no SFT-then-DPO job, so the shipped `method: auto` must not make
    `--backend openai` fail; an explicit method is kept on either backend."""
    from pipelines.config import load_config

    assert yaml.safe_load(DEFAULT.read_text())["train"]["method"] == "auto"
    assert load_config(DEFAULT).train.method == "sft+dpo"
    assert load_config(DEFAULT, ["train.backend=openai"]).train.method == "sft"
    assert load_config(DEFAULT, ["train.backend=openai", "train.method=dpo"]).train.method == "dpo"
    assert load_config(DEFAULT, ["train.method=sft"]).train.method == "sft"
