"""`python -m mgm_mlx.server`: MGM behind the OpenAI chat API (FastAPI + uvicorn).

    python -m mgm_mlx.server --model mgm-2b-4bit                 # http://127.0.0.1:8080/v1
    curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\
         -d '{"messages": [{"role": "user", "content": "Hello"}]}'

How a request runs: the body is checked by pydantic models (a wrong type is a 400), the
OpenAI messages become the Session's `Turn`s (system messages -> the system prompt; user
text and images -> Turn.user / Turn.images; assistant -> Turn.assistant), images are turned
into bytes here (base64 data URLs decoded, http(s) URLs downloaded, bounded), and one job
goes to the MLX worker (worker.py), which runs `Session.stream` - the same generation core
as the CLI and the chat app - and hands pieces back to the event loop. The Session keeps
its KV cache and its image cache between requests: a client that resends the conversation
with a new question has only the new tokens prefilled, and an image seen before (by
content, whatever its URL) skips CLIP, ConvNeXt and mining. Requests wait in the worker's
queue; a client that goes away cancels its job (between tokens, or before it starts).
"""

import asyncio
import base64
import binascii
import hmac
import logging
import os
import sys
import time
import uuid
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

INSTALL = "the server needs FastAPI and uvicorn: pip install 'mgm-mlx[server]'"
try:
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, StreamingResponse
    from pydantic import BaseModel, ConfigDict, Field
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError:  # one line for the commands; an ImportError that says what to do for importers
    if __name__ == "__main__" or Path(sys.argv[0]).name.startswith("mgm-mlx-server"):
        sys.exit(f"error: {INSTALL}")
    raise ImportError(INSTALL) from None

from . import cli
from .image import MAX_DOWNLOAD_BYTES, ImageError, fetch, is_url
from .imagegen import extract_prompt, with_gen
from .session import ContextFull, Session, Settings, Turn
from .worker import Worker

log = logging.getLogger("mgm_mlx.server")

# A request body is read into memory: at most this much (a base64 image of MAX_DOWNLOAD_BYTES fits).
MAX_BODY_BYTES = 80 << 20
MIN_IMAGE_TOKENS = 576  # every image takes at least this many tokens (HD: 2880)
MAX_STOPS = 4  # as OpenAI
DISCONNECT_POLL = 0.2  # seconds between checks that a waiting client is still there


# ---- request bodies: OpenAI's shapes. Unknown fields are accepted (clients send many) and
# ignored; a known field of the wrong type is a 400 (strict: no "5" for 5, no 5.0 for an int).

class _Body(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True, allow_inf_nan=False)


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ImageURL(_Body):
    url: str
    detail: str | None = None  # MGM sees every image at its one resolution: ignored


class ImagePart(_Body):
    type: Literal["image_url"]
    image_url: ImageURL | str  # {"url": ...}, or the URL itself as some clients send it


Part = Annotated[TextPart | ImagePart, Field(discriminator="type")]


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[Part] | None = None
    name: str | None = None  # ignored
    tool_calls: list | None = None


class StreamOptions(_Body):
    include_usage: bool = False


class ResponseFormat(_Body):
    type: str


class ChatRequest(_Body):
    messages: list[Message] = Field(min_length=1)
    model: str | None = None  # the server serves one model, whatever is asked
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    # mlx-lm's samplers (not OpenAI's, accepted by mlx-lm's and vLLM's servers too)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, lt=1)
    repetition_penalty: float | None = Field(None, gt=0)
    # MGM's generation mode: the reply writes a picture prompt inside <h>...</h>
    mgm_gen: bool = False
    # OpenAI fields this server cannot honour: a 400 unless they ask for nothing
    n: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list | None = None
    functions: list | None = None
    tool_choice: Any = None
    response_format: ResponseFormat | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    logit_bias: dict | None = None


# ---- errors: OpenAI's JSON, {"error": {"message", "type", "param", "code"}}

