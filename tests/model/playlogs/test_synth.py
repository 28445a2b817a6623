import hashlib
import math
import random
import time
from collections import Counter, defaultdict
from dataclasses import astuple, replace
from itertools import accumulate

import numpy as np
import pytest

from model.playlogs.files import read_catalogue, read_log
from model.playlogs.synth import (
    DEVICES,
    HYPE_DECAY_DAYS,
    MAX_DAYS,
    NEW_RELEASE_WINDOW_MS,
    _Catalogue,
    generate_world,
    generate_world_and_catalogue,
    moved_to_end_before,
    user_modes,
)
from model.playlogs.synth_titles import (
    DAY_MS,
    GENRE_WEIGHTS,
    GENRES,
    KIDS_GENRES,
    SIMILAR_TITLES,
    WORLD_START_MS,
    _similar_titles,
    generate_catalogue,
)
from schemas.codec import decode_play_event, encode_play_event
from stream.cli import main

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


# ---------------------------------------------------------------------------------------------
# Worlds made before the generator scaled stay the same; worlds of 20,000 titles and more
# ---------------------------------------------------------------------------------------------

def _digest(rows) -> str:
    """SHA-256 of the rows' field values (repr prints floats exactly: equal digests, equal values)."""
    return hashlib.sha256("\n".join(repr(astuple(row)) for row in rows).encode()).hexdigest()


# Recorded from the generator of commit d91d219, whose similar titles and new releases were drawn
# with rng.choices on lists filtered per draw (quadratic in the titles); every benchmark recorded
# since uses worlds that it made. (seed, n_users, n_titles, days) -> digest of the events.
FIRST_GENERATOR_WORLDS = {
    (3, 60, 120, 20): "aa818b20c45eb424759fd56995fb2eabe20206352f1903c16ed544c2cf28c51b",
    (7, 100, 2000, 30): "7d3ad64c38d8427913f50cc0283b9c53bd47a19f17dc9716eeafd98f372c0d3a",
}
FIRST_GENERATOR_CATALOGUE_7_2000_30 = "abd81babe3a9f7ae81adfc994d392a6571af1943aa93e70bf188cce422fa2ad5"


@pytest.mark.parametrize("seed, n_users, n_titles, days", list(FIRST_GENERATOR_WORLDS))
def test_a_world_is_the_one_the_first_generator_made(seed, n_users, n_titles, days):
    events = generate_world(seed=seed, n_users=n_users, n_titles=n_titles, days=days)
    assert _digest(events) == FIRST_GENERATOR_WORLDS[seed, n_users, n_titles, days]


def test_a_catalogue_is_the_one_the_first_generator_made():
    assert _digest(generate_catalogue(seed=7, n_titles=2000, days=30)) == FIRST_GENERATOR_CATALOGUE_7_2000_30


def _similar_as_first_drawn(rng: random.Random, title, titles) -> tuple[str, ...]:
    """The first generator's similar titles: rng.choices on the group, less each pick, rebuilt per draw."""
    candidates = [
        other
        for other in titles
        if other is not title and other.genres[0] == title.genres[0] and other.for_kids == title.for_kids
    ]
    chosen = []
    while candidates and len(chosen) < SIMILAR_TITLES:
        pick = rng.choices(candidates, [other.popularity for other in candidates])[0]
        candidates.remove(pick)
        chosen.append(pick)
    return tuple(other.item_id for other in chosen)


@pytest.mark.parametrize("seed", [1, 2])
def test_similar_titles_are_drawn_as_rng_choices_drew_them_from_filtered_lists(seed):
    titles = generate_catalogue(seed=seed, n_titles=900, days=30)
    # A few titles far more popular than the rest put large holes among the cumulative popularity.
    titles = [replace(t, popularity=t.popularity * 1e4) if n % 97 == 0 else t for n, t in enumerate(titles)]
    first, scaled = random.Random(seed), random.Random(seed)
    expected = [_similar_as_first_drawn(first, title, titles) for title in titles]
    assert _similar_titles(scaled, titles) == expected
    assert first.random() == scaled.random()  # the same number of draws


