"""Metadata filters: parsed from short strings (CLI, HTTP) and evaluated per shard.

Syntax of one condition (several conditions are ANDed)::

    snr>=20            numeric comparison: <  <=  >  >=  =  ==  !=
    feh_pred<-2        any column of the index's rows table (head predictions included)
    population=halo    string equality; "a|b" means one of several values
    is_artefact=false  booleans: true/false
    cone=45.1,0.9,0.5  sky cone: ra, dec, radius in degrees (ICRS)
    modality=xp        the target modality (the engine searches that modality's index)

Rows where a numeric column is null (NaN) never pass a comparison. A filter is evaluated to
one boolean mask per shard; the shard then searches only passing rows (ID selector or exact
scan, see :mod:`specsearch.index.shard`), so top-k among passing rows stays exact/high-recall
instead of being whatever survives a post-filter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from specsearch.errors import QueryError

_OPS = ("<=", ">=", "!=", "==", "<", ">", "=")
_COND = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(<=|>=|!=|==|<|>|=)\s*(.+?)\s*$")


_INT = re.compile(r"^[+-]?\d+$")


def _value(text: str) -> int | float | str | bool:
    """``true``/``false`` -> bool; an integer literal -> int (exact: Gaia source_ids need
    63 bits, more than a float holds); another number -> float; else the string."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if _INT.match(text) and abs(int(text)) < 2 ** 63:
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass(frozen=True)
class Condition:
    """``column op value``; ``values`` holds the alternatives of an ``a|b`` equality."""

    column: str
    op: str
    values: tuple[int | float | str | bool, ...]

    def mask(self, column: np.ndarray) -> np.ndarray:
        op = "==" if self.op == "=" else self.op
        if op in ("==", "!="):
            hit = np.zeros(len(column), bool)
            for v in self.values:
                if isinstance(v, bool) or _is_number(v):
                    if column.dtype.kind in "biuf":
                        hit |= column == v
                        continue
                    v = str(v).lower() if isinstance(v, bool) else v
                hit |= column.astype(object) == v if column.dtype.kind == "O" else \
                    column.astype(str) == str(v)
            return hit if op == "==" else ~hit
        (v,) = self.values
        if not _is_number(v) or column.dtype.kind not in "biuf":
            raise QueryError(f"filter {self}: {op} needs a number and a numeric column "
                             f"({self.column} has dtype {column.dtype})")
        with np.errstate(invalid="ignore"):
            return {"<": np.less, "<=": np.less_equal, ">": np.greater,
                    ">=": np.greater_equal}[op](column, v)

    def __str__(self) -> str:
        return f"{self.column}{self.op}{'|'.join(str(v) for v in self.values)}"


@dataclass(frozen=True)
class Cone:
    """Sky cone: centre (ra, dec) and radius, all in degrees (ICRS)."""

    ra: float
    dec: float
    radius: float

    def mask(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        # Haversine: accurate at small radii where the cosine formula loses precision.
        r0, d0 = math.radians(self.ra), math.radians(self.dec)
        r1, d1 = np.radians(ra), np.radians(dec)
        h = (np.sin((d1 - d0) / 2) ** 2
             + math.cos(d0) * np.cos(d1) * np.sin((r1 - r0) / 2) ** 2)
        with np.errstate(invalid="ignore"):
            sep = 2 * np.degrees(np.arcsin(np.sqrt(np.clip(h, 0, 1))))
            return sep <= self.radius


@dataclass(frozen=True)
class Filter:
    """A conjunction of conditions, an optional sky cone and an optional target modality."""

    conditions: tuple[Condition, ...] = ()
    cone: Cone | None = None
    modality: str | None = None
    text: tuple[str, ...] = field(default=(), compare=False)

    @property
    def empty(self) -> bool:
        return not self.conditions and self.cone is None

    @classmethod
    def parse(cls, items: str | Iterable[str] | None) -> "Filter":
        """Parse ``"snr>=20"``-style strings (one or many; ``;`` also separates)."""
        if items is None:
            return cls()
        if isinstance(items, str):
            items = [items]
        parts = [p for item in items for p in str(item).split(";") if p.strip()]
        conditions: list[Condition] = []
        cone, modality = None, None
        for part in parts:
            m = _COND.match(part)
            if not m:
                raise QueryError(
                    f"filter {part!r} not understood; expected COLUMN OP VALUE with OP one of "
                    f"{' '.join(_OPS)} (e.g. snr>=20, feh_pred<-2, population=halo) or "
                    f"cone=RA,DEC,RADIUS_DEG")
            name, op, value = m.groups()
            if name == "cone":
                try:
                    ra, dec, radius = (float(v) for v in value.split(","))
                except ValueError:
                    raise QueryError(f"cone filter {part!r}: expected cone=RA,DEC,RADIUS in "
                                     f"degrees, e.g. cone=45.1,0.9,0.5") from None
                if not (-90 <= dec <= 90 and radius > 0):
                    raise QueryError(f"cone filter {part!r}: need -90 <= dec <= 90 and "
                                     f"radius > 0 (degrees)")
                cone = Cone(ra % 360.0, dec, radius)
            elif name == "modality":
                if op not in ("=", "=="):
                    raise QueryError(f"filter {part!r}: modality only supports '='")
                modality = value
            else:
                values = tuple(_value(v) for v in value.split("|")) if op in (
                    "=", "==", "!=") else (_value(value),)
                if op not in ("=", "==", "!=") and not _is_number(values[0]):
                    raise QueryError(f"filter {part!r}: {op} needs a number, got {value!r}")
                conditions.append(Condition(name, op, values))
        return cls(tuple(conditions), cone, modality, tuple(parts))

    def __and__(self, other: "Filter") -> "Filter":
        if self.modality and other.modality and self.modality != other.modality:
            raise QueryError(f"filters ask for two modalities: {self.modality!r} and "
                             f"{other.modality!r}")
        if self.cone and other.cone:
            raise QueryError("only one sky cone per filter")
        return Filter(self.conditions + other.conditions, self.cone or other.cone,
                      self.modality or other.modality, self.text + other.text)

    def mask(self, shard) -> np.ndarray | None:
        """Boolean mask over ``shard``'s rows (None when the filter is empty)."""
        if self.empty:
            return None
        mask = np.ones(shard.count, bool)
        for cond in self.conditions:
            mask &= cond.mask(shard.column(cond.column))
        if self.cone is not None:
            mask &= self.cone.mask(shard.column("ra"), shard.column("dec"))
        return mask

    def __str__(self) -> str:
        return "; ".join(self.text) if self.text else "(no filter)"
