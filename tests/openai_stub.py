"""A real OpenAI-compatible chat-completions server for tests, run in-process on 127.0.0.1:<free port>.

Its answers follow deterministic rules read from the judged text (the part of the prompt between
``<text>`` tags), so expected ratings are written by hand in the tests:

* ``score:C,I,F`` -> ``Rating: C`` / ``I`` / ``F`` for the concept / instruction / fluency rubric
  (the rubric is recognised by the ``<concept>`` / ``<instruction>`` tags the prompt carries);
* ``[[unparseable]]`` -> an answer with no rating; ``[[out_of_range]]`` -> ``Rating: 7``;
* ``[[unparseable_once]]`` -> no rating the first time this prompt is asked, a rating afterwards;
* ``[[slow]]`` -> sleeps ``slow_seconds`` before answering;
* ``[[429_once]]`` / ``[[500_once]]`` -> that HTTP error the first time this prompt is asked;
* ``[[401]]`` -> HTTP 401 every time;
* otherwise, when the server was built with ``rule``, ``rule(rubric, text)`` writes the answer
  (end-to-end tests over generated text use it).

Every request is counted (``server.requests``: list of (rubric, text)).
"""
from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_TEXT = re.compile(r"<text>\n(.*)\n</text>", re.DOTALL)


def rubric_of(prompt: str) -> str:
    if "<concept>" in prompt:
        return "concept"
    if "<instruction>" in prompt:
        return "instruction"
    return "fluency"


class StubServer:
    def __init__(self, slow_seconds: float = 1.0, rule=None):
        self.slow_seconds = slow_seconds
        self.rule = rule
        self.requests: list[tuple[str, str]] = []
        self.seen: dict[str, int] = {}
        self.lock = threading.Lock()
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                status, payload, extra_headers = stub.answer(self.path, body, dict(self.headers))
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    for name, value in extra_headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def count(self, needle: str = "") -> int:
        with self.lock:
            return sum(needle in text for _, text in self.requests)

    def answer(self, path: str, body: dict, headers: dict):
        if path != "/v1/chat/completions":
            return 404, {"error": {"message": f"no route {path}"}}, {}
        prompt = body["messages"][-1]["content"]
        match = _TEXT.search(prompt)
        text = match.group(1) if match else prompt
        rubric = rubric_of(prompt)
        with self.lock:
            self.requests.append((rubric, text))
            self.bodies.append(body)
            self.headers.append(headers)
            asked = self.seen.get(prompt, 0)
            self.seen[prompt] = asked + 1
        if "[[401]]" in text:
            return 401, {"error": {"message": "bad key"}}, {}
        if "[[429_once]]" in text and asked == 0:
            return 429, {"error": {"message": "slow down"}}, {"Retry-After": "0"}
        if "[[500_once]]" in text and asked == 0:
            return 500, {"error": {"message": "boom"}}, {}
        if "[[slow]]" in text:
            time.sleep(self.slow_seconds)
        if "[[unparseable]]" in text or ("[[unparseable_once]]" in text and asked == 0):
            content = "This text is hard to judge. I will not give a number."
        elif self.rule is not None:
            content = self.rule(rubric, text)
        elif "[[out_of_range]]" in text:
            content = "It is excellent.\nRating: 7"
        else:
            scores = re.search(r"score:(\d),(\d),(\d)", text)
            values = dict(zip(("concept", "instruction", "fluency"), scores.groups())) if scores else {}
            content = f"Some explanation of the {rubric} rating.\n**Rating:** [[{values.get(rubric, '1')}]]"
        return 200, {
            "id": "stub", "object": "chat.completion", "model": body.get("model"),
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
        }, {}

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
