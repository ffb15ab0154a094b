"""What every qkms resource is made of: field types and their checks, the spec and
status bases, conditions (metav1.Condition's shape), object metadata, and parsing a body
into a model with errors that name the field.

The models are the one truth for what a resource may say: the operator validates every
body with them and ``qkms.k8s.crds`` generates the CRDs' OpenAPI schemas from them, so
the API server and the operator cannot disagree about a field's name, type, default or
pattern. Field docstrings become the CRD descriptions that ``kubectl explain`` shows.
Where the two layers differ, the CRD is the stricter one about spelling and the operator
the stricter one about meaning (checks that CEL cannot express).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    field_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from qkms.errors import (
    InvalidDurationError,
    InvalidInputError,
    PQCDisabledError,
    UnsupportedAlgorithmError,
)

from . import schedules as lifecycle
from .algorithms import ALGORITHMS, resolve_algorithm
from .durations import DURATION_PATTERN, parse_duration

# -- field types ----------------------------------------------------------------


DELETION_WINDOW_PATTERN = r"^P([7-9]|[12][0-9]|30)D$"
"""The deletion window in the one form the CRD can range-check: whole days, 7 to 30.

ISO 8601 in general (``P1M``, ``P2W``) has no CEL-checkable length, so the
window must be written ``PnD``; a test ties the bounds to ``lifecycle``.
"""

_DNS_NAME = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
_DATA_KEY_NAME = r"^[-._a-zA-Z0-9]+$"
# Condition reasons follow metav1.Condition: CamelCase, machine-readable.
_CONDITION_REASON = r"^([A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?)?$"

ALGORITHM_SPELLINGS: tuple[str, ...] = tuple(
    name for info in ALGORITHMS for name in (info.name, *info.aliases)
)
"""Every accepted algorithm spelling (canonical names and aliases), in registry order."""


@contextmanager
def _reported() -> Iterator[None]:
    """Carry a qkms input error through pydantic with its code, so ``parse`` restores its class."""
    try:
        yield
    except InvalidInputError as exc:
        raise PydanticCustomError(exc.code, "{reason}", {"reason": exc.reason}) from None


def _duration(value: str) -> str:
    text = value.strip()
    with _reported():
        parse_duration(text, "duration")
    return text


def _algorithm(value: str) -> str:
    with _reported():
        return resolve_algorithm(value).name


def _deletion_window(value: str) -> str:
    text = value.strip()
    if not re.fullmatch(r"P\d+D", text):
        raise PydanticCustomError(
            "invalid_input", "{value} must be written PnD, whole days (for example P30D)",
            {"value": repr(value)},
        )
    with _reported():
        lifecycle.validate_deletion_window(text)
    return text


IsoDuration = Annotated[
    str,
    AfterValidator(_duration),
    WithJsonSchema({"type": "string", "pattern": DURATION_PATTERN, "maxLength": 64}),
]
AlgorithmName = Annotated[
    str,
    AfterValidator(_algorithm),
    WithJsonSchema({"type": "string", "enum": list(ALGORITHM_SPELLINGS), "maxLength": 64}),
]
DeletionWindow = Annotated[
    str, AfterValidator(_deletion_window), WithJsonSchema({"type": "string", "maxLength": 8})
]
DnsName = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=_DNS_NAME)]
NonEmpty = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, pattern=r"\S")]
UrlText = Annotated[str, StringConstraints(max_length=2048, pattern=r"^https?://[^\s/$.?#][^\s]*$")]


def _unique(values: list[Any]) -> list[Any]:
    """Drop repeats (after alias normalisation), keeping the first position."""
    return list(dict.fromkeys(values))


class _Spec(BaseModel):
    """Spec parts: camelCase in YAML, unknown fields are errors."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid",
        use_attribute_docstrings=True,
    )

    def to_dict(self) -> dict[str, Any]:
        """The body form: camelCase, JSON types, unset optionals left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class _Status(_Spec):
    """Status parts: written by the operator; foreign keys (Kopf's own) are ignored."""

    model_config = ConfigDict(extra="ignore")


def _section(model: type[BaseModel]) -> Any:
    """A sub-object that defaults to all its own defaults, in the model and in the CRD."""
    return Field(default_factory=model, json_schema_extra={"default": {}})


# -- conditions ------------------------------------------------------------------------

class ConditionType(StrEnum):
    READY = "Ready"
    ROTATING = "Rotating"
    DEGRADED = "Degraded"
    PQC_MIGRATION = "PQCMigration"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(_Status):
    """One aspect of the resource's state, in the metav1.Condition shape."""

    type: str
    """Ready, Rotating, Degraded or PQCMigration."""
    status: ConditionStatus
    reason: Annotated[str, StringConstraints(max_length=1024, pattern=_CONDITION_REASON)] = ""
    """A CamelCase word for machines, such as KeyCreated or ProviderUnavailable."""
    message: str = ""
    """A sentence for humans."""
    last_transition_time: AwareDatetime
    """When status last changed (not when the condition was last written)."""
    observed_generation: int | None = None
    """The metadata.generation this condition was computed from."""


def set_condition(
    conditions: Sequence[Condition],
    type: str,
    status: ConditionStatus | str | bool,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[Condition]:
    """Return ``conditions`` with ``type`` set, keeping its place and, when the status
    is unchanged, its lastTransitionTime (so the time says when things changed)."""
    if isinstance(status, bool):
        status = ConditionStatus.TRUE if status else ConditionStatus.FALSE
    status = ConditionStatus(status)
    old = get_condition(conditions, type)
    since = old.last_transition_time if old is not None and old.status is status else now
    new = Condition(type=str(type), status=status, reason=reason, message=message,
                    last_transition_time=since, observed_generation=generation)
    if old is None:
        return [*conditions, new]
    return [new if c.type == type else c for c in conditions]


def get_condition(conditions: Sequence[Condition], type: str) -> Condition | None:
    return next((c for c in conditions if c.type == type), None)


def _conditions() -> Any:
    """A conditions list keyed by type, as metav1 declares it (server-side apply merges by type)."""
    return Field(default_factory=list, json_schema_extra={
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"],
    })


# -- whole resources -----------------------------------------------------------------

_METADATA_TYPES: dict[str, type] = {"name": str, "namespace": str, "uid": str,
                                     "resourceVersion": str, "generation": int,
                                     "labels": dict, "annotations": dict}


class _Resource(_Spec):
    model_config = ConfigDict(extra="ignore")

    api_version: Literal["qkms.io/v1alpha1"] = "qkms.io/v1alpha1"  # API_VERSION, as a literal
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metadata")
    @classmethod
    def _object_meta(cls, meta: dict[str, Any]) -> dict[str, Any]:
        """What the API server guarantees, checked again for bodies nothing else checked
        (``qkms serve`` reads hand-written YAML): types, string maps and DNS names."""
        for key, kind in _METADATA_TYPES.items():
            value = meta.get(key)
            if value is not None and (type(value) is not kind if kind is int
                                      else not isinstance(value, kind)):
                raise PydanticCustomError("invalid_input", "{key} must be a {kind}, not {value}",
                                          {"key": key, "kind": kind.__name__,
                                           "value": type(value).__name__})
        for key in ("labels", "annotations"):
            if not all(isinstance(k, str) and isinstance(v, str)
                       for k, v in (meta.get(key) or {}).items()):
                raise PydanticCustomError("invalid_input", "{key} must map strings to strings",
                                          {"key": key})
        for key in ("name", "namespace"):
            value = meta.get(key)
            if value is not None and (len(value) > 253 or not re.fullmatch(_DNS_NAME, value)):
                raise PydanticCustomError(
                    "invalid_input", "{key} {value} must be a lower-case DNS name",
                    {"key": key, "value": repr(value[:64])})
        return meta

    @property
    def name(self) -> str | None:
        return self.metadata.get("name")

    @property
    def namespace(self) -> str | None:
        return self.metadata.get("namespace")

    @property
    def generation(self) -> int | None:
        return self.metadata.get("generation")


# -- parsing ----------------------------------------------------------------------------

_ERRORS: dict[str, type[InvalidInputError]] = {
    cls.code: cls for cls in (UnsupportedAlgorithmError, InvalidDurationError, PQCDisabledError)
}
_REASONS = {"extra_forbidden": "unknown field", "missing": "required field is missing"}

R = TypeVar("R", bound=BaseModel)


def field_path(loc: Sequence[str | int]) -> str:
    """Pydantic's error location as users write it: ``spec.projection.formats[1]``."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def _plain(value: Any) -> Any:
    """Kopf hands out Mapping views; pydantic wants plain dicts and lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def parse(model: type[R], body: Mapping[str, Any]) -> R:
    """Validate a body, raising ``InvalidInputError`` that names the first bad field."""
    try:
        return model.model_validate(_plain(body))
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        error = _ERRORS.get(first["type"], InvalidInputError)
        reason = _REASONS.get(first["type"], first["msg"])
        raise error(field_path(first["loc"]) or "body", reason) from exc


