"""The timeline: each user's events in event-time order, known before the replay, so that when an
update is made the judge already knows the user's next event."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Iterable

from schemas import PlayEvent



@dataclass
class Timeline:
    events: list[PlayEvent]  # first copy of each (user_id, event_id), in arrival order
    successor: dict[tuple[str, str], int]  # (user_id, event_id) -> index in `events` of the user's next event
    messages: int  # what the replay will read: events, duplicates and undecodable messages
    duplicates: int
    unreadable: int
    out_of_order: int  # events older than an earlier event of the same user

    def next_event(self, event: PlayEvent) -> PlayEvent | None:
        index = self.successor.get((event.user_id, event.event_id))
        return None if index is None else self.events[index]

    def summary(self) -> dict:
        times = [event.ts for event in self.events]
        return {
            "messages": self.messages,
            "events": len(self.events),
            "users": len({event.user_id for event in self.events}),
            "duplicates": self.duplicates,
            "unreadable": self.unreadable,
            "out_of_order": self.out_of_order,
            "first_ts": min(times),
            "last_ts": max(times),
        }


def build_timeline(events: Iterable[PlayEvent]) -> Timeline:
    kept: list[PlayEvent] = []
    by_user: dict[str, list[int]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    newest: dict[str, int] = {}
    duplicates = out_of_order = 0
    for event in events:
        key = (event.user_id, event.event_id)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        if event.ts < newest.get(event.user_id, event.ts):
            out_of_order += 1
        newest[event.user_id] = max(event.ts, newest.get(event.user_id, event.ts))
        by_user[event.user_id].append(len(kept))
        kept.append(event)
    successor = {}
    for indices in by_user.values():
        indices.sort(key=lambda i: kept[i].ts)  # stable: equal times keep arrival order, as the state does
        for earlier, later in zip(indices, indices[1:]):
            successor[(kept[earlier].user_id, kept[earlier].event_id)] = later
    return Timeline(kept, successor, len(kept) + duplicates, duplicates, 0, out_of_order)
