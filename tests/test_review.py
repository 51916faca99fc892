"""The review page (recipes/review.py): a keyboard-only review in headless Chromium that survives a restart, no
decision lost under concurrent posts, the safety rules, axe-core's accessibility check, and exports that train.

The alt-text folder is written once by alt_text.py (the tiny model, three embedded photos) and copied per test;
the folders with chosen texts (markup, a second model) are written through the package's own writers."""

from __future__ import annotations

import csv
import http.client
import json
import shutil
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from axe_playwright_python.sync_playwright import Axe
from datasets import Image, List, load_dataset
from fastapi.testclient import TestClient
from PIL import Image as PILImage
from playwright.sync_api import sync_playwright

from alt_text_recipes.outputs.alt_text_files import AltTextRecord, write_jsonl
from alt_text_recipes.outputs.catalogue import CatalogueImage, CatalogueOutput, content_hash
from alt_text_recipes.outputs.review_app import MAX_BODY, bound_socket, create_app, make_server, token_for
from alt_text_recipes.outputs.review_exports import review_summary
from alt_text_recipes.outputs.review_store import REVIEWS_FILE, ReviewStore

from conftest import DATASET, TINY_MODELS, run_recipe

PHOTOS = ("test_0000.jpg", "test_0001.jpg", "test_0002.jpg")
INJECTED = '<script>window.__injected = 1</script><img src="x" onerror="window.__injected = 2">'


@pytest.fixture(scope="module")
def alt_text_dir(tmp_path_factory) -> Path:
    """The folder alt_text.py writes for three embedded photos with the tiny model (each test takes a copy)."""
    root = tmp_path_factory.mktemp("review")
    photos = root / "photos"
    photos.mkdir()
    for name in PHOTOS:
        shutil.copy(DATASET / "test" / name, photos / name)
    result = run_recipe(
        "alt_text", "--model", str(TINY_MODELS["opt"]), "--images", str(photos), "--output_dir", str(root / "alt")
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root / "alt"


@pytest.fixture
def folder(alt_text_dir, tmp_path) -> Path:
    """A copy of the alt-text folder: the same photos, so the same keys."""
    return Path(shutil.copytree(alt_text_dir, tmp_path / "alt"))


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")
    assert chromium, "Debian chromium is missing: `make test` installs it (make browser)"
    with sync_playwright() as playwright:  # Debian's chromium: playwright's own browser builds are a download
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        yield browser
        browser.close()


@contextmanager
def served(folder: Path, token: str | None = None, title: str = "Alt text review") -> Iterator[str]:
    """The review app of `folder` on a free loopback port, in a thread, until the block ends; its address."""
    store = ReviewStore(folder)
    sock = bound_socket("127.0.0.1", 0)
    server = make_server(create_app(store, token, title), log_level="warning")
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the review server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        assert not thread.is_alive(), "the review server did not stop"
        store.close()
        sock.close()


def reviews(folder: Path) -> list[dict]:
    lines = (folder / REVIEWS_FILE).read_text().splitlines()
    return [json.loads(line) for line in lines]  # every line whole: json.loads raises on a torn one


def listing(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "alt_text.jsonl").read_text().splitlines()]


def write_alt_text_folder(folder: Path, texts: dict[Path, str], model: str = "model-a") -> Path:
    """An alt-text folder as alt_text.py writes it (its catalogue log, then alt_text.jsonl), with chosen texts."""
    log = CatalogueOutput(folder).open_log(0)
    records = []
    for path, text in texts.items():
        image = CatalogueImage(path, content_hash(path))
        log.append(
            [{"resolved": image.key[0], "sha256": image.sha256, "alt_text": text, "generated": text, "size": [8, 8]}]
        )
        records.append(AltTextRecord(str(path), text, text, image.sha256, 8, 8))
    log.close()
    write_jsonl(records, {"model": model, "prompt": ""}, folder / "alt_text.jsonl")
    return folder


