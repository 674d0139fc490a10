"""Draw docs/web-page.png: the web page of a trained project, after an upload, a chosen word and a search.

    python tests/make_web_screenshot.py PROJECT_DIR [--image IMAGE] [--word N] [--query TEXT] [--out PNG]

PROJECT_DIR is a project whose `dvc repro` has run (its params.yaml, data/train/best.pt, feature
cache and prepared table); the page searches its dataset. Uses the same headless chromium as
tests/test_app.py.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from selenium.webdriver.common.by import By

from pipeline.commands.app import Service, create_app
from pipeline.config import TrainConfig, load_section
from tests.test_app import open_browser, serve, wait_for


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--image", default="data/shapes/images/img_00007.png", help="relative to the project")
    parser.add_argument("--word", type=int, default=1, help="which caption word's heat map to show")
    parser.add_argument("--query", default="a red circle to the left of a blue square")
    parser.add_argument("--out", type=Path, default=Path("docs/web-page.png").resolve())
    args = parser.parse_args()
    os.chdir(args.project)
    url, server, thread = serve(create_app(Service(Path(load_section(TrainConfig).checkpoint), None, "cpu")))
    browser = open_browser(1200, 1500)
    try:
        browser.get(url)
        wait_for(browser, lambda b: "photos to search" in b.find_element(By.ID, "status").text, 600)
        browser.find_element(By.ID, "photo").send_keys(str(Path(args.image).resolve()))
        wait_for(browser, lambda b: b.find_element(By.ID, "caption").text, 60)
        browser.find_elements(By.CSS_SELECTOR, "#words button")[args.word].click()
        browser.find_element(By.ID, "query").send_keys(args.query)
        browser.find_element(By.CSS_SELECTOR, "#search button").click()
        wait_for(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, "#results figure")) >= 8, 120)
        wait_for(browser, lambda b: b.execute_script(
            "return [...document.images].every(i => i.complete && i.naturalWidth > 0)"), 60)
        browser.save_screenshot(str(args.out))
        print(f"screenshot: {args.out}")
    finally:
        browser.quit()
        server.should_exit = True
        thread.join(timeout=10)


if __name__ == "__main__":
    main()
