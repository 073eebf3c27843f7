"""Each loss weighting's and each architecture's own settings, chosen by its name.

`training.strategy` is one of the strategy settings below, picked by `name`; `model` one of the architecture
settings, picked by `architecture`: an option of another plug-in (`temperature` under `ew`, `experts` under `hps`)
is a config error naming the field. The classes are torch-free, so reading a config imports no implementation;
each implementation (`components/training/strategies/<name>.py`, `components/training/architectures/<name>.py`)
names its settings class, and its registry is read from the settings lists here (`implementations`).
Adding a plug-in: its settings class here and its line in `STRATEGY_SETTINGS` / `ARCHITECTURE_SETTINGS`, and its
implementation in one new file (docs/training.md, "Adding a plug-in").
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union, cast

from pydantic import Discriminator, Field, Tag, TypeAdapter, model_validator

from components.config.base import Strict

# --- loss weighting (components/training/strategies/) ------------------------------------------


class StrategySettings(Strict):
    """What every loss weighting accepts: its name."""

    name: str
    # set where a strategy undoes MT2ST Diminish's γ: why (measured, docs/methods.md "Diminish under each strategy")
    cancels_diminish: ClassVar[str | None] = None

    def named_tasks(self) -> dict[str, list[str]]:
        """option -> the task names it holds (the config checks each is a task)."""
        return {}


class EqualWeightingSettings(StrategySettings):
    """ew: every task's loss with weight 1."""

    name: Literal["ew"] = Field("ew", description="chooses this loss weighting")


class StaticWeightingSettings(StrategySettings):
    """static: fixed weights, normalised onto the simplex."""

    name: Literal["static"] = Field("static", description="chooses this loss weighting")
    weights: dict[str, Annotated[float, Field(ge=0)]] = Field(description="task -> weight (a positive sum)")

    def named_tasks(self) -> dict[str, list[str]]:
        return {"weights": list(self.weights)}

    @model_validator(mode="after")
    def _positive(self) -> StaticWeightingSettings:
        if sum(self.weights.values()) <= 0:
            raise ValueError("strategy 'static' needs 'weights' with a positive sum")
        return self


class UncertaintyWeightingSettings(StrategySettings):
    """uw: each task's homoscedastic uncertainty, learnt with the model."""

    name: Literal["uw"] = Field("uw", description="chooses this loss weighting")


class DwaSettings(StrategySettings):
    """dwa: weights from the ratio of each task's last two epoch losses."""

    name: Literal["dwa"] = Field("dwa", description="chooses this loss weighting")
    temperature: float = Field(2.0, gt=0, description="the softmax temperature T")


class PcgradSettings(StrategySettings):
    """pcgrad: conflicting task gradients projected onto each other's normal plane."""

    name: Literal["pcgrad"] = Field("pcgrad", description="chooses this loss weighting")


class UpgradSettings(StrategySettings):
    """upgrad: the Jacobian's rows projected onto the dual cone (torchjd)."""

    name: Literal["upgrad"] = Field("upgrad", description="chooses this loss weighting")


class MgdaSettings(StrategySettings):
    """mgda: the minimum-norm point of the convex hull of the task gradients."""

    name: Literal["mgda"] = Field("mgda", description="chooses this loss weighting")
    cancels_diminish: ClassVar[str | None] = (
        "MGDA's min-norm weights rescale each task's gradient, so they undo γ (measured: the auxiliary tasks ended "
        "with more weight relative to the primary one than without γ)")


class CagradSettings(StrategySettings):
    """cagrad: the average gradient moved towards the worst task within a conflict radius."""

    name: Literal["cagrad"] = Field("cagrad", description="chooses this loss weighting")
    cagrad_c: float = Field(0.5, ge=0, description="the conflict radius c")


STRATEGY_SETTINGS: tuple[type[StrategySettings], ...] = (
    EqualWeightingSettings, StaticWeightingSettings, UncertaintyWeightingSettings, DwaSettings, PcgradSettings,
    UpgradSettings, MgdaSettings, CagradSettings,
)

# --- architectures (components/training/architectures/) ----------------------------------------


class ModelSettings(Strict):
    """The network: its architecture (one shared trunk and a head per task, or a variant), widths and embeddings."""

    architecture: str
    trunk: Literal["mlp"] = Field("mlp", description="the shared trunk's kind")
    hidden: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [256, 128], min_length=1,
        description="the shared trunk's hidden layer widths")
    dropout: float = Field(0.1, ge=0, lt=1, description="dropout after every hidden layer")
    max_embedding_dim: int = Field(32, ge=1,
        description="the widest categorical embedding (smaller vocabularies get narrower ones)")
    head_hidden: int = Field(0, ge=0, description="0: a linear head per task")
    numeric_embedding: Literal["none", "periodic"] = Field("none",
        description="periodic: PLR(lite) embeddings of numeric features")
    numeric_frequencies: int = Field(16, ge=1, description="periodic: learned frequencies per numeric feature")
    numeric_embedding_dim: int = Field(8, ge=1, description="periodic: width of each numeric feature's embedding")
    numeric_sigma: float = Field(0.1, gt=0, description="periodic: std of the frequencies' initialisation")
    # the heads read one shared representation (a `SharedRepresentation`): Rep-MTL can regularise it
    shares_representation: ClassVar[bool] = True
    # Rep-MTL needs task towers: with linear heads on Z a task's saliency points along its head's weights
    rep_mtl_needs_towers: ClassVar[bool] = False


class HardSharingSettings(ModelSettings):
    """hps: one shared MLP trunk, a head per task."""

    architecture: Literal["hps"] = Field("hps", description="chooses this architecture")
    rep_mtl_needs_towers: ClassVar[bool] = True


