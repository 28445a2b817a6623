"""The synthetic service's catalogue (model.playlogs.synth): movies and shows, each with 1-3 of
GENRES (secondary genres mostly related to the first; "Kids" titles only mix with family-friendly
genres), a release date (about 10% are released during the simulated period and cannot be played
before it; the rest form a long tail into the past), a heavy-tailed popularity, a runtime, for
shows a number of episodes, and a short list of similar titles (same first genre) that "because
you watched" picks from; and Pool, the draws by popularity that the catalogue and its viewers
make."""
from __future__ import annotations

import random
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from itertools import accumulate

from schemas.contracts import CatalogueEntry

WORLD_START_MS = int(datetime(2024, 1, 1, tzinfo=timezone.utc).timestamp() * 1000)  # a Monday
DAY_MS = 86_400_000
YEAR_MS = 365 * DAY_MS
SIMILAR_TITLES = 5

GENRES = (
    "Action", "Adventure", "Animation", "Comedy", "Crime", "Documentary", "Drama", "Family",
    "Fantasy", "Horror", "Kids", "Mystery", "Romance", "Sci-Fi", "Thriller",
)  # fmt: skip
# How often each genre is a title's first genre, in the order of GENRES.
GENRE_WEIGHTS = (8, 5, 3, 12, 7, 4, 14, 3, 3, 5, 8, 4, 6, 5, 7)
RELATED_GENRES = {
    "Action": ("Adventure", "Thriller", "Sci-Fi", "Crime"),
    "Adventure": ("Action", "Fantasy", "Family", "Sci-Fi"),
    "Animation": ("Family", "Comedy", "Adventure", "Fantasy"),
    "Comedy": ("Romance", "Drama", "Family", "Crime"),
    "Crime": ("Thriller", "Drama", "Mystery", "Action"),
    "Documentary": ("Crime", "Drama"),
    "Drama": ("Romance", "Crime", "Thriller", "Comedy"),
    "Family": ("Comedy", "Adventure", "Animation", "Fantasy"),
    "Fantasy": ("Adventure", "Sci-Fi", "Action", "Family"),
    "Horror": ("Thriller", "Mystery", "Sci-Fi"),
    "Kids": ("Animation", "Family", "Comedy", "Adventure"),
    "Mystery": ("Thriller", "Crime", "Drama", "Horror"),
    "Romance": ("Comedy", "Drama"),
    "Sci-Fi": ("Action", "Adventure", "Thriller", "Fantasy"),
    "Thriller": ("Crime", "Mystery", "Action", "Drama"),
}
KIDS_GENRES = ("Kids", "Animation", "Family")


@dataclass(frozen=True, slots=True)
class Title:
    item_id: str
    kind: str  # movie | show
    genres: tuple[str, ...]
    release_ts: int  # epoch ms
    popularity: float
    minutes: int  # runtime of a movie, length of one episode of a show
    episodes: int  # 1 for a movie
    similar: tuple[str, ...] = ()  # "because you watched this": tried in this order

    @property
    def for_kids(self) -> bool:
        return "Kids" in self.genres

    def catalogue_entry(self) -> CatalogueEntry:
        """What a shop publishes of this title: its record in a catalogue file."""
        return CatalogueEntry(self.item_id, self.kind, self.genres, self.release_ts)


def generate_catalogue(seed: int = 0, n_titles: int = 800, days: int = 60) -> list[Title]:
    """The titles of the world that `generate_world(seed, n_titles=n_titles, days=days)` plays."""
    rng = random.Random(f"{seed}-catalogue")
    titles = []
    for number in range(n_titles):
        kind = "show" if rng.random() < 0.4 else "movie"
        genres = _title_genres(rng)
        release_ts = _release_ts(rng, days)
        recent = release_ts > WORLD_START_MS - YEAR_MS
        kids = "Kids" in genres
        if kind == "show":
            minutes = rng.choice((11, 22) if kids else (22, 25, 30, 45, 50, 55, 60))
            episodes = rng.randint(6, 30)
        else:
            minutes = rng.randint(70, 95) if kids else rng.randint(80, 150)
            episodes = 1
        titles.append(
            Title(
                item_id=f"{kind}-{number:04d}",
                kind=kind,
                genres=genres,
                release_ts=release_ts,
                popularity=rng.paretovariate(1.1) * (3.0 if recent else 1.0),
                minutes=minutes,
                episodes=episodes,
            )
        )
    return [replace(title, similar=similar) for title, similar in zip(titles, _similar_titles(rng, titles))]


