"""The names a config can choose for its loss weighting and its architecture.

Config validation checks names against these, so that reading a config does not import the
implementations (torch, torchjd) that `components.training.strategies.STRATEGIES` and
`components.training.architectures.ARCHITECTURES` register; tests/test_config.py checks the lists name
exactly what the registries hold.
"""

STRATEGY_NAMES: tuple[str, ...] = ("ew", "static", "uw", "dwa", "pcgrad", "upgrad", "mgda", "cagrad")
ARCHITECTURE_NAMES: tuple[str, ...] = ("hps", "mmoe", "shared_private", "ft_transformer")
# the architectures whose heads read one shared representation (`SharedRepresentation`): Rep-MTL needs one
SHARED_REPRESENTATION_ARCHITECTURES: tuple[str, ...] = ("hps", "mmoe", "shared_private", "ft_transformer")
