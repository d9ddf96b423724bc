"""Write pipelines/configs/default.yaml from the config models in pipelines/config.py.

The models are the one source: every key, its default and its help text
(`Field(description=...)`). This script renders them as the shipped, commented YAML, and
tests/test_config.py checks that the committed file is exactly what it renders, so the file
and the code cannot drift. Change a default or a description in the models, then run:

    .venv/bin/python scripts/gen_default_config.py            # rewrite default.yaml
    .venv/bin/python scripts/gen_default_config.py --check    # exit 1 when it is out of date
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from pipelines.config import PipelineConfig  # noqa: E402

DEFAULT_YAML = REPO / "pipelines" / "configs" / "default.yaml"

HEADER = """\
# Run it: make all   (or stage by stage: refit curate --config pipelines/configs/default.yaml,
#         then refit split / train / eval / promote with the same --config)
#
# refit pipeline: the shipped sample, end to end, with embedded defaults.
# Every key is optional (missing keys take the defaults shown here); an unknown or mistyped
# key is an error that names its path. Paths are relative to the directory refit runs in.
# Generated from the models in pipelines/config.py by scripts/gen_default_config.py: change a
# default or its comment there, then re-run the script.
"""

COMMENT_COLUMN = 30  # inline comments line up here (a longer key and value: three spaces after it)
WIDTH = 92  # long strings and the comments above them wrap here
LONG_STRING = 80  # strings longer than this (or with newlines) are written as a block


def render_default_yaml() -> str:
    """default.yaml as the models define it: sections in field order, a blank line between
    top-level sections, each key with its default and its description as a comment."""
    config = PipelineConfig()
    lines = HEADER.splitlines() + [""]
    for name, field in PipelineConfig.model_fields.items():
        value = getattr(config, name)
        if isinstance(value, BaseModel):
            lines.append("")
        lines += render_field(name, field, value, depth=0)
    return "\n".join(lines) + "\n"


def render_field(name: str, field: FieldInfo, value: Any, depth: int) -> list[str]:
    indent = "  " * depth
    if isinstance(value, BaseModel):
        lines = [with_comment(f"{indent}{name}:", field.description)]
        for sub, sub_field in type(value).model_fields.items():
            lines += render_field(sub, sub_field, getattr(value, sub), depth + 1)
        return lines
    if field.default == "auto":
        value = "auto"  # as a user writes it, before a validator resolves it (train.method)
    if isinstance(value, str) and ("\n" in value or len(value) > LONG_STRING):
        # A literal block keeps the newlines; a folded one reads as a paragraph.
        style, body = ("|-", value.split("\n")) if "\n" in value else (">-", wrap(value, indent + "  "))
        above = [f"{indent}# {line}" for line in wrap(field.description or "", indent + "# ")]
        return above + [f"{indent}{name}: {style}"] + [f"{indent}  {line}" for line in body]
    return [with_comment(f"{indent}{name}: {scalar(value)}", field.description)]


def with_comment(text: str, description: str | None) -> str:
    if not description:
        return text
    gap = " " * (COMMENT_COLUMN - len(text)) if len(text) < COMMENT_COLUMN else "   "
    return f"{text}{gap}# {description}"


def wrap(text: str, prefix: str) -> list[str]:
    return textwrap.wrap(text, WIDTH - len(prefix), break_long_words=False, break_on_hyphens=False)


def scalar(value: Any, flow: bool = False) -> str:
    """A value as YAML on one line: flow lists and mappings, plain strings where YAML reads
    them back as the same string, else double-quoted."""
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(scalar(v, flow=True) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{scalar(k, flow=True)}: {scalar(v, flow=True)}" for k, v in value.items()) + "}"
    needs_quotes = (not value or value != value.strip() or yaml.safe_load(value) != value
                    or re.search(r"['\"]|: | #", value) or value[0] in "-?:,[]{}#&*!|>%@`"
                    or (flow and re.search(r"[,\[\]{}]", value)))
    return json.dumps(value, ensure_ascii=False) if needs_quotes else value


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if default.yaml differs from the models")
    args = parser.parse_args()
    text = render_default_yaml()
    if args.check:
        if DEFAULT_YAML.read_text(encoding="utf-8") != text:
            print(f"{DEFAULT_YAML.relative_to(REPO)} is out of date: run scripts/gen_default_config.py", file=sys.stderr)
            return 1
        return 0
    DEFAULT_YAML.write_text(text, encoding="utf-8")
    print(f"wrote {DEFAULT_YAML.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