class MmoeSettings(ModelSettings):
    """mmoe: experts (each an MLP of `hidden`) mixed by a gate per task."""

    architecture: Literal["mmoe"] = Field("mmoe", description="chooses this architecture")
    experts: int = Field(4, ge=1, description="number of experts, each an MLP of `hidden`")


class SharedPrivateSettings(ModelSettings):
    """shared_private: a shared trunk and a private trunk per task, heads pulled towards each other."""

    architecture: Literal["shared_private"] = Field("shared_private", description="chooses this architecture")
    private_hidden: list[Annotated[int, Field(ge=1)]] = Field(default_factory=lambda: [64], min_length=1,
        description="each task's private trunk's hidden layer widths")
    similarity_penalty: float = Field(0.01, ge=0, description="weight of the coefficient-similarity penalty")
    rep_mtl_needs_towers: ClassVar[bool] = True


class FtTransformerSettings(ModelSettings):
    """ft_transformer: every feature a token, attention over them, a head per task on the pooled tokens."""

    architecture: Literal["ft_transformer"] = Field("ft_transformer", description="chooses this architecture")
    token_dim: int = Field(32, ge=1, description="token width")
    attention_layers: int = Field(2, ge=1, description="transformer blocks")
    attention_heads: int = Field(4, ge=1, description="attention heads (must divide token_dim)")

    @model_validator(mode="after")
    def _tokens(self) -> FtTransformerSettings:
        if self.token_dim % self.attention_heads:
            raise ValueError(f"token_dim ({self.token_dim}) must be a multiple of attention_heads "
                             f"({self.attention_heads})")
        if self.numeric_embedding != "none":
            raise ValueError("numeric_embedding: ft_transformer already makes each numeric feature a token of its own "
                             "(set numeric_embedding: none)")
        return self


ARCHITECTURE_SETTINGS: tuple[type[ModelSettings], ...] = (
    HardSharingSettings, MmoeSettings, SharedPrivateSettings, FtTransformerSettings,
)

PluginSettings = TypeVar("PluginSettings", bound="StrategySettings | ModelSettings")

# --- the unions a config field is typed with -----------------------------------------------------


@dataclass(frozen=True)
class PluginFamily:
    """The loss weightings or the architectures: the field whose value chooses one (`default` where the YAML
    leaves it out), what an error calls a chosen name, and the settings classes."""

    field: str
    called: str
    members: tuple[type[StrategySettings], ...] | tuple[type[ModelSettings], ...]
    default: str

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(m.model_fields[self.field].default for m in self.members)

    @cached_property
    def union(self) -> Any:
        """The type a config field holds: one member, chosen by `field`."""
        def tag(value: Any) -> str | None:
            return value.get(self.field, self.default) if isinstance(value, dict) else getattr(value, self.field, None)

        members = tuple(Annotated[m, Tag(name)] for m, name in zip(self.members, self.names, strict=True))
        return Annotated[Union[members], Discriminator(tag)]  # noqa: UP007

    @cached_property
    def adapter(self) -> TypeAdapter[Any]:
        return TypeAdapter(self.union)


STRATEGY_FAMILY = PluginFamily("name", "strategy", STRATEGY_SETTINGS, "ew")
ARCHITECTURE_FAMILY = PluginFamily("architecture", "architecture", ARCHITECTURE_SETTINGS, "hps")
STRATEGY_NAMES, ARCHITECTURE_NAMES = STRATEGY_FAMILY.names, ARCHITECTURE_FAMILY.names
StrategySpec, ModelSpec = STRATEGY_FAMILY.union, ARCHITECTURE_FAMILY.union
# the config field each union sits in
PLUGIN_FIELDS: dict[str, PluginFamily] = {"strategy": STRATEGY_FAMILY, "model": ARCHITECTURE_FAMILY}


def family_of(settings: type[StrategySettings] | type[ModelSettings]) -> PluginFamily:
    return STRATEGY_FAMILY if issubclass(settings, StrategySettings) else ARCHITECTURE_FAMILY


def plugin_name(settings: type[StrategySettings] | type[ModelSettings]) -> str:
    """The name a config chooses `settings` by (its `name` or `architecture` default)."""
    return settings.model_fields[family_of(settings).field].default


def with_options(settings: PluginSettings, **changes: Any) -> PluginSettings:
    """`settings` with `changes`, validated again, through the union: a change of the chosen plug-in (its name or
    architecture) gives the new plug-in's settings, keeping the options the two share."""
    family = family_of(type(settings))
    chosen = changes.get(family.field, getattr(settings, family.field))
    target = next((m for m in family.members if plugin_name(m) == chosen), type(settings))
    kept = {k: v for k, v in settings.model_dump().items() if k in target.model_fields and k != family.field}
    return cast(PluginSettings, family.adapter.validate_python(kept | {family.field: chosen} | changes))


def implementations(family: PluginFamily, package: str) -> dict[str, type]:
    """The registry of a family's implementations, read from its settings: plug-in `<name>` is the class in module
    `<package>.<name>` that names its settings class (`settings = ...`). Only the implementation's caller imports
    torch; this module imports nothing until asked."""
    registry = {}
    for settings in family.members:
        name = plugin_name(settings)
        module = importlib.import_module(f"{package}.{name}")
        found = [c for c in vars(module).values() if isinstance(c, type) and vars(c).get("settings") is settings]
        if len(found) != 1:
            raise ImportError(f"{package}.{name} must define one class whose `settings` is {settings.__name__} "
                              f"(found {len(found)})")
        registry[name] = found[0]
    return registry
