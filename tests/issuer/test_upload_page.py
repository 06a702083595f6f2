"""The page `postbox-issuer grant --format html` writes, driven in a real headless Chromium.

The page is opened from a file (origin "null"), so the bucket must allow it by CORS, as the
README tells operators. Debian's chromium and chromium-driver; selenium speaks WebDriver to them.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from demo.stores import Store, s3_client
from issuer.cli import main
from tests.conftest import ROOT, require_tool

ARTIFACTS = ROOT / ".test-artifacts"  # screenshots for people (gitignored)
CORS = {
    "CORSRules": [{"AllowedOrigins": ["*"], "AllowedMethods": ["POST"], "AllowedHeaders": ["*"]}]
}


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    chromium, chromedriver = require_tool("chromium"), require_tool("chromedriver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-quic",
        f"--user-data-dir={tmp_path_factory.mktemp('chromium')}",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    try:
        yield driver
    finally:
        driver.quit()


def page(store: Store, bucket: str, tmp_path: Path, *options: str) -> Path:
    out = tmp_path / "upload.html"
    argv = ["grant", "--bucket", bucket, "--prefix", "shared/", "--expires", "10m", *options]
    argv += ["--endpoint-url", store.endpoint, "--region", store.region, "--format", "html"]
    assert main([*argv, "-o", str(out)]) == 0
    return out


def upload(browser: webdriver.Chrome, html: Path, *files: Path) -> list[str]:
    browser.get(html.as_uri())
    browser.find_element(By.ID, "files").send_keys("\n".join(str(f) for f in files))
    browser.find_element(By.ID, "send").click()
    results = browser.find_element(By.ID, "results")
    WebDriverWait(browser, 30).until(lambda _: results.get_attribute("data-done") == "true")
    return [item.text for item in results.find_elements(By.TAG_NAME, "li")]


def test_the_page_uploads_several_files_straight_to_the_bucket(
    browser: webdriver.Chrome, store: Store, s3: Any, bucket: str, tmp_path: Path
) -> None:
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=CORS)
    files = [tmp_path / "a.csv", tmp_path / "b c.txt"]
    for i, path in enumerate(files):
        path.write_bytes(b"file %d\n" % i)
    html = page(store, bucket, tmp_path, "--max-size", "1KiB")
    shown = upload(browser, html, *files)
    assert shown == ["a.csv: uploaded as shared/a.csv", "b c.txt: uploaded as shared/b c.txt"]
    assert s3.get_object(Bucket=bucket, Key="shared/a.csv")["Body"].read() == b"file 0\n"
    assert s3.get_object(Bucket=bucket, Key="shared/b c.txt")["Body"].read() == b"file 1\n"
    where = browser.find_element(By.ID, "where").text
    assert "under shared/, 0 bytes to 1 KiB each, until " in where and "(your time)" in where


def test_the_page_sets_each_key_itself_shows_the_note_and_a_progress_bar_per_file(
    browser: webdriver.Chrome, store: Store, s3: Any, bucket: str, tmp_path: Path
) -> None:
    """A file named a;b.csv lands as shared/a;b.csv on both servers: the page sets the key, not
    the store's ${filename}. The screenshot is kept in .test-artifacts/ for people to look at."""
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=CORS)
    files = [tmp_path / "a;b.csv", tmp_path / "big.bin"]
    files[0].write_bytes(b"x;y\n")
    files[1].write_bytes(b"z" * 3 * 1024 * 1024)
    html = page(store, bucket, tmp_path, "--max-size", "10MiB", "--note", "results of <run 7>")
    shown = upload(browser, html, *files)
    assert shown == ["a;b.csv: uploaded as shared/a;b.csv", "big.bin: uploaded as shared/big.bin"]
    assert s3.get_object(Bucket=bucket, Key="shared/a;b.csv")["Body"].read() == b"x;y\n"
    assert browser.find_element(By.ID, "note").text == "results of <run 7>"
    bars = browser.find_elements(By.CSS_SELECTOR, "#results progress")
    value, total = (float(bars[1].get_attribute(a) or 0) for a in ("value", "max"))
    assert value == total >= files[1].stat().st_size  # the whole form was sent: full bar
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"upload-page-{store.kind}.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 1000


def test_the_page_refuses_a_file_outside_the_size_range_before_sending(
    browser: webdriver.Chrome, store: Store, s3: Any, bucket: str, tmp_path: Path
) -> None:
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=CORS)
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * 2000)
    shown = upload(browser, page(store, bucket, tmp_path, "--max-size", "1KiB"), big)
    assert shown == ["big.bin: not uploaded: 2000 bytes is outside 0 bytes to 1 KiB"]
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket)


def test_the_page_shows_the_stores_refusal(
    browser: webdriver.Chrome, rgw_store: Store, tmp_path: Path
) -> None:
    """RGW: a tampered signature is refused with 403 AccessDenied, and the page says so
    (moto would accept it)."""
    s3 = s3_client(rgw_store)
    s3.create_bucket(Bucket="page-refusal")
    s3.put_bucket_cors(Bucket="page-refusal", CORSConfiguration=CORS)
    html = page(rgw_store, "page-refusal", tmp_path)
    text = html.read_text()
    embedded = re.search(r'id="grant">(.*?)</script>', text, re.S)
    assert embedded is not None
    signature = json.loads(embedded.group(1))["fields"]["x-amz-signature"]
    html.write_text(text.replace(signature, signature[:-1] + "01"[signature[-1] == "0"]))
    data = tmp_path / "a.txt"
    data.write_bytes(b"a")
    (shown,) = upload(browser, html, data)
    assert shown.startswith("a.txt: not uploaded: 403 AccessDenied"), shown


def test_the_page_sends_each_files_type_sha256_and_time(
    browser: webdriver.Chrome, store: Store, s3: Any, bucket: str, tmp_path: Path
) -> None:
    """The grant requires them of each object (by default): the browser's type for the file,
    its SHA-256 (Web Crypto) and its time in rclone's format (milliseconds)."""
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration=CORS)
    data = tmp_path / "report.html"
    data.write_bytes(b"<h1>report</h1>\n")
    os.utime(data, ns=(1765130400_250_000_000, 1765130400_250_000_000))
    shown = upload(browser, page(store, bucket, tmp_path), data)
    assert shown == ["report.html: uploaded as shared/report.html"]
    head = s3.head_object(Bucket=bucket, Key="shared/report.html")
    assert head["ContentType"] == "text/html"
    assert head["Metadata"] == {
        "sha256": hashlib.sha256(b"<h1>report</h1>\n").hexdigest(),
        "mtime": "1765130400.25",
    }