def photo(path: Path, colour: tuple[int, int, int]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.new("RGB", (8, 8), colour).save(path)
    return path


def focused(page) -> dict:
    return page.evaluate(
        "(() => { const e = document.activeElement, s = getComputedStyle(e);"
        " return {id: e.id, tag: e.tagName, text: e.textContent.trim(), value: e.value,"
        " outline: s.outlineStyle + ' ' + s.outlineWidth}; })()"
    )


def tab_to(page, wanted: str, limit: int = 20) -> list[dict]:
    """Press Tab until the element with id `wanted` (or, for a tag name in capitals, the first such element) has
    the focus; each element the focus went through."""
    path = []
    for _ in range(limit):
        page.keyboard.press("Tab")
        path.append(focused(page))
        if wanted in (path[-1]["id"], path[-1]["tag"]):
            return path
    raise AssertionError(f"Tab never reached {wanted}: {path}")


def wait_for_status(page, index: int, status: str) -> None:
    page.wait_for_selector(f'#photos li:nth-child({index + 1})[data-status="{status}"]', timeout=10_000)


def test_a_keyboard_only_review_is_saved_at_once_and_shown_after_a_restart(folder, browser):
    generated = [row["alt_text"] for row in listing(folder)]
    with served(folder) as address:
        page = browser.new_page()
        page.goto(address)
        page.wait_for_selector("#photos li")
        order = tab_to(page, "text-0")
        assert [step["tag"] for step in order[-2:]] == ["INPUT", "TEXTAREA"]  # the filter, then the first field
        page.keyboard.press("Tab")
        assert focused(page)["text"] == "Accept" and focused(page)["outline"] == "solid 3px"  # a visible focus
        page.keyboard.press("Enter")
        wait_for_status(page, 0, "accepted")
        assert focused(page)["id"] == "text-1"  # the review goes on with the next photo
        page.keyboard.press("Control+A")
        page.keyboard.type("Three plates on a table")
        page.keyboard.press("Tab")
        page.keyboard.press("Tab")
        assert focused(page)["text"] == "Save edit"
        page.keyboard.press("Enter")
        wait_for_status(page, 1, "edited")
        assert focused(page)["id"] == "text-2"
        for _ in range(3):
            page.keyboard.press("Tab")
        assert focused(page)["text"] == "Reject"
        page.keyboard.press("Space")
        wait_for_status(page, 2, "rejected")
        assert page.text_content("#progress") == "3 of 3 reviewed"
        assert [(r["decision"], r["text"]) for r in reviews(folder)] == [
            ("accepted", generated[0]),
            ("edited", "Three plates on a table"),
            ("rejected", None),
        ]
    with served(folder) as address:  # a new server, reading the folder afresh
        page.goto(address)
        page.wait_for_selector("#photos li")
        statuses = page.eval_on_selector_all("#photos li", "items => items.map(i => i.dataset.status)")
        assert statuses == ["accepted", "edited", "rejected"]
        assert page.input_value("#text-1") == "Three plates on a table"
        assert page.text_content("#progress") == "3 of 3 reviewed"
        tab_to(page, "INPUT")  # the filter's checked choice, "All"
        for _ in range(3):  # All -> Unreviewed -> Accepted -> Edited
            page.keyboard.press("ArrowRight")
        assert page.eval_on_selector_all("#photos li h3", "hs => hs.map(h => h.textContent)") == [PHOTOS[1]]
        page.close()


def test_axe_core_finds_no_accessibility_violations(folder, browser):
    store = ReviewStore(folder)
    state = store.state()
    store.record(state[0]["name"], state[0]["sha256"], "edited", "A plate of food")
    store.record(state[1]["name"], state[1]["sha256"], "rejected")
    store.close()
    with served(folder) as address:
        page = browser.new_page()
        page.goto(address)
        page.wait_for_selector("#summary tbody th")
        results = Axe().run(page)
        page.close()
    print(f"axe-core {results.response['testEngine']['version']}: {results.violations_count} violations")
    assert results.violations_count == 0, results.generate_report()
    assert len(results.response["passes"]) > 20  # it checked the page (names, labels, contrast, headings, ...)


def test_markup_in_alt_text_is_shown_as_text_never_run(tmp_path, browser):
    name = photo(tmp_path / "photos" / "<b>plate</b>.png", (200, 30, 30))
    folder = write_alt_text_folder(tmp_path / "alt", {name: INJECTED})
    title = "<script>window.__injected = 3</script>"
    with served(folder, title=title) as address:
        assert "Content-Security-Policy" in httpx.get(address).headers
        # Without the policy, so that the page's own way of showing text is what is tested.
        context = browser.new_context(bypass_csp=True)
        page = context.new_page()
        page.goto(address)
        page.wait_for_selector("#photos li")
        page.wait_for_timeout(300)  # an injected image's onerror would have fired
        assert page.evaluate("window.__injected") is None
        assert page.input_value("#text-0") == INJECTED
        assert page.get_attribute("#photos img", "alt") == INJECTED
        assert page.text_content("#photos h3") == name.name
        assert page.title() == title and page.text_content("h1") == title
        assert page.locator("script").count() == 1  # the page's own review.js
        assert page.locator("#photos [onerror], #photos b").count() == 0
        context.close()


def test_fifty_decisions_from_clients_of_two_servers_at_once_are_all_saved(folder):
    state = ReviewStore(folder).state()
    decisions, clients = 50, 6
    texts = [f"edit {i} of photo {i % 3}" for i in range(decisions)]
    with served(folder) as first, served(folder) as second:  # two editors' servers on one folder

        def post(client_index: int) -> list[int]:
            with httpx.Client(base_url=(first, second)[client_index % 2], timeout=30) as client:
                return [
                    client.post(
                        "api/decisions",
                        json={
                            "name": state[i % 3]["name"],
                            "sha256": state[i % 3]["sha256"],
                            "decision": "edited",
                            "text": texts[i],
                        },
                    ).status_code
                    for i in range(client_index, decisions, clients)
                ]

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=clients) as pool:
            codes = [code for answer in pool.map(post, range(clients)) for code in answer]
        seconds = time.perf_counter() - started
    print(f"{decisions} decisions from {clients} clients over 2 servers in {seconds:.2f} s")
    assert codes == [200] * decisions
    saved = reviews(folder)
    assert sorted(entry["text"] for entry in saved) == sorted(texts)  # all 50, each whole
    last = {}
    for entry in saved:
        last[entry["path"]] = entry["text"]
    assert [row["text"] for row in ReviewStore(folder).state()] == [last[row["name"]] for row in state]


