"""A minimal client for OpenAI-compatible chat endpoints (``POST {base_url}/chat/completions``),
standard library only, with a persistent response cache and retries.

* **Cache**: one JSON file per request under ``cache_dir``, named by the SHA-256 of the canonical
  JSON of (messages, model, parameters) and written atomically (:mod:`vclip.io`) as soon as the
  answer arrives. A rerun — or a run resumed after a crash — sends no request whose
  answer is cached. The base URL and the key are not part of the key or the file.
* **Retries**: HTTP 429, 5xx, timeouts, connection errors and malformed bodies are retried up to
  ``max_retries`` times with exponential backoff (``backoff_base · 2^attempt``, capped at
  ``backoff_max``, with a little jitter); a ``Retry-After`` header (seconds or an HTTP date) is
  honoured (capped at ``backoff_max``). Other 4xx errors fail at once.
* **The API key** is sent in the ``Authorization`` header only. It is never logged, never written
  to the cache, and scrubbed from every error message (a server echoing it back included).
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import os
import random
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Sequence

from vclip.errors import VclipError
from vclip.io import atomic_write_text

log = logging.getLogger(__name__)

__all__ = ["LLMError", "ChatClient", "check_base_url", "request_key"]

RETRYABLE_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}


class LLMError(VclipError):
    """The chat endpoint could not give a usable answer."""


def request_key(messages: Sequence[dict], model: str, params: dict) -> str:
    blob = json.dumps({"messages": list(messages), "model": model, "params": params}, sort_keys=True,
                      ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def check_base_url(url: str) -> str:
    """``url`` if it can be a chat endpoint's base URL — ``http(s)://HOST[:PORT][/PATH]`` — else
    :class:`LLMError` naming what is wrong. Nothing is sent."""
    if not url:
        raise LLMError("no base URL for the chat endpoint (--base-url / OPENAI_BASE_URL)")
    example = "e.g. https://api.openai.com/v1 or http://localhost:8000/v1"
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number in 0-65535
    except ValueError as e:
        raise LLMError(f"base URL {url!r} is not a valid URL ({e}); {example}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise LLMError(f"base URL {url!r} is not an http:// or https:// URL with a host; {example}")
    if any(c.isspace() for c in url):
        raise LLMError(f"base URL {url!r} contains white space; {example}")
    return url


class ChatClient:
    """``chat(messages) -> str`` against ``base_url`` with ``model`` and sampling ``params``
    (temperature, max_tokens, ...: sent as they are and part of the cache key)."""

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, params: dict | None = None,
                 cache_dir: str | os.PathLike | None = None, timeout: float = 60.0, max_retries: int = 6,
                 backoff_base: float = 1.0, backoff_max: float = 60.0):
        check_base_url(base_url)
        if not model:
            raise LLMError("no model name (--model / OPENAI_MODEL)")
        if not (isinstance(max_retries, int) and max_retries >= 0):
            raise LLMError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        if not timeout > 0:
            raise LLMError(f"timeout must be > 0 seconds, got {timeout!r}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._api_key = api_key or None
        self.params = dict(params or {})
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.requests = 0        # HTTP attempts sent
        self.cache_hits = 0

    def __repr__(self) -> str:  # never shows the key
        return f"ChatClient(base_url={self.base_url!r}, model={self.model!r}, params={self.params!r})"

    # ------------------------------------------------------------------ helpers
    def _scrub(self, text: str) -> str:
        if self._api_key and text:
            text = text.replace(self._api_key, "***")
        return text

    def _cache_path(self, key: str) -> Path | None:
        return self.cache_dir / key[:2] / f"{key}.json" if self.cache_dir else None

    def cached(self, messages: Sequence[dict]) -> str | None:
        path = self._cache_path(request_key(messages, self.model, self.params))
        if path is None or not path.is_file():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))["response"]
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("ignoring an unreadable cache entry %s", path)
            return None

    def _store(self, messages: Sequence[dict], content: str) -> None:
        key = request_key(messages, self.model, self.params)
        path = self._cache_path(key)
        if path is None:
            return
        doc = {"key": key, "model": self.model, "params": self.params, "messages": list(messages),
               "response": content, "time": time.time()}
        atomic_write_text(path, self._scrub(json.dumps(doc, ensure_ascii=False, indent=1)))

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(self.backoff_max, max(0.0, float(retry_after)))
            except ValueError:
                try:
                    when = email.utils.parsedate_to_datetime(retry_after).timestamp()
                    return min(self.backoff_max, max(0.0, when - time.time()))
                except (TypeError, ValueError):
                    pass
        d = min(self.backoff_max, self.backoff_base * (2 ** attempt))
        return d * (1.0 + 0.1 * random.random())

    # ------------------------------------------------------------------ the request
    def chat(self, messages: Sequence[dict]) -> str:
        """The assistant's reply to ``messages`` (from the cache when present)."""
        messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        hit = self.cached(messages)
        if hit is not None:
            self.cache_hits += 1
            return hit
        body = json.dumps({"model": self.model, "messages": messages, **self.params}).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        url = f"{self.base_url}/chat/completions"
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            retry_after = None
            self.requests += 1
            try:
                req = urllib.request.Request(url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
                content = _content(raw)
                self._store(messages, content)
                return content
            except urllib.error.HTTPError as e:
                detail = _short(e.read() if hasattr(e, "read") else b"")
                last = f"HTTP {e.code} {e.reason}: {detail}"
                if e.code not in RETRYABLE_STATUS:
                    raise LLMError(self._scrub(f"{url}: {last}")) from None
                retry_after = e.headers.get("Retry-After") if e.headers else None
            except _Malformed as e:
                last = f"malformed response ({e})"
            except (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError, OSError) as e:
                reason = getattr(e, "reason", e)
                last = f"{type(reason).__name__}: {reason}" if str(reason) else type(reason).__name__
            if attempt < self.max_retries:
                delay = self._delay(attempt, retry_after)
                log.info("%s (attempt %d/%d); retrying in %.2fs", self._scrub(last), attempt + 1,
                         self.max_retries + 1, delay)
                time.sleep(delay)
        n = self.max_retries + 1
        raise LLMError(self._scrub(f"{url}: giving up after {n} attempt{'' if n == 1 else 's'}; last error: {last}"))


class _Malformed(Exception):
    pass


def _short(raw: bytes, n: int = 200) -> str:
    text = raw.decode("utf-8", "replace").strip().replace("\n", " ")
    return text[:n] + ("…" if len(text) > n else "")


def _content(raw: bytes) -> str:
    try:
        doc: Any = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _Malformed(f"not JSON: {e}; body starts {_short(raw, 80)!r}") from None
    try:
        content = doc["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise _Malformed(f"no choices[0].message.content in {_short(raw, 120)!r}") from None
    if not isinstance(content, str):
        raise _Malformed("message content is not a string")
    return content
