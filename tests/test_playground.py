"""The web playground: its files ship in the package and name nothing outside the server, the auth middleware lets
exactly the page and its assets through without a key, and, in a real headless Chromium (selenium, the system
chromedriver) against a live Ray Serve app on 127.0.0.1 with tiny models, the page lists the topologies, streams an
answer equal to the non-streamed greedy one, shows one table row per agent turn, draws the latent-vs-text chart side
by side, and asks for the key on a keyed server.

The side-by-side run's screenshot is saved under pytest's tmp_path; set ``RECURSIVEMAS_PLAYGROUND_SCREENSHOT=PATH``
to write it there too (how ``docs/playground.png`` is made, so a test run never rewrites a committed file).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import urllib.error
import urllib.request
from importlib.resources import files
from pathlib import Path

import pytest
import yaml

from recursivemas import cli
from recursivemas.serve import playground
from recursivemas.serve.app import serve_config_file
from recursivemas.serve.auth import BearerAuth, KeyCheck
from recursivemas.serve.config import ServeConfig
from test_serve_auth import call, ok_app

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-playground-key-1"
PROMPT = "What is 2+3?"
READER = "Context: {context}\nQuestion: {question}\nFeedback: {feedback}\nPass it on."
CONTEXT = "The sum is 5."
WAIT_S = 90  # a run on two busy CPUs, with room to spare


# ------------------------------------------------------------------------------------------- no Ray, no browser


def test_files_ship_in_the_package_and_name_nothing_outside_the_server():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["recursivemas"]
    for name in playground.ASSETS:
        assert (files(playground) / name).is_file()
        assert any(Path(f"serve/playground/{name}").match(p) for p in patterns), name
        text = (files(playground) / name).read_text()
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.[a-z]{2,}[^\s\"')]*", text)) - {"http://www.w3.org/2000/svg"}
        assert not urls, f"{name} names {urls}: the page must load nothing from outside the server"
        assert "@import" not in text and "url(" not in text
    assert "getReader()" in (files(playground) / "app.js").read_text()  # fetch streams (EventSource sends no key)
    html = (files(playground) / playground.INDEX).read_text()
    assert re.findall(r'(?:src|href)="([^"]+)"', html) == ["data:,", "playground/style.css", "playground/app.js"]
    assert "'self'" in playground.CSP and "http" not in playground.CSP
    assert playground.asset("../auth.py") is None and playground.asset("__init__.py") is None


def test_the_middleware_exempts_exactly_the_page_and_its_assets():
    app = BearerAuth(ok_app, keys=lambda: KeyCheck.of([KEY]))
    for path in ("/", "/playground/app.js", "/playground/style.css", "/health"):
        assert call(app, path)[0] == 200, path
    for path in ("/v1/models", "/v1/chat/completions", "/playground/", "/playground/index.html", "/index.html",
                 "/playground/app.js/", "/playground/../v1/models", "/docs", "//"):
        assert call(app, path)[0] == 401, path
    assert call(app, "/v1/models", {"authorization": f"Bearer {KEY}"})[0] == 200


def test_no_playground_flag_and_config():
    assert ServeConfig().playground is True
    parse = cli.build_parser().parse_args
    assert cli._serve_config(parse(["serve"])).playground is True
    off = cli._serve_config(parse(["serve", "--no-playground"]))
    assert off.playground is False
    assert serve_config_file(off)["applications"][0]["args"]["playground"] is False  # serve deploy keeps it off
    assert "playground" not in serve_config_file(ServeConfig())["applications"][0]["args"]


# ----------------------------------------------------------------------------------- a live server and a browser


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """An open app first; ``deploy`` redeploys it (the same name) with other settings for the later tests."""
    from ray import serve

    from recursivemas.cluster import Cluster  # sets the 127.0.0.1 binding before Ray starts
    from recursivemas.serve.app import APP_NAME, build, start
    from test_serve_http import free_port
    from tiny import save_tiny_pair

    root = tmp_path_factory.mktemp("playground")
    backbones = {name: {"model": path, "num_cpus": 0.25} for name, path in save_tiny_pair(root).items()}
    topology = {"name": "seq", "backbones": backbones, "pattern": "sequential", "rounds": 2, "latent_steps": 2,
                "generation": {"max_new_tokens": 6},
                "agents": [{"name": "planner", "backbone": "a"}, {"name": "solver", "backbone": "b"}]}
    (root / "seq.yaml").write_text(yaml.safe_dump(topology))
    # the same agents and backbones (no new deployment), the planner's template naming a field: {context}
    reader = {**topology, "name": "seq-context", "agents": [{**topology["agents"][0], "prompt": READER},
                                                            topology["agents"][1]]}
    (root / "seq-context.yaml").write_text(yaml.safe_dump(reader))
    port = free_port()

    def deploy(**args):
        serve.run(build({"topologies": f"{root / 'seq.yaml'},{root / 'seq-context.yaml'}", **args}), name=APP_NAME,
                  route_prefix="/")

    with Cluster(num_cpus=2):
        start("127.0.0.1", port)
        deploy()
        yield {"http": f"http://127.0.0.1:{port}", "deploy": deploy}
        serve.shutdown()


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_path = shutil.which("chromedriver")
    if driver_path is None:
        pytest.fail("no chromedriver on PATH: `make system` installs chromium and chromium-driver")
    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,800"):
        options.add_argument(arg)
    if shutil.which("chromium"):
        options.binary_location = shutil.which("chromium")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console errors: CSP refusals among them
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SE_OFFLINE", "true")  # selenium manager, were it ever asked, must not download anything
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    # The viewport itself 1100x800 (a window of that size has less): the screenshot's size, whatever the browser.
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": 1100, "height": 800, "deviceScaleFactor": 1, "mobile": False})
    yield driver
    driver.quit()


def http_get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def completion(http: str, body: dict, key: str | None = None) -> dict:
    headers = {"content-type": "application/json", **({"authorization": f"Bearer {key}"} if key else {})}
    request = urllib.request.Request(f"{http}/v1/chat/completions", data=json.dumps(body).encode(), headers=headers)
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def fill(driver, values: dict[str, str]) -> None:
    from selenium.webdriver.common.by import By

    for element_id, value in values.items():
        element = driver.find_element(By.ID, element_id)
        element.clear()
        element.send_keys(value)


def choose(driver, element_id: str, value: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element(By.ID, element_id)).select_by_value(value)


def wait_for(driver, condition, seconds: float = WAIT_S):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.2).until(lambda d: condition(d))


def open_page(driver, http: str) -> None:
    driver.get(f"{http}/")
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()


def wait_until_done(driver) -> None:
    status = lambda d: d.execute_script(  # noqa: E731
        "const s = document.getElementById('status'); return [s.textContent, s.classList.contains('error')]")
    text, failed = wait_for(driver, lambda d: (lambda s: s if s[0] == "Done" or s[1] else None)(status(d)))
    assert not failed, f"the page reports: {text}"


def models_loaded(driver) -> bool:
    return driver.execute_script("return [...document.getElementById('model').options].map(o => o.value)") == [
        "seq", "seq-context"]


def rows(driver, table_id: str) -> list[dict]:
    return driver.execute_script(
        "return [...document.querySelectorAll(`#${arguments[0]} tbody tr`)].map(r => ({agent: r.dataset.agent, "
        "round: Number(r.dataset.round), kind: r.dataset.kind, latent_steps: Number(r.cells[3].textContent), "
        "decoded_tokens: Number(r.cells[4].textContent), prompt_tokens: Number(r.cells[5].textContent)}))", table_id)


def text_of(driver, element_id: str) -> str:
    return driver.execute_script("return document.getElementById(arguments[0]).textContent", element_id)


def same_turns(shown: list[dict], usage: dict) -> None:
    fields = ("agent", "round", "kind", "latent_steps", "decoded_tokens", "prompt_tokens")
    assert shown == [{f: t[f] for f in fields} for t in usage["recursivemas"]["turns"]]


def loaded_from(driver) -> set[str]:
    return set(driver.execute_script(
        "return performance.getEntriesByType('resource').concat(performance.getEntriesByType('navigation'))"
        ".map(e => new URL(e.name).origin)"))


@pytest.mark.ray
def test_page_streams_the_answer_and_shows_every_turn(server, browser):
    http = server["http"]
    status, headers, body = http_get(f"{http}/")
    assert status == 200 and headers["content-type"].startswith("text/html") and b"playground/app.js" in body
    assert headers["content-security-policy"] == playground.CSP
    open_page(browser, http)
    wait_for(browser, models_loaded)
    assert not browser.find_element("id", "auth").is_displayed()  # no key asked where none is needed
    choose(browser, "mode", "latent")
    fill(browser, {"rounds": "2", "latent-steps": "3", "prompt": PROMPT})
    browser.find_element("id", "send").click()
    wait_until_done(browser)
    reference = completion(http, {"model": "seq", "messages": [{"role": "user", "content": PROMPT}], "mode": "latent",
                                  "rounds": 2, "latent_steps": 3, "temperature": 0})
    answer = text_of(browser, "answer")
    assert answer and answer == reference["choices"][0]["message"]["content"]  # streamed = non-streamed, greedy
    shown = rows(browser, "turns")
    same_turns(shown, reference["usage"])
    assert {r["agent"] for r in shown} == {"planner", "solver"} and {r["round"] for r in shown} == {1, 2}
    assert [r["kind"] for r in shown].count("answer") == 1
    assert (shown[-1]["agent"], shown[-1]["round"], shown[-1]["kind"]) == ("solver", 2, "answer")
    assert all(r["latent_steps"] == 3 for r in shown if r["kind"] == "latent")
    assert shown[-1]["decoded_tokens"] == reference["usage"]["recursivemas"]["answer_tokens"]
    summary = text_of(browser, "summary")
    assert summary.startswith("latent, 2 rounds") and f"{reference['usage']['completion_tokens']} decoded" in summary
    assert not browser.find_element("id", "fields").is_displayed()  # seq's templates name no field

    # a topology whose planner names {context}: a box labelled by the field, sent as recursivemas.context
    choose(browser, "model", "seq-context")
    assert browser.find_element("id", "fields").is_displayed()
    assert text_of(browser, "fields").strip() == "Context"
    browser.find_element("id", "send").click()  # the box left empty: the server names the missing field
    wait_for(browser, lambda d: "recursivemas.fields.context" in text_of(d, "status"))
    assert "agent 'planner'" in text_of(browser, "status")
    fill(browser, {"context": CONTEXT})
    browser.find_element("id", "send").click()
    wait_until_done(browser)
    reference = completion(http, {"model": "seq-context", "messages": [{"role": "user", "content": PROMPT}],
                                  "mode": "latent", "rounds": 2, "latent_steps": 3, "temperature": 0,
                                  "recursivemas": {"context": CONTEXT}})
    assert text_of(browser, "answer") == reference["choices"][0]["message"]["content"]
    same_turns(rows(browser, "turns"), reference["usage"])  # the same prompt tokens: the context went along
    choose(browser, "model", "seq")
    assert not browser.find_element("id", "fields").is_displayed()
    choose(browser, "model", "seq-context")
    assert browser.find_element("id", "context").get_attribute("value") == CONTEXT  # kept across topologies

    assert loaded_from(browser) == {http}  # the page, its two files and the API: nothing from elsewhere
    log = browser.get_log("browser")
    refused = [e for e in log if "v1/chat/completions" in e["message"] and "status of 400" in e["message"]]
    assert len(refused) == 1, log  # the request without its context, and nothing else
    severe = [e for e in log if e["level"] == "SEVERE" and e not in refused]
    assert not severe, severe  # no CSP refusal, no script error


@pytest.mark.ray
def test_turn_rows_appear_while_the_agents_think(server, browser):
    """The timeline is live: a MutationObserver records (turn rows, answer length) at every change of the results,
    and a turn row is there before the answer has its first character, and so before it is complete."""
    open_page(browser, server["http"])
    wait_for(browser, models_loaded)
    choose(browser, "model", "seq")
    choose(browser, "mode", "latent")
    fill(browser, {"rounds": "2", "latent-steps": "3", "prompt": PROMPT})
    browser.execute_script(
        "window.seen = []; new MutationObserver(() => { const a = document.getElementById('answer'); "
        "window.seen.push([document.querySelectorAll('#turns tbody tr').length, a ? a.textContent.length : 0]); })"
        ".observe(document.getElementById('results'), {subtree: true, childList: true, characterData: true});")
    browser.find_element("id", "send").click()
    wait_until_done(browser)
    seen = browser.execute_script("return window.seen")
    final = len(text_of(browser, "answer"))
    assert final > 0
    before_answer = [rows_ for rows_, length in seen if length == 0]
    assert max(before_answer) == 3, seen  # planner r1, solver r1, planner r2: each drawn as it finished
    assert any(rows_ >= 1 and length < final for rows_, length in seen)


@pytest.mark.ray
def test_side_by_side_draws_the_chart(server, browser, tmp_path):
    http = server["http"]
    open_page(browser, http)
    wait_for(browser, models_loaded)
    choose(browser, "mode", "compare")
    fill(browser, {"prompt": PROMPT})
    browser.find_element("id", "send").click()
    wait_until_done(browser)
    bars = browser.execute_script(
        "return [...document.querySelectorAll('#chart rect')].map(r => [r.dataset.mode, r.dataset.metric, "
        "Number(r.dataset.value), r.getBBox().width])")
    assert [(m, k) for m, k, _, _ in bars] == [("latent", "wall_s"), ("text", "wall_s"), ("latent", "decoded_tokens"),
                                              ("text", "decoded_tokens")]
    assert all(width > 0 for *_, width in bars)
    for mode, kinds in (("latent", {"latent", "answer"}), ("text", {"text", "answer"})):
        shown = rows(browser, f"turns-{mode}")
        assert len(shown) == 4 and {r["kind"] for r in shown} <= kinds and shown[-1]["kind"] == "answer"
        decoded = next(v for m, k, v, _ in bars if (m, k) == (mode, "decoded_tokens"))
        assert decoded == sum(r["decoded_tokens"] for r in shown)  # the chart plots the tables' numbers
        assert text_of(browser, f"answer-{mode}")
    text_decoded, latent_decoded = (next(v for m, k, v, _ in bars if (m, k) == (mode, "decoded_tokens"))
                                    for mode in ("text", "latent"))
    assert text_decoded >= latent_decoded  # text mode decodes every agent's message too, latent only the answer
    png = browser.get_screenshot_as_png()
    assert png.startswith(b"\x89PNG") and len(png) < 150_000, len(png)
    (tmp_path / "playground.png").write_bytes(png)
    if os.environ.get("RECURSIVEMAS_PLAYGROUND_SCREENSHOT"):
        Path(os.environ["RECURSIVEMAS_PLAYGROUND_SCREENSHOT"]).write_bytes(png)


@pytest.mark.ray
def test_keyed_server_the_page_asks_for_the_key(server, browser):
    http = server["http"]
    server["deploy"](api_keys=[KEY])
    for path in ("/", "/playground/app.js", "/playground/style.css"):  # static, no data: open
        assert http_get(f"{http}{path}")[0] == 200, path
    for path in ("/v1/models", "/playground/index.html", "/playground/nope.js", "/openapi.json"):  # guarded
        status, _, body = http_get(f"{http}{path}")
        assert status == 401 and json.loads(body)["error"]["code"] == "invalid_api_key", path
    assert http_get(f"{http}/v1/models", {"authorization": f"Bearer {KEY}"})[0] == 200
    open_page(browser, http)
    wait_for(browser, lambda d: d.find_element("id", "auth").is_displayed())
    assert "Missing API key" in text_of(browser, "auth-message")
    fill(browser, {"api-key": "sk-wrong"})
    browser.find_element("id", "save-key").click()
    wait_for(browser, lambda d: "Incorrect API key" in text_of(d, "auth-message"))
    fill(browser, {"api-key": KEY})
    browser.find_element("id", "save-key").click()
    wait_for(browser, models_loaded)
    assert browser.execute_script("return sessionStorage.getItem('recursivemas.apiKey')") == KEY
    fill(browser, {"prompt": PROMPT})
    browser.find_element("id", "send").click()
    wait_until_done(browser)
    reference = completion(http, {"model": "seq", "messages": [{"role": "user", "content": PROMPT}],
                                  "temperature": 0}, key=KEY)
    assert text_of(browser, "answer") == reference["choices"][0]["message"]["content"]
    same_turns(rows(browser, "turns"), reference["usage"])


@pytest.mark.ray
def test_no_playground_is_a_404_with_an_openai_error(server):
    http = server["http"]
    server["deploy"](playground=False)
    for path in ("/", "/playground/app.js"):
        status, _, body = http_get(f"{http}{path}")
        error = json.loads(body)["error"]
        assert status == 404 and error["code"] == "not_found" and "--no-playground" in error["message"], path
        assert set(error) >= {"message", "type", "param", "code"}
    assert http_get(f"{http}/v1/models")[0] == 200
