import time
from collections import Counter, defaultdict

import numpy as np
import pytest

from model.playlogs.synth import (
    DAY_MS,
    DEVICES,
    KIDS_GENRES,
    WORLD_START_MS,
    generate_catalogue,
    generate_world,
    user_modes,
)
from schemas.codec import decode_play_event, encode_play_event

ACTIONS = {"discover", "continue", "rewatch", "trailer"}
SESSION_GAP_MS = 30 * 60_000


@pytest.fixture(scope="module")
def world():
    started = time.perf_counter()
    events = generate_world()
    return events, time.perf_counter() - started


@pytest.fixture(scope="module")
def events(world):
    return world[0]


@pytest.fixture(scope="module")
def catalogue():
    return {title.item_id: title for title in generate_catalogue()}


@pytest.fixture(scope="module")
def sequences(events):
    by_user = defaultdict(list)
    for event in events:
        by_user[event.user_id].append(event)
    return by_user


def test_default_world_size_and_speed(world):
    events, seconds = world
    assert 60_000 <= len(events) <= 100_000
    assert len({event.user_id for event in events}) >= 990
    assert seconds < 15  # about 1.5 s here; generous for a loaded machine


def test_same_seed_same_world_other_seed_other_world():
    first = generate_world(seed=3, n_users=40, n_titles=200, days=20)
    assert first == generate_world(seed=3, n_users=40, n_titles=200, days=20)
    assert first != generate_world(seed=4, n_users=40, n_titles=200, days=20)


def test_a_user_does_not_depend_on_how_many_others_there_are():
    small = generate_world(seed=5, n_users=10, n_titles=200, days=20)
    large = generate_world(seed=5, n_users=30, n_titles=200, days=20)
    assert small == [event for event in large if int(event.user_id.split("-")[1]) < 10]


def test_every_event_is_valid_under_the_codec(events):
    for event in events:
        assert decode_play_event(encode_play_event(event, "msgpack"), "msgpack") == event
    assert decode_play_event(encode_play_event(events[0], "json"), "json") == events[0]


def test_log_order_ids_and_time_bounds(events):
    assert events == sorted(events, key=lambda event: (event.ts, event.event_id))
    assert len({event.event_id for event in events}) == len(events)
    assert all(event.event_id.startswith(event.user_id + "-") for event in events)
    assert WORLD_START_MS <= events[0].ts and events[-1].ts < WORLD_START_MS + 60 * DAY_MS
    assert all(event.release_ts <= event.ts for event in events)  # nothing plays before release


def test_actions_kinds_devices_mix(events):
    actions = Counter(event.action for event in events)
    assert set(actions) == ACTIONS
    assert all(count / len(events) > 0.05 for count in actions.values())
    kinds = Counter(event.kind for event in events)
    assert 0.2 < kinds["movie"] / len(events) < 0.8
    assert set(Counter(event.device for event in events)) == set(DEVICES)


def test_catalogue(catalogue):
    titles = list(catalogue.values())
    assert len(titles) == 800
    assert all(1 <= len(title.genres) <= 3 for title in titles)
    assert 12 <= len({genre for title in titles for genre in title.genres}) <= 16
    new = [title for title in titles if title.release_ts >= WORLD_START_MS]
    old = [title for title in titles if title.release_ts < WORLD_START_MS - 10 * 365 * DAY_MS]
    assert 0.05 < len(new) / len(titles) < 0.2 and len(old) > 0.2 * len(titles)
    popularity = sorted((title.popularity for title in titles), reverse=True)
    assert sum(popularity[:80]) > 0.4 * sum(popularity)  # the top 10% draw a large share
    assert all(set(catalogue[other].genres) & set(title.genres) for title in titles for other in title.similar)


def test_watch_times_follow_the_action(events, catalogue):
    for event in events:
        title = catalogue[event.item_id]
        assert event.genres == title.genres and event.kind == title.kind
        assert event.release_ts == title.release_ts
        if event.action == "trailer":
            assert 45 <= event.duration_s < 180
        elif event.action == "continue":
            assert 0.85 * title.minutes * 60 - 1 <= event.duration_s <= title.minutes * 60
        else:
            assert 60 <= event.duration_s <= title.minutes * 60
    abandoned = [e for e in events if e.action == "discover" and e.duration_s < 0.8 * catalogue[e.item_id].minutes * 60]
    discovered = [e for e in events if e.action == "discover"]
    assert 0.05 < len(abandoned) / len(discovered) < 0.4


def test_shows_are_continued_in_order_and_movies_never(sequences, catalogue):
    for plays in sequences.values():
        episodes_played = Counter()
        for event in plays:
            title = catalogue[event.item_id]
            if event.action == "discover":
                assert episodes_played[event.item_id] == 0  # a title is discovered once
                episodes_played[event.item_id] = 1
            elif event.action == "continue":
                assert title.kind == "show"
                assert episodes_played[event.item_id] >= 1  # started before it is continued
                episodes_played[event.item_id] += 1
                assert episodes_played[event.item_id] <= title.episodes
            elif event.action == "rewatch":
                assert episodes_played[event.item_id] >= 1


