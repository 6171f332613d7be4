"""The app in a real browser (Debian's chromium through playwright), used as a learner would: train, play and
pause, zoom, switch the shortcuts off, draw a shape; the live charts must persist across streamed updates.
Saves assets/screenshot.png (shown in the README). Skipped when /usr/bin/chromium is absent.
"""

import contextlib
import math
import re
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"no browser: {CHROMIUM} is absent (CI installs Debian's chromium)", allow_module_level=True)

from playwright.sync_api import Page, expect, sync_playwright  # noqa: E402 -- after the skip
from playwright.sync_api import TimeoutError as PlaywrightTimeout  # noqa: E402

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path(__file__).parent.parent / "assets" / "screenshot.png"
CHARTS = ["#chart-loss", "#chart-acc", "#chart-grad", "#chart-heat"]
LOAD_MS = 120_000  # the first page load also renders the shapes dataset (once per server) on a slow CPU
STEP_MS = 30_000  # one training step on CPU, with room for a busy machine

# plotly's traces arrive as plain lists; _fullData is plotly's own copy, should `data` ever hold typed arrays
TRACE_LEN = "d => (d.data && d.data[0] && d.data[0].x ? d.data[0].x : d._fullData[0].x).length"


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, app_url):
    context = browser.new_context(viewport={"width": 1400, "height": 1300}, locale="en-US")
    page = context.new_page()
    page.set_default_timeout(STEP_MS)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(app_url, wait_until="domcontentloaded", timeout=LOAD_MS)
    page.errors = errors
    yield page
    context.close()


PHONE = {"viewport": {"width": 390, "height": 844}, "is_mobile": True}  # a phone's screen, touch-sized


@contextlib.contextmanager
def fresh_page(browser, app_url, **options):
    """A new browser's page on the app (storage of its own: a new learner), loaded as far as its Step 0."""
    context = browser.new_context(**{"viewport": {"width": 1400, "height": 1300}, "locale": "en-US", **options})
    try:
        page = context.new_page()
        page.set_default_timeout(STEP_MS)
        page.goto(app_url, wait_until="domcontentloaded", timeout=LOAD_MS)
        wait_for_step(page, 0, LOAD_MS)
        yield page
    finally:
        context.close()


def status_step(page: Page) -> int:
    text = page.locator("#status").inner_text()
    match = re.search(r"Step (\d+)", text)
    assert match, f"the status line shows no step count: {text!r}"
    return int(match.group(1))


def wait_for_step(page: Page, n: int, timeout_ms: int = STEP_MS):
    expect(page.locator("#status"), f"the status line never reached step {n}").to_contain_text(
        re.compile(rf"Step {n}\b"), timeout=timeout_ms
    )


def wait_js(page: Page, predicate: str, failure: str, arg=None, timeout_ms: int = STEP_MS):
    """Wait until the JS predicate holds in the page; fail with a learner's description otherwise."""
    try:
        page.wait_for_function(predicate, arg=arg, timeout=timeout_ms)
    except PlaywrightTimeout:
        pytest.fail(f"{failure} (waited {timeout_ms / 1000:.0f} s)")


def wait_loss_points(page: Page, n: int, timeout_ms: int = STEP_MS):
    wait_js(
        page,
        f"n => ({TRACE_LEN})(document.querySelector('#chart-loss .js-plotly-plot')) >= n",
        f"the loss chart never showed {n} steps",
        n,
        timeout_ms,
    )


def loss_points(page: Page) -> int:
    return page.eval_on_selector("#chart-loss .js-plotly-plot", TRACE_LEN)


