from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest

from model.playlogs.files import LogError, read_log, write_log
from model.playlogs.movielens import GENRE_FLAGS, MovieLensError, read_movielens
from schemas.codec import decode_play_event, encode_play_event

# MovieLens may not be redistributed: the tests read the copy beside the repository, never a copy in it.
ML_100K = Path(__file__).resolve().parents[4] / "shared" / "data" / "ml-100k"
needs_ml_100k = pytest.mark.skipif(not ML_100K.is_dir(), reason=f"MovieLens-100K not found at {ML_100K}")


def ms(year, month=1, day=1, hour=0):
    return int(datetime(year, month, day, hour, tzinfo=timezone.utc).timestamp() * 1000)


# A tiny made-up catalogue: (id, title, release date, genres).
MOVIES = [
    ("1", "Old Drama (1950)", "01-Jan-1950", ["Drama"]),
    ("2", "Old Comedy (1960)", "01-Jan-1960", ["Comedy"]),
    ("3", "Drama Romance (1970)", "01-Jan-1970", ["Drama", "Romance"]),
    ("4", "Brand New (1997)", "14-Mar-1997", ["Action"]),
    ("5", "Old Horror (1980)", "01-Jan-1980", ["Horror"]),
    ("6", "Mystère inconnu", "", ["unknown"]),
    ("7", "Old Romance (1975)", "01-Jan-1975", ["Romance"]),
]
# (user, item, rating, time): user 1 rates in October 1997, twice in the same second at the end.
RATINGS = [
    ("1", "1", 5, ms(1997, 10, 1)),
    ("1", "3", 4, ms(1997, 10, 2)),
    ("1", "7", 3, ms(1997, 10, 3)),
    ("1", "4", 2, ms(1997, 10, 4)),
    ("1", "5", 1, ms(1997, 10, 5)),
    ("1", "6", 4, ms(1997, 10, 6)),
    ("1", "2", 4, ms(1997, 10, 6)),
    ("2", "2", 3, ms(1997, 10, 1, hour=12)),
]
# The rule of model.playlogs.movielens, applied by hand, in (ts, event_id) order.
EXPECTED = [
    ("ml-1-1", "explore"),  # no history yet
    ("ml-2-2", "explore"),
    ("ml-1-3", "favorite_genre"),  # Drama, the most-rated genre so far
    ("ml-1-7", "recent_genre"),  # Romance was in the last 3, but Drama is the favourite
    ("ml-1-4", "new_release"),  # a 1997 film rated in 1997
    ("ml-1-5", "explore"),  # Horror is not among the last 3 ratings' genres
    ("ml-1-2", "explore"),  # same second as item 6: "ml-1-2" sorts first
    ("ml-1-6", "explore"),  # no genres at all
]


def write_grouplens(directory: Path) -> None:
    with open(directory / "u.item", "w", encoding="latin-1") as file:
        for item, title, date, genres in MOVIES:
            flags = ["1" if genre in genres else "0" for genre in GENRE_FLAGS]
            file.write("|".join([item, title, date, "", "http://example.invalid/", *flags]) + "\n")
    with open(directory / "u.data", "w") as file:
        for user, item, rating, ts in RATINGS:
            file.write(f"{user}\t{item}\t{rating}\t{ts // 1000}\n")


def write_recbole(directory: Path) -> None:
    with open(directory / "tiny.item", "w", encoding="utf-8") as file:
        file.write("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n")
        for item, title, date, genres in MOVIES:
            year = date[-4:] if date else "unknown"
            file.write(f"{item}\t{title}\t{year}\t{' '.join(genres)}\n")
    with open(directory / "tiny.inter", "w", encoding="utf-8") as file:
        file.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        for user, item, rating, ts in RATINGS:
            file.write(f"{user}\t{item}\t{rating}\t{ts // 1000}\n")


@pytest.mark.parametrize("write_layout", [write_grouplens, write_recbole])
def test_tiny_sample_actions_and_order(tmp_path, write_layout):
    write_layout(tmp_path)
    events = list(read_movielens(tmp_path))
    assert [(event.event_id, event.action) for event in events] == EXPECTED


