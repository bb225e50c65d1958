"""A small fake OpenAI-compatible chat server for the tests (127.0.0.1, port 0, one thread per
request), with deterministic answers and failure injection."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def default_answer(messages: list[dict]) -> str:
    """A deterministic reply to the last user message, in the messy formats real models use."""
    last = messages[-1]["content"]
    if m := re.search(r"exactly (\d+) items", last):               # corrective follow-up
        n = int(m.group(1))
        first = next(x["content"] for x in messages if x["role"] == "user")
        cls = re.search(r"action: (.+?), \d+", first).group(1)
        return "\n".join(f"{i + 1}. {cls} part {i + 1}" for i in range(n))
    if m := re.search(r"descriptors for action: (.+?), (\d+) descriptors", last):
        cls, n = m.group(1), int(m.group(2))
        return f"Sure! Here are {n} descriptors for {cls}:\n" + "\n".join(
            f"{i + 1}. \"{cls} thing {i + 1}\"" for i in range(n)) + "\nI hope this helps."
    if m := re.search(r"steps for action: (.+?), (\d+) steps", last):
        cls, n = m.group(1), int(m.group(2))
        return "\n".join(f"- **Step {i + 1}**: do {cls} stage {i + 1}." for i in range(n))
    if m := re.search(r"motion concept in a video of (.+?)\? A:", last):
        return f"A: a motion typical of {m.group(1)}."
    if m := re.search(r"original class (.+?) from the similar class (.+?)\? A:", last):
        return f"Speed of {m.group(1)}; Shape of {m.group(2)}"
    if m := re.search(r"roles of an action (.+?)\? List", last):
        return f"Objects: {m.group(1)} tool, hands\n* hands\n* {m.group(1)} tool\n* arena"
    if m := re.search(r"Concisely explain (.+?) in one sentence", last):
        return f"\"{m.group(1)} is a thing seen in videos.\""
    return "I do not know."


class FakeOpenAI:
    """``server.url`` is the base URL (``.../v1``). Inject failures with ``server.script`` (a list
    of actions consumed one per request: ``("429", retry_after)``, ``("500",)``, ``("malformed",)``,
    ``("slow", seconds)``, ``("answer", text)``, ``("echo400",)``) or ``server.fail_if`` (a predicate
    on the messages: answer 500 for ever). ``server.requests`` lists every request's messages,
    ``server.auth`` every Authorization header."""

    def __init__(self, answer=default_answer):
        self.answer = answer
        self.script: list[tuple] = []
        self.fail_if = None
        self.requests: list[list[dict]] = []
        self.auth: list[str | None] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                with outer.lock:
                    outer.requests.append(body["messages"])
                    outer.auth.append(self.headers.get("Authorization"))
                    action = outer.script.pop(0) if outer.script else ("answer", None)
                if outer.fail_if is not None and outer.fail_if(body["messages"]):
                    action = ("500",)
                kind = action[0]
                if kind == "429":
                    return self._send(429, b'{"error": "rate limited"}', {"Retry-After": str(action[1])})
                if kind == "500":
                    return self._send(500, b'{"error": "internal"}')
                if kind == "echo400":
                    return self._send(400, f'{{"error": "bad key {self.headers.get("Authorization")}"}}'.encode())
                if kind == "malformed":
                    return self._send(200, b'{"choices": [ {"message": ')
                if kind == "slow":
                    time.sleep(action[1])
                text = action[1] if kind == "answer" and action[1] is not None else outer.answer(body["messages"])
                doc = {"id": "x", "object": "chat.completion", "model": body["model"],
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                    "finish_reason": "stop"}]}
                self._send(200, json.dumps(doc).encode())

            def _send(self, code, payload, headers=None):
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def requests_for(self, cls: str) -> int:
        return sum(1 for msgs in self.requests if cls in msgs[-1]["content"] or cls in msgs[0]["content"])