def test_learner_session(page: Page):
    t0 = time.monotonic()
    laps = {}

    def lap(name):
        laps[name] = round(time.monotonic() - t0 - sum(laps.values()), 1)

    # 1. the page and its four live charts
    for chart in CHARTS:
        page.wait_for_selector(f"{chart} .js-plotly-plot", state="attached", timeout=LOAD_MS)
    wait_for_step(page, 0, LOAD_MS)
    assert loss_points(page) == 0, "a fresh model should have an empty loss chart"
    lap("load")

    # 2. watch the charts: a chart re-created by an update would show as a removed .js-plotly-plot element
    page.evaluate("""() => {
        window.__loss = document.querySelector('#chart-loss .js-plotly-plot');
        window.__plots = {added: 0, removed: 0};
        const isPlot = n => n.nodeType === 1 && (n.matches('.js-plotly-plot') || n.querySelector('.js-plotly-plot'));
        new MutationObserver(records => records.forEach(r => {
            r.addedNodes.forEach(n => { if (isPlot(n)) window.__plots.added++; });
            r.removedNodes.forEach(n => { if (isPlot(n)) window.__plots.removed++; });
        })).observe(document.body, {childList: true, subtree: true});
    }""")

    # 3. one step: the status and the loss chart show it
    page.click("#step")
    wait_for_step(page, 1)
    wait_loss_points(page, 1)
    before_play = loss_points(page)
    assert before_play == 1, f"after one step the loss chart should hold 1 point, not {before_play}"
    lap("step")

    # 4. play streams updates into the charts until pause
    page.click("#play")
    wait_loss_points(page, before_play + 3, 60_000)
    page.click("#pause")
    lap("play")
    status_step(page)
    page.wait_for_timeout(3_000)  # one chunk may still be in flight when Pause lands
    paused_a = status_step(page)
    page.wait_for_timeout(2_000)
    paused_b = status_step(page)
    assert paused_a == paused_b, f"training went on after Pause: step {paused_a}, then {paused_b}"
    assert paused_b >= before_play + 3, f"Play trained only to step {paused_b}"
    assert loss_points(page) == paused_b, "the loss chart and the status line disagree on the step count"
    lap("pause")

    # 5. the chart persisted: same element, nothing removed, and a zoom survives an update (uirevision)
    same = page.evaluate("() => window.__loss === document.querySelector('#chart-loss .js-plotly-plot')")
    assert same, "the loss chart's plotly div was replaced by an update (zoom and hover would be lost)"
    plots = page.evaluate("() => window.__plots")
    assert plots["removed"] == 0, f"streamed updates removed plotly charts from the page: {plots}"
    page.evaluate("() => Plotly.relayout(window.__loss, {'xaxis.range': [0, 2]})")
    page.click("#step")
    # Pause waits for the chunk in flight and shows it, so the page is not behind: exactly one step more
    stepped = paused_b + 1
    wait_for_step(page, stepped)
    wait_loss_points(page, stepped)
    zoom = page.evaluate("() => window.__loss.layout.xaxis.range")
    assert zoom == [0, 2], f"a training update reset the learner's zoom to {zoom}"
    lap("zoom")

    # 6. all shortcuts off: the status, the per-block boxes and a marker on the loss chart say so
    page.locator("#all_shortcuts input").uncheck()
    expect(page.locator("#status"), "the status line should count 0 shortcuts on").to_contain_text("shortcuts on: 0/3")
    boxes = page.locator("#block_shortcuts input")
    assert boxes.count() == 3, f"expected a checkbox per block, found {boxes.count()}"
    for i in range(3):
        expect(boxes.nth(i), f"block {i + 1}'s shortcut box is still ticked").not_to_be_checked()
    wait_js(
        page,
        """() => {
        const l = window.__loss.layout;
        return (l.shapes || []).length >= 1 || (l.annotations || []).some(a => /shortcut off/.test(a.text));
    }""",
        "the loss chart shows no marker where the shortcuts were switched off",
    )
    lap("shortcuts")

    # 7. draw a circle on the pad: a prediction with percentages and what each block sees
    page.get_by_role("tab", name="Predict", exact=True).click()  # the first tab is the guided experiments
    brush = page.locator("#sketch button[aria-label=Brush]")
    brush.wait_for(state="attached")
    if "highlight" not in (brush.get_attribute("class") or ""):  # the pad should open with the brush active
        brush.click()
    canvas = page.locator("#sketch canvas").first
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2  # the white pad is centred in the canvas
    circle = [(cx + 80 * math.cos(2 * math.pi * i / 12), cy + 80 * math.sin(2 * math.pi * i / 12)) for i in range(13)]
    page.mouse.move(*circle[0])
    page.mouse.down()
    for x, y in circle[1:]:
        page.mouse.move(x, y)  # each move redraws the pad (software GL): few, for speed
    page.mouse.up()
    prediction = page.locator("#prediction")
    expect(prediction, "drawing gave no prediction with percentages").to_contain_text("%", timeout=STEP_MS)
    gallery = page.locator("div.block:has(> label:has-text('What each block sees'))")
    expect(gallery.locator("img").first, "no feature maps shown for the drawing").to_be_visible()
    expect(gallery, "the feature maps are not captioned by block").to_contain_text("block1")
    lap("draw")

    # 8. train a few steps with the shortcuts off, then a screenshot for the README
    page.get_by_label("N", exact=True).fill("4")
    page.click("#step_n")
    wait_for_step(page, stepped + 4)
    expect(prediction, "the prediction vanished while training").to_contain_text("%")
    page.evaluate("() => Plotly.relayout(window.__loss, {'xaxis.autorange': true, 'yaxis.autorange': true})")
    page.wait_for_timeout(500)
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    lap("step_n+screenshot")
    assert not page.errors, f"the page raised: {page.errors}"
    print(f"seconds per phase {laps}; paused at step {paused_b}; plotly divs {page.evaluate('() => window.__plots')}")


