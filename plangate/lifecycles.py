"""The lifecycle corpus (scenarios/lifecycles/<name>/): Stripe events as Stripe sends them, and a story that
replays them in delivery order and says where the subject must end. `plangate test` runs the stories; this
module reads the same files for whatever else plays them into a running gate (`plangate stripe-simulate`, the
tests that deliver them in order and shuffled)."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import yaml

STORY = "story.yaml"
DEFAULT_CORPUS = Path("scenarios") / "lifecycles"
# Every number from here up in an event is a time (amounts are cents, far below): the times a replay shifts.
_FIRST_TIME, _LAST_TIME = 1_000_000_000, 10_000_000_000


class CorpusError(Exception):
    """A lifecycle folder that cannot be read (a missing file, a story without an end)."""


@dataclass(frozen=True)
class Lifecycle:
    name: str                   # the folder's name
    title: str                  # the story's name
    subject: str
    events: tuple[dict, ...]    # in delivery order, as the story replays them
    expects: tuple[dict | None, ...]    # what the story expects after each event, if anything
    ends_at: float              # the story's last moment
    ends: dict                  # what the story expects then (status, ...)
    tag: str                    # the part of every Stripe id that is this lifecycle's

    def shifted(self, offset: int, tag: str, subject: str) -> list[dict]:
        """The events moved in time by offset seconds, with this lifecycle's ids and subject renamed: a replay
        against a gate that runs on the real clock and may have seen the corpus before."""
        text = json.dumps(list(self.events))
        text = text.replace(self.tag, tag).replace(json.dumps(self.subject), json.dumps(subject))
        return [_shift(event, offset) for event in json.loads(text)]


def _shift(value, offset: int):
    if isinstance(value, dict):
        return {k: _shift(v, offset) for k, v in value.items()}
    if isinstance(value, list):
        return [_shift(v, offset) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and _FIRST_TIME <= value < _LAST_TIME:
        return value + offset
    return value


def load(folder: Path) -> Lifecycle:
    try:
        story = yaml.safe_load((folder / STORY).read_text(encoding="utf-8"))
        steps = story["steps"]
        events = tuple(json.loads((folder / s["event"]).read_text(encoding="utf-8")) for s in steps if "event" in s)
        expects = tuple(s.get("expect") for s in steps if "event" in s)
        last = steps[-1]
        ends_at = datetime.fromisoformat(last["until"]).timestamp()
        ends = dict(last["expect"])
    except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as exc:
        raise CorpusError(f"{folder}: not a lifecycle ({type(exc).__name__}: {exc}); its {STORY} replays "
                          "event files and ends with `until:` and `expect:`") from None
    customer = next((e["data"]["object"]["id"] for e in events if e["type"] == "customer.created"), "")
    match = re.fullmatch(r"cus_([A-Za-z0-9]+)", customer)
    if not match:
        raise CorpusError(f"{folder}: its first customer.created names no customer id of the form cus_<tag>")
    return Lifecycle(folder.name, story["name"], story["subject"], events, expects, ends_at, ends, match.group(1))


def corpus(root: Path = DEFAULT_CORPUS) -> list[Lifecycle]:
    """Every lifecycle under root, by name."""
    folders = sorted(p for p in root.iterdir() if (p / STORY).is_file()) if root.is_dir() else []
    if not folders:
        raise CorpusError(f"{root}: no lifecycles (folders with a {STORY}) here")
    return [load(folder) for folder in folders]