def test_only_the_listed_photos_are_served(tmp_path):
    inside = photo(tmp_path / "photos" / "plate.png", (0, 0, 255))
    secret = photo(tmp_path / "secret.png", (1, 2, 3))
    link = tmp_path / "photos" / "link.png"
    link.symlink_to(secret)
    photo(tmp_path / "photos" / "unlisted.png", (9, 9, 9))
    folder = write_alt_text_folder(tmp_path / "alt", {inside: "A blue square", link: "A dark square"})
    client = TestClient(create_app(ReviewStore(folder)), base_url="http://127.0.0.1")
    assert client.get("/photos/plate.png").content == inside.read_bytes()
    for path, status in [
        ("/photos/..%2Fsecret.png", 403),
        ("/photos/%2E%2E/secret.png", 403),
        (f"/photos/{secret}", 403),  # absolute
        ("/photos/link.png", 403),  # listed, but a link out of the photos' folder
        ("/photos/unlisted.png", 404),
        ("/static/..%2Freview_store.py", 404),
    ]:
        answer = client.get(path)
        assert answer.status_code == status, (path, answer.status_code)
        assert secret.read_bytes() not in answer.content
    with served(folder) as address:  # a raw '..' that no client library normalises away
        connection = http.client.HTTPConnection("127.0.0.1", int(address.rsplit(":", 1)[1].strip("/")))
        connection.request("GET", "/photos/../secret.png")
        assert connection.getresponse().status == 403
        connection.close()