def test_sessions_gaps_and_daily_rhythm(sequences):
    within, between, session_hours = 0, 0, Counter()
    for plays in sequences.values():
        session_hours[plays[0].ts % DAY_MS // 3_600_000] += 1
        for previous, event in zip(plays, plays[1:]):
            assert event.ts >= previous.ts + previous.duration_s * 1000 - 1  # plays never overlap
            idle_ms = event.ts - previous.ts - previous.duration_s * 1000
            if idle_ms < SESSION_GAP_MS:
                within += 1
            else:
                between += 1
                session_hours[event.ts % DAY_MS // 3_600_000] += 1
                assert idle_ms >= SESSION_GAP_MS
    assert within > between > 0.2 * within  # several plays per session on average
    evening = sum(session_hours[hour] for hour in range(19, 23))
    night = sum(session_hours[hour] for hour in range(2, 6))
    assert evening > 5 * night


def test_kids_profiles_watch_kids_titles_on_tablets(sequences):
    kids_users = [plays for plays in sequences.values() if any("Kids" in e.genres for e in plays)]
    assert 0.03 * len(sequences) < len(kids_users) < 0.15 * len(sequences)
    for plays in kids_users:
        assert all("Kids" in event.genres for event in plays)
        assert all(set(event.genres) <= set(KIDS_GENRES) | {"Comedy", "Adventure"} for event in plays)
    devices = Counter(event.device for plays in kids_users for event in plays)
    assert devices["tablet"] > 0.6 * sum(devices.values())


def _next_given_previous(sequences, label):
    pairs = defaultdict(Counter)
    for plays in sequences.values():
        for previous, event in zip(plays, plays[1:]):
            pairs[label(previous)][label(event)] += 1
    return pairs


def _total_variation(counts: Counter, marginal: Counter) -> float:
    total, marginal_total = sum(counts.values()), sum(marginal.values())
    labels = set(counts) | set(marginal)
    return sum(abs(counts[x] / total - marginal[x] / marginal_total) for x in labels) / 2


def test_next_action_is_predictable_from_the_previous_one(events, sequences):
    marginal = Counter(event.action for event in events)
    after = _next_given_previous(sequences, lambda event: event.action)
    for action in ACTIONS:
        assert _total_variation(after[action], marginal) > 0.15, action
    # Still not deterministic: every action is followed by at least two different ones.
    assert all(sum(1 for n in after[action].values() if n > 0.05 * sum(after[action].values())) >= 2 for action in ACTIONS)


def test_next_genre_kind_and_recency_follow_the_history(events, sequences):
    def share_genre(previous, event):
        return bool(set(previous.genres) & set(event.genres))

    consecutive = [(p, e) for plays in sequences.values() for p, e in zip(plays, plays[1:])]
    # Pairs of the same positions but from unrelated users: what chance alone gives.
    users = list(sequences.values())
    unrelated = [(p, e) for a, b in zip(users, users[1:] + users[:1]) for p, e in zip(a, b[1:])]
    same_genre = sum(share_genre(p, e) for p, e in consecutive) / len(consecutive)
    same_genre_by_chance = sum(share_genre(p, e) for p, e in unrelated) / len(unrelated)
    assert same_genre > same_genre_by_chance + 0.3

    kinds = _next_given_previous(sequences, lambda event: event.kind)
    assert _total_variation(kinds["movie"], kinds["show"]) > 0.3

    def is_new(event):
        return event.ts - event.release_ts < 60 * DAY_MS

    recency = _next_given_previous(sequences, is_new)
    p_new_after_new = recency[True][True] / sum(recency[True].values())
    p_new_after_old = recency[False][True] / sum(recency[False].values())
    assert p_new_after_new > 3 * p_new_after_old


def test_the_next_item_needs_more_than_recency_or_popularity(sequences):
    # The evaluation target is each user's last play: the user's own history ranked by recency
    # must often find it (continue watching), yet miss a good share that a model must predict.
    popular = [item for item, _ in Counter(e.item_id for p in sequences.values() for e in p).most_common(10)]
    found_by_recency = found_by_popularity = unseen = 0
    for plays in sequences.values():
        target, history = plays[-1], plays[:-1]
        recent = list(dict.fromkeys(event.item_id for event in reversed(history)))
        found_by_recency += target.item_id in recent[:10]
        found_by_popularity += target.item_id in popular
        unseen += target.item_id not in recent
    users = len(sequences)
    assert 0.4 < found_by_recency / users < 0.85
    assert found_by_popularity / users < 0.3
    assert unseen / users > 0.15


def test_user_modes_are_the_profiles_the_world_was_made_from():
    modes = user_modes(seed=0, n_users=40)
    events = generate_world(seed=0, n_users=40)
    assert {event.user_id for event in events} <= set(modes) and len(modes) == 40
    kids = {user for user, weights in modes.items() if set(weights) == {"kids"}}
    assert kids
    for event in events:
        if event.user_id in kids:
            assert "Kids" in event.genres  # a kids profile only plays kids titles
    binge_fans = [user for user, weights in modes.items() if max(weights, key=weights.get) == "binge"]
    continues = Counter(event.user_id for event in events if event.action == "continue")
    plays = Counter(event.user_id for event in events)
    others = [user for user in modes if user not in binge_fans and user not in kids and plays[user]]
    binge_share = np.mean([continues[u] / plays[u] for u in binge_fans if plays[u]])
    assert binge_share > np.mean([continues[u] / plays[u] for u in others])
