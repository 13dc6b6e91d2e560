"""A row's selector, made from the comparison's settings and the row's own options, and its top-k walk."""

from __future__ import annotations

from typing import Any

from influence.algorithms import ALGORITHM_OPTIONS, DEFAULT_ALGORITHM, Algorithm, algorithm_from_options
from influence.cascade import Prefilter
from influence.compare.settings import CompareSettings, SelectorRow
from influence.errors import ConfigError, InfluenceError
from influence.selection import Diversity
from influence.selectors import make_selector

DIVERSITY_OPTIONS = ("diversity", "diversity_encoder")  # row options for the shared top-k, not the selector
# row options for the selection algorithm, not the selector
ROW_ALGORITHM_OPTIONS = ("algorithm", *ALGORITHM_OPTIONS)
PREFILTER_OPTION = "prefilter"  # the cascade's first stage, not an option of the row's selector


def _defaults(name: str, config: CompareSettings) -> dict[str, Any]:
    """The comparison's settings for selector `name`: LESS's settings, which also give rds, embed and ifd
    their model and datastore; DSIR's sampling and length filter."""
    return {"less": {"settings": config.less}, "rds": {"settings": config.less}, "embed": {"settings": config.less},
            "ifd": {"settings": config.less}, "dsir": {"sampling": config.dsir_sampling, "min_length": config.dsir_min_length}}.get(name, {})


def make_row_selector(row: SelectorRow, config: CompareSettings) -> Any:
    """The row's selector, made from the comparison's settings for it (`_defaults`) changed by the row's
    own options."""
    own = {k: v for k, v in row.options
           if k not in DIVERSITY_OPTIONS and k not in ROW_ALGORITHM_OPTIONS and k != PREFILTER_OPTION}
    try:
        return make_selector(row.name, **{**_defaults(row.name, config), **own})
    except TypeError as exc:
        raise ConfigError(f"selector row {row.label!r}: {exc}") from None


def row_prefilter(row: SelectorRow, config: CompareSettings) -> Prefilter | None:
    """The cascade for a row such as `less:prefilter=bm25:1000`: the prefilter made with the comparison's
    settings for it, checked against the comparison's k and targets.

    Raises:
        SelectionError, UnknownNameError: a malformed or unknown prefilter, N below k, or a targeted
            prefilter in a comparison without targets.
    """
    spec = dict(row.options).get(PREFILTER_OPTION)
    if spec is None:
        return None
    prefilter = Prefilter.parse(str(spec))
    prefilter.options = _defaults(prefilter.selector, config)
    prefilter.check(config.k, config.targets)
    return prefilter


def row_diversity(row: SelectorRow, config: CompareSettings) -> Diversity | None:
    """Diversity-aware top-k for a row such as `longest:diversity=0.9` (the encoder from
    `diversity_encoder=DIR`, else the bundled one), stored beside the comparison's LESS datastores.

    Raises:
        ConfigError: a threshold outside (0, 1), or an encoder without a threshold.
    """
    options = dict(row.options)
    if "diversity" not in options:
        if "diversity_encoder" in options:
            raise ConfigError(f"selector row {row.label!r}: diversity_encoder needs diversity=TAU")
        return None
    tau = options["diversity"]
    if isinstance(tau, bool) or not isinstance(tau, (int, float)):
        raise ConfigError(f"selector row {row.label!r}: diversity must be a cosine in (0, 1), got {tau!r}")
    return Diversity(tau=float(tau), encoder=options.get("diversity_encoder"), settings=config.less)


def row_algorithm(row: SelectorRow) -> Algorithm:
    """The selection algorithm of a row such as `less:algorithm=round-robin` (with `algorithm_over=subtask`,
    `uot_eps=0.05`, ...); top-k without one.

    Raises:
        ConfigError: an unknown algorithm, an option it does not take, or a bad value.
    """
    options = dict(row.options)
    name = options.get("algorithm", DEFAULT_ALGORITHM)
    given = {key: options[key] for key in ALGORITHM_OPTIONS if key in options}
    try:
        algorithm, ignored = algorithm_from_options(str(name), given)
    except InfluenceError as exc:
        raise ConfigError(f"selector row {row.label!r}: {exc}") from None
    if ignored:
        raise ConfigError(f"selector row {row.label!r}: algorithm {name!r} takes no {', '.join(ignored)}")
    return algorithm
