"""MovieLens ratings as PlayEvents, from either of the two layouts MovieLens-100K ships in.

Layouts (detected from the files in the directory):

- RecBole atomic files: `<name>.inter` (user_id, item_id, rating, timestamp) and `<name>.item`
  (item_id, movie_title, release_year, class = space-separated genres), tab-separated, with typed
  headers such as `item_id:token`; columns are found by name.
- The original GroupLens files: `u.data` (user, item, rating, timestamp; tab-separated, no header)
  and `u.item` (pipe-separated, latin-1: id | title | release date like 01-Jan-1995 | video release
  date | IMDb URL | 19 genre flags in the order of GENRE_FLAGS).

Mapping of one rating to a PlayEvent:

- `event_id` = f"ml-{user}-{item}" (each user rates a movie at most once), `user_id` and `item_id`
  the MovieLens ids as text, `ts` = timestamp × 1000, `kind` = "movie", `device` = None.
- `genres`: the movie's genres; the placeholder genre "unknown" becomes an empty list.
- `release_ts`: the release date, or 1 January of the release year when only the year is known
  (RecBole); None when the file has none.
- `duration_s` = 7200, a nominal two-hour film watched to the end: MovieLens has no watch time. (It
  was once rating / 5 × 7200; as the loss weight d_k that made liked films count up to 5× more than
  disliked ones, which the next rating does not care about: MovieLens-100K V0 0.0570 with it, 0.0709
  without, seed 0.)

MovieLens has no action type (no re-watches, no episodes), so the action intent is derived from
each user's own history, in time order, by the first rule that holds:

1. `new_release`: the film's release year is the rating's year or the year before. Years, not
   days, because the RecBole files give only the year: both layouts then label a film alike;
2. `explore`: none of its genres occurs among the user's previous RECENT_RATINGS ratings (a user's
   first rating, with no history, is an exploration);
3. `favorite_genre`: it has the user's most-rated genre so far (ties broken by genre name);
4. `recent_genre` otherwise: it continues a genre of the recent ratings that is not the favourite.

A film without genres (and not a new release) counts as `explore`. On ml-100k this gives
new_release 27.3%, explore 15.4%, favorite_genre 28.2%, recent_genre 29.1% of the 100,000 events;
among the users' last events (the test targets) new_release is 43%.

Order: many ratings share a timestamp (users rated in bursts), so events are ordered by
(ts, event_id) — for one user that is (ts, item id as text), the order `read_user_sequences` uses —
and the actions are derived in that order. `read_movielens` yields all users merged in that
global order, like a topic replay.
"""
from __future__ import annotations

import csv
import os
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from model.playlogs.files import LogError
from schemas.contracts import PlayEvent

# The genre flags of the original u.item, in column order (u.genre).
GENRE_FLAGS = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)  # fmt: skip
UNKNOWN_GENRE = "unknown"
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")

NOMINAL_RUNTIME_S = 7200.0
NEW_RELEASE_YEARS = 1
RECENT_RATINGS = 3


class MovieLensError(LogError):
    """The directory holds no MovieLens data in a known layout, or a file in it is malformed."""


@dataclass(frozen=True, slots=True)
class Movie:
    genres: tuple[str, ...]
    release_ts: int | None


@dataclass(frozen=True, slots=True)
class Rating:
    user_id: str
    item_id: str
    rating: float
    ts: int  # epoch ms


def read_movielens(directory: str | os.PathLike) -> Iterator[PlayEvent]:
    """All ratings in `directory` as PlayEvents, ordered by (ts, event_id); see the module doc.

    The files are read (and checked) before the first event is returned; ml-100k fits easily.
    """
    directory = Path(directory)
    movies, ratings = _read_layout(directory)
    for rating in ratings:
        if rating.item_id not in movies:
            raise MovieLensError(
                f"{directory}: a rating by user {rating.user_id} refers to movie "
                f"{rating.item_id}, which the item file does not list"
            )
    ratings.sort(key=lambda rating: (rating.ts, _event_id(rating)))
    return _events(ratings, movies)


def _events(ratings: list[Rating], movies: dict[str, Movie]) -> Iterator[PlayEvent]:
    histories: dict[str, _History] = {}
    for rating in ratings:
        movie = movies[rating.item_id]
        history = histories.setdefault(rating.user_id, _History())
        action = history.action_of(movie, rating.ts)
        history.add(movie)
        yield PlayEvent(
            event_id=_event_id(rating),
            user_id=rating.user_id,
            item_id=rating.item_id,
            ts=rating.ts,
            action=action,
            genres=movie.genres,
            kind="movie",
            release_ts=movie.release_ts,
            duration_s=NOMINAL_RUNTIME_S,
            device=None,
        )


class _History:
    """What the action rule needs to know about one user's earlier ratings."""

    def __init__(self) -> None:
        self.recent_genres: deque[tuple[str, ...]] = deque(maxlen=RECENT_RATINGS)
        self.genre_counts: Counter[str] = Counter()

    def action_of(self, movie: Movie, ts: int) -> str:
        if movie.release_ts is not None and _year(movie.release_ts) >= _year(ts) - NEW_RELEASE_YEARS:
            return "new_release"
        recent = {genre for genres in self.recent_genres for genre in genres}
        if not recent.intersection(movie.genres):
            return "explore"
        favorite = min(self.genre_counts.items(), key=lambda item: (-item[1], item[0]))[0]
        if favorite in movie.genres:
            return "favorite_genre"
        return "recent_genre"

    def add(self, movie: Movie) -> None:
        self.recent_genres.append(movie.genres)
        self.genre_counts.update(movie.genres)


