"""The whole app in a real headless Chromium: `streamlit run` on a free port, driven by Playwright."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

import images_zoo as zoo
from captioner.demo.quality import demo_inputs
from captioner.feedback import FeedbackLog
from conftest import ROOT, needs
from local_servers import free_port, stop, wait_healthy

pytestmark = pytest.mark.browser
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS", ROOT / "test-artifacts"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-dev-shm-usage",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip


@contextmanager
def streamlit_app(home: Path, **env: str):
    """`streamlit run` of the app on a free port, CAPTIONER_HOME at home (offline, plus env); yields its URL."""
    port = free_port()
    env = {**os.environ, "CAPTIONER_HOME": str(home), "HF_HUB_OFFLINE": "1", **env}
    env.pop("CAPTIONER_CAPTION_MODEL", None)  # the default model: offline, the app must fall back and say so
    with open(home / "streamlit.log", "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "streamlit_app.py", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(f"{url}/_stcore/health", process, "streamlit", home / "streamlit.log", timeout=90)
            yield url
        finally:
            stop(process)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    needs("streamlit")
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (`make test` installs it with apt-get)")
    home = tmp_path_factory.mktemp("browser-home")
    gallery = home / "data" / "gallery"  # the default gallery folder
    gallery.mkdir(parents=True)
    for item in demo_inputs(30, seed=3)[0]:
        (gallery / item.name).write_bytes(item.data)
    with streamlit_app(home) as url:
        yield url, home


@pytest.fixture(scope="module")
def browser():
    needs("playwright")
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=90_000)  # a cold first page run loads models; CI machines are slow

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def settle(page):
    """Wait until the script run under way has ended and its layout stopped moving: a click during a rerun can land
    on an element that the run then moves (a progress bar appears above it, a card is redrawn) and be lost."""
    from playwright.sync_api import expect

    page.wait_for_timeout(200)  # the rerun a key press or click asks for has begun
    expect(page.get_by_test_id("stStatusWidget")).to_have_count(0)  # shown while a script run is under way
    page.wait_for_timeout(300)


def test_a_deep_link_opened_first_shows_the_page_inside_the_app(server, browser):
    from playwright.sync_api import expect

    url, _ = server  # this server has served nothing yet: the first request is the deep link
    page = browser.new_page()
    page.set_default_timeout(90_000)
    page.goto(f"{url}/chat")
    expect(page.get_by_text("Chat about an image").first).to_be_visible()
    expect(page.get_by_text("Live models")).to_be_visible()
    navigation = page.locator('[data-testid="stSidebarNav"]')
    expect(navigation).to_contain_text("Search")
    expect(navigation.locator("a")).to_have_count(4)  # the app's four pages: no helper module, no "streamlit app"
    expect(navigation).not_to_contain_text("streamlit app")
    page.close()


def test_upload_caption_and_save_a_correction_in_chromium(server, browser, tmp_path):
    from playwright.sync_api import expect

    url, home = server
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.set_default_timeout(90_000)
    page.goto(url)
    expect(page.get_by_text("Caption images").first).to_be_visible()
    expect(page.get_by_text("Fallback to the demo captioner")).to_be_visible()

    picture = tmp_path / "blue-square.png"
    picture.write_bytes(zoo.encode(zoo.demo("square", "blue", 240), "PNG"))
    page.locator("input[type=file]").first.set_input_files(str(picture))
    caption = page.get_by_label("Caption", exact=True)
    expect(caption).to_have_value("a blue square")

    settle(page)
    caption.fill("a navy blue square")
    caption.press("Control+Enter")
    settle(page)
    save = page.get_by_role("button", name="Save correction", exact=True)
    expect(save).to_have_count(1)  # a busy machine can still show the card's stale copy beside the redrawn one
    save.click()
    expect(page.get_by_text("Correction saved.")).to_be_visible()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "caption-page.png"), full_page=True)

    rows, problems = FeedbackLog(home / "data").read()
    assert problems == []
    assert [(r.model_output, r.correction, r.model) for r in rows] == [("a blue square", "a navy blue square", "demo")]
    assert (home / "data" / rows[0].image_path).read_bytes() == picture.read_bytes()

    navigation = page.locator('[data-testid="stSidebarNav"]')  # away and back: Streamlit empties the uploader
    navigation.get_by_role("link", name="Chat").click()
    expect(page.get_by_text("Chat about an image").first).to_be_visible()
    settle(page)
    navigation.get_by_role("link", name="Caption").click()
    expect(page.get_by_label("Caption", exact=True)).to_have_value("a navy blue square")  # the upload is still here
    expect(page.get_by_text("Correction saved.")).to_be_visible()
    expect(page.get_by_text("1 image(s) uploaded earlier in this session are still here.")).to_be_visible()
    page.close()


def test_keyboard_only_a_correction_is_saved_for_the_image_whose_box_was_typed_in_chromium(server, browser, tmp_path):
    """Ctrl+Enter in a box right after the captions came, then Tab and Enter: the run that captioned drew a progress
    bar above the cards, and the next one must not shift them (the focus moved to the next card's box, whose Save
    correction or Looks right the Enter then pressed: a row logged for another image)."""
    from playwright.sync_api import expect

    from captioner.images import ImageInput

    url, home = server
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.set_default_timeout(90_000)
    page.goto(url)
    files = []
    for shape, color in (("circle", "green"), ("square", "yellow"), ("triangle", "red")):
        files.append(tmp_path / f"keys-{color}-{shape}.png")
        files[-1].write_bytes(zoo.encode(zoo.demo(shape, color, 210), "PNG"))
    page.locator("input[type=file]").first.set_input_files([str(f) for f in files])
    boxes = page.get_by_label("Caption", exact=True)
    expect(boxes).to_have_count(3)
    expect(boxes.nth(2)).to_have_value("a red triangle")
    settle(page)
    boxes.nth(1).fill("a golden square")
    boxes.nth(1).press("Control+Enter")
    settle(page)
    expect(boxes.nth(1)).to_be_focused()
    page.keyboard.press("Tab")  # to its own Save correction
    page.keyboard.press("Enter")
    expect(page.get_by_text("Correction saved.")).to_be_visible()

    hashes = [ImageInput(f.name, f.read_bytes()).sha256 for f in files]
    rows = [r for r in FeedbackLog(home / "data").read()[0] if r.image_sha256 in hashes]
    assert [(r.image_sha256, r.model_output, r.correction) for r in rows] == [(hashes[1], "a yellow square", "a golden square")]
    page.close()


def test_fix_similar_confirms_a_look_alike_in_chromium(server, browser, tmp_path):
    from playwright.sync_api import expect

    from test_similar import CORRECTED, LOOK_ALIKE, REAL_TRIANGLE, RIGHT, WRONG, shape_png

    url, home = server
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.set_default_timeout(90_000)
    page.goto(url)
    files = []
    for name, spec in (("corrected.png", CORRECTED), ("look-alike.png", LOOK_ALIKE), ("triangle.png", REAL_TRIANGLE)):
        files.append(tmp_path / name)
        files[-1].write_bytes(shape_png(*spec))
    page.locator("input[type=file]").first.set_input_files([str(f) for f in files])
    card = page.locator('[data-testid="stHorizontalBlock"]').filter(has=page.get_by_text("corrected.png", exact=True)).first
    caption = card.get_by_label("Caption", exact=True)
    expect(caption).to_have_value(WRONG)
    expect(page.get_by_role("button", name="Download captions (JSONL)")).to_be_visible()  # every upload captioned
    settle(page)
    caption.fill(RIGHT)
    caption.press("Control+Enter")
    settle(page)
    card.get_by_role("button", name="Save correction").click()
    expect(card.get_by_text("Correction saved.")).to_be_visible()
    offer = card.locator('[data-testid="stHorizontalBlock"]').filter(has_text="look-alike.png · session").last
    expect(offer).to_contain_text(f"proposed: {RIGHT}")
    expect(card.get_by_text("triangle.png · session")).to_have_count(0)  # a real triangle is not a look-alike
    settle(page)
    offer.get_by_role("button", name="Apply the fix").click()
    expect(card.get_by_text("Fix saved, linked to your correction.")).to_be_visible()
    expect(card.get_by_role("button", name="Apply the fix")).to_have_count(0)  # confirmed: nothing left to press
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "fix-similar.png"), full_page=True)

    rows, problems = FeedbackLog(home / "data").read()
    original = next(r for r in rows if r.correction == RIGHT and not r.linked_to)
    linked = [r for r in rows if r.linked_to == original.id]
    assert problems == [] and [(r.model_output, r.correction) for r in linked] == [(WRONG, RIGHT)]
    assert (home / "data" / linked[0].image_path).read_bytes() == files[1].read_bytes()
    page.close()

def test_ask_about_a_demo_image_in_chromium(server, browser, tmp_path):
    from playwright.sync_api import expect

    url, _ = server
    page = browser.new_page(viewport={"width": 1400, "height": 1100})
    page.set_default_timeout(90_000)
    page.goto(f"{url}/chat")
    expect(page.get_by_text("Chat about an image").first).to_be_visible()
    picture = tmp_path / "green-triangle.png"
    picture.write_bytes(zoo.encode(zoo.demo("triangle", "green", 200), "PNG"))
    page.locator("input[type=file]").first.set_input_files(str(picture))
    question = page.get_by_placeholder("Ask about the image")
    question.fill("what shape is it?")
    question.press("Enter")
    answer = page.locator('[data-testid="stChatMessage"]').nth(1)
    expect(answer).to_contain_text("triangle")
    expect(page.get_by_text("Fallback to the demo Q&A model")).to_be_visible()
    page.screenshot(path=str(ARTIFACTS / "chat-page.png"), full_page=True)
    page.close()


def test_eight_people_chat_at_once_and_each_gets_their_own_answer(server, browser, tmp_path):
    """Eight browser sessions ask about eight different images at the same moment on one shared model."""
    from playwright.sync_api import expect

    url, _ = server
    kinds = [(shape, color) for shape in ("circle", "square") for color in ("red", "green", "blue", "yellow")]
    pages = []
    for shape, color in kinds:
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.set_default_timeout(90_000)
        page.goto(f"{url}/chat")
        picture = tmp_path / f"{color}-{shape}.png"
        picture.write_bytes(zoo.encode(zoo.demo(shape, color, 160), "PNG"))
        page.locator("input[type=file]").first.set_input_files(str(picture))
        pages.append(page)
    questions = [page.get_by_placeholder("Ask about the image") for page in pages]
    for question, (shape, _) in zip(questions, kinds):
        question.fill("what color is the shape?" if shape == "circle" else "what shape is it?")
    for question in questions:  # all eight asked before any answer is read
        question.press("Enter")
    for page, (shape, color) in zip(pages, kinds):
        answer = page.locator('[data-testid="stChatMessage"]').nth(1)
        expect(answer).to_contain_text(color if shape == "circle" else shape)
        colors = {c for _, c in kinds}
        others = colors - {color} if shape == "circle" else colors | {"circle"}  # what a leaked answer would say
        assert not any(word in answer.inner_text() for word in others)
    for page in pages:
        page.close()


def test_text_search_over_the_gallery_in_chromium(server, browser):
    from playwright.sync_api import expect

    url, _ = server
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.set_default_timeout(90_000)
    page.goto(f"{url}/search")
    expect(page.get_by_text("Find similar images").first).to_be_visible()
    page.get_by_role("button", name="Update index").click()
    expect(page.get_by_text("Index updated")).to_be_visible()
    query = page.get_by_label("Describe what you are looking for")
    query.fill("a red circle")
    query.press("Enter")
    expect(page.get_by_text("results (best score")).to_be_visible()
    first = page.get_by_text("red-circle.png").first
    expect(first).to_be_visible()
    expect(page.locator('[data-testid="stImage"] img').nth(11)).to_be_visible()
    page.wait_for_function("[...document.querySelectorAll('[data-testid=stImage] img')].every(i => i.complete)")
    page.screenshot(path=str(ARTIFACTS / "search-page.png"), full_page=True)
    page.close()


def add_rows(home, n):
    """n more pending rows (one stored image), older than anything logged by the other tests."""
    log = FeedbackLog(home / "data")
    first, _ = log.record(zoo.encode(zoo.demo("circle", "red", 96), "PNG"), "png", task="caption", model_output="a blob",
                          correction="row 000", score=-0.1)  # fmt: skip
    log.append([first._replace(id=f"row-{i:03d}", correction=f"row {i:03d}", created_at=f"2026-01-01T00:{i // 60:02d}:{i % 60:02d}+00:00")
                for i in range(1, n)])  # fmt: skip


def pending_order(home):
    """The pending rows in the order the review table shows them by default (newest first)."""
    from captioner.review import Filters, matching_rows

    return [row.id for row in matching_rows(FeedbackLog(home / "data").snapshot(), Filters(statuses=("pending",)), "newest")]


def tick(page, grid, row):
    """Click a row's checkbox once the page has finished its run (a grid still being redrawn drops the click)."""
    settle(page)
    box = grid.bounding_box()
    page.mouse.click(box["x"] + 27, box["y"] + 35 + 35 * row + 18)  # row's checkbox (glide grid: 35 px rows)


