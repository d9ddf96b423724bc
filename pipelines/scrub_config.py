"""`curate.scrub`: what the scrubber removes beyond its built-in types (pipelines/scrub.py).
Checked when the config is read, so a pattern that could never run is a config error (exit 2
naming the key), not a crash in the middle of curate."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator

from pipelines.scrub import DEFAULT_PHONE_REGIONS


class ScrubConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    extra_patterns: dict[str, str] = Field(
        {}, description='more secrets to scrub, e.g. {EMPLOYEE_ID: "EMP-\\\\d{6}"} -> <EMPLOYEE_ID>')
    phone_regions: list[str] = Field(
        list(DEFAULT_PHONE_REGIONS),
        description="regions whose national phone formats are scrubbed (+international numbers always are)")

    @field_validator("extra_patterns")
    @classmethod
    def _names_and_regexes(cls, value: dict[str, str]) -> dict[str, str]:
        for name, pattern in value.items():
            if not re.fullmatch(r"[A-Z][A-Z0-9_]*", name):
                raise ValueError(f"pattern name {name!r} must be UPPER_SNAKE_CASE")
            try:
                compiled = re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"pattern {name!r} is not a valid regex: {exc}") from None
            if compiled.fullmatch("") is not None:
                raise ValueError(f"pattern {name!r} ({pattern!r}) matches the empty string")
        return value

    @field_validator("phone_regions")
    @classmethod
    def _known_regions(cls, value: list[str]) -> list[str]:
        from phonenumbers import SUPPORTED_REGIONS

        unknown = [region for region in value if region not in SUPPORTED_REGIONS]
        if unknown or not value:
            raise ValueError(f"unknown region(s) {unknown}: use ISO 3166 codes such as US, GB, DE")
        return value
