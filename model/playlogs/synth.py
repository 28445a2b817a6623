"""A seeded synthetic streaming service: a catalogue, and users whose intent shifts over time.

`generate_world(seed)` returns the world's play log as a list of PlayEvents sorted by
(ts, event_id), the order a topic replay would deliver them. The same arguments always give the
same events: every random draw comes from `random.Random` seeded with text derived from `seed`
(the catalogue has its own stream, and so does each user, so user 7 is the same user in a world of
100 users as in one of 1,000).

The catalogue (`generate_catalogue`, model/playlogs/synth_titles.py): movies and shows with genres,
release dates, a heavy-tailed popularity and similar titles. A show's item_id is the title: the
user plays it once per episode, in order.
`generate_world_and_catalogue` returns the titles beside the log, so that the whole catalogue,
played or not, can be written too (`Title.catalogue_entry`).

A world's cost grows about linearly with its number of titles (README, "Play logs", has times up
to 1,000,000 titles): draws by popularity bisect cumulative popularity, built once per pool, and a
session's new releases are found with array operations. These are the draws that the first,
quadratic version made with `rng.choices` on filtered lists, in the same order (similar titles up to
float rounding at a boundary between two titles: Pool.positions_except), so the worlds it made
have stayed the same (tests/model/playlogs/test_synth.py holds digests of some).

Each user has a mix of intent modes, one session at a time:

- `explorer`: discovers unseen titles, mostly in genres absent from their recent plays, sometimes
  a title similar to the last one they liked; watches a trailer first now and then, and abandons a
  quarter of what they start;
- `binge`: continues the show in progress (or starts one) for several episodes back to back;
- `rewatcher`: replays favourites (titles finished and liked), favouring the most replayed;
- `genre_fan`: discovers, and continues, titles of their two favourite genres, often the title
  most similar to the last one they liked;
- `kids`: a kids profile, on a tablet in the afternoon: kids titles only, many rewatches;
- `new_release`: watches trailers of the latest releases, then starts one of them.

A session's mode follows a per-user Markov chain: it stays with the user's `stickiness`, otherwise
it is redrawn from the user's mode weights (binge is more likely while a show is in progress). So
the next action, genre, kind and release recency depend on the recent history. Sessions start at
daily-rhythm hours (evening peak; more sessions at weekends), minutes apart within a session and
hours to days apart between them. Watch times follow the action: trailers 45-170 s, episodes
85-100% of their length unless abandoned, movies most of their runtime.

Actions: discover (first play of a title), continue (a later episode of a show in progress),
rewatch, trailer. Devices: tv, mobile, tablet, web.
"""
from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass, field, replace

import numpy as np

from model.playlogs.synth_titles import (
    DAY_MS, GENRE_WEIGHTS, GENRES, KIDS_GENRES, WORLD_START_MS, Pool, Title, generate_catalogue,
)
from schemas.contracts import TS_MAX_MS, PlayEvent

HOUR_MS = 3_600_000
MINUTE_MS = 60_000
MAX_DAYS = (TS_MAX_MS - WORLD_START_MS) // DAY_MS  # the longest period whose plays fit the contract's ts range
WEEK_MS = 7 * DAY_MS

MODES = ("explorer", "binge", "rewatcher", "genre_fan", "kids", "new_release")
ADULT_MODES = tuple(mode for mode in MODES if mode != "kids")
# How often each adult mode is a user's main one, in the order of ADULT_MODES.
MAIN_MODE_WEIGHTS = (0.24, 0.24, 0.10, 0.24, 0.18)
KIDS_PROFILE_SHARE = 0.08
DEVICES = ("tv", "mobile", "tablet", "web")

# Relative chance that a session starts at each hour of the day (UTC stands in for local time).
ADULT_HOURS = (1, .5, .3, .2, .2, .3, .8, 1.5, 1.5, 1, 1, 1.2, 1.8, 1.5, 1.2, 1.3, 1.6, 2, 2.8, 4, 5, 5, 4, 2.5)  # fmt: skip
KIDS_HOURS = (0, 0, 0, 0, 0, 0, 1, 2, 1.5, 1, 1, 1, 1.5, 1.5, 2, 3, 4, 4, 3.5, 2.5, 1, .2, 0, 0)  # fmt: skip