def test_chinese_labels(browser, app_url):
    context = browser.new_context(viewport={"width": 1400, "height": 1300}, locale="zh-CN")
    try:
        page = context.new_page()
        page.goto(app_url, wait_until="domcontentloaded", timeout=LOAD_MS)
        expect(page.locator("#step"), "the Step button is not translated").to_have_text("单步", timeout=LOAD_MS)
        expect(page.locator("h1"), "the title is not translated").to_contain_text("残差网络游乐场")
        expect(page.locator("#all_shortcuts"), "the shortcut switch is not translated").to_contain_text(
            "全部残差连接开启"
        )
    finally:
        context.close()


def test_a_junk_upload_after_an_example_gets_the_apps_message(page: Page, tmp_path):
    """An example's click makes gradio rebuild the upload box for this page from its class: the app's judgement of
    the file must survive that, not fall back to gradio's message with the server's folders in it."""
    junk = tmp_path / "fake.png"
    junk.write_bytes(b"not a png at all " * 10)
    wait_for_step(page, 0, LOAD_MS)
    page.get_by_role("tab", name="Predict", exact=True).click()
    page.get_by_role("tab", name="Upload, paste or webcam", exact=True).click()
    page.locator(".gallery-item").first.click()
    expect(page.locator("#prediction")).to_contain_text("%", timeout=STEP_MS)
    page.get_by_role("tab", name="Teach it your image", exact=True).click()  # the example, as a step would get it
    picture = page.locator("#teach_image img")
    expect(picture).to_be_visible(timeout=STEP_MS)
    assert picture.bounding_box()["width"] >= 100, "the 32x32 picture is drawn at its own size in its box"
    assert picture.evaluate("e => getComputedStyle(e).imageRendering") == "pixelated"  # its pixels, not a blur
    assert page.locator("#teach_image .icon-button-wrapper button").count() == 0  # no toolbar over the label
    page.get_by_role("tab", name="Predict", exact=True).click()
    page.locator("#upload button[aria-label='Remove Image']").click()
    page.locator("#upload input[type=file]").set_input_files(str(junk))
    toast = page.locator(".toast-body").first
    expect(toast).to_contain_text("not an image we can read", timeout=STEP_MS)
    said = toast.inner_text()
    assert "fake.png" in said and "preprocess" not in said and str(tmp_path) not in said, said
    expect(page.locator("#prediction")).not_to_contain_text("%")  # the example's prediction is not this file's
    assert error_badges(page) == 0


ERROR_BADGES = """() => [...document.querySelectorAll('body *')].filter(e => e.children.length === 0
    && e.textContent.trim() === 'Error' && e.offsetParent && !e.closest('.toast-body')).length"""


def error_badges(page: Page) -> int:
    """Gradio's red "Error" badges over an event's outputs (a toast's title aside)."""
    return page.evaluate(ERROR_BADGES)


