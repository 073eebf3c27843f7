"""What every config model shares: strict (an unknown key is an error) and frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A config that cannot be used; the message names every offending field."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
