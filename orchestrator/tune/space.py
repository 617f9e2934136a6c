"""The search space: the ``space.NAME=SPEC`` grammar, names (method hyperparameters or
``train.<field>``), the built-in ranges, conditional parameters, and applying a sampled point
to a run (the grammar: docs/tune.md §1)."""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import yaml

from orchestrator.config import (
    ConfigError,
    RunConfig,
)

if TYPE_CHECKING:  # methods/ imports torch: loaded only when a search is built
    from methods.space import Dimension


#: training fields searchable for every method (``train.<name>``)
TRAIN_SEARCHABLE = ("lr", "weight_decay", "momentum", "method_lr")


@dataclass(frozen=True)
class Param:
    """One searched dimension. ``key``: a method hyperparameter name, or ``train.<field>``;
    ``when``: (choice key, values) under which it is sampled (None: always)."""

    key: str
    dim: Dimension
    when: tuple[str, tuple[Any, ...]] | None = None
    text: str = ""  # how the user wrote it (error messages)

    def active(self, point: Mapping[str, Any]) -> bool:
        return self.when is None or point.get(self.when[0]) in self.when[1]

    def to_json(self) -> dict[str, Any]:
        sp = space_types()
        d: dict[str, Any] = {"kind": type(self.dim).__name__}
        d.update(dataclasses.asdict(self.dim))
        if isinstance(self.dim, sp.Choice):
            d["values"] = list(self.dim.values)
        if self.when is not None:
            d["when"] = {self.when[0]: list(self.when[1])}
        return d


FIXED, DEFAULT, SEARCH = "fixed", "default", "search"


_CALL = re.compile(r"^\s*([A-Za-z_]\w*)\s*\((.*)\)\s*$", re.S)


_DISTS = {"uniform": "Uniform", "loguniform": "LogUniform", "int": "IntUniform",
          "intuniform": "IntUniform", "randint": "IntUniform", "choice": "Choice"}


def space_types():
    """``methods.space`` (imported on use: ``methods`` loads torch)."""
    import methods.space

    return methods.space


def _scalar(x: Any) -> Any:
    """A YAML scalar; numeric-looking text (``1e-4``: YAML 1.1 keeps it a string) → number."""
    if isinstance(x, str):
        for conv in (int, float):
            try:
                return conv(x)
            except ValueError:
                pass
    return x


def _values(text: str) -> list[Any]:
    try:
        parsed = yaml.safe_load(f"[{text}]")
    except yaml.YAMLError as e:
        raise ConfigError(f"cannot read the values {text!r}: {e}") from None
    return [_scalar(v) for v in parsed]


def parse_spec(name: str, spec: Any) -> tuple[str, Any, tuple[str, tuple[Any, ...]] | None]:
    """(kind, payload, condition) of one space entry; kind ∈ {dimension, fixed, default,
    search}. ``ConfigError`` names the entry and the grammar."""
    where = f"space.{name}={spec!r}"
    if spec is None:
        return DEFAULT, None, None
    if isinstance(spec, (list, tuple)):
        spec = "choice(" + ", ".join(json.dumps(v) for v in spec) + ")"
    if not isinstance(spec, str):
        if isinstance(spec, (bool, int, float)):
            return FIXED, spec, None
        raise ConfigError(f"{where}: expected a SPEC string, a value or a list")
    text, cond = spec, None
    parts = re.split(r"\s+if\s+", spec.strip())
    if len(parts) > 2:
        raise ConfigError(f"{where}: only one 'if NAME=VALUE' condition is allowed")
    if len(parts) == 2:
        text, cond_text = parts
        if "=" not in cond_text:
            raise ConfigError(f"{where}: a condition reads 'if NAME=v1[,v2]' (e.g. "
                              "'loguniform(0.01,10) if gamma=constant')")
        cname, cvals = cond_text.split("=", 1)
        values = _values(cvals)
        if not cname.strip() or not values:
            raise ConfigError(f"{where}: the condition needs a name and at least one value")
        cond = (cname.strip(), tuple(values))
    text = text.strip()
    if text in (DEFAULT, SEARCH):
        return text, None, cond
    m = _CALL.match(text)
    if m is None:
        if cond is not None:
            raise ConfigError(f"{where}: a condition needs a distribution before 'if'")
        return FIXED, _scalar(yaml.safe_load(text)) if text else text, None
    fn, args = m.group(1).lower(), _values(m.group(2))
    if fn not in _DISTS:
        close = difflib.get_close_matches(fn, list(_DISTS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: unknown distribution {m.group(1)!r}{hint}; use "
                          "uniform(a,b), loguniform(a,b), int(a,b) or choice(x,y,...)")
    sp = space_types()
    cls = getattr(sp, _DISTS[fn])
    Choice, IntUniform = sp.Choice, sp.IntUniform
    try:
        if cls is Choice:
            dim: Dimension = Choice(tuple(args))
        else:
            if len(args) != 2:
                raise ValueError(f"{fn}() takes two bounds (low, high), got {len(args)}")
            want = int if cls is IntUniform else (int, float)
            if any(isinstance(a, bool) or not isinstance(a, want) for a in args):
                kind = "integers" if cls is IntUniform else "numbers"
                raise ValueError(f"the bounds of {fn}() must be {kind}, got {args}")
            if not all(math.isfinite(a) for a in args):
                raise ValueError(f"the bounds of {fn}() must be finite, got {args}")
            dim = cls(*args)
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}") from None
    return "dimension", dim, cond