def test_a_refused_click_is_a_note_that_leaves_the_panel_as_it_was(page: Page):
    """A refusal put a red Error badge on every output of its event (16 over the charts, the status and the
    switches) and most stayed after the next Step: now a toast says why, and the panel is untouched."""
    wait_for_step(page, 0, LOAD_MS)
    page.locator("#n_steps input").fill("0")
    page.click("#step_n")
    toast = page.locator(".toast-body").first
    expect(toast).to_contain_text("whole number from 1 to 10000", timeout=STEP_MS)
    expect(toast).to_contain_text("Warning")  # a refusal, not a failure
    assert error_badges(page) == 0
    expect(page.locator("#status")).to_contain_text("Step 0")
    page.click("#step")
    wait_for_step(page, 1)


def test_clear_drawing_right_after_a_stroke_leaves_a_pad_ready_to_draw(page: Page):
    """It left the pad busy ("processing"), deaf to strokes, when it set a new value from the server."""
    wait_for_step(page, 0, LOAD_MS)
    page.get_by_role("tab", name="Predict", exact=True).click()
    canvas = page.locator("#sketch canvas").first
    canvas.scroll_into_view_if_needed()
    prediction = page.locator("#prediction")

    def stroke(dx: float):
        box = canvas.bounding_box()
        x, y = box["x"] + box["width"] / 2 + dx, box["y"] + box["height"] / 2
        page.mouse.move(x - 60, y - 60)
        page.mouse.down()
        for i in range(1, 9):
            page.mouse.move(x - 60 + 15 * i, y - 60 + 15 * i)
        page.mouse.up()

    stroke(0)
    expect(prediction).to_contain_text("%", timeout=STEP_MS)
    page.get_by_role("button", name="Clear drawing", exact=True).click()
    expect(prediction).not_to_contain_text("%", timeout=STEP_MS)  # an empty pad predicts nothing
    expect(page.locator("#sketch")).not_to_contain_text("processing")
    assert page.get_by_text("The drawing is empty").count() == 0  # Clear is asked for: nothing to warn about
    stroke(30)
    expect(prediction).to_contain_text("%", timeout=STEP_MS)
    # the pad's own Undo of its only stroke: said, and the stroke's prediction goes, with no error badge over it
    page.locator("#sketch").get_by_role("button", name="Undo").click()
    expect(page.get_by_text("The drawing is empty")).to_be_visible(timeout=STEP_MS)
    expect(prediction).not_to_contain_text("%", timeout=STEP_MS)
    expect(prediction).not_to_contain_text("Error")


def test_a_page_view_takes_no_seat(browser, app_url):
    """The Optimizer radio's change event fired on every page load, before the page knew its learner: each view
    took a seat, keyed by its connection, for 30 minutes (a public Space's 32 seats went to 32 views), and now and
    then the learner's own (its status said "Started from a trained model" instead of the shared one's)."""
    import app

    seats = len(app.POOL)
    with fresh_page(browser, app_url) as page:
        expect(page.locator("#status")).to_contain_text("shared by every visitor")
        page.wait_for_timeout(2_000)  # the page's load events are all answered
        assert len(app.POOL) <= seats, f"a page view took {len(app.POOL) - seats} seat(s)"


def test_a_reload_keeps_the_learners_run(page: Page):
    wait_for_step(page, 0, LOAD_MS)
    expect(page.locator("#status")).to_contain_text("shared by every visitor")  # looking took no seat
    page.click("#step")
    wait_for_step(page, 1)
    page.click("#step")
    wait_for_step(page, 2)
    page.get_by_role("tab", name="Residual vs plain").click()
    page.locator("#twin_n input").fill("1")
    page.click("#twin_step")
    expect(page.locator("#twin_status")).to_contain_text("Step 1", timeout=STEP_MS)
    page.reload(wait_until="domcontentloaded", timeout=LOAD_MS)
    wait_for_step(page, 2, LOAD_MS)  # the same browser finds its run again, not a fresh one
    page.click("#step")
    wait_for_step(page, 3)
    page.get_by_role("tab", name="Residual vs plain").click()  # and its twins (the tab showed none after a reload)
    expect(page.locator("#twin_status")).to_contain_text("Step 1", timeout=STEP_MS)