def test_a_token_is_needed_off_loopback_and_requests_are_capped(folder):
    assert token_for("127.0.0.1", None) is None and token_for("::1", None) is None
    token = token_for("0.0.0.0", None)
    assert token and token_for("0.0.0.0", "given") == "given"
    store = ReviewStore(folder)
    remote = TestClient(create_app(store, token, local=False), base_url="http://editors-machine")
    assert remote.get("/").status_code == 401 and remote.get("/api/photos").status_code == 401
    assert remote.get("/api/photos", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert remote.get("/api/photos", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert remote.get(f"/?token={token}").status_code == 200  # the printed address; the cookie carries it on
    assert remote.get("/api/photos").status_code == 200
    # Bound to a loopback address, a request addressed to another host (DNS rebinding) is refused.
    local = TestClient(create_app(store), base_url="http://127.0.0.1")
    assert local.get("/", headers={"Host": "attacker.example"}).status_code == 403
    photo_ = store.state()[0]
    decision = {"name": photo_["name"], "sha256": photo_["sha256"], "decision": "edited"}
    oversized = json.dumps({**decision, "text": "x" * MAX_BODY})
    assert (
        local.post("/api/decisions", content=oversized, headers={"Content-Type": "application/json"}).status_code
        == 413
    )
    chunks = (part.encode() for part in (oversized[:40000], oversized[40000:]))  # chunked: no Content-Length
    assert (
        local.post("/api/decisions", content=chunks, headers={"Content-Type": "application/json"}).status_code == 413
    )
    # A form on another site can post text/plain without asking first; a decision is JSON only.
    assert (
        local.post("/api/decisions", content=json.dumps(decision), headers={"Content-Type": "text/plain"}).status_code
        == 415
    )
    assert local.post("/api/decisions", json={**decision, "sha256": "0" * 64}).status_code == 409
    assert not (folder / REVIEWS_FILE).exists()
    store.close()


def test_reviews_follow_the_photos_and_the_summary_reads_per_model(tmp_path):
    photos = [photo(tmp_path / "photos" / f"{i}.png", (i * 80, 0, 0)) for i in range(3)]
    texts = ["A red square", "A cat on a mat", "A dark square"]
    folder = write_alt_text_folder(tmp_path / "alt", dict(zip(photos, texts, strict=True)))
    store = ReviewStore(folder)
    names = [row["name"] for row in store.state()]
    store.record(names[0], content_hash(photos[0]), "accepted")
    store.record(names[1], content_hash(photos[1]), "edited", "A cat on a hat")  # 1 character changed
    with (folder / REVIEWS_FILE).open("a") as file:
        file.write('{"resolved": "/torn", "sha2')  # another server, killed mid-write
    assert [row["status"] for row in store.state()] == ["accepted", "edited", "unreviewed"]  # the torn line ignored
    store.record(names[2], content_hash(photos[2]), "rejected")  # cut before this line is appended
    store.close()
    assert [entry["decision"] for entry in reviews(folder)] == ["accepted", "edited", "rejected"]
    with (folder / REVIEWS_FILE).open("a") as file:
        file.write('{"resolved": "/torn", "sha2')  # and again, before a restart
    # Photo 0 edited (new bytes); photo 2's alt text written again by another model; photo 1 unchanged.
    photo(photos[0], (1, 200, 1))
    write_alt_text_folder(folder, dict(zip(photos, [*texts[:2], "A black square"], strict=True)), model="model-b")
    store = ReviewStore(folder)
    assert [(row["status"], row["note"] != "") for row in store.state()] == [
        ("unreviewed", False),
        ("edited", False),
        ("unreviewed", True),
    ]
    store.record(names[2], content_hash(photos[2]), "accepted")
    store.close()
    assert len(reviews(folder)) == 4
    summary = review_summary(ReviewStore(folder))
    assert summary["statuses"] == {"unreviewed": 1, "accepted": 1, "edited": 1, "rejected": 0}
    a, b = summary["models"]["model-a"], summary["models"]["model-b"]
    assert (a["reviewed"], a["accept_rate"], a["edit_rate"], a["reject_rate"]) == (3, 0.3333, 0.3333, 0.3333)
    assert (a["mean_edit_distance"], a["mean_edit_distance_of_edits"]) == (0.5, 1.0)
    assert (b["reviewed"], b["accept_rate"], b["mean_edit_distance"]) == (1, 1.0, 0.0)


def test_the_exports_train_load_and_publish(folder, tmp_path):
    store = ReviewStore(folder)
    state = store.state()
    store.record(state[0]["name"], state[0]["sha256"], "accepted")
    store.record(state[1]["name"], state[1]["sha256"], "edited", "Three plates of food")
    store.record(state[2]["name"], state[2]["sha256"], "rejected")
    store.close()
    captions, pairs = tmp_path / "export" / "reviewed.csv", tmp_path / "pairs.jsonl"
    result = run_recipe(
        "review", "--alt_text_dir", str(folder), "--export_captions", str(captions),
        "--export_preferences", str(pairs), "--publish_reviewed",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 reviewed captions" in result.stdout and "1 preference pairs" in result.stdout
    with captions.open() as file:
        rows = list(csv.DictReader(file))
    assert [row["text"] for row in rows] == [state[0]["generated"], "Three plates of food"]
    assert [Path(row["image"]).name for row in rows] == list(PHOTOS[:2])
    preferences = load_dataset("json", data_files=str(pairs), split="train")
    assert set(preferences.column_names) == {"images", "prompt", "chosen", "rejected"}
    assert (preferences[0]["chosen"], preferences[0]["rejected"]) == ("Three plates of food", state[1]["generated"])
    assert preferences.cast_column("images", List(Image()))[0]["images"][0].size == (128, 128)
    # Published: the reviewed text in alt_text.jsonl / .csv, the rejected photo out; the review still reads.
    assert [(row["alt_text"], row["review"]) for row in listing(folder)] == [
        (state[0]["generated"], "accepted"),
        ("Three plates of food", "edited"),
    ]
    with (folder / "alt_text.csv").open() as file:
        assert [row["alt_text"] for row in csv.DictReader(file)] == [state[0]["generated"], "Three plates of food"]
    assert [row["status"] for row in ReviewStore(folder).state()] == ["accepted", "edited", "rejected"]
    summary = json.loads((folder / "review_summary.json").read_text())
    assert summary["reviewed"] == 3 and list(summary["models"]) == [str(TINY_MODELS["opt"])]

    output_dir = tmp_path / "lora"
    trained = run_recipe(
        "lora", "--config", "recipes/configs/tiny/lora.yaml", "--dataset_name", str(captions),
        "--output_dir", str(output_dir), "--max_steps", "3", "--logging_steps", "1",
    )  # fmt: skip
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert (output_dir / "adapter_model.safetensors").exists()


def test_the_command_line(tmp_path):
    help_text = run_recipe("review", "--help").stdout
    for flag in ("--alt_text_dir", "--host", "--port", "--token", "--export_captions", "--export_preferences",
                 "--publish_reviewed"):  # fmt: skip
        assert flag in help_text
    missing = run_recipe("review", "--alt_text_dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "no such folder" in missing.stderr
    empty = run_recipe("review", "--alt_text_dir", str(tmp_path))
    assert empty.returncode == 1 and "holds no alt_text.jsonl" in empty.stderr
