"""A subject's state: the small value every decision and transition starts from."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any
from collections.abc import Callable

from ._subscriptions import Subscription, followed


@dataclass(frozen=True, slots=True)
class SubjectState:
    """Where one subject stands. Times are Unix seconds (floats)."""

    subject: str
    status: str
    tier: str | None = None
    since: float = 0.0
    timer_due: float | None = None       # when the status's timer (expires_after or expires_at) runs out
    period_start: float | None = None    # the Stripe billing period, when subscribed
    period_end: float | None = None
    plan_version: str = ""
    paid_through: float | None = None    # end of the last period Stripe reported paid: grace lasts at least until then
    trial_end: float | None = None       # the followed subscription's dates a status timer may be anchored to
    cancel_at: float | None = None
    subscriptions: tuple[Subscription, ...] = ()   # every Stripe subscription of the subject the fold has seen
    quantity: int | None = None          # the followed subscription's quantity of its tier's item (seats)
    addons: tuple[tuple[str, int], ...] = ()   # add-ons its live subscriptions buy: (name, quantity), by name
    traits: tuple[tuple[str, int], ...] = ()   # numbers set on the subject through the API (a quota per_unit)
    # When Stripe moved the subject into its tier (None: before the gate recorded it): the tier's credits carry
    # over only from windows that began since.
    tier_since: float | None = None

    def trait(self, name: str) -> int | None:
        for key, value in self.traits:
            if key == name:
                return value
        return None

    @property
    def follows(self) -> Subscription | None:
        """The subscription the status follows (engine._subscriptions says which)."""
        return followed(self.subscriptions)

    def with_(self, **changes: Any) -> SubjectState:
        """A copy with some fields changed, as dataclasses.replace. (Replaced below by the same copy compiled
        from the fields: every transition makes one or more.)"""
        return replace(self, **changes)


def compiled_with(cls: type) -> Callable[..., Any]:
    """cls.with_(**changes), compiled from the dataclass's fields as dataclasses compiles __init__: one call of
    the constructor with each field's new or current value. dataclasses.replace looks the fields up on every
    call (several times this one's cost); a copy written out by hand would lose a field added later without
    a word."""
    values = ", ".join(f"get({name!r}, self.{name})" for name in _names(cls))
    return _compiled(cls, "with_", "self, **changes", [
        "get = changes.pop",
        f"new = cls({values})",
        "if changes:",
        f"    raise TypeError('{cls.__name__} has no field ' + ', '.join(map(repr, changes)))",
        "return new"])


def compiled_replace(cls: type, *changed: str) -> Callable[..., Any]:
    """f(obj, *new values of `changed`): a copy of obj with those fields changed, compiled from the fields
    like with_, for a copy made on every transition (keyword arguments cost more than positions)."""
    unknown = set(changed) - set(_names(cls))
    if unknown:
        raise TypeError(f"{cls.__name__} has no field {', '.join(map(repr, sorted(unknown)))}")
    values = ", ".join(name if name in changed else f"self.{name}" for name in _names(cls))
    return _compiled(cls, "replaced", ", ".join(("self", *changed)), [f"return cls({values})"])


def _names(cls: type) -> list[str]:
    return [f.name for f in fields(cls)]


def _compiled(cls: type, name: str, params: str, body: list[str]) -> Callable[..., Any]:
    source = f"def {name}({params}):\n" + "".join(f"    {line}\n" for line in body)
    scope: dict[str, Any] = {"cls": cls}
    exec(compile(source, f"<{cls.__name__}.{name}>", "exec"), scope)
    function = scope[name]
    function.__qualname__ = f"{cls.__name__}.{name}"
    function.__doc__ = f"compiled from the fields of {cls.__name__}"
    return function


SubjectState.with_ = compiled_with(SubjectState)     # type: ignore[method-assign]