def test_admin_reviews_a_log_bigger_than_a_page_by_id_in_chromium(server, browser):
    from playwright.sync_api import expect

    url, home = server
    add_rows(home, 300)
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.set_default_timeout(90_000)
    received = []
    page.on("websocket", lambda ws: ws.on("framereceived", lambda frame: received.append(len(frame))))
    page.goto(f"{url}/admin")
    expect(page.get_by_label("Password", exact=True)).to_be_visible()
    log_text = (home / "streamlit.log").read_text()
    assert "Admin page password" in log_text  # made up at start and printed to the server log
    password = log_text.split("Admin page password (set CAPTIONER_ADMIN_PASSWORD to choose one): ")[1].split()[0]
    page.get_by_label("Password", exact=True).fill("not it")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_text("Wrong password.")).to_be_visible()
    assert "admin login from local failed" in (home / "streamlit.log").read_text()
    settle(page)  # the refusal is drawn before its run ends; a submit during that run can be lost
    before_login = sum(received)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Log in").click()
    grid = page.locator('[data-testid="stDataFrame"]').first
    expect(grid).to_be_visible()
    pages = -(-len(pending_order(home)) // 25)  # 300 rows, plus those the other tests logged
    expect(page.get_by_text(f"page 1 of {pages}")).to_be_visible()
    table_bytes = sum(received) - before_login
    print(f"websocket bytes from login to the first page of rows: {table_bytes:,}")
    assert table_bytes < 400_000, table_bytes  # one page of rows and thumbnails, not the log

    order = pending_order(home)
    tick(page, grid, 1)
    approve = page.get_by_role("button", name="Approve selected (1)")
    expect(approve).to_be_enabled()
    approve.click()
    expect(page.get_by_text("Approved 1 row(s).")).to_be_visible()
    rows = FeedbackLog(home / "data").read()[0]
    assert [r.id for r in rows if r.status == "approved"] == [order[1]]
    expect(page.get_by_role("button", name="Approve selected (0)")).to_be_disabled()  # nothing stays ticked

    order = pending_order(home)
    pages = -(-len(order) // 25)
    page.get_by_role("button", name="Next page →").click()
    expect(page.get_by_text(f"page 2 of {pages}")).to_be_visible()
    tick(page, grid, 0)
    expect(page.get_by_role("button", name="Reject selected (1)")).to_be_enabled()
    page.get_by_role("button", name="← Previous page").click()
    expect(page.get_by_text(f"page 1 of {pages}")).to_be_visible()
    tick(page, grid, 2)
    expect(page.get_by_text("2 selected (1 not on this page)")).to_be_visible()
    page.get_by_role("button", name="Reject selected (2)").click()
    expect(page.get_by_text("Rejected 2 row(s).")).to_be_visible()
    rows = FeedbackLog(home / "data").read()[0]
    assert sorted(r.id for r in rows if r.status == "rejected") == sorted([order[25], order[2]])
    page.screenshot(path=str(ARTIFACTS / "admin-review.png"), full_page=True)

    # a user logs a correction while the admin works: the rows move down under the admin's table
    approved_before = {r.id for r in FeedbackLog(home / "data").read()[0] if r.status == "approved"}
    order = pending_order(home)
    tick(page, grid, 1)
    expect(page.get_by_role("button", name="Approve selected (1)")).to_be_enabled()
    FeedbackLog(home / "data").record(zoo.encode(zoo.demo("square", "blue", 96), "PNG"), "png", task="caption",
                                      model_output="a blob", correction="logged meanwhile")  # fmt: skip
    moved = pending_order(home)
    assert moved[1:3] == order[0:2]
    tick(page, grid, 1)  # unticks the row the admin sees there: order[1], though the log's row 1 is now another
    expect(page.get_by_role("button", name="Approve selected (0)")).to_be_disabled()
    tick(page, grid, 3)  # the table now shows the moved rows
    page.get_by_role("button", name="Approve selected (1)").click()
    expect(page.get_by_text("Approved 1 row(s).")).to_be_visible()
    approved = {r.id for r in FeedbackLog(home / "data").read()[0] if r.status == "approved"}
    assert approved - approved_before == {moved[3]}

    page.get_by_role("tab", name="Statistics").click()
    expect(page.get_by_text("Correction rate per captioner version")).to_be_visible()
    approved_metric = page.locator('[data-testid="stMetric"]').filter(has_text="approved")
    expect(approved_metric).to_contain_text("2")
    page.screenshot(path=str(ARTIFACTS / "admin-statistics.png"), full_page=True)
    page.close()


def admin_page(browser, url, home):
    """The Admin page, logged in with the password the server made up and printed in its log."""
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.set_default_timeout(90_000)
    page.goto(f"{url}/admin")
    expect(page.get_by_label("Password", exact=True)).to_be_visible()
    log_text = (home / "streamlit.log").read_text()
    page.get_by_label("Password", exact=True).fill(log_text.split("(set CAPTIONER_ADMIN_PASSWORD to choose one): ")[1].split()[0])
    page.keyboard.press("Enter")
    expect(page.locator('[data-testid="stDataFrame"]').first).to_be_visible()
    settle(page)
    return page


def focus_by_tab(page, label_start: str, presses: int = 80) -> None:
    """Press Tab until the focused element's text starts with label_start, as a keyboard user does."""
    for _ in range(presses):
        page.keyboard.press("Tab")
        if page.evaluate("() => (document.activeElement.innerText || '').trim()").startswith(label_start):
            return
    raise AssertionError(f"no element starting {label_start!r} within {presses} Tab presses")


def test_keyboard_only_an_admin_ticks_a_whole_filtered_page_approves_it_and_types_a_small_rate_in_chromium(server, browser):
    from playwright.sync_api import expect

    from captioner.review import Filters, matching_rows

    url, home = server
    log = FeedbackLog(home / "data")
    first, _ = log.record(zoo.encode(zoo.demo("square", "green", 96), "PNG"), "png", task="caption",
                          model_output="a blob", correction="kb row 00")  # fmt: skip
    log.append([first._replace(id=f"kb-{i:02d}", correction=f"kb row {i:02d}", created_at=f"2026-02-01T00:00:{i:02d}+00:00")
                for i in range(1, 40)])  # fmt: skip
    page = admin_page(browser, url, home)
    page.get_by_label("Text contains").focus()
    page.keyboard.type("kb row")
    page.keyboard.press("Enter")
    expect(page.get_by_text("of 40 matching")).to_be_visible()
    settle(page)
    shown = [r.id for r in matching_rows(log.snapshot(), Filters(statuses=("pending",), text="kb row"), "newest")][:25]
    focus_by_tab(page, "Tick all 25 on this page")
    page.keyboard.press("Enter")
    expect(page.get_by_text("25 selected · 0 correction(s) edited")).to_be_visible()
    settle(page)
    focus_by_tab(page, "Approve selected (25)", presses=10)
    page.keyboard.press("Enter")
    expect(page.get_by_text("Approved 25 row(s).")).to_be_visible()
    approved = sorted(r.id for r in FeedbackLog(home / "data").read()[0] if r.status == "approved" and r.correction.startswith("kb"))
    assert approved == sorted(shown)
    expect(page.get_by_text("0 selected")).to_be_visible()  # nothing stays ticked

    page.get_by_role("tab", name="Retrain").click()
    rate = page.get_by_role("spinbutton", name="Learning rate")
    expect(rate).to_have_value("2e-3")  # "%.5f" showed 0.00200
    rate.fill("5e-6")
    page.keyboard.press("Tab")
    expect(rate).to_have_value("5e-6")  # it showed 0.00001
    page.close()


@pytest.fixture(scope="module")
def echo_app(tmp_path_factory):
    """The app answering with `openai:echo` from a slow echo server (a word every 0.4 s, see chat_servers: an answer
    takes 2 s, so a question sent after its first words still comes before its end on a busy machine)."""
    needs("streamlit")
    needs("openai")
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian's chromium is not installed (`make test` installs it with apt-get)")
    from chat_servers import slow_echo_server

    home = tmp_path_factory.mktemp("echo-home")
    asked, left = [], []
    with slow_echo_server(0.4, asked, left) as base_url:
        with streamlit_app(home, OPENAI_BASE_URL=base_url, CAPTIONER_QA_MODEL="openai:echo",
                           CAPTIONER_CHAT_MODELS="openai:echo,demo") as url:  # fmt: skip
            yield url, asked, left


def chat_page(browser, url, tmp_path, shape="circle", color="red"):
    from playwright.sync_api import expect

    page = browser.new_page(viewport={"width": 1200, "height": 900})
    page.set_default_timeout(90_000)
    page.goto(f"{url}/chat")
    expect(page.get_by_text("Chat about an image").first).to_be_visible()
    picture = tmp_path / f"{color}-{shape}.png"
    picture.write_bytes(zoo.encode(zoo.demo(shape, color, 160), "PNG"))
    page.locator("input[type=file]").first.set_input_files(str(picture))
    expect(page.get_by_placeholder("Ask about the image")).to_be_visible()
    settle(page)
    return page


def send(page, question):
    box = page.get_by_placeholder("Ask about the image")
    box.fill(question)
    box.press("Enter")


def test_an_answer_cut_short_keeps_its_question_and_what_had_come_in_chromium(echo_app, browser, tmp_path):
    """A question sent while the answer before it streams, or Stop, cuts that answer short: the conversation keeps
    the question and the part that came, marked stopped, and the next question is asked with them."""
    from playwright.sync_api import expect

    url, asked, left = echo_app
    page = chat_page(browser, url, tmp_path)
    messages = page.locator('[data-testid="stChatMessage"]')
    send(page, "first question")
    expect(messages.nth(1)).to_contain_text("you asked: first")  # streaming, not done
    send(page, "second question")
    expect(messages.nth(3)).to_contain_text("you asked: second question (3 messages)")  # with the first turn
    expect(messages.nth(1)).to_contain_text("The answer was stopped before it was complete.")
    expect(messages.nth(0)).to_contain_text("first question")
    assert "(1 messages)" not in messages.nth(1).inner_text()  # what had come, not the whole answer
    assert ("second question", 3) in asked and "first question" in left

    settle(page)  # the server ends its stream 0.4 s after the last word: a question sent before that cuts it short
    send(page, "third question")
    expect(messages.nth(5)).to_contain_text("you asked: third")
    page.get_by_role("button", name="Stop").click()  # Streamlit's own, beside the running man
    settle(page)
    send(page, "fourth question")
    expect(messages.nth(7)).to_contain_text("you asked: fourth question (7 messages)")
    expect(messages.nth(5)).to_contain_text("The answer was stopped before it was complete.")
    expect(messages.nth(4)).to_contain_text("third question")
    assert [m.inner_text().count("stopped before") for m in messages.all()] == [0, 1, 0, 0, 0, 1, 0, 0]
    page.close()


def test_eight_people_chat_with_a_server_model_at_once_in_chromium(echo_app, browser, tmp_path):
    """Eight sessions ask a server's model at the same moment: each page shows its own answer, streamed, only."""
    from playwright.sync_api import expect

    url, asked, _ = echo_app
    pages = [chat_page(browser, url, tmp_path, "square", color) for color in ("red", "green", "blue", "yellow") * 2]
    for number, page in enumerate(pages):
        send(page, f"question number {number}")
    for number, page in enumerate(pages):
        answer = page.locator('[data-testid="stChatMessage"]').nth(1)
        expect(answer).to_contain_text(f"you asked: question number {number} (1 messages)")
        assert answer.inner_text().count("you asked") == 1
    assert sorted(q for q, _ in asked[-8:]) == sorted(f"question number {n}" for n in range(8))
    for page in pages:
        page.close()


def test_an_answer_streams_under_the_conversation_with_no_buttons_between_turns_in_chromium(echo_app, browser, tmp_path):
    """While an answer streams, Regenerate and Clear were drawn between the turn before and the new one (and
    Regenerate, under the first answer, looked like it would draw that one again); they come back below it."""
    from playwright.sync_api import expect

    url, _, _ = echo_app
    page = chat_page(browser, url, tmp_path, "triangle", "green")
    messages = page.locator('[data-testid="stChatMessage"]')
    regenerate = page.get_by_role("button", name="Regenerate the last answer")
    send(page, "first question")
    expect(messages.nth(1)).to_contain_text("(1 messages)")
    settle(page)
    send(page, "second question asked")
    expect(messages.nth(3)).to_contain_text("you asked: second")
    assert "(3 messages)" not in messages.nth(3).inner_text() and regenerate.count() == 0  # streaming: none shown
    expect(messages.nth(3)).to_contain_text("(3 messages)")
    expect(regenerate).to_have_count(1)
    assert regenerate.bounding_box()["y"] > messages.nth(3).bounding_box()["y"]  # under the last answer
    page.close()
