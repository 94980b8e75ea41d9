"""The fast path of ingest: msgspec decodes and validates a message's bytes in one C pass.

The pydantic models in `schemas.events` stay the one definition of an event (they generate the
JSON Schemas); the msgspec types here are derived from them at import, field by field (types,
lengths, bounds, patterns, defaults), and the models' own `after` validators (UTC
normalisation, known time zone, survey score range, tier of a tier change) run on the result,
so the two cannot drift apart.

The fast path is deliberately narrower than the full path: it only answers for the common
case, a compact event whose every member is a known field of the JSON type the schema
publishes, and returns `None` ("not sure") for everything else, which `ingest.accept` then
sends through the full pydantic path. It never rejects. What it answers must be exactly what
the full path answers, so it declines:

- any backslash in the bytes (an escape may hide a lone surrogate, and without escapes every
  `"` in the text delimits a string, which makes the next check exact);
- a member the event does not know, or a duplicate member: the number of `"` in the bytes must
  be exactly what the decoded fields account for (2 per key, 2 per string value);
- anything msgspec refuses (not JSON, NaN, a byte order mark, invalid UTF-8, a wrong JSON type:
  e.g. `"12"` or `1.0` for an integer, which pydantic's lax mode would coerce);
- a timestamp or amount outside the canonical string patterns the JSON Schemas publish;
- any value a model validator refuses.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from itertools import compress, repeat
from operator import is_not
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import msgspec
from pydantic import AwareDatetime, WithJsonSchema
from pydantic.fields import FieldInfo

from schemas.events import MODELS, EventBase

_UNSET = msgspec.UNSET
_TYPE = frozenset({"type"})
_UNSETS = repeat(_UNSET)
astuple = msgspec.structs.astuple
_set = object.__setattr__


class Unsupported(TypeError):
    """A model uses something the derivation cannot mirror exactly: it takes the full path."""


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    default: Any  # used when the member is absent (`_REQUIRED` when it may not be)
    convert: Callable[[str], Any] | None  # str -> the model's value (timestamps, amounts)
    check: Callable[[Any], bool] | None  # extra constraint on the converted value
    validators: tuple[Callable[[Any], Any], ...]  # the model's `after` field validators


@dataclass(frozen=True, slots=True)
class _Plan:
    model: type[EventBase]
    tag: str
    names: tuple[str, ...]  # the Struct's fields, in order (the model's, without `type`)
    fills: tuple[dict[Any, Any], ...]  # per Struct field: {UNSET: the model's default}
    template: dict[str, Any]  # every model field in the model's order: defaults and the tag
    #: (index, convert, check, validators) of the fields needing Python work when present
    special: tuple[tuple[int, Any, Any, tuple[Callable[[Any], Any], ...]], ...]
    model_validators: tuple[Callable[[Any], Any], ...]
    #: the model's `fields_set` per presence mask (at most 2**optional fields)
    fields_sets: dict[tuple[bool, ...], frozenset[str]]


_REQUIRED = object()
#: Model settings that would change what pydantic returns for the inputs the fast path takes:
#: with any of them set (to anything but its default), the model goes the full path.
_CONFIG_DEFAULTS: dict[str, Any] = {
    "extra": "ignore",
    "strict": None,
    "str_strip_whitespace": None,
    "str_to_lower": None,
    "str_to_upper": None,
    "str_min_length": None,
    "str_max_length": None,
    "coerce_numbers_to_str": None,
    "validate_default": None,
    "use_enum_values": None,
    "from_attributes": None,
    "populate_by_name": None,
    "validate_by_alias": None,
    "validate_by_name": None,
    "alias_generator": None,
    "regex_engine": None,
    "val_json_bytes": None,
}


def _published_pattern(metadata: list[Any]) -> str | None:
    """The `pattern` a field's `WithJsonSchema` publishes (the canonical string form)."""
    for item in metadata:
        if isinstance(item, WithJsonSchema) and item.json_schema:
            pattern = item.json_schema.get("pattern")
            if isinstance(pattern, str):
                return pattern
    return None