# words a Chinese page may still show in Latin letters: layer, dataset, network and device names, units and brands
ALLOWED_LATIN = re.compile(
    r"^(stem|fc|block\d+(\.(conv\d|shortcut|proj\w*))?|conv\d|shapes|cifar10|mnist|fashion_mnist|ResNet(-\d+)?|Adam|SGD|shortcut|He|"
    r"cpu|cuda|mps|bf16|fp32|log10|N|ID|zip|CSV|Hub|Hugging|Face|huggingface|co|settings|tokens|you|resnet|"
    r"playground|English|Gradio|API|png|jpg|cat|dog|x|F|H|W|g|MB|MCP|Intel|Xeon|R|Processor|vCPU)$"
)
ZH_TABS = ["预测", "用你的图片教它", "你的数据，你的模型", "残差与普通对比", "学习"]


def latin_words(page: Page) -> set[str]:
    """Visible words in Latin letters, outside code (the Learn tab quotes the notebook's code) and formulas."""
    text = page.evaluate(
        """() => { let t = document.body.innerText;
                   for (const c of document.querySelectorAll('code, pre')) t = t.split(c.innerText).join(' ');
                   return t.split('∂loss').join(' '); }"""
    )  # ∂loss/∂W: the gradient, written as the notebook writes it
    text = re.sub(r"\d+(\.\d+)?s\b", " ", text)  # gradio's progress timer ("1.2s") while an event runs: a unit
    words = {w.strip(".-") for w in re.findall(r"[A-Za-z][A-Za-z0-9_.\-]*", text)}
    return {w for w in words if not ALLOWED_LATIN.match(w)}


def test_every_tab_in_chinese_shows_no_english(browser, app_url):
    context = browser.new_context(viewport={"width": 1400, "height": 1300}, locale="zh-CN")
    try:
        page = context.new_page()
        page.set_default_timeout(STEP_MS)
        page.goto(app_url, wait_until="domcontentloaded", timeout=LOAD_MS)
        expect(page.locator("#status")).to_contain_text("第 0 步", timeout=LOAD_MS)
        page.click("#step")
        expect(page.locator("#status")).to_contain_text("第 1 步")
        english = {"main": latin_words(page)}
        for tab in ZH_TABS:
            page.get_by_role("tab", name=tab, exact=True).click()
            time.sleep(0.5)
            english[tab] = latin_words(page)
        found = {k: sorted(v) for k, v in english.items() if v}
        if found:
            pytest.fail(f"English on the Chinese page: {found}")
    finally:
        context.close()


def test_on_a_desktop_the_chart_toolbar_shows_only_under_the_mouse(page: Page):
    """Plotly's toolbar sits over a chart's title: shown always (displayModeBar true), it hid every title."""
    wait_for_step(page, 0, LOAD_MS)
    page.click("#step")
    wait_for_step(page, 1)
    opacity = "(c) => getComputedStyle(document.querySelector(c + ' .modebar-group')).opacity"
    page.mouse.move(1, 1)
    for chart in CHARTS:
        assert page.evaluate(opacity, chart) == "0", f"{chart}: the toolbar shows without the mouse over it"
    page.hover(f"{CHARTS[0]} .nsewdrag")
    page.wait_for_timeout(500)
    assert page.evaluate(opacity, CHARTS[0]) == "1", "the toolbar should show under the mouse"


def test_on_a_phone_the_charts_stack_one_per_row_with_their_titles_whole(browser, app_url):
    with fresh_page(browser, app_url, **PHONE) as page:
        step, pause = page.locator("#step").bounding_box(), page.locator("#pause").bounding_box()
        assert pause["height"] <= step["height"] + 1, "the Pause button wraps onto a second line"
        page.click("#step")
        wait_for_step(page, 1)
        low = page.eval_on_selector("#chart-loss .js-plotly-plot", "d => d._fullLayout.yaxis.range[0]")
        assert low >= 0, f"one step's loss chart runs its axis down to {low}: a loss is never below 0"
        boxes = [page.locator(c).bounding_box() for c in CHARTS]
        assert all(b["width"] >= 300 for b in boxes), boxes  # each chart has the screen's width to itself
        tops = [b["y"] for b in boxes]
        assert tops == sorted(tops) and len(set(round(t) for t in tops)) == 4, boxes  # one per row
        for chart, box in zip(CHARTS, boxes):
            title = page.locator(f"{chart} .gtitle").bounding_box()
            assert box["x"] <= title["x"] and title["x"] + title["width"] <= box["x"] + box["width"], chart
            bar = page.locator(f"{chart} .modebar")  # plotly's toolbar: on a touch screen it never hides
            if bar.count() and bar.first.is_visible():
                b = bar.first.bounding_box()
                apart = b["x"] >= title["x"] + title["width"] or b["y"] >= title["y"] + title["height"]
                assert apart, f"{chart}: the toolbar covers the title"
            if chart == "#chart-heat":
                continue  # its layers' names and colour bar take their room beside the plot on any screen
            # the plot keeps the chart's width: a legend beside it took half (9 layers' names on the gradient chart)
            plot = page.locator(f"{chart} .nsewdrag").first.bounding_box()
            assert plot["width"] >= 0.7 * box["width"], f"{chart}: the plot is {plot['width']:.0f} of {box['width']} px"