class APIError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.kind = status, message, code, param, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def bad_request(message: str, code: str = "invalid_value", param: str | None = None) -> APIError:
    return APIError(400, message, code, param)


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def as_api_error(e: BaseException) -> APIError:
    """What a job raised -> the error the client gets (never a traceback)."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, ImageError):
        return bad_request(one_line(e), "invalid_image", "messages")
    if isinstance(e, ContextFull):
        return bad_request(one_line(e), "context_length_exceeded", "messages")
    if isinstance(e, ValueError):  # Settings.check, a literal <image> in the text, ...
        return bad_request(one_line(e))
    log.error("request failed", exc_info=e)
    return APIError(500, f"internal error: {one_line(e)}", "internal_error", kind="server_error")


def _validation_message(errors: list) -> tuple[str, str]:
    """pydantic's errors -> one line and the parameter it is about."""
    def field(loc):  # leave out union branch names ("str", "list[...]", model names)
        return [p for p in loc if isinstance(p, int) or (p not in ("body", "str", "int", "float", "bool", "list", "dict")
                                                         and "[" not in p and not p[:1].isupper())]

    error = max(errors, key=lambda e: len(field(e.get("loc", ()))))  # the most specific
    if error.get("type") == "json_invalid":
        return f"the body is not valid JSON ({error.get('ctx', {}).get('error', 'JSON decode error')})", None
    path = ".".join(str(p) for p in field(error.get("loc", ())))
    return (f"{path}: {error.get('msg', 'invalid')}" if path else error.get("msg", "invalid request body")), path or None


# ---- OpenAI messages -> the Session's turns

