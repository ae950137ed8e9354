"""Real servers for the OpenAI-compatible chat backend: `transformers serve` on a free local port, and the
three ways a server fails (a closed port, one that never answers, one that refuses every key)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

try:
    from local_servers import free_port, stop, wait_healthy
except ModuleNotFoundError:  # imported as tests.chat_servers, from the checkout's root (python -m bench.chat_latency)
    from tests.local_servers import free_port, stop, wait_healthy


@contextmanager
def transformers_serve(log: Path, threads: int = 1, preload: str | None = None, device: str = "cpu", dtype: str = "auto",
                       timeout: float = 180):  # fmt: skip
    """`transformers serve` on 127.0.0.1 (offline); yields its base URL (".../v1"). With preload, that
    model folder is loaded before the first request (not pinned: requests may still name other models)."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", "--host", "127.0.0.1",
               "--port", str(port), "--device", device, "--dtype", dtype, "--log-level", "error"]  # fmt: skip
    with open(log, "w") as out:
        server = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_healthy(f"http://127.0.0.1:{port}/health", server, "transformers serve", log, timeout)
        if preload:
            request = urllib.request.Request(f"http://127.0.0.1:{port}/load_model", json.dumps({"model": preload}).encode(),
                                             {"Content-Type": "application/json"})  # fmt: skip
            with urllib.request.urlopen(request, timeout=timeout) as events:
                events.read()  # server-sent progress until the model is ready
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop(server)


def closed_port_url() -> str:
    """A base URL nothing listens on: a server that is down."""
    return f"http://127.0.0.1:{free_port()}/v1"