def test_new_releases_are_drawn_as_rng_choices_drew_them_from_the_list_of_them():
    titles = generate_catalogue(seed=2, n_titles=3000, days=60)
    catalogue = _Catalogue(titles)
    recent = [title for title in titles if title.release_ts > WORLD_START_MS - NEW_RELEASE_WINDOW_MS]
    probe = random.Random(5)
    drawn = 0
    for session in range(200):
        kids = probe.random() < 0.3
        now = WORLD_START_MS + probe.randrange(60 * DAY_MS)
        seen = {title.item_id for title in probe.sample(recent, 40)}
        # The first generator's list, hype and draws, as it wrote them.
        expected = [
            (title, title.popularity * math.exp(-(now - title.release_ts) / DAY_MS / HYPE_DECAY_DAYS))
            for title in recent
            if title.for_kids == kids
            and now - NEW_RELEASE_WINDOW_MS <= title.release_ts <= now
            and title.item_id not in seen
        ]
        releases = catalogue.new_releases(kids, now, seen)
        assert len(releases) == len(expected)
        first, scaled = random.Random(session), random.Random(session)
        for _ in range(min(3, len(expected))):
            index = first.choices(range(len(expected)), [hype for _, hype in expected])[0]
            assert releases.take(scaled) is expected.pop(index)[0]
            drawn += 1
    assert drawn > 300


def test_pools_hold_the_titles_of_their_audience_genre_and_kind_in_catalogue_order():
    titles = generate_catalogue(seed=3, n_titles=2000, days=30)
    catalogue = _Catalogue(titles)
    for kids in (False, True):
        for genre in (None, *GENRES):
            for kind in (None, "show"):
                pool = catalogue.pool(kids, genre, kind)
                assert pool.titles == [
                    title
                    for title in titles
                    if title.for_kids == kids
                    and (genre is None or genre in title.genres)
                    and (kind is None or title.kind == kind)
                ]
                assert pool.cumulative == list(accumulate(title.popularity for title in pool.titles))
    assert catalogue.pool(True, "Horror").draw(random.Random(0), WORLD_START_MS, set()) is None


@pytest.fixture(scope="module")
def large_world():
    started = time.perf_counter()
    titles, events = generate_world_and_catalogue(seed=0, n_users=300, n_titles=20_000, days=30)
    return titles, events, time.perf_counter() - started


def test_a_20000_title_world_is_quick_and_its_plays_have_a_long_tail(large_world):
    titles, events, seconds = large_world
    assert seconds < 20  # about 1 s here
    assert len({title.item_id for title in titles}) == 20_000
    plays = Counter(event.item_id for event in events)
    assert sum(count for _, count in plays.most_common(200)) > 0.3 * len(events)  # the top 1%: 59% here
    assert len(plays) < 0.3 * len(titles)  # most titles are never played (89% here)...
    assert len(plays) > 1000  # ...yet plays reach deep into the catalogue,
    assert sum(1 for count in plays.values() if count == 1) > 0.3 * len(plays)  # many of them once


def test_a_20000_title_catalogue_keeps_the_attributes_of_a_small_one(large_world):
    titles, _, _ = large_world
    released_in_period = sum(title.release_ts >= WORLD_START_MS for title in titles)
    assert 0.08 < released_in_period / len(titles) < 0.12
    assert 0.37 < sum(title.kind == "show" for title in titles) / len(titles) < 0.43
    first_genres = Counter(title.genres[0] for title in titles)
    for genre, weight in zip(GENRES, GENRE_WEIGHTS):
        assert first_genres[genre] / len(titles) == pytest.approx(weight / sum(GENRE_WEIGHTS), abs=0.01)
    popularity = sorted((title.popularity for title in titles), reverse=True)
    assert sum(popularity[:200]) > 0.25 * sum(popularity)  # heavy-tailed: the top 1% hold a large share