MIN_GAP_BETWEEN_SESSIONS_MS = 30 * MINUTE_MS
NEW_RELEASE_WINDOW_MS = 60 * DAY_MS  # what a new-release chaser considers new
HYPE_DECAY_DAYS = 21.0


def generate_world(
    seed: int = 0, n_users: int = 1000, n_titles: int = 800, days: int = 60
) -> list[PlayEvent]:
    """The play log of a synthetic world: about 80,000 events with the defaults, in a second or two.

    Events are sorted by (ts, event_id); event ids are f"{user_id}-{n}", n counting the user's
    plays from 0. The simulated period starts at WORLD_START_MS and lasts `days`.
    """
    return generate_world_and_catalogue(seed, n_users, n_titles, days)[1]


def generate_world_and_catalogue(
    seed: int = 0, n_users: int = 1000, n_titles: int = 800, days: int = 60
) -> tuple[list[Title], list[PlayEvent]]:
    """(the titles of `generate_catalogue(seed, n_titles, days)`, the events of `generate_world`
    with the same arguments): the whole catalogue, played or not, beside the play log."""
    titles = generate_catalogue(seed, n_titles, days)
    catalogue = _Catalogue(titles)
    end_ms = WORLD_START_MS + days * DAY_MS
    events: list[PlayEvent] = []
    for user_number in range(n_users):
        rng = random.Random(f"{seed}-user-{user_number}")
        viewer = _Viewer(_make_profile(rng, f"user-{user_number:04d}", days), catalogue, rng, end_ms)
        events.extend(viewer.live())
    events.sort(key=lambda event: (event.ts, event.event_id))
    return titles, events