def _text(content, role: str, index: int) -> tuple[str, list]:
    """A message's content -> (text, image URLs); text parts joined by newlines."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    texts, urls = [], []
    for part in content:
        if isinstance(part, TextPart):
            texts.append(part.text)
        elif role != "user":
            raise bad_request(f"messages.{index}: only user messages may hold images", param=f"messages.{index}.content")
        else:
            urls.append(part.image_url if isinstance(part.image_url, str) else part.image_url.url)
    return "\n".join(texts), urls


def to_turns(messages: list, template: str) -> tuple[str | None, list]:
    """OpenAI messages -> (system prompt or None, [Turn]); images stay URLs here.

    Leading system (and developer) messages, joined by newlines, are the system prompt; for
    the gemma template, which has none, it goes before the first user text instead (as
    Gemma's own chat templates do). Consecutive user (or assistant) messages are one turn.
    A user message's images go before its text, in their order, as MGM was trained."""
    system, turns, started = [], [], False
    for i, m in enumerate(messages):
        text, urls = _text(m.content, m.role, i)
        if m.role in ("system", "developer"):
            if started:
                raise bad_request(f"messages.{i}: system messages must come before the conversation",
                                  param=f"messages.{i}.role")
            system.append(text)
            continue
        started = True
        if m.role == "user":
            if turns and turns[-1].assistant is None:
                turns[-1].user = "\n".join(t for t in (turns[-1].user, text) if t)
                turns[-1].images += urls
            else:
                turns.append(Turn(text, urls))
        else:
            if m.tool_calls:
                raise bad_request(f"messages.{i}: tool calls are not supported", param=f"messages.{i}.tool_calls")
            if not turns:
                raise bad_request("the conversation must start with a user message", param="messages")
            last = turns[-1]
            last.assistant = text if last.assistant is None else "\n".join(t for t in (last.assistant, text) if t)
    if not turns or turns[-1].assistant is not None:
        raise bad_request("the last message must be a user message (the server answers it)", param="messages")
    for i, turn in enumerate(turns):
        if not turn.user.strip() and not turn.images:
            raise bad_request(f"user turn {i + 1} has neither text nor an image", param="messages")
    prompt = "\n".join(system) if system else None
    if prompt is not None and template == "gemma":
        turns[0].user = f"{prompt}\n\n{turns[0].user}" if turns[0].user else prompt
        prompt = None
    return prompt, turns


def check_supported(body: ChatRequest):
    """A 400 for what this server cannot do, rather than a reply that silently ignores it."""
    if body.n not in (None, 1):
        raise bad_request("n > 1 is not supported: ask once per reply", "unsupported_parameter", "n")
    if body.logprobs:
        raise bad_request("logprobs are not supported", "unsupported_parameter", "logprobs")
    if body.tools or body.functions:
        raise bad_request("tools (function calling) are not supported by MGM", "unsupported_parameter", "tools")
    if body.response_format is not None and body.response_format.type != "text":
        raise bad_request(f"response_format {body.response_format.type!r} is not supported (only 'text')",
                          "unsupported_parameter", "response_format")
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(body, name):
            raise bad_request(f"{name} is not supported; use repetition_penalty", "unsupported_parameter", name)
    if body.logit_bias:
        raise bad_request("logit_bias is not supported", "unsupported_parameter", "logit_bias")


def stop_strings(stop) -> list:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS:
        raise bad_request(f"stop takes at most {MAX_STOPS} strings", param="stop")
    if any(not s for s in stops):
        raise bad_request("stop strings must not be empty", param="stop")
    return stops


class StopText:
    """Cuts streamed text at the first stop string; holds back a tail that could be the start
    of one, so no part of a stop string is ever sent."""

    def __init__(self, stops: list):
        self.stops, self.held = stops, ""

    def add(self, piece: str) -> tuple[str, bool]:
        """-> (text to send now, whether a stop string was found)."""
        text = self.held + piece
        if not self.stops:
            self.held = ""
            return text, False
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.held = ""
            return text[: min(hits)], True
        keep = max((k for s in self.stops for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
        self.held = text[len(text) - keep:] if keep else ""
        return text[: len(text) - keep], False

    def flush(self) -> str:
        text, self.held = self.held, ""
        return text


# ---- the job on the MLX worker thread

@dataclass
class Piece:
    """One streamed piece of a reply, as the event loop gets it (no MLX arrays cross threads)."""

    text: str
    finish_reason: str | None
    prompt_tokens: int  # the whole prompt, image tokens included
    cached_tokens: int  # of which the KV cache held already (prompt reuse)
    completion_tokens: int
    image_tokens: int = 0
    vision_ms: float = 0.0


def reply(session: Session, turns: list, settings: Settings, system: str | None, stops: list, progress=None):
    """Runs on the worker: Session.stream, cut at the stop strings. progress(done, total) is
    called before the prefill and after each of its chunks (it may raise to stop there)."""
    cut = StopText(stops)
    with closing(session.stream(turns, settings, progress, system=system)) as stream:
        for r in stream:
            text, hit = cut.add(r.text)
            finish = "stop" if hit else r.finish_reason
            if finish is not None and not hit:
                text += cut.flush()
            prompt = r.context_tokens - r.generation_tokens
            yield Piece(text, finish, prompt, prompt - r.prompt_tokens, r.generation_tokens, r.image_tokens,
                        sum(r.vision_ms.values()))
            if hit:
                return


# ---- images: URLs -> what the Session takes (bytes or a local path)

def decode_data_url(url: str) -> bytes:
    header, sep, data = url.partition(",")
    if not sep or ";base64" not in header.lower():
        raise ImageError("a data URL image must be base64: data:image/png;base64,...")
    if len(data) > (MAX_DOWNLOAD_BYTES // 3 + 1) * 4 + 1024:
        raise ImageError(f"the base64 image is larger than {MAX_DOWNLOAD_BYTES >> 20} MB")
    try:
        return base64.b64decode(data.strip())
    except (binascii.Error, ValueError):
        raise ImageError("the data URL is not valid base64") from None


async def image_source(url: str, allow_local_files: bool):
    if url[:5].lower() == "data:":
        return decode_data_url(url)
    if is_url(url):
        return await run_in_threadpool(fetch, url)  # bounded in size and time; off the event loop
    if not allow_local_files:
        raise ImageError("images must be data: or http(s) URLs (local file paths need --allow-local-files)")
    path = url[7:] if url[:7].lower() == "file://" else url
    return str(Path(path).expanduser())


# ---- the app

def create_app(worker: Worker, session: Session, model_id: str = "mgm", api_key: str | None = None,
               allow_local_files: bool = False, max_tokens: int = 512, temp: float = 0.0) -> "FastAPI":
    """The OpenAI-compatible app. Every MLX call of `session` runs on `worker`, the thread
    that loaded the model. max_tokens / temp: what a request that names none gets."""
    app = FastAPI(title="mgm-mlx", description="MGM (Mini-Gemini) behind the OpenAI chat API", docs_url=None,
                  redoc_url=None)
    created = int(time.time())
    stats = {"requests": 0, "cancelled": 0, "failed": 0}
    app.state.stats = stats

    def stop_if_cancelled(done, total):  # on the worker: a client that left before the prefill stops it
        worker.check_cancelled()

    @app.exception_handler(APIError)
    async def _api_error(request, e: APIError):
        log.info("refused (%d): %s", e.status, e.message)
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):  # FastAPI says 422; OpenAI says 400
        message, param = _validation_message(e.errors())
        return JSONResponse(bad_request(message, param=param).body(), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, e: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}.get(e.status_code)
        return JSONResponse(APIError(e.status_code, str(e.detail), code).body(), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request, e: Exception):
        return JSONResponse(as_api_error(e).body(), status_code=500)

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_id, "busy": worker.current is not None, "queued": worker.pending,
                "vision_runs": session.vision_runs, "vision_cache": len(session.vision_cache),
                "context_cached": session.context_used, **stats}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": created, "owned_by": "mgm-mlx"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        check_supported(body)
        stops = stop_strings(body.stop)
        system, turns = to_turns(body.messages, session.template)
        if body.mgm_gen:
            turns[-1].user = with_gen(turns[-1].user)
        settings = Settings(
            max_tokens=body.max_completion_tokens or body.max_tokens or max_tokens,
            temp=temp if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p, top_k=body.top_k or 0, min_p=body.min_p or 0.0,
            repetition_penalty=body.repetition_penalty, seed=None if body.seed is None else body.seed % 2**64,
        )
        try:
            settings.check()
        except ValueError as e:
            raise bad_request(one_line(e)) from None
        count = sum(len(t.images) for t in turns)
        if count * MIN_IMAGE_TOKENS > session.model.max_length:
            raise as_api_error(ContextFull(f"{count} images take at least {count * MIN_IMAGE_TOKENS} tokens; "
                                           f"the model takes at most {session.model.max_length}"))
        try:
            for turn in turns:
                turn.images = [await image_source(url, allow_local_files) for url in turn.images]
        except ImageError as e:
            raise as_api_error(e) from None

        stats["requests"] += 1
        tic = time.perf_counter()
        job = worker.submit(reply, session, turns, settings, system, stops, stop_if_cancelled, name="chat",
                            loop=asyncio.get_running_loop())
        watcher = asyncio.create_task(_watch(request, job))
        try:
            first = await anext(job)  # the first token: vision and prefill are done
        except StopAsyncIteration:  # cancelled before a token: the client is gone
            stats["cancelled"] += 1
            raise APIError(499, "the client closed the request", "client_closed") from None
        except asyncio.CancelledError:
            job.cancel()
            raise
        except Exception as e:
            job.cancel()
            stats["failed"] += 1
            raise as_api_error(e) from None
        finally:
            if body.stream:
                watcher.cancel()  # from here on the streaming response watches the client
        ttft = time.perf_counter() - tic
        rid, now = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        report = _Report(stats, tic, ttft, body.mgm_gen)

        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            return StreamingResponse(_sse(first, job, report, rid, now, model_id, include_usage),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            pieces = [first]
            async for piece in job:
                pieces.append(piece)
        except Exception as e:
            stats["failed"] += 1
            raise as_api_error(e) from None
        finally:
            watcher.cancel()
        text = "".join(p.text for p in pieces)
        last = pieces[-1]
        if last.finish_reason is None:  # cancelled: the client went away
            stats["cancelled"] += 1
        report.log(last)
        message = {"role": "assistant", "content": text}
        if body.mgm_gen:
            message["mgm_picture_prompt"] = extract_prompt(text)
        return {"id": rid, "object": "chat.completion", "created": now, "model": model_id,
                "choices": [{"index": 0, "message": message, "finish_reason": last.finish_reason or "stop",
                             "logprobs": None}],
                "usage": _usage(last)}

    app.add_middleware(Guard, api_key=api_key)
    return app


async def _watch(request: "Request", job):
    """Cancel the job when the client goes away while it waits (in the queue, in prefill)."""
    try:
        while not job.finished.is_set():
            if await request.is_disconnected():
                job.cancel()
                return
            await asyncio.sleep(DISCONNECT_POLL)
    except asyncio.CancelledError:
        pass


def _usage(p: Piece) -> dict:
    return {"prompt_tokens": p.prompt_tokens, "completion_tokens": p.completion_tokens,
            "total_tokens": p.prompt_tokens + p.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": p.cached_tokens}}


class _Report:
    """What a finished request logs: one line per reply."""

    def __init__(self, stats, tic, ttft, gen):
        self.stats, self.tic, self.ttft, self.gen = stats, tic, ttft, gen

    def log(self, last: Piece):
        vision = f"vision {last.vision_ms:.0f} ms" if last.vision_ms else "vision cached"
        images = f"{last.image_tokens} image tokens ({vision}), " if last.image_tokens else ""
        log.info("reply: %sprompt %d tokens (%d reused), first token %.2f s, %d tokens in %.2f s, %s",
                 images, last.prompt_tokens, last.cached_tokens, self.ttft, last.completion_tokens,
                 time.perf_counter() - self.tic, last.finish_reason or "cancelled")


async def _sse(first: Piece, job, report: _Report, rid: str, created: int, model_id: str, include_usage: bool):
    """Server-sent events: a role chunk, content chunks, the finish chunk, usage, [DONE]."""
    import json

    def event(choices, usage=None, extra=None):
        chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_id,
                 "choices": choices}
        if include_usage:
            chunk["usage"] = usage
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    last, text = first, []
    try:
        yield event([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}])
        piece = first
        while True:
            if piece.text:
                text.append(piece.text)
                yield event([{"index": 0, "delta": {"content": piece.text}, "logprobs": None, "finish_reason": None}])
            last = piece
            try:
                piece = await anext(job)
            except StopAsyncIteration:
                break
        if last.finish_reason is None:  # cancelled on the worker; nobody reads this
            report.stats["cancelled"] += 1
            return
        delta = {"mgm_picture_prompt": extract_prompt("".join(text))} if report.gen else {}
        yield event([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": last.finish_reason}])
        if include_usage:
            yield event([], _usage(last))
        report.log(last)
    except asyncio.CancelledError:  # the client went away (Starlette cancels the stream)
        report.stats["cancelled"] += 1
        raise
    except Exception as e:  # after the headers: the error as an event (the openai client raises it)
        report.stats["failed"] += 1
        yield f"data: {json.dumps(as_api_error(e).body())}\n\n"
    finally:
        job.cancel()  # a no-op once it ended; otherwise the worker stops it at the next token
    yield "data: [DONE]\n\n"


class Guard:
    """Plain ASGI middleware: with an API key, /v1/ wants `Authorization: Bearer KEY` (401,
    checked before the body is read); bodies over MAX_BODY_BYTES are refused (413) without
    being read whole."""

    def __init__(self, app, api_key: str | None = None):
        self.app = app
        self.expected = f"Bearer {api_key}".encode() if api_key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        if self.expected is not None and scope["path"].startswith("/v1/"):
            if not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
                return await self.refuse(send, APIError(401, "Incorrect or missing API key: send "
                                                        "'Authorization: Bearer KEY'", "invalid_api_key"))
        too_large = StarletteHTTPException(413, f"the request body is over {MAX_BODY_BYTES >> 20} MB")
        length = headers.get(b"content-length", b"0")
        if length.isdigit() and int(length) > MAX_BODY_BYTES:
            return await self.refuse(send, APIError(413, too_large.detail, "request_too_large"))
        seen = 0

        async def bounded():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_BODY_BYTES:
                raise too_large  # the app's handler turns it into the JSON error
            return message

        return await self.app(scope, bounded, send)

    @staticmethod
    async def refuse(send, error: APIError):
        import json

        body = json.dumps(error.body()).encode()
        await send({"type": "http.response.start", "status": error.status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


# ---- the command

def main(argv=None):
    parser = cli.Parser(prog=cli.prog("mgm_mlx.server"), formatter_class=cli.HelpFormatter,
                        description="Serve MGM with the OpenAI chat API (/v1/chat/completions).")
    cli.add_model_arguments(parser)
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: %(default)s, this machine only; 0.0.0.0: the network)")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--api-key", default=os.environ.get("MGM_MLX_API_KEY"),
                        help="require 'Authorization: Bearer KEY' (default: $MGM_MLX_API_KEY, else no key)")
    parser.add_argument("--template", help="conversation template (default: from the model's config)")
    parser.add_argument("--max-tokens", type=int, default=512, help="reply length when a request names none")
    parser.add_argument("--temp", type=float, default=0.0, help="temperature when a request names none (0: greedy)")
    parser.add_argument("--vision-cache", type=int, default=16, help="images whose tokens are kept (LRU, by content)")
    parser.add_argument("--allow-local-files", action="store_true",
                        help="also take images as local paths or file:// URLs (anyone who can reach the server "
                             "can then have it read image files on this machine)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    args = parser.parse_args(argv)
    cli.run(_serve, args)


def check_address(host: str, port: int):
    """One line now if the server could not listen there (a port in use, an unknown host)."""
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            sock.bind(address)
    except OSError as e:
        raise ValueError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None


def _serve(args):
    from .default_model import DEFAULT_MODEL
    from .loading import load

    if args.max_tokens < 1:
        raise ValueError(f"--max-tokens must be at least 1 (got {args.max_tokens})")
    if args.vision_cache < 0:
        raise ValueError(f"--vision-cache must be 0 or more (got {args.vision_cache})")
    Settings(max_tokens=args.max_tokens, temp=args.temp).check()
    check_address(args.host, args.port)  # before minutes of loading, not after
    path, q_bits = cli.model_path(args, progress=sys.stderr.isatty())  # the default model: its first run
    name = args.model or DEFAULT_MODEL
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s:     %(message)s")
    worker = Worker("mlx-server")
    tic = time.perf_counter()
    model, processor = worker.call(load, path, quantize_bits=q_bits, template=args.template)
    session = worker.call(Session, model, processor, args.template, vision_cache=args.vision_cache)
    log.info("loaded %s in %.1f s (template %s)", name, time.perf_counter() - tic, session.template)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        log.warning("listening on %s without --api-key: anyone who can reach this port can use the model", args.host)
    app = create_app(worker, session, name, args.api_key, args.allow_local_files, args.max_tokens, args.temp)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
