"""What a comparison compares: its rows (a selector and its options), its measures and CompareSettings.

Loads no torch, so the CLI reads the fields (their defaults, choices and help) at start-up.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import InitVar, asdict, dataclass, field
from typing import Any, Callable, Sequence

from influence.compare.paired import BOOTSTRAP_SEED, LEVEL, RESAMPLES
from influence.data.contamination import KEEP_CONTAMINATED_HELP
from influence.errors import ConfigError, require_positive_ints
from influence.evaluation.metrics import GENERATION_OPTIONS, METRIC_OPTIONS
from influence.less.settings import LessSettings
from influence.selectors import SELECTORS
from influence.selectors.dsir import (MIN_LENGTH_HELP as DSIR_MIN_LENGTH_HELP, SAMPLING as DSIR_SAMPLING,
                                      SAMPLING_HELP as DSIR_SAMPLING_HELP, DsirSelector)
from influence.training.settings import RUNTIME_FIELDS, TrainSettings

BASELINE = "random"
BASE = "base"  # the row of the untrained model
# --metrics names -> the evaluation's metric names (the target loss always measured), as `evaluate` reads them
METRICS, GENERATION_METRICS = METRIC_OPTIONS, GENERATION_OPTIONS


# ------------------------------------------------------------------ rows: a selector and its options
@dataclass(frozen=True)
class SelectorRow:
    """One row of a comparison: a registered selector and the options it is made with."""

    name: str
    options: tuple[tuple[str, Any], ...] = ()

    @property
    def label(self) -> str:
        """`name`, or `name:key=value,...` as typed: the row's name in tables and files."""
        if not self.options:
            return self.name
        return self.name + ":" + ",".join(f"{k}={_option_text(v)}" for k, v in self.options)

    @classmethod
    def parse(cls, spec: str) -> "SelectorRow":
        """`name[:key=value[,key=value...]]`; values are read as JSON where they parse (8192, 1e-4, true).

        Raises:
            ConfigError: an option without a value, or an empty name.
        """
        name, _, options = spec.strip().partition(":")
        pairs = []
        for part in filter(None, (p.strip() for p in options.split(","))):
            key, eq, value = (x.strip() for x in part.partition("="))
            if not eq or not key or not value:
                raise ConfigError(f"selector row {spec!r}: expected name:key=value[,key=value], got {part!r}")
            pairs.append((key.replace("-", "_"), _option_value(value)))
        if not name.strip():
            raise ConfigError(f"selector row {spec!r} has no selector name")
        return cls(name.strip(), tuple(pairs))


def _option_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _option_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def parse_rows(text: str | Sequence[str]) -> list[str]:
    """Split `less,less:scoring=exact,index=flat,longest` into row specs: a part holding `=` before
    any `:` continues the options of the row before it."""
    parts = [text] if isinstance(text, str) else list(text)
    rows: list[str] = []
    for part in (p.strip() for chunk in parts for p in chunk.split(",")):
        if not part:
            continue
        continues = "=" in part and (":" not in part or part.index("=") < part.index(":"))
        if continues:
            if not rows:
                raise ConfigError(f"selector option {part!r} comes before any selector name")
            rows[-1] += ("," if ":" in rows[-1] else ":") + part
        else:
            rows.append(part)
    return rows


# ------------------------------------------------------------------ training recipes
@dataclass(frozen=True)
class Recipe:
    """A named training recipe: the settings it makes and how its numbers were chosen (its provenance),
    which the help and every report of a comparison trained with it repeat."""

    make: Callable[..., TrainSettings]
    provenance: str  # how the learning rate (and the rest) were picked: a paper, arithmetic, a validation sweep

    def __call__(self, **changes: Any) -> TrainSettings:
        return self.make(**changes)

    def changed(self, train: dict[str, Any]) -> list[str]:
        """The recipe's settings that `train` (TrainSettings.to_dict()) changed, the model and runtime aside."""
        own = self().to_dict()
        return [k for k, v in train.items() if k not in ("model", *RUNTIME_FIELDS) and own.get(k) != v]