def _event_id(rating: Rating) -> str:
    return f"ml-{rating.user_id}-{rating.item_id}"


def _read_layout(directory: Path) -> tuple[dict[str, Movie], list[Rating]]:
    if not directory.is_dir():
        raise MovieLensError(f"{directory}: not a directory")
    inter_files = sorted(directory.glob("*.inter"))
    if len(inter_files) == 1 and inter_files[0].with_suffix(".item").is_file():
        inter = inter_files[0]
        return _read_recbole_items(inter.with_suffix(".item")), _read_recbole_ratings(inter)
    if (directory / "u.data").is_file() and (directory / "u.item").is_file():
        return _read_grouplens_items(directory / "u.item"), _read_grouplens_ratings(directory / "u.data")
    raise MovieLensError(
        f"{directory}: no MovieLens data found; expected either RecBole atomic files "
        "(one NAME.inter with its NAME.item) or the original GroupLens files (u.data and u.item)"
    )


# ---------------------------------------------------------------------------------------------
# RecBole atomic layout
# ---------------------------------------------------------------------------------------------

def _read_recbole_ratings(path: Path) -> list[Rating]:
    return [
        Rating(
            user_id=row["user_id"],
            item_id=row["item_id"],
            rating=_number(row["rating"], path, line),
            ts=round(_number(row["timestamp"], path, line) * 1000),
        )
        for line, row in _recbole_rows(path, ("user_id", "item_id", "rating", "timestamp"))
    ]


def _read_recbole_items(path: Path) -> dict[str, Movie]:
    movies = {}
    for _, row in _recbole_rows(path, ("item_id", "release_year", "class")):
        year = row["release_year"]
        movies[row["item_id"]] = Movie(
            genres=_known_genres(row["class"].split()),
            release_ts=_epoch_ms(int(year), 1, 1) if year.isdigit() else None,
        )
    return movies


def _recbole_rows(path: Path, needed: tuple[str, ...]) -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, {column name: value}) for each row; header names lose their `:type`."""
    with open(path, encoding="utf-8", newline="") as file:
        rows = csv.reader(file, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = [name.split(":", 1)[0] for name in next(rows, [])]
        missing = [name for name in needed if name not in header]
        if missing:
            raise MovieLensError(f"{path}: the header lacks the column(s) {', '.join(missing)}")
        for line, values in enumerate(rows, start=2):
            if not values:
                continue
            if len(values) != len(header):
                raise MovieLensError(
                    f"{path}: line {line}: {len(values)} fields, the header has {len(header)}"
                )
            yield line, dict(zip(header, values))


# ---------------------------------------------------------------------------------------------
# Original GroupLens layout
# ---------------------------------------------------------------------------------------------

def _read_grouplens_ratings(path: Path) -> list[Rating]:
    ratings = []
    with open(path, encoding="latin-1") as file:
        for line, text in enumerate(file, start=1):
            if not text.strip():
                continue
            fields = text.split()
            if len(fields) != 4:
                raise MovieLensError(
                    f"{path}: line {line}: expected 4 fields (user item rating timestamp), "
                    f"got {len(fields)}"
                )
            user_id, item_id, rating, timestamp = fields
            ratings.append(
                Rating(
                    user_id=user_id,
                    item_id=item_id,
                    rating=_number(rating, path, line),
                    ts=round(_number(timestamp, path, line) * 1000),
                )
            )
    return ratings


def _read_grouplens_items(path: Path) -> dict[str, Movie]:
    movies = {}
    flags_start = 5
    with open(path, encoding="latin-1") as file:
        for line, text in enumerate(file, start=1):
            if not text.strip():
                continue
            fields = text.rstrip("\r\n").split("|")
            if len(fields) != flags_start + len(GENRE_FLAGS):
                raise MovieLensError(
                    f"{path}: line {line}: expected {flags_start + len(GENRE_FLAGS)} "
                    f"'|'-separated fields, got {len(fields)}"
                )
            flags = fields[flags_start:]
            movies[fields[0]] = Movie(
                genres=_known_genres(g for g, flag in zip(GENRE_FLAGS, flags) if flag == "1"),
                release_ts=_release_date(fields[2], path, line),
            )
    return movies


def _release_date(text: str, path: Path, line: int) -> int | None:
    """`01-Jan-1995` as epoch ms (month names parsed here, not by the locale); '' is None."""
    if not text:
        return None
    day, month, year = text.split("-") if text.count("-") == 2 else ("", "", "")
    if month not in MONTHS or not day.isdigit() or not year.isdigit():
        raise MovieLensError(f"{path}: line {line}: release date {text!r} is not like 01-Jan-1995")
    return _epoch_ms(int(year), MONTHS.index(month) + 1, int(day))


# ---------------------------------------------------------------------------------------------

def _known_genres(genres) -> tuple[str, ...]:
    return tuple(genre for genre in genres if genre != UNKNOWN_GENRE)


def _year(epoch_ms: int) -> int:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=timezone.utc).year


def _epoch_ms(year: int, month: int, day: int) -> int:
    return int(datetime(year, month, day, tzinfo=timezone.utc).timestamp() * 1000)


def _number(text: str, path: Path, line: int) -> float:
    try:
        return float(text)
    except ValueError:
        raise MovieLensError(f"{path}: line {line}: {text!r} is not a number") from None