@contextmanager
def silent_server():
    """A server that accepts connections and never answers: every request times out."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/v1"


class _RefuseKey(BaseHTTPRequestHandler):
    """Answers every request as OpenAI's API answers a wrong key (transformers serve has no keys to check)."""

    body = json.dumps({"error": {"message": "Incorrect API key provided: wrong-key.", "type": "invalid_request_error",
                                 "param": None, "code": "invalid_api_key"}}).encode()  # fmt: skip

    def _refuse(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(401)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    do_GET = do_POST = _refuse

    def log_message(self, *args):
        pass


@contextmanager
def serving(handler, port: int = 0):
    """A real HTTP server with this handler on 127.0.0.1 (port, or a free one), in a thread; yields its /v1 URL."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def key_refusing_server():
    """A real HTTP server on a free port answering 401 with OpenAI's error body."""
    return serving(_RefuseKey)


class _BrokenStream(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that lists model "m" and breaks its streamed answers: `cutoff` sends three
    chunks and drops the connection (a proxy that timed out), `badjson` answers with a body cut mid-JSON."""

    protocol_version = "HTTP/1.1"
    mode = "cutoff"

    def _send(self, body: bytes, kind: str = "application/json") -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send(json.dumps({"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "x"}]}).encode())

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.posts.append(self.path)
        if self.mode == "badjson":
            return self._send(b'{"id": "x", "choices": [')
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for text in ("Hello", " there", " friend"):
            chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                     "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}  # fmt: skip
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_RDWR)

    def log_message(self, *args):
        pass


def broken_stream_server(mode: str, port: int = 0, posts: list | None = None):
    """A real HTTP server (on port, or a free one) listing model "m", whose streamed answers break (mode: cutoff
    or badjson); posts, when given, collects the path of each request it answered."""
    return serving(type("Broken", (_BrokenStream,), {"mode": mode, "posts": [] if posts is None else posts}), port)


class _Strict(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that lists model "m" and refuses with 400 any request field it does not know, as
    OpenAI's API does ("Unrecognized request argument supplied: ..."), and those in `refused` as OpenAI's reasoning
    models refuse max_tokens; otherwise it streams "likeliest answer" (temperature 0) or "drawn answer", then `more`
    words, cut to the length cap it `reads` (max_tokens: Ollama's way, which takes max_completion_tokens and ignores
    it). `bodies` collects every request body it was sent."""

    protocol_version = "HTTP/1.1"
    known = {"model", "messages", "stream", "max_completion_tokens", "max_tokens", "temperature", "top_p", "seed"}
    refused: frozenset = frozenset()
    reads = "max_completion_tokens"
    more = 0

    def _send(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _refuse(self, message: str) -> None:
        self._send(400, {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}})

    def do_GET(self):
        self._send(200, {"object": "list", "data": [{"id": "m", "object": "model", "created": 0, "owned_by": "x"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        self.bodies.append(body)
        unknown = sorted(set(body) - self.known)
        if unknown:
            return self._refuse(f"Unrecognized request argument supplied: {', '.join(unknown)}")
        for name in sorted(self.refused & set(body)):
            return self._refuse(f"Unsupported parameter: '{name}' is not supported with this model. "
                                "Use 'max_completion_tokens' instead.")  # fmt: skip
        words = ["drawn" if body.get("temperature") else "likeliest", "answer", *(f"w{i}" for i in range(self.more))]
        words = words[: body.get(self.reads) or len(words)]
        if not body.get("stream"):
            return self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                                    "choices": [{"index": 0, "finish_reason": "stop",
                                                 "message": {"role": "assistant", "content": " ".join(words)}}]})  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i, (text, finish) in enumerate([*((w, None) for w in words), ("", "stop")]):
            chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                     "choices": [{"index": 0, "delta": {"content": f" {text}" if i and text else text},
                                  "finish_reason": finish}]}  # fmt: skip
            event = f"data: {json.dumps(chunk)}\n\n".encode()
            self.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
        done = b"data: [DONE]\n\n"
        self.wfile.write(f"{len(done):x}\r\n".encode() + done + b"\r\n0\r\n\r\n")
        self.wfile.flush()

    def log_message(self, *args):
        pass


def strict_server(bodies: list, refused: frozenset = frozenset(), reads: str = "max_completion_tokens", more: int = 0):
    """A real HTTP server on a free port listing model "m" that refuses request fields it does not know (400), as
    OpenAI's API does, and those in refused; bodies collects each request body (see _Strict)."""
    return serving(type("Strict", (_Strict,), {"bodies": bodies, "refused": frozenset(refused), "reads": reads, "more": more}))


class _SlowEcho(BaseHTTPRequestHandler):
    """An OpenAI-compatible server that lists model "echo" and streams back, a word every `delay` seconds,
    "you asked: <the last question> (<n> messages)", so a test can tell whose answer a page shows and what history
    came with it; `asked` collects (last question, number of messages) of each streamed request, `left` the questions
    whose reader went away before the answer was complete."""

    protocol_version = "HTTP/1.1"

    def _send(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _event(self, text: str | None, finish: str | None = None) -> None:
        delta = {} if text is None else {"content": text}
        chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "echo",
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}  # fmt: skip
        event = f"data: {json.dumps(chunk)}\n\n".encode()
        self.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
        self.wfile.flush()

    def do_GET(self):
        self._send({"object": "list", "data": [{"id": "echo", "object": "model", "created": 0, "owned_by": "x"}]})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
        messages = body["messages"]
        last = messages[-1]["content"]
        question = last if isinstance(last, str) else next(p["text"] for p in last if p["type"] == "text")
        if not body.get("stream"):  # the one-token check when a model is picked
            return self._send({"id": "x", "object": "chat.completion", "created": 0, "model": "echo",
                               "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                            "finish_reason": "stop"}]})  # fmt: skip
        self.asked.append((question, len(messages)))
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for i, word in enumerate(f"you asked: {question} ({len(messages)} messages)".split(" ")):
                self._event(f" {word}" if i else word)
                time.sleep(self.delay)
            self._event(None, "stop")
            self.wfile.write(b"0\r\n\r\n")
        except OSError:  # the reader left
            self.left.append(question)

    def log_message(self, *args):
        pass


def slow_echo_server(delay: float, asked: list, left: list, port: int = 0):
    """A real HTTP server (on port, or a free one) streaming an echo of each question, a word every delay seconds
    (see _SlowEcho)."""
    return serving(type("SlowEcho", (_SlowEcho,), {"delay": delay, "asked": asked, "left": left}), port)