def test_similar_titles_share_the_first_genre_and_audience_and_favour_the_popular(large_world):
    titles, _, _ = large_world
    by_id = {title.item_id: title for title in titles}
    group_sizes = Counter((title.genres[0], title.for_kids) for title in titles)
    picks = []
    for title in titles:
        assert len(set(title.similar)) == len(title.similar) == min(SIMILAR_TITLES, group_sizes[title.genres[0], title.for_kids] - 1)
        assert title.item_id not in title.similar
        for item_id in title.similar:
            other = by_id[item_id]
            assert (other.genres[0], other.for_kids) == (title.genres[0], title.for_kids)
            picks.append(other)
    most_popular = {}
    for key in group_sizes:
        group = sorted((t.popularity for t in titles if (t.genres[0], t.for_kids) == key), reverse=True)
        most_popular[key] = group[len(group) // 10]
    in_top_decile = sum(other.popularity > most_popular[other.genres[0], other.for_kids] for other in picks)
    assert in_top_decile > 0.4 * len(picks)  # 66% here, against 10% for picks by chance


# ---------------------------------------------------------------------------------------------
# intentstream data synth: the log and the catalogue
# ---------------------------------------------------------------------------------------------

def test_data_synth_writes_the_log_and_every_title_to_a_catalogue_beside_it(tmp_path):
    out = tmp_path / "world.msgpack"
    arguments = ["--seed", "4", "--users", "30", "--titles", "500", "--days", "20"]
    assert main(["data", "synth", "--out", str(out), *arguments]) == 0
    titles, events = generate_world_and_catalogue(seed=4, n_users=30, n_titles=500, days=20)
    assert list(read_log(out)) == events
    catalogue = list(read_catalogue(tmp_path / "world.catalogue.msgpack"))
    assert catalogue == [title.catalogue_entry() for title in titles]
    listed = {entry.item_id: entry for entry in catalogue}
    assert len(listed) == 500
    played = {event.item_id for event in events}
    assert played < set(listed)  # every played title is listed, and some listed titles were never played
    for event in events:
        entry = listed[event.item_id]
        assert (entry.kind, entry.genres, entry.release_ts) == (event.kind, event.genres, event.release_ts)


def test_data_synth_writes_the_catalogue_where_catalogue_out_says(tmp_path):
    out, catalogue = tmp_path / "world.jsonl", tmp_path / "shop" / "titles.jsonl.gz"
    assert main(["data", "synth", "--out", str(out), "--users", "5", "--titles", "40", "--catalogue-out", str(catalogue)]) == 0
    assert [entry.item_id for entry in read_catalogue(catalogue)] == [t.item_id for t in generate_catalogue(n_titles=40)]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["shop", "world.jsonl"]


def test_data_synth_warns_of_plays_after_now_and_end_before_now_moves_the_world_back_by_whole_weeks(
    tmp_path, capsys, monkeypatch
):
    now_ms = WORLD_START_MS + 9 * DAY_MS + 1
    monkeypatch.setattr(time, "time", lambda: now_ms / 1000)
    arguments = ["--users", "6", "--titles", "60", "--days", "30"]
    titles, events = generate_world_and_catalogue(n_users=6, n_titles=60, days=30)
    assert events[-1].ts > now_ms

    as_generated = tmp_path / "as-generated.jsonl"
    assert main(["data", "synth", "--out", str(as_generated), *arguments]) == 0
    assert list(read_log(as_generated)) == events
    assert "the plays run until 2024-01-30, after now" in capsys.readouterr().err

    moved = tmp_path / "moved.jsonl"
    assert main(["data", "synth", "--out", str(moved), "--end-before-now", *arguments]) == 0
    assert "after now" not in capsys.readouterr().err
    moved_events = list(read_log(moved))
    shift = events[0].ts - moved_events[0].ts
    assert shift % (7 * DAY_MS) == 0 and moved_events[-1].ts < now_ms <= moved_events[-1].ts + 7 * DAY_MS
    assert moved_events == [replace(event, ts=event.ts - shift, release_ts=event.release_ts - shift) for event in events]
    assert [entry.release_ts for entry in read_catalogue(tmp_path / "moved.catalogue.jsonl")] == [
        title.release_ts - shift for title in titles
    ]


def test_a_world_that_ends_before_now_is_not_moved():
    titles, events = generate_world_and_catalogue(n_users=3, n_titles=40, days=10)
    assert moved_to_end_before(events[-1].ts + 1, titles, events) == (titles, events)
    assert moved_to_end_before(0, titles, []) == (titles, [])


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--titles", "0"], "--titles: expected a number >= 1, got 0"),
        (["--days", "-3"], "--days: expected a number >= 1, got -3"),
        (["--users", "many"], "--users: expected a whole number, got 'many'"),
        (["--days", str(MAX_DAYS + 1)], f"--days {MAX_DAYS + 1}: at most {MAX_DAYS}"),
        (["--catalogue-out", "{out}"], "is the log file --out"),
        (["--catalogue-out", "{dir}/titles.csv"], "unknown catalogue format"),
    ],
)
def test_data_synth_refuses_a_bad_argument_before_writing_anything(tmp_path, capsys, arguments, message):
    out = tmp_path / "world.jsonl"
    arguments = [argument.format(out=out, dir=tmp_path) for argument in arguments]
    try:
        status = main(["data", "synth", "--out", str(out), *arguments])
    except SystemExit as exit:  # argparse's refusal
        status = exit.code
    assert status == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