def moved_to_end_before(
    now_ms: int, titles: list[Title], events: list[PlayEvent]
) -> tuple[list[Title], list[PlayEvent]]:
    """The world moved back by whole weeks, so that every play is before `now_ms` (unchanged if it
    already ends before): a world starts in 2024, and the replay, as the live flow, dead-letters plays
    from the future. Whole weeks keep each play's hour and weekday, which the model reads."""
    if not events or events[-1].ts < now_ms:
        return titles, events
    shift = ((events[-1].ts - now_ms) // WEEK_MS + 1) * WEEK_MS
    return (
        [replace(title, release_ts=title.release_ts - shift) for title in titles],
        [replace(event, ts=event.ts - shift, release_ts=None if event.release_ts is None else event.release_ts - shift)
         for event in events],
    )


def user_modes(seed: int = 0, n_users: int = 1000, days: int = 60) -> dict[str, dict[str, float]]:
    """Each user's intent-mode weights in the world generate_world(seed, n_users, days) makes: what
    the model's intent predictions could be judged against (its largest is the user's main mode)."""
    return {
        profile.user_id: dict(profile.mode_weights)
        for profile in (_make_profile(random.Random(f"{seed}-user-{n}"), f"user-{n:04d}", days) for n in range(n_users))
    }


class _NewReleases:
    """New releases on offer in one session, in catalogue order, drawn by hype as
    `rng.choices(range(len(releases)), hype)` draws from the list of them; a drawn title leaves."""

    def __init__(self, titles: list[Title], positions: np.ndarray, hype: np.ndarray) -> None:
        self.titles = titles
        self.positions = positions  # into `titles`
        self.hype = hype

    def __len__(self) -> int:
        return len(self.positions)

    def take(self, rng: random.Random) -> Title:
        # np.cumsum adds left to right as itertools.accumulate does, so the sums are the same floats.
        cumulative = np.cumsum(self.hype)
        target = rng.random() * float(cumulative[-1])
        index = int(np.searchsorted(cumulative[:-1], target, side="right"))
        title = self.titles[self.positions[index]]
        self.positions = np.delete(self.positions, index)
        self.hype = np.delete(self.hype, index)
        return title


class _RecentTitles:
    """The titles of one audience released late enough to be new at some point of the period, as
    arrays in catalogue order, so that a session's new releases are found without a Python loop."""

    def __init__(self, titles: list[Title]) -> None:
        self.titles = titles
        self.position = {title.item_id: position for position, title in enumerate(titles)}
        self.release_ts = np.array([title.release_ts for title in titles], dtype=np.int64)
        self.popularity = np.array([title.popularity for title in titles], dtype=np.float64)
        # Releases fall on a few dates (midnights), so hype fades with one math.exp per date
        # rather than one per title (numpy's exp can differ from math.exp in the last bit).
        self.release_dates, self.release_date_index = np.unique(self.release_ts, return_inverse=True)

    def on_offer(self, now: int, exclude: set[str]) -> _NewReleases:
        """Titles released at most NEW_RELEASE_WINDOW_MS before `now` and not in `exclude`, with a
        hype that fades with age."""
        offered = (self.release_ts >= now - NEW_RELEASE_WINDOW_MS) & (self.release_ts <= now)
        for item_id in exclude:
            position = self.position.get(item_id)
            if position is not None:
                offered[position] = False
        positions = np.flatnonzero(offered)
        first = np.searchsorted(self.release_dates, now - NEW_RELEASE_WINDOW_MS, side="left")
        last = np.searchsorted(self.release_dates, now, side="right")
        fading = np.zeros(len(self.release_dates))
        fading[first:last] = [
            math.exp(-(now - released) / DAY_MS / HYPE_DECAY_DAYS)
            for released in self.release_dates[first:last].tolist()
        ]
        hype = self.popularity[positions] * fading[self.release_date_index[positions]]
        return _NewReleases(self.titles, positions, hype)


class _Catalogue:
    def __init__(self, titles: list[Title]) -> None:
        self.titles = titles
        self.by_id = {title.item_id: title for title in titles}
        # Every pool a viewer may ask for, filled in one pass: the titles of an audience (kids or
        # not), of any genre or one genre, of any kind or one kind, in catalogue order.
        pools: dict[tuple, list[Title]] = {}
        for title in titles:
            for genre in (None, *title.genres):
                for kind in (None, title.kind):
                    pools.setdefault((title.for_kids, genre, kind), []).append(title)
        self._pools = {key: Pool(pool) for key, pool in pools.items()}
        recent = [title for title in titles if title.release_ts > WORLD_START_MS - NEW_RELEASE_WINDOW_MS]
        self._recent = {kids: _RecentTitles([t for t in recent if t.for_kids == kids]) for kids in (False, True)}

    def pool(self, kids: bool, genre: str | None = None, kind: str | None = None) -> Pool:
        """Titles a kids profile (kids titles only) or an adult (no kids titles) may pick."""
        return self._pools.get((kids, genre, kind)) or Pool([])

    def new_releases(self, kids: bool, now: int, exclude: set[str]) -> _NewReleases:
        """Released titles at most NEW_RELEASE_WINDOW_MS old, with hype that fades with age."""
        return self._recent[kids].on_offer(now, exclude)


@dataclass
class _Profile:
    user_id: str
    kids: bool
    mode_weights: dict[str, float]
    stickiness: float  # chance that a session keeps the previous session's mode
    favorite_genres: tuple[str, ...]
    device_weights: dict[str, float]
    sessions_per_day: float
    hour_shift: int
    first_day: int


def _make_profile(rng: random.Random, user_id: str, days: int) -> _Profile:
    kids = rng.random() < KIDS_PROFILE_SHARE
    if kids:
        mode_weights = {"kids": 1.0}
        favorite_genres = ("Kids", "Animation")
        device_weights = {"tablet": 0.8, "tv": 0.2}
    else:
        main = rng.choices(ADULT_MODES, MAIN_MODE_WEIGHTS)[0]
        others = rng.sample([mode for mode in ADULT_MODES if mode != main], 2)
        main_share = rng.uniform(0.45, 0.7)
        other_share = rng.uniform(0.3, 0.7)
        mode_weights = {mode: 0.03 for mode in ADULT_MODES}
        mode_weights[main] = main_share
        mode_weights[others[0]] = (1 - main_share) * other_share
        mode_weights[others[1]] = (1 - main_share) * (1 - other_share)
        adult_genres = [genre for genre in GENRES if genre != "Kids"]
        adult_weights = [weight for genre, weight in zip(GENRES, GENRE_WEIGHTS) if genre != "Kids"]
        first = rng.choices(adult_genres, adult_weights)[0]
        second = first
        while second == first:
            second = rng.choices(adult_genres, adult_weights)[0]
        favorite_genres = (first, second)
        main_device = rng.choices(DEVICES, (0.5, 0.3, 0.1, 0.1))[0]
        device_weights = {device: 0.1 for device in DEVICES}
        device_weights[main_device] = 0.7
    return _Profile(
        user_id=user_id,
        kids=kids,
        mode_weights=mode_weights,
        stickiness=rng.uniform(0.5, 0.85),
        favorite_genres=favorite_genres,
        device_weights=device_weights,
        sessions_per_day=min(math.exp(rng.gauss(math.log(0.4), 0.6)), 3.0),
        hour_shift=rng.randint(-1, 1),
        first_day=0 if rng.random() < 0.7 else rng.randrange(max(days // 2, 1)),
    )


@dataclass
class _Viewer:
    """One user living through the simulated period, session by session."""

    profile: _Profile
    catalogue: _Catalogue
    rng: random.Random
    end_ms: int
    events: list[PlayEvent] = field(default_factory=list)
    now: int = 0
    device: str = "tv"
    mode: str = ""
    seen: set[str] = field(default_factory=set)  # titles played (trailers excepted)
    # Shows started and not finished -> episodes watched; the last one played is last.
    in_progress: dict[str, int] = field(default_factory=dict)
    favorites: dict[str, float] = field(default_factory=dict)  # title -> rewatch weight
    last_liked: str | None = None  # the last title watched through
    recent_genres: deque = field(default_factory=lambda: deque(maxlen=10))

    def live(self) -> list[PlayEvent]:
        sessions = {
            "explorer": self.explore,
            "binge": self.binge,
            "rewatcher": self.rewatch,
            "genre_fan": self.follow_genres,
            "kids": self.kids_session,
            "new_release": self.chase_new_releases,
        }
        for start in self.session_starts():
            if start < self.now + MIN_GAP_BETWEEN_SESSIONS_MS:
                continue  # still watching: this session would overlap the previous one
            self.now = start
            self.mode = self.next_mode()
            self.device = self.session_device(start)
            sessions[self.mode]()
        return self.events

    # --- when, in which mode, on which device --------------------------------------------------

    def session_starts(self) -> list[int]:
        hours = KIDS_HOURS if self.profile.kids else ADULT_HOURS
        days = (self.end_ms - WORLD_START_MS) // DAY_MS
        starts = []
        for day in range(self.profile.first_day, days):
            weekend = day % 7 >= 5
            mean = self.profile.sessions_per_day * (1.5 if weekend else 1.0)
            for _ in range(_poisson(self.rng, mean)):
                hour = (self.rng.choices(range(24), hours)[0] + self.profile.hour_shift) % 24
                starts.append(
                    WORLD_START_MS + day * DAY_MS + hour * HOUR_MS + self.rng.randrange(HOUR_MS)
                )
        return sorted(starts)

    def next_mode(self) -> str:
        if self.mode and self.rng.random() < self.profile.stickiness:
            return self.mode
        weights = dict(self.profile.mode_weights)
        if "binge" in weights:
            weights["binge"] *= 3.0 if self.in_progress else 0.3
        if "rewatcher" in weights and not self.favorites:
            weights["rewatcher"] = 0.0
        return self.rng.choices(list(weights), list(weights.values()))[0]

    def session_device(self, start: int) -> str:
        weights = dict(self.profile.device_weights)
        hour = (start - WORLD_START_MS) % DAY_MS // HOUR_MS
        if "tv" in weights and 19 <= hour <= 23:
            weights["tv"] *= 2
        if "mobile" in weights and (7 <= hour <= 9 or 12 <= hour <= 13):
            weights["mobile"] *= 2
        return self.rng.choices(list(weights), list(weights.values()))[0]

    # --- the modes -------------------------------------------------------------------------------

    def explore(self) -> None:
        for _ in range(self.rng.choice((1, 1, 2, 2, 3))):
            title = self.similar_to_last_liked() if self.rng.random() < 0.25 else None
            if title is None:
                recent = {genre for genres in self.recent_genres for genre in genres}
                genre = self.pick_genre(avoid=recent if self.rng.random() < 0.7 else set())
                title = self.catalogue.pool(self.profile.kids, genre).draw(self.rng, self.now, self.seen)
            if title is None:
                continue
            if self.rng.random() < 0.35:
                self.trailer(title)
                if self.rng.random() < 0.4:
                    continue  # the trailer did not convince
            if self.discover(title, abandon_chance=0.25) and title.kind == "show":
                if self.rng.random() < 0.5:
                    self.watch_episodes(title, self.rng.randint(1, 2))

    def binge(self) -> None:
        show = self.current_show()
        if show is None:
            genre = self.rng.choice(self.profile.favorite_genres)
            pool = self.catalogue.pool(self.profile.kids, genre, "show")
            show = pool.draw(self.rng, self.now, self.seen) or self.catalogue.pool(
                self.profile.kids, None, "show"
            ).draw(self.rng, self.now, self.seen)
            if show is None or not self.discover(show, abandon_chance=0.15):
                return
        self.watch_episodes(show, self.rng.randint(2, 5))

    def rewatch(self) -> None:
        if not self.favorites:
            self.follow_genres()
            return
        for _ in range(self.rng.choice((1, 1, 2))):
            self.replay_favorite()

    def follow_genres(self) -> None:
        for _ in range(self.rng.randint(1, 3)):
            favorite_shows = [
                show_id
                for show_id in self.in_progress
                if set(self.title(show_id).genres) & set(self.profile.favorite_genres)
            ]
            if favorite_shows and self.rng.random() < 0.35:
                self.watch_episodes(self.title(favorite_shows[-1]), self.rng.randint(1, 2))
                continue
            title = self.similar_to_last_liked() if self.rng.random() < 0.5 else None
            if title is None:
                genre = self.profile.favorite_genres[0 if self.rng.random() < 0.7 else 1]
                pool = self.catalogue.pool(self.profile.kids, genre)
                title = pool.draw(self.rng, self.now, self.seen)
            if title is not None:
                self.discover(title, abandon_chance=0.1)

    def kids_session(self) -> None:
        for _ in range(self.rng.randint(2, 5)):
            draw = self.rng.random()
            if draw < 0.4 and self.favorites:
                self.replay_favorite()
            elif draw < 0.75 and self.in_progress:
                self.watch_episodes(self.current_show(), 1)
            else:
                title = self.similar_to_last_liked() if self.rng.random() < 0.4 else None
                if title is None:
                    genre = self.rng.choice(KIDS_GENRES)
                    title = self.catalogue.pool(True, genre).draw(self.rng, self.now, self.seen)
                if title is not None:
                    self.discover(title, abandon_chance=0.2)

    def chase_new_releases(self) -> None:
        releases = self.catalogue.new_releases(self.profile.kids, self.now, self.seen)
        if not releases:
            self.explore()
            return
        teased = []
        for _ in range(min(self.rng.randint(1, 3), len(releases))):
            title = releases.take(self.rng)
            self.trailer(title)
            teased.append(title)
        if self.rng.random() < 0.75:
            title = self.rng.choice(teased)
            if self.discover(title, abandon_chance=0.15) and title.kind == "show":
                if self.rng.random() < 0.5:
                    self.watch_episodes(title, self.rng.randint(1, 2))

    # --- single plays ----------------------------------------------------------------------------

    def discover(self, title: Title, abandon_chance: float) -> bool:
        """Start an unseen title; True when the user watched it through (an episode, a movie)."""
        abandoned = self.rng.random() < abandon_chance
        if abandoned:
            watched_s = self.rng.uniform(2, min(20, title.minutes * 0.8)) * 60
        else:
            watched_s = title.minutes * 60 * self.rng.uniform(0.85, 1.0)
        self.play(title, "discover", watched_s, gap_s=self.rng.uniform(30, 600))
        self.seen.add(title.item_id)
        if abandoned:
            return False
        self.last_liked = title.item_id
        if title.kind == "show":
            self.in_progress[title.item_id] = 1
        elif self.rng.random() < self.liking(title):
            self.favorites[title.item_id] = 1.0
        return True

    def watch_episodes(self, show: Title, count: int) -> None:
        """Continue `show` with its next `count` episodes (fewer if it ends), back to back."""
        for _ in range(count):
            watched = self.in_progress.pop(show.item_id)
            watched_s = show.minutes * 60 * self.rng.uniform(0.85, 1.0)
            self.play(show, "continue", watched_s, gap_s=self.rng.uniform(5, 40))
            self.last_liked = show.item_id
            if watched + 1 >= show.episodes:
                if self.rng.random() < self.liking(show):
                    self.favorites[show.item_id] = 1.0
                return
            self.in_progress[show.item_id] = watched + 1  # re-inserted: now the latest show

    def replay_favorite(self) -> None:
        item_ids = list(self.favorites)
        title = self.title(self.rng.choices(item_ids, [self.favorites[i] for i in item_ids])[0])
        self.favorites[title.item_id] += 1.0
        self.last_liked = title.item_id
        share = self.rng.uniform(0.85, 1.0) if title.kind == "show" else self.rng.uniform(0.3, 1.0)
        self.play(title, "rewatch", title.minutes * 60 * share, gap_s=self.rng.uniform(30, 300))

    def trailer(self, title: Title) -> None:
        self.play(title, "trailer", self.rng.uniform(45, 170), gap_s=self.rng.uniform(10, 90))

    def play(self, title: Title, action: str, watched_s: float, gap_s: float) -> None:
        if self.now < self.end_ms:
            self.events.append(
                PlayEvent(
                    event_id=f"{self.profile.user_id}-{len(self.events)}",
                    user_id=self.profile.user_id,
                    item_id=title.item_id,
                    ts=self.now,
                    action=action,
                    genres=title.genres,
                    kind=title.kind,
                    release_ts=title.release_ts,
                    duration_s=round(watched_s, 1),
                    device=self.device,
                )
            )
            if action != "trailer":
                self.recent_genres.append(title.genres)
        self.now += round((watched_s + gap_s) * 1000)

    # --- helpers ---------------------------------------------------------------------------------

    def current_show(self) -> Title | None:
        """The show in progress to continue: usually the one played last."""
        if not self.in_progress:
            return None
        shows = list(self.in_progress)
        show_id = shows[-1] if self.rng.random() < 0.8 else self.rng.choice(shows)
        return self.title(show_id)

    def similar_to_last_liked(self) -> Title | None:
        """The most similar unseen, released title to the last one watched through, if any."""
        if self.last_liked is None:
            return None
        for item_id in self.title(self.last_liked).similar:
            title = self.title(item_id)
            if item_id not in self.seen and title.release_ts <= self.now:
                return title
        return None

    def pick_genre(self, avoid: set[str]) -> str:
        allowed = [
            (genre, weight)
            for genre, weight in zip(GENRES, GENRE_WEIGHTS)
            if genre not in avoid and (genre != "Kids" or self.profile.kids)
        ]
        if self.profile.kids:
            allowed = [(genre, weight) for genre, weight in allowed if genre in KIDS_GENRES]
        if not allowed:
            return self.rng.choice(self.profile.favorite_genres)
        return self.rng.choices([g for g, _ in allowed], [w for _, w in allowed])[0]

    def liking(self, title: Title) -> float:
        """Chance that a title watched through becomes a favourite to rewatch."""
        fan = bool(set(title.genres) & set(self.profile.favorite_genres))
        return 0.6 if fan else 0.25

    def title(self, item_id: str) -> Title:
        return self.catalogue.by_id[item_id]


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (Knuth's method; fine for the small means used here)."""
    limit = math.exp(-mean)
    count, product = 0, rng.random()
    while product > limit:
        count += 1
        product *= rng.random()
    return count