def _similar_titles(rng: random.Random, titles: list[Title]) -> list[tuple[str, ...]]:
    """For each title, SIMILAR_TITLES titles sharing its first genre and audience, popular ones likelier.

    Title by title, each pick is what `rng.choices(group, popularity)` draws from the title's group
    less itself and the titles already picked for it (one `rng.random()` a pick): the group's
    cumulative popularity is built once, the excluded titles are holes in it (Pool.positions_except).
    """
    groups: dict[tuple[str, bool], list[Title]] = {}
    position_in_group = []
    for title in titles:
        group = groups.setdefault((title.genres[0], title.for_kids), [])
        position_in_group.append(len(group))
        group.append(title)
    pools = {key: Pool(group) for key, group in groups.items()}
    similar = []
    for title, position in zip(titles, position_in_group):
        pool = pools[title.genres[0], title.for_kids]
        picked = pool.positions_except(rng, position, min(SIMILAR_TITLES, len(pool.titles) - 1))
        similar.append(tuple(pool.titles[other].item_id for other in picked))
    return similar


def _title_genres(rng: random.Random) -> tuple[str, ...]:
    first = rng.choices(GENRES, GENRE_WEIGHTS)[0]
    genres = [first]
    for _ in range(rng.choice((0, 1, 1, 2))):
        if first == "Kids" or rng.random() < 0.75:
            extra = rng.choice(RELATED_GENRES[first])
        else:
            extra = rng.choice([genre for genre in GENRES if genre not in KIDS_GENRES])
        if extra not in genres:
            genres.append(extra)
    return tuple(genres)


def _release_ts(rng: random.Random, days: int) -> int:
    draw = rng.random()
    if draw < 0.10:  # released during the simulated period
        return WORLD_START_MS + rng.randrange(days) * DAY_MS
    if draw < 0.25:  # in the year before it
        return WORLD_START_MS - rng.randrange(1, 366) * DAY_MS
    years_ago = min(1 + rng.expovariate(1 / 10), 90)
    return WORLD_START_MS - int(years_ago * YEAR_MS) // DAY_MS * DAY_MS


class Pool:
    """Titles to draw from by popularity, with cumulative weights for O(log n) draws."""

    def __init__(self, titles: list[Title]) -> None:
        self.titles = titles
        self.cumulative = list(accumulate(title.popularity for title in titles))

    def draw(self, rng: random.Random, now: int, exclude: set[str]) -> Title | None:
        """A released title not in `exclude`, by popularity; None when there is none."""
        if not self.titles:
            return None
        for _ in range(30):
            title = rng.choices(self.titles, cum_weights=self.cumulative)[0]
            if title.release_ts <= now and title.item_id not in exclude:
                return title
        candidates = [t for t in self.titles if t.release_ts <= now and t.item_id not in exclude]
        if not candidates:
            return None
        return rng.choices(candidates, [title.popularity for title in candidates])[0]

    def positions_except(self, rng: random.Random, excluded: int, count: int) -> list[int]:
        """The positions of `count` titles drawn one after another by popularity, each as
        `rng.choices` draws it from this pool's titles less the one at position `excluded` and those
        drawn before it; O(count^2 log n) instead of the O(n) per draw of building the list.

        rng.choices bisects the running total of the remaining titles' popularity at random() times
        their sum. Between two left-out positions (holes) that running total is this pool's
        cumulative popularity less the popularity of the holes before them, so each stretch is
        bisected with the target raised by what was skipped. The sums are equal up to float rounding
        (the additions are done in another order), so a draw could differ from rng.choices' only
        where random() lands within a rounding error of the boundary between two titles.
        """
        cumulative, titles = self.cumulative, self.titles
        holes, hole_weights = [excluded], [titles[excluded].popularity]  # sorted by position
        drawn = []
        for _ in range(count):
            target = rng.random() * (cumulative[-1] - sum(hole_weights))
            position = bisect_right(cumulative, target)
            skipped = 0.0
            for hole, weight in zip(holes, hole_weights):
                if position < hole:
                    break
                skipped += weight
                position = max(hole + 1, bisect_right(cumulative, target + skipped))
            if position >= len(titles):  # as rng.choices, whose bisect stops at the last title
                position = len(titles) - 1
                while position in holes:
                    position -= 1
            drawn.append(position)
            index = bisect_left(holes, position)
            holes.insert(index, position)
            hole_weights.insert(index, titles[position].popularity)
        return drawn
