"""SubjectState's copies are derived from its fields: a field added later is kept by every copy."""
from __future__ import annotations

import dataclasses

import pytest

from plangate.engine import SubjectState
from plangate.engine._state import compiled_replace, compiled_with


def _distinct(cls, **given):
    """An instance whose every field holds a value of its own (none is its default)."""
    values = {}
    for i, f in enumerate(dataclasses.fields(cls)):
        values[f.name] = given.get(f.name, f"{f.name}-{i}" if "str" in str(f.type) else float(1000 + i))
    return cls(**values)


class TestWith:
    @pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(SubjectState)])
    def test_changes_one_field_and_keeps_every_other(self, name):
        state = _distinct(SubjectState)
        new_value = "changed" if isinstance(getattr(state, name), str) else 1.5
        assert state.with_(**{name: new_value}) == dataclasses.replace(state, **{name: new_value})

    def test_an_unknown_field_is_refused(self):
        with pytest.raises(TypeError, match="no field 'stauts'"):
            SubjectState("s", "free").with_(stauts="paid")

    def test_a_field_added_with_a_default_survives_a_copy(self):
        """The copy is compiled from whatever the declaration holds: a later field needs no edit here."""
        @dataclasses.dataclass(frozen=True, slots=True)
        class Grown:
            subject: str
            status: str
            trial_end: float | None = None

        Grown.with_ = compiled_with(Grown)
        grown = Grown("s", "trial", trial_end=42.0)
        assert grown.with_(status="paid") == Grown("s", "paid", 42.0)


class TestReplace:
    def test_changes_the_named_fields_and_keeps_every_other(self):
        state = _distinct(SubjectState)
        entered = compiled_replace(SubjectState, "status", "since")
        assert entered(state, "paid", 5.0) == dataclasses.replace(state, status="paid", since=5.0)

    def test_an_unknown_field_is_refused_when_compiled(self):
        with pytest.raises(TypeError, match="no field 'stauts'"):
            compiled_replace(SubjectState, "stauts")
