"""The page in a real headless Chromium (Debian's chromium and chromium-driver, which .ci/run
installs): it shows a user's current intent and follows it live as new updates arrive."""
from __future__ import annotations

import shutil

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from tests.stream.lookup.updates import update

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture
def browser():
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if shutil.which(path) is None]
    assert not missing, f"{', '.join(missing)} missing: apt-get install chromium chromium-driver (as .ci/run does)"
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    yield driver
    driver.quit()


def genre_shown(browser) -> tuple[str, str, str]:
    """(top genre label, genre weight bar, updates drawn in the history chart) as the page shows them."""
    label = browser.find_element(By.CSS_SELECTOR, '#top-labels li[data-task="genre"]').get_attribute("data-label")
    weight = browser.find_element(By.CSS_SELECTOR, '#weights .bar[data-task="genre"]').get_attribute("data-weight")
    return label, weight, browser.find_element(By.ID, "history").get_attribute("data-updates")


def wait_for(browser, expected: tuple[str, str, str]) -> None:
    def shown(_driver):
        try:
            return genre_shown(browser) == expected
        except Exception:  # noqa: BLE001 - not drawn yet
            return False

    try:
        WebDriverWait(browser, 15, poll_frequency=0.1).until(shown)
    except Exception:
        pytest.fail(f"the page shows {genre_shown(browser) if _drawn(browser) else 'nothing'}, not {expected}; "
                    f"status: {browser.find_element(By.ID, 'status').text!r}")


def _drawn(browser) -> bool:
    return bool(browser.find_elements(By.CSS_SELECTOR, '#top-labels li[data-task="genre"]'))


def test_the_page_shows_a_user_s_intent_and_follows_it_live(served, browser):
    served.table.apply(update("u1", ts=1_000, label="drama", weight_of_genre=0.25))
    served.table.apply(update("u2", ts=1_000, label="horror"))
    served.follower.ready.set()
    browser.get(f"{served.url}/?user=u1")
    wait_for(browser, ("drama", "0.25", "1"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#weights .bar")) == 4
    assert [item.get_attribute("data-item") for item in browser.find_elements(By.CSS_SELECTOR, "#next-items li")] == [
        "item-1000", "item-0"]  # fmt: skip
    assert {link.text for link in browser.find_elements(By.CSS_SELECTOR, "#picker a")} == {"u1", "u2"}

    served.table.apply(update("u1", ts=2_000, label="comedy", weight_of_genre=0.625))  # the stream moves on
    wait_for(browser, ("comedy", "0.625", "2"))
    assert len(browser.find_elements(By.CSS_SELECTOR, "#history polyline")) == 4


def test_the_page_says_when_a_user_is_unknown(served, browser):
    served.follower.ready.set()
    browser.get(f"{served.url}/?user=nobody")
    WebDriverWait(browser, 15).until(lambda _: "no update for this user" in browser.find_element(By.ID, "status").text)
