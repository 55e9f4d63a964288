"""Live turns, captured: a streamed completion with ``stream_options.include_turns`` written as timestamped SSE lines,
and the playground photographed mid-run (turn rows drawn, no answer yet) and when done.

Real Ray Serve on 127.0.0.1, the tests' tiny random-weight models (hence gibberish answers), 3 rounds of 48 latent
steps so that a run lasts long enough to catch mid-way; headless Chromium through selenium and the system
chromedriver (``make system``).

Run: ``python benchmarks/playground_capture.py [--out docs]``: writes ``OUT/sse-turns.txt``,
``OUT/playground-live.png`` and ``OUT/playground-done.png``. Last line: JSON with the turn events that arrived before
the answer's first token and the page's turn rows and answer length when the mid-run shot was taken.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import yaml  # noqa: E402
from ray import serve  # noqa: E402

from recursivemas.cluster import Cluster  # noqa: E402  (binds Ray to 127.0.0.1 before it starts)
from recursivemas.serve.app import APP_NAME, build, start  # noqa: E402
from test_serve_http import free_port  # noqa: E402
from tiny import save_tiny_pair  # noqa: E402

PROMPT = "What is 2+3?"


def capture_stream(url: str, path: Path) -> int:
    """Write the stream's lines with their arrival times; return the turn events before the first answer token."""
    body = {"model": "seq", "messages": [{"role": "user", "content": PROMPT}], "temperature": 0, "stream": True,
            "stream_options": {"include_turns": True, "include_usage": True}}
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    began, turns, answered = time.perf_counter(), 0, False
    with urllib.request.urlopen(request, timeout=120) as response, path.open("w") as out:
        for raw in response:
            line = raw.decode()
            if not line.strip():
                continue
            out.write(f"[{time.perf_counter() - began:7.3f} s] {line}")
            turns += line.startswith("event: recursivemas.turn") and not answered
            answered |= '"content":"' in line and '"content":""' not in line
    return turns


def photograph(url: str, out: Path) -> tuple[int, int]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import Select

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,800"):
        options.add_argument(arg)
    if shutil.which("chromium"):
        options.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=options)
    try:
        driver.get(f"{url}/")
        time.sleep(2)  # the model list
        Select(driver.find_element("id", "mode")).select_by_value("latent")
        driver.find_element("id", "prompt").send_keys(PROMPT)
        driver.find_element("id", "send").click()
        seen = (0, 0)
        for _ in range(3000):
            seen = tuple(driver.execute_script(
                "const a = document.getElementById('answer');"
                "return [document.querySelectorAll('#turns tbody tr').length, a ? a.textContent.length : 0]"))
            if seen[0] >= 2:
                driver.save_screenshot(str(out / "playground-live.png"))
                break
            time.sleep(0.01)
        for _ in range(600):
            if driver.execute_script("return document.getElementById('status').textContent") == "Done":
                break
            time.sleep(0.1)
        driver.save_screenshot(str(out / "playground-done.png"))
        return seen
    finally:
        driver.quit()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="docs")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="rmas-capture-"))
    backbones = {n: {"model": p, "num_cpus": 0.25} for n, p in save_tiny_pair(root).items()}
    topology = {"name": "seq", "backbones": backbones, "pattern": "sequential", "rounds": 3, "latent_steps": 48,
                "generation": {"max_new_tokens": 24},
                "agents": [{"name": "planner", "backbone": "a"}, {"name": "solver", "backbone": "b"}]}
    (root / "seq.yaml").write_text(yaml.safe_dump(topology))
    port = free_port()
    with Cluster(num_cpus=2):
        start("127.0.0.1", port)
        serve.run(build({"topologies": str(root / "seq.yaml")}), name=APP_NAME, route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        turns_before_answer = capture_stream(url, out / "sse-turns.txt")
        rows, answer_chars = photograph(url, out)
        serve.shutdown()
    shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"turn_events_before_answer": turns_before_answer, "live_shot_rows": rows,
                      "live_shot_answer_chars": answer_chars}))


if __name__ == "__main__":
    main()
