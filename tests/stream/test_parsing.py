"""Option values from text."""
from __future__ import annotations

import pytest

from stream.parsing import parse_duration


@pytest.mark.parametrize(
    "text, seconds",
    [("30d", 2_592_000.0), ("1h", 3600.0), ("90s", 90.0), ("500ms", 0.5), ("1h30m", 5400.0),
     ("2w", 1_209_600.0), ("10", 10.0), ("0.25", 0.25), ("1.5h", 5400.0)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "3x", "1 h", "h", "1h30", "ms500", "-5s", "1d-2h"])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)