def test_the_guided_experiments_are_one_click_from_the_top_of_a_phone(browser, app_url):
    """On a phone the guided experiments started 3.6 screens down, under the training panel, and nothing on the first
    screen said so."""
    with fresh_page(browser, app_url, **PHONE) as page:
        start = page.locator("#start_here")
        assert start.bounding_box()["y"] + start.bounding_box()["height"] <= 844, "the start button is off the screen"
        start.click()
        pick = page.locator("#guided_pick")
        wait_js(page, "() => { const b = document.querySelector('#guided_pick').getBoundingClientRect();"
                      " return b.top >= 0 && b.top < innerHeight - 100; }",
                "the guided experiments were not brought onto the screen")  # fmt: skip
        expect(pick).to_be_visible()


def test_each_learn_claim_opens_its_guided_experiment(page: Page):
    import app

    wait_for_step(page, 0, LOAD_MS)
    page.get_by_role("tab", name="Learn", exact=True).click()
    page.click("#check_lesion")
    title = app.guided.get("lesion").texts(fast=True)["title"]["en"]
    expect(page.get_by_label(title, exact=True)).to_be_checked()
    expect(page.locator("#guided_text")).to_contain_text("bypassed at test time")
    wait_js(page, "() => document.querySelector('#guided-recorded .js-plotly-plot')?.layout?.title?.text"
                  " === 'Lesions: one block bypassed at test time'",
            "the recorded run's lesion chart did not show")  # fmt: skip
    page.get_by_role("tab", name="Learn", exact=True).click()
    page.click("#check_predict")
    expect(page.locator("#sketch")).to_be_visible()


GUIDED_MS = 300_000  # a guided experiment at its fast settings on a busy 2-core machine

# per experiment: what the page's chart data must show (JS over the live and readout charts' plotly data)
GUIDED_EFFECTS = {
    # the stem's gradient norm after the switch at least doubles (before/after bars of the readout chart)
    "shortcuts_off": "r => { const [b, a] = r.data; const i = b.x.indexOf('stem'); return a.y[i] / b.y[i] >= 2; }",
    # the residual net's last training losses are below the plain net's (the live loss chart, twins overlaid)
    "plain_vs_residual": """(l) => { const tr = l.data.filter(t => t.name.startsWith('training'));
        const last = t => t.y.slice(-5).reduce((s, v) => s + v, 0) / 5;
        const res = tr.find(t => t.name.includes('residual')), plain = tr.find(t => t.name.includes('plain'));
        return last(res) < last(plain) - 0.3; }""",
    # lesions: the residual net keeps more accuracy than the plain net with a block bypassed
    "lesion": """r => { const mean = t => t.y.reduce((s, v) => s + v, 0) / t.y.length;
        const cut = r.data.filter(t => t.name.includes('bypassed'));
        const res = cut.find(t => t.name.includes('residual')), plain = cut.find(t => t.name.includes('plain'));
        return mean(res) > mean(plain); }""",
    # lr 1000: its steps are rejected, so the loss chart has a point for every step but those (`kept` of them)
    "lr_1000": "(l, kept) => l.data[0].x.length === kept",
    # the drawing's gradients: with shortcuts off the stem's gradient differs from on (grouped bars)
    "drawing_gradients": """r => { const [on, off] = r.data; const i = on.x.indexOf('stem');
        return on.y[i] > 0 && off.y[i] > 0 && on.y[i] !== off.y[i]; }""",
}