def test_tiny_grouplens_fields(tmp_path):
    write_grouplens(tmp_path)
    events = {event.event_id: event for event in read_movielens(tmp_path)}
    brand_new = events["ml-1-4"]
    assert brand_new.user_id == "1" and brand_new.item_id == "4"
    assert brand_new.ts == ms(1997, 10, 4)
    assert brand_new.release_ts == ms(1997, 3, 14)  # the exact date of u.item
    assert brand_new.genres == ("Action",) and brand_new.kind == "movie"
    assert brand_new.duration_s == 7200.0  # no watch time in MovieLens: a nominal film, whatever the rating
    assert brand_new.device is None
    assert events["ml-1-3"].genres == ("Drama", "Romance")
    assert events["ml-1-6"].genres == () and events["ml-1-6"].release_ts is None
    assert events["ml-1-1"].release_ts == ms(1950)  # before 1970: negative epoch ms


def test_tiny_recbole_fields(tmp_path):
    write_recbole(tmp_path)
    events = {event.event_id: event for event in read_movielens(tmp_path)}
    assert events["ml-1-4"].release_ts == ms(1997)  # only the year is known
    assert events["ml-1-6"].release_ts is None and events["ml-1-6"].genres == ()
    assert events["ml-1-1"].duration_s == 7200.0


def test_tiny_sample_writes_a_valid_log(tmp_path):
    write_grouplens(tmp_path)
    log = tmp_path / "ml.msgpack.gz"
    assert write_log(log, read_movielens(tmp_path)) == len(RATINGS)
    assert list(read_log(log)) == list(read_movielens(tmp_path))


def test_unknown_layout_names_both(tmp_path):
    (tmp_path / "ratings.csv").write_text("1,2,3\n")
    with pytest.raises(MovieLensError) as error:
        read_movielens(tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message and ".inter" in message and "u.data" in message
    assert isinstance(error.value, LogError)  # callers can catch one error type for all inputs
    with pytest.raises(MovieLensError, match="not a directory"):
        read_movielens(tmp_path / "absent")


def test_malformed_files_name_the_line(tmp_path):
    write_grouplens(tmp_path)
    with open(tmp_path / "u.data", "a") as file:
        file.write("3\t1\tfive\t880000000\n")
    with pytest.raises(MovieLensError, match=r"u.data: line 9: 'five' is not a number"):
        read_movielens(tmp_path)

    write_grouplens(tmp_path)
    with open(tmp_path / "u.item", "a", encoding="latin-1") as file:
        file.write("8|Too Short|01-Jan-1990\n")
    with pytest.raises(MovieLensError, match=r"u.item: line 8: expected 24"):
        read_movielens(tmp_path)

    write_grouplens(tmp_path)
    with open(tmp_path / "u.item", "a", encoding="latin-1") as file:
        file.write("|".join(["8", "Bad Date", "1990-01-01", "", "", *["0"] * 19]) + "\n")
    with pytest.raises(MovieLensError, match=r"line 8: release date '1990-01-01'"):
        read_movielens(tmp_path)


def test_rating_of_an_unlisted_movie(tmp_path):
    write_recbole(tmp_path)
    with open(tmp_path / "tiny.inter", "a") as file:
        file.write("9\t99\t4\t880000000\n")
    with pytest.raises(MovieLensError, match="movie 99"):
        read_movielens(tmp_path)


def test_recbole_header_without_needed_columns(tmp_path):
    write_recbole(tmp_path)
    (tmp_path / "tiny.inter").write_text("user_id:token\titem_id:token\n1\t1\n")
    with pytest.raises(MovieLensError, match="rating, timestamp"):
        read_movielens(tmp_path)


@pytest.fixture(scope="module")
def ml_100k():
    return list(read_movielens(ML_100K))


@needs_ml_100k
def test_ml_100k_counts_and_validity(ml_100k):
    assert len(ml_100k) == 100_000
    assert len({event.user_id for event in ml_100k}) == 943
    assert len({event.item_id for event in ml_100k}) == 1682
    assert len({event.event_id for event in ml_100k}) == 100_000
    assert ml_100k == sorted(ml_100k, key=lambda event: (event.ts, event.event_id))
    for event in ml_100k:
        assert decode_play_event(encode_play_event(event, "msgpack"), "msgpack") == event
    assert ms(1997, 9) <= ml_100k[0].ts and ml_100k[-1].ts < ms(1998, 5)
    assert {event.duration_s for event in ml_100k} == {7200.0}


@needs_ml_100k
def test_ml_100k_action_distribution_is_not_degenerate(ml_100k):
    actions = Counter(event.action for event in ml_100k)
    assert set(actions) == {"new_release", "explore", "favorite_genre", "recent_genre"}
    assert all(0.1 < count / len(ml_100k) < 0.4 for count in actions.values()), actions
    first_of_each_user = {}
    for event in ml_100k:
        first_of_each_user.setdefault(event.user_id, event)
    assert {event.action for event in first_of_each_user.values()} <= {"new_release", "explore"}