RECIPES = {
    "less": Recipe(TrainSettings, "LESS's final training (arXiv 2402.04333), as the paper trained its selections; "
                                  "not tuned on this pool"),
    "small-k": Recipe(TrainSettings.small_k, "learning rate by step arithmetic (its steps at k=60 sum to about the "
                                             "learning rate of LESS's own training), not by any held-out score"),
    "small-k-validated": Recipe(TrainSettings.small_k_validated,
                                "small-k for 2 epochs at the learning rate that gave the lower answer-only loss on "
                                "user_oriented's 36 validation items (1e-4 against 2e-4; held-out items never seen)"),
}


# ------------------------------------------------------------------ settings
@dataclass
class CompareSettings:
    """What to compare and how to train and evaluate each selection."""

    pools: list[str] = field(metadata={"help": "Pool specs, as for select."})
    targets: list[str] = field(default_factory=list, metadata={
        "help": "Targets (names or files): each a selection target and an evaluation."})
    k: int = field(default=1000, metadata={"help": "Examples per selection."})
    selectors: list[str] = field(default_factory=lambda: ["less", "longest", "random"], metadata={
        "help": "Rows: registered selectors, each optionally with options, as in "
                "less:scoring=unprojected,less:scoring=faiss,longest:unit=words,random; diversity=TAU "
                "(and diversity_encoder=DIR) on any row walks its ranking with diversity-aware top-k; "
                "algorithm=round-robin or algorithm=uot (with algorithm_over=subtask, uot_eps=...) on a less, rds, "
                "embed or bm25 row chooses by that algorithm instead of top-k."})
    seeds: int = field(default=3, metadata={
        "help": "Training seeds per selection (0..N-1); random draws again with each."})
    selection_seeds: int = field(default=1, metadata={
        "help": "Selection seeds (0..M-1) of the other rows: LESS's warmup sample, adapter init, projection."})
    redraw: list[str] = field(default_factory=lambda: [BASELINE], metadata={
        "help": "Selectors drawn again for every training seed, with it as their seed ('' for none)."})
    only_seeds: list[int] | None = field(default=None, metadata={
        "help": "Run only these of the training seeds 0..N-1, to share a comparison's runs among processes or "
                "sittings; its reports cover the runs made so far, and its dry run prices only these.",
        "none": "every seed"})
    metrics: list[str] = field(default_factory=lambda: ["loss", "accuracy"], metadata={
        "help": "loss (always), accuracy (MMLU, from the same forward pass), em and f1 (generate answers: slow)."})
    base: bool = field(default=True, metadata={"help": "Evaluate the untrained model as a row."})
    versus: list[str] = field(default_factory=list, metadata={
        "help": "Rows every other row is also compared with, paired as against random and base (the method "
                "under test, say less, to ask whether a cheap row beats it)."})
    limit: int | None = field(default=None, metadata={
        "help": "Evaluate each target on a seeded subset of this many held-out items (the same for every row)."})
    train: TrainSettings = field(default_factory=TrainSettings, metadata={
        "help": "Training settings; their model is the training model (see train_model)."})
    recipe: str | None = field(default=None, metadata={
        "help": "The named recipe `train` was made from, recorded with its provenance in the reports.",
        "choices": RECIPES, "none": "settings given directly"})
    train_model: str | None = field(default=None, metadata={
        "help": "Model to train and evaluate each selection with (and the base row's model); the selectors "
                "(LESS gradients, rds, ifd) use --model.", "none": "the selectors' --model"})
    less: LessSettings = field(default_factory=LessSettings, metadata={
        "help": "LESS settings (a row's options change them for that row)."})
    eval_batch_size: int = field(default=8, metadata={"help": "Evaluation batch size."})
    eval_max_length: int = field(default=2048, metadata={"help": "Evaluation token budget per sequence."})
    dsir_sampling: str = field(default=DsirSelector.sampling, metadata={
        "help": f"dsir: {DSIR_SAMPLING_HELP}", "choices": DSIR_SAMPLING})
    dsir_min_length: int = field(default=DsirSelector.min_length, metadata={"help": f"dsir: {DSIR_MIN_LENGTH_HELP}."})
    keep_contaminated: bool = field(default=False, metadata={"help": KEEP_CONTAMINATED_HELP})
    bootstrap_resamples: int = field(default=RESAMPLES, metadata={
        "help": f"Resamples of the paired bootstrap behind each {LEVEL:.0%} interval (seeds, then items)."})
    bootstrap_seed: int = field(default=BOOTSTRAP_SEED, metadata={
        "help": "Seed of the paired bootstrap's draws: the same seed gives the same intervals."})
    target: InitVar[str | None] = None  # one target, as `targets=[target]`

    def __post_init__(self, target: str | None) -> None:
        if isinstance(self.targets, str):
            self.targets = [self.targets]
        if target is not None:
            self.targets = [*self.targets, target]
        if not self.pools:
            raise ConfigError("compare needs at least one --pool")
        if not self.targets:
            raise ConfigError("compare needs at least one --target")
        if len(set(self.targets)) != len(self.targets):
            raise ConfigError(f"a target is given twice: {', '.join(self.targets)}")
        self.selectors = parse_rows(self.selectors)
        if not self.selectors:
            raise ConfigError("compare needs at least one selector")
        rows = self.rows()
        unknown = [r.name for r in rows if r.name not in SELECTORS]
        if unknown:
            raise ConfigError(f"unknown selector(s) {', '.join(unknown)}; choose from {', '.join(sorted(SELECTORS))}")
        labels = [r.label for r in rows]
        if len(set(labels)) != len(labels) or BASE in labels:
            raise ConfigError(f"every row needs its own name (and {BASE!r} is the untrained model's row); got "
                              f"{', '.join(labels)}")
        self.versus = list(dict.fromkeys(SelectorRow.parse(spec).label for spec in parse_rows(self.versus)))
        unknown = [v for v in self.versus if v not in labels or v in (BASELINE, BASE)]
        if unknown:
            raise ConfigError(f"versus names no other row: {', '.join(unknown)}; choose from "
                              f"{', '.join(x for x in labels if x != BASELINE)} (random and base are always compared)")
        require_positive_ints(self, "k", "seeds", "selection_seeds")
        if self.only_seeds is not None and (not self.only_seeds or any(not 0 <= s < self.seeds for s in self.only_seeds)):
            raise ConfigError(f"only_seeds must name training seeds from 0 to {self.seeds - 1}, got {self.only_seeds}")
        if self.limit is not None and self.limit <= 0:
            raise ConfigError(f"limit must be positive, got {self.limit}")
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ConfigError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
        self.metrics = ["loss"] + [m for m in dict.fromkeys(self.metrics) if m != "loss"]
        if self.dsir_sampling not in DSIR_SAMPLING:
            raise ConfigError(f"dsir_sampling must be one of {', '.join(DSIR_SAMPLING)}, got {self.dsir_sampling!r}")
        if not isinstance(self.dsir_min_length, int) or self.dsir_min_length < 0:
            raise ConfigError(f"dsir_min_length must be a whole number >= 0 (0 keeps every example), "
                              f"got {self.dsir_min_length!r}")
        if self.recipe is not None and self.recipe not in RECIPES:
            raise ConfigError(f"unknown recipe {self.recipe!r}; choose from {', '.join(RECIPES)}")
        require_positive_ints(self, "bootstrap_resamples")
        # the training model: as given, else the train settings', else the selectors' own model
        self.train_model = self.train_model or self.train.model or self.less.model
        if self.train.model != self.train_model:
            self.train = self.train.with_(model=self.train_model)
        if self.less.name and self.selection_seeds > 1:
            raise ConfigError("a fixed LESS datastore --name cannot hold several selection seeds; drop --name")

    def rows(self) -> list[SelectorRow]:
        return [SelectorRow.parse(spec) for spec in self.selectors]

    def seed_pairs(self, row: SelectorRow, *, every_seed: bool = False) -> list[tuple[int, int]]:
        """(selection seed, training seed) pairs of one row: those this process runs (only those of `only_seeds`
        when given), or with `every_seed` all of the comparison's (the report takes in any already evaluated)."""
        seeds = [s for s in range(self.seeds) if every_seed or self.only_seeds is None or s in self.only_seeds]
        if row.name in self.redraw:
            return [(seed, seed) for seed in seeds]
        return list(itertools.product(range(self.selection_seeds), seeds))

    def eval_metrics(self) -> list[str]:
        """The evaluation's metric names for the chosen --metrics, the target loss left out."""
        return [METRICS[m] for m in self.metrics if m != "loss"]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["train"], data["less"] = self.train.to_dict(), self.less.to_dict()
        return data
