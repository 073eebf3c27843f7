"""Which parts of the project config a piece of code reads: every section of `ProjectConfig` it
touches ("alerts"), and every field of a section it touches ("training.seed"), recorded by wrapping
attribute access on the config's classes while the code runs. Left out: what pydantic reads while it
validates a config (its cross-checks read every section), and reads of a config loaded from a file (a
model folder's own config: an artifact the step was given, not the config it was handed)."""

from __future__ import annotations

import contextlib
import sys
import typing
from collections import defaultdict
from collections.abc import Iterator

import pytest
from pydantic import BaseModel

from components.config.schema import ProjectConfig, load_config, parts_given


def _model_classes(annotation: object) -> set[type[BaseModel]]:
    """The pydantic models an annotation names, through lists, unions and Annotated."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {annotation}
    return {cls for arg in typing.get_args(annotation) for cls in _model_classes(arg)}


def section_classes() -> dict[type[BaseModel], str]:
    """Each class a top-level section of the config is made of, with the section's name."""
    return {cls: name for name, info in ProjectConfig.model_fields.items()
            for cls in _model_classes(info.annotation)}


class ConfigReads:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads: dict[str, set[str]] = defaultdict(set)
        self._step: str | None = None
        self._validating = 0
        self._from_files: dict[int, BaseModel] = {}  # by id, kept alive so that no id is reused
        for cls, section in {ProjectConfig: "", **section_classes()}.items():
            monkeypatch.setattr(cls, "__getattribute__", self._recording(section))
        validate = ProjectConfig.model_validate

        def counted_validate(cls: type[ProjectConfig], *args: object, **kwargs: object) -> ProjectConfig:
            self._validating += 1
            try:
                cfg = validate(*args, **kwargs)
            finally:
                self._validating -= 1
            if _called_from(load_config):
                self._ignore(cfg)
            return cfg

        monkeypatch.setattr(ProjectConfig, "model_validate", classmethod(counted_validate))

    def _ignore(self, cfg: ProjectConfig) -> None:
        for name in ProjectConfig.model_fields:
            part = object.__getattribute__(cfg, name)
            for obj in part if isinstance(part, list) else [part]:
                self._from_files[id(obj)] = obj
        self._from_files[id(cfg)] = cfg

    def _recording(self, section: str):  # type: ignore[no-untyped-def]
        def getattribute(obj: BaseModel, name: str) -> object:
            if self._step and not self._validating and name in type(obj).model_fields \
                    and id(obj) not in self._from_files:
                self.reads[self._step].add(f"{section}.{name}" if section else name)
            return object.__getattribute__(obj, name)
        return getattribute

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Record what the code in this block reads as the step `name`'s."""
        self._step = name
        try:
            yield
        finally:
            self._step = None

    def mismatches(self, step: str, declared: tuple[str, ...], cfg: ProjectConfig) -> list[str]:
        """How what `step` read differs from `declared`, the reads it is given the parts of `cfg` for
        (`parts_given`): a part it read and was not given, or a declared part it never read."""
        read, given = self.sections(step), parts_given(cfg, declared)
        named = {d.partition(".")[0] for d in declared}
        # a part given only because a config cannot leave it out (`features` whole, `registry.model_name`)
        # may be read undeclared only where that part is a few required fields, not a whole section
        outside = sorted(f"{s}.{f}" if f else s for s, fs in read.items() for f in (fs or {""})
                         if (given.get(s) == {"*"} and s not in named)
                         or (given.get(s) != {"*"} and (not f or f not in given.get(s, set()))))
        unread = sorted(d for d in declared if d.partition(".")[0] not in read
                        or ("." in d and d.partition(".")[2] not in read[d.partition(".")[0]]))
        return [f"{step} reads {outside}, which it is not given"] * bool(outside) + \
            [f"{step} is given {unread} and never reads it"] * bool(unread)

    def sections(self, step: str) -> dict[str, set[str]]:
        """{section: the fields of it the step read} for every section the step touched."""
        out: dict[str, set[str]] = {}
        for read in self.reads[step]:
            section, _, field = read.partition(".")
            out.setdefault(section, set())
            if field:
                out[section].add(field)
        return out


def _called_from(function: typing.Callable) -> bool:
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is function.__code__:
            return True
        frame = frame.f_back
    return False