def canonical_key(name: str, method: str) -> str:
    """A method hyperparameter name, or ``train.<field>``; ``ConfigError`` if unknown."""
    from methods.registry import hparam_fields

    hp = hparam_fields(method)
    valid = [*hp, *(f"train.{k}" for k in TRAIN_SEARCHABLE)]
    if name.startswith("hparams."):
        bare = name.removeprefix("hparams.")
        if bare in hp:
            return bare
    elif name.startswith("train."):
        bare = name.removeprefix("train.")
        if bare in TRAIN_SEARCHABLE:
            return name
        if bare in _train_fields():
            raise ConfigError(f"space.{name}: train.{bare} is not searchable (searchable training "
                              f"fields: {', '.join(TRAIN_SEARCHABLE)}); fix: set it as an "
                              f"ordinary override train.{bare}=VALUE")
    else:
        if name in hp and name in TRAIN_SEARCHABLE:
            raise ConfigError(
                f"space.{name} is ambiguous: {method!r} has a hyperparameter {name!r} and "
                f"train.{name} is the model's training field; fix: write space.hparams.{name} "
                f"or space.train.{name}"
            )
        if name in hp:
            return name
        if name in TRAIN_SEARCHABLE:
            return f"train.{name}"
    close = difflib.get_close_matches(name, valid + list(TRAIN_SEARCHABLE), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"space.{name}: unknown hyperparameter for method {method!r}{hint}; "
                      f"searchable: {', '.join(valid) or '(none)'}")


def _train_fields() -> list[str]:
    from orchestrator.config import TrainConfig

    return [f.name for f in dataclasses.fields(TrainConfig)]


def builtin_dimension(key: str, method: str, protocol_lr: float | None) -> Dimension:
    """The ``search`` range of ``key`` (docs/tune.md §1)."""
    sp = space_types()
    import methods

    if not key.startswith("train."):
        declared = methods.get_class(method).search_space
        if key not in declared:
            raise ConfigError(f"space.{key}=search: {method!r} declares no range for {key!r} "
                              f"(declared: {', '.join(declared) or 'none'}); fix: give one, "
                              f"e.g. space.{key}=uniform(a,b)")
        return declared[key]
    name = key.removeprefix("train.")
    if name in ("lr", "method_lr"):
        if not protocol_lr:
            raise ConfigError(f"space.{name}=search needs the protocol's lr; fix: give a range")
        return sp.LogUniform(protocol_lr / 10, protocol_lr * 10)
    if name == "weight_decay":
        return sp.LogUniform(1e-6, 1e-2)
    return sp.Uniform(0.5, 0.99)


