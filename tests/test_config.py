"""The shipped YAML and the embedded defaults are one configuration, and every key in the
YAML is commented."""

from __future__ import annotations

import re

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
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            if hasattr(value, "model_fields"):
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