def _meta(metadata: list[Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """msgspec `Meta` keywords of pydantic constraints, and the decimal-only constraints."""
    meta: dict[str, Any] = {}
    decimal: dict[str, Any] = {}
    for item in metadata:
        if isinstance(item, WithJsonSchema):
            continue  # documentation only: changes no validation
        if isinstance(item, annotated_types.MinLen):
            meta["min_length"] = item.min_length
        elif isinstance(item, annotated_types.MaxLen):
            meta["max_length"] = item.max_length
        elif isinstance(item, annotated_types.Ge):
            meta["ge"] = item.ge
        elif isinstance(item, annotated_types.Le):
            meta["le"] = item.le
        elif isinstance(item, annotated_types.Gt):
            meta["gt"] = item.gt
        elif isinstance(item, annotated_types.Lt):
            meta["lt"] = item.lt
        elif type(item).__name__ == "_PydanticGeneralMetadata":
            for key, value in vars(item).items():
                if key == "pattern":
                    meta["pattern"] = value
                elif key in {"max_digits", "decimal_places"}:
                    decimal[key] = value
                else:
                    raise Unsupported(f"constraint {key}")
        else:
            raise Unsupported(f"metadata {item!r}")
    return meta, decimal


def _fits_decimal(constraints: dict[str, Any], meta: dict[str, Any]) -> Callable[[Any], bool]:
    """A conservative check of a decimal's bounds: counting digits as written (unnormalised)
    can only say no where pydantic says yes, which sends the message the full path."""
    max_digits = constraints.get("max_digits")
    places = constraints.get("decimal_places")
    bounds = {k: meta[k] for k in ("ge", "le", "gt", "lt") if k in meta}

    def check(value: Decimal) -> bool:
        if not value.is_finite():
            return False
        sign, digits, exponent = value.as_tuple()
        assert isinstance(exponent, int)
        decimals = max(-exponent, 0)
        total = max(len(digits), decimals) + max(exponent, 0)
        if places is not None and decimals > places:
            return False
        if max_digits is not None and total > max_digits:
            return False
        if "ge" in bounds and not value >= bounds["ge"]:
            return False
        if "le" in bounds and not value <= bounds["le"]:
            return False
        if "gt" in bounds and not value > bounds["gt"]:
            return False
        return not ("lt" in bounds and not value < bounds["lt"])

    return check


def _aware(text: str) -> datetime:
    """An RFC 3339 timestamp (already matched against the published pattern) with its offset."""
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError("no offset")
    return value


def _field_type(info: FieldInfo) -> tuple[Any, Callable[[str], Any] | None, Any]:
    """(msgspec type, converter, extra check) mirroring one pydantic field exactly or stricter."""
    annotation = info.annotation
    nullable = False
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise Unsupported(f"union {annotation}")
        nullable = len(args) < len(get_args(annotation))
        annotation = args[0]
    metadata = list(info.metadata)
    if get_origin(annotation) is Annotated:  # e.g. `Id | None`: the constraints sit inside
        annotation, *inner = get_args(annotation)
        for item in inner:
            metadata.extend(item.metadata if isinstance(item, FieldInfo) else [item])
    meta, decimal = _meta(metadata)
    convert: Callable[[str], Any] | None = None
    check: Callable[[Any], bool] | None = None
    base: Any
    if annotation is str or annotation is int:
        base = annotation
    elif annotation is bool:
        base = bool
        if meta:
            raise Unsupported("constrained bool")
    elif get_origin(annotation) is Literal:
        if not all(isinstance(a, str) for a in get_args(annotation)) or meta:
            raise Unsupported(f"literal {annotation}")
        base = annotation
    elif annotation is AwareDatetime:
        pattern = _published_pattern(metadata)
        if pattern is None or meta:
            raise Unsupported("timestamp without a published pattern")
        base, meta, convert = str, {"pattern": pattern}, _aware
    elif annotation is Decimal:
        pattern = _published_pattern(metadata)
        if pattern is None:
            raise Unsupported("decimal without a published pattern")
        check = _fits_decimal(decimal, meta)
        base, meta, convert = str, {"pattern": pattern}, Decimal
    else:
        raise Unsupported(f"type {annotation}")
    if decimal and annotation is not Decimal:
        raise Unsupported("decimal constraints on a non-decimal")
    typ = Annotated[base, msgspec.Meta(**meta)] if meta else base
    if nullable:
        typ = typ | None
    return typ, convert, check


def _validators(model: type[EventBase]) -> tuple[dict[str, list[Any]], list[Any]]:
    """The model's field and model validators: all must be plain `after` ones without info."""
    decorators = model.__pydantic_decorators__
    if decorators.validators or decorators.root_validators:
        raise Unsupported("v1-style validators")
    by_field: dict[str, list[Any]] = {}
    for dec in decorators.field_validators.values():
        if dec.info.mode != "after" or _takes_info(dec.func):
            raise Unsupported(f"field validator {dec.cls_var_name}")
        fields = dec.info.fields
        if "*" in fields:
            fields = tuple(model.model_fields)
        for name in fields:
            by_field.setdefault(name, []).append(dec.func)
    models = []
    for dec in decorators.model_validators.values():
        if dec.info.mode != "after" or _takes_info(dec.func):
            raise Unsupported(f"model validator {dec.cls_var_name}")
        models.append(dec.func)
    return by_field, models


def _takes_info(func: Any) -> bool:
    """True when a validator asks for more than its value (or self): pydantic's
    ValidationInfo, which the fast path cannot supply. Field validators here are bound
    classmethods (value only), model validators plain functions (self only)."""
    return len(inspect.signature(func).parameters) != 1


def plan_for(model: type[EventBase]) -> tuple[type[msgspec.Struct], _Plan]:
    """The msgspec Struct of one event model and how to turn it into the model instance.

    Raises `Unsupported` when the model uses a type, constraint, setting or validator whose
    pydantic behaviour the fast path cannot reproduce exactly.
    """
    for key, default in _CONFIG_DEFAULTS.items():
        if model.model_config.get(key, default) != default:
            raise Unsupported(f"model_config {key}")
    type_field = model.model_fields.get("type")
    tag_args = get_args(type_field.annotation) if type_field else ()
    if type_field is None or len(tag_args) != 1 or not isinstance(tag_args[0], str):
        raise Unsupported("no single-literal `type` tag")
    tag = tag_args[0]
    by_field, model_validators = _validators(model)
    struct_fields: list[tuple[str, Any, Any]] = []
    plan_fields: list[_Field] = []
    for name, info in model.model_fields.items():
        if info.alias or info.validation_alias:
            raise Unsupported(f"alias on {name}")
        if name == "type":
            plan_fields.append(_Field("type", tag, None, None, ()))
            continue
        typ, convert, check = _field_type(info)
        validators = tuple(by_field.pop(name, ()))
        if info.is_required():
            struct_fields.append((name, typ, msgspec.NODEFAULT))
            default: Any = _REQUIRED
        else:
            if info.default_factory is not None:
                raise Unsupported(f"default_factory on {name}")
            struct_fields.append((name, typ | msgspec.UnsetType, _UNSET))
            default = info.default
        plan_fields.append(_Field(name, default, convert, check, validators))
    if by_field:
        raise Unsupported(f"validators of unknown fields {sorted(by_field)}")
    struct = msgspec.defstruct(
        f"Fast{model.__name__}",
        [(n, t) if d is msgspec.NODEFAULT else (n, t, d) for n, t, d in struct_fields],
        tag_field="type",
        tag=tag,
        kw_only=True,
        forbid_unknown_fields=True,
    )
    template = {f.name: (None if f.default is _REQUIRED else f.default) for f in plan_fields}
    own = [f for f in plan_fields if f.name != "type"]  # the Struct's fields, in order
    fills = tuple({} if f.default is _REQUIRED else {_UNSET: f.default} for f in own)
    special = tuple(
        (i, f.convert, f.check, f.validators)
        for i, f in enumerate(own)
        if f.convert is not None or f.validators
    )
    names = tuple(f.name for f in own)
    plan = _Plan(model, tag, names, fills, template, special, tuple(model_validators), {})
    return struct, plan


def _plans() -> tuple[dict[type, _Plan], dict[str, str]]:
    plans: dict[type, _Plan] = {}
    skipped: dict[str, str] = {}
    for kind, model in MODELS.items():
        try:
            struct, plan = plan_for(model)
        except Unsupported as exc:
            skipped[kind] = str(exc)
            continue
        plans[struct] = plan
    return plans, skipped


_PLANS, SKIPPED = _plans()
#: msgspec types per event type (tests compare them with the models and the JSON Schemas).
STRUCTS: dict[str, type[msgspec.Struct]] = {plan.tag: s for s, plan in _PLANS.items()}
_DECODER = (
    msgspec.json.Decoder(Union[tuple(_PLANS)], strict=True)  # noqa: UP007
    if _PLANS
    else None
)


def decode(value: bytes) -> EventBase | None:
    """The event in `value` exactly as the full path would return it, or None when not sure.

    None is never a verdict: the caller runs the full path, which gives the reason.
    """
    if _DECODER is None or b"\\" in value:
        return None
    try:
        struct = _DECODER.decode(value)
        return _build(struct, value.count(b'"'))
    except Exception:  # not sure (msgspec refused, a validator refused): the full path decides
        return None


def _build(struct: Any, quotes: int) -> EventBase | None:
    """The model instance pydantic would build from these fields. Every step is a C call
    except the few conversions and validators: a Python loop over the fields cost more than
    msgspec's whole decode."""
    plan = _PLANS[type(struct)]
    values = astuple(struct)
    mask = tuple(map(is_not, values, _UNSETS))  # which members the text has
    # 2 quotes per key ("type" included) and 2 per string value: more in the text means a
    # repeated member (an unknown one is refused by the decoder)
    if 4 + 2 * mask.count(True) + 2 * list(map(type, values)).count(str) != quotes:
        return None
    filled = list(map(dict.get, plan.fills, values, values))  # absent -> the model's default
    for i, convert, check, validators in plan.special:
        if mask[i]:
            value = filled[i]
            if convert is not None:
                value = convert(value)
                if check is not None and not check(value):
                    return None
            for validator in validators:
                value = validator(value)
            filled[i] = value
    data = plan.template.copy()
    data.update(zip(plan.names, filled))
    fields_set = plan.fields_sets.get(mask)
    if fields_set is None:
        fields_set = frozenset(compress(plan.names, mask)) | _TYPE
        plan.fields_sets[mask] = fields_set
    event = plan.model.__new__(plan.model)
    _set(event, "__dict__", data)
    _set(event, "__pydantic_fields_set__", set(fields_set))
    _set(event, "__pydantic_extra__", None)
    _set(event, "__pydantic_private__", None)
    for validator in plan.model_validators:
        validator(event)
    return event