def dim_contains(dim: Dimension, v: Any) -> bool:
    sp = space_types()
    if isinstance(dim, sp.Choice):
        return v in dim.values
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    if isinstance(dim, sp.IntUniform) and not float(v).is_integer():
        return False
    return dim.low <= v <= dim.high


def dim_candidates(dim: Dimension) -> list[Any]:
    """Values that exercise a dimension: its ends and every choice."""
    sp = space_types()
    if isinstance(dim, sp.Choice):
        return list(dim.values)
    return [dim.low, dim.high]


def dim_center(dim: Dimension, default: Any) -> Any:
    sp = space_types()
    if dim_contains(dim, default):
        return default
    if isinstance(dim, sp.Choice):
        return dim.values[0]
    if isinstance(dim, sp.IntUniform):
        return dim.low
    if isinstance(dim, sp.LogUniform):
        return math.sqrt(dim.low * dim.high)
    return (dim.low + dim.high) / 2


@dataclass(frozen=True)
class DefineSpace:
    """Optuna define-by-run function of a space (conditional parameters need it); a
    module-level class so Tune can pickle it into the experiment state."""

    params: tuple[Param, ...]

    def __call__(self, trial: Any) -> None:
        sp = space_types()
        point: dict[str, Any] = {}
        for p in self.params:  # parents come first (checked in resolve_space)
            if not p.active(point):
                continue
            d = p.dim
            if isinstance(d, sp.Choice):
                point[p.key] = trial.suggest_categorical(p.key, list(d.values))
            elif isinstance(d, sp.IntUniform):
                point[p.key] = trial.suggest_int(p.key, d.low, d.high)
            else:
                point[p.key] = trial.suggest_float(p.key, d.low, d.high,
                                                   log=isinstance(d, sp.LogUniform))


def split_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """({method hparam: value}, {train field: value}) of a sampled point (NaN/None = unused)."""
    hp, train = {}, {}
    for key, v in params.items():
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        if key.startswith("train."):
            train[key.removeprefix("train.")] = v
        else:
            hp[key] = v
    return hp, train


def apply_params(base: RunConfig, params: Mapping[str, Any], trial_id: str | None = None,
                 search_id: str | None = None) -> RunConfig:
    """The run of one trial: ``base`` with the sampled values, the trial and search ids."""
    hp, train = split_params(params)
    return dataclasses.replace(
        base, hparams={**base.hparams, **hp}, train=dataclasses.replace(base.train, **train),
        trial_id=trial_id, search_id=search_id,
    )


def order_params(entries: Mapping[str, tuple[Dimension, Any, str]]) -> tuple[Param, ...]:
    """Params with every condition's parent first; conditions checked."""
    sp = space_types()
    plain = [Param(k, d, None, t) for k, (d, c, t) in entries.items() if c is None]
    cond = []
    for k, (d, c, t) in entries.items():
        if c is None:
            continue
        parent = entries.get(c[0])
        if parent is None or not isinstance(parent[0], sp.Choice) or parent[1] is not None:
            raise ConfigError(f"{t}: the condition's {c[0]!r} must be an unconditional "
                              f"choice(...) of the space")
        bad = [v for v in c[1] if v not in parent[0].values]
        if bad:
            raise ConfigError(f"{t}: {bad} are not among {c[0]}'s choices {list(parent[0].values)}")
        cond.append(Param(k, d, (c[0], tuple(c[1])), t))
    return tuple(plain + cond)


def complete_point(params: Sequence[Param], point: dict[str, Any], defaults: Mapping[str, Any]) -> dict:
    """Add active conditional parameters (at their centre), drop inactive ones."""
    out = dict(point)
    for p in params:
        if p.when is None:
            continue
        if p.active(out):
            out.setdefault(p.key, dim_center(p.dim, defaults.get(p.key)))
        else:
            out.pop(p.key, None)
    return out


def find_default_point(params: Sequence[Param], defaults: Mapping[str, Any]) -> dict[str, Any] | None:
    sp = space_types()
    point = {}
    for p in params:
        if not p.active(point):
            continue
        v = defaults.get(p.key)
        if not dim_contains(p.dim, v):
            return None
        point[p.key] = int(v) if isinstance(p.dim, sp.IntUniform) else v
    return point