@pytest.mark.parametrize("experiment", list(GUIDED_EFFECTS))
def test_a_guided_experiment_runs_in_one_click_and_shows_its_claim(page: Page, experiment):
    import app

    wait_for_step(page, 0, LOAD_MS)
    title = app.guided.get(experiment).texts(fast=True)["title"]["en"]
    page.get_by_label(title, exact=True).check()
    expect(page.locator("#guided_text")).to_contain_text("What to expect")
    page.click("#guided_run")
    expect(page.locator("#guided_status")).to_contain_text("The claim holds.", timeout=GUIDED_MS)
    chart = "#guided-readout" if experiment == "shortcuts_off" else "#guided-live"  # the chart "What to watch" names
    lr, kept = 1e-3, 0  # the training steps taken at a sane learning rate: the steps the loss chart must show
    for kind, value in app.guided.get(experiment).fast.phases:
        lr = value if kind == "lr" else lr
        kept += value if kind == "train" and lr <= 1 else 0
    check = f"kept => ({GUIDED_EFFECTS[experiment]})(document.querySelector('{chart} .js-plotly-plot'), kept)"
    holds = page.evaluate(check, kept)
    assert holds, f"the {experiment} chart does not show the claimed effect"


def test_pausing_a_guided_experiment_says_it_stopped(page: Page, monkeypatch):
    """Mid-run: at the experiment's full settings (56 layers, seconds of training), so Pause lands during a turn."""
    import app

    monkeypatch.setattr(app, "GUIDED_FAST", False)
    wait_for_step(page, 0, LOAD_MS)
    page.get_by_label(app.guided.get("plain_vs_residual").texts(fast=False)["title"]["en"], exact=True).check()
    page.click("#guided_run")
    status = page.locator("#guided_status")
    expect(status).to_contain_text(re.compile(r"Running: [3-9] of"), timeout=GUIDED_MS)
    page.click("#guided_stop")
    expect(status).to_contain_text("Stopped", timeout=STEP_MS)
    page.wait_for_timeout(3_000)  # and nothing of the run comes after it
    expect(status).to_contain_text("Stopped")


def test_step_latency_in_the_browser_is_measured_and_reported(page: Page):
    """From the Step click to the status line (and the charts, which arrive in the same update) against the step's
    own time: reported, not asserted (a timing on a shared 2-core machine says little alone)."""
    import statistics

    import app

    wait_for_step(page, 0, LOAD_MS)
    page.click("#step")
    wait_for_step(page, 1)  # the first Step makes the learner's session
    clicks = []
    for n in range(2, 7):
        t = time.perf_counter()
        page.click("#step")
        page.wait_for_function(
            "n => document.querySelector('#status').innerText.includes('Step ' + n + ' ')", arg=n, polling="raf"
        )
        clicks.append(time.perf_counter() - t)
    session = app.first_session()
    session.step(1)
    own = []
    for _ in range(5):
        t = time.perf_counter()
        session.step(1)
        own.append(time.perf_counter() - t)
    click, step = statistics.median(clicks), statistics.median(own)
    print(f"\nStep in the browser: click to update {click * 1000:.0f} ms, the step itself {step * 1000:.0f} ms, "
          f"overhead {(click - step) * 1000:.0f} ms (target: the step's time + 300 ms)")  # fmt: skip
    assert len(clicks) == 5 and all(c > 0 for c in clicks)


def test_the_page_works_under_a_process_of_the_workshop_front(browser, front_url):
    """Behind the front a page lives under its process's path: everything it asks for stays under /2/ (a browser
    that keeps no cookie, as in a Space's frame, would otherwise reach process 1), and it trains."""
    from urllib.parse import urlparse

    context = browser.new_context(viewport={"width": 1400, "height": 1300}, locale="en-US")
    page = context.new_page()
    page.set_default_timeout(STEP_MS)
    failed, outside = [], []
    page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    page.on("request", lambda r: outside.append(r.url) if not urlparse(r.url).path.startswith("/2/") else None)
    page.goto(front_url.url + "2/", wait_until="domcontentloaded", timeout=LOAD_MS)
    wait_for_step(page, 0, LOAD_MS)
    page.click("#step")
    wait_for_step(page, 1)
    wait_loss_points(page, 1)
    assert page.evaluate("typeof Plotly") == "object"
    assert not failed, failed
    assert [u for u in outside if not u.endswith("/favicon.ico")] == []
    context.close()
