"""The OpenAI-compatible server: a real uvicorn server on a free port with a tiny checkpoint,
talked to with the official `openai` client (and urllib for the raw JSON). Replies must be
the library's own (`mgm_mlx.generate` / `Chat` at temperature 0); the image cache and the KV
cache must be reused across requests; errors are OpenAI's JSON with the right status; a
client that goes away stops its generation. Then the worker on its own, the message mapping,
stop strings and the command (the worker itself: test_worker.py)."""

import base64
import io
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")
import mgm_mlx  # noqa: E402
from mgm_mlx.imagegen import extract_prompt, with_gen  # noqa: E402
from mgm_mlx.server import ChatRequest, StopText, create_app, to_turns  # noqa: E402
from mgm_mlx.session import Chat, Session, Settings, Turn  # noqa: E402
from mgm_mlx.worker import Worker  # noqa: E402

import uvicorn  # noqa: E402

from checkpoints import make_checkpoint  # noqa: E402
from common import mode_variants  # noqa: E402

KEY = "test-key"
QUESTION = "What is in the picture?"
N = 12  # tokens per reply


def png(image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def data_url(image, mime="image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(png(image)).decode()}"


def user(text, *images):
    if not images:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [{"type": "text", "text": text}] +
            [{"type": "image_url", "image_url": {"url": url}} for url in images]}


def start(app):
    """uvicorn serving `app` on a free port, in a thread: (server, thread, port)."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.05)
    return server, thread, server.servers[0].sockets[0].getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = make_checkpoint(tmp_path_factory.mktemp("server") / "gemma", "gemma")[0]
    worker = Worker("test-mlx")
    model, processor = worker.call(mgm_mlx.load, folder)  # on the thread that runs every MLX call
    session = worker.call(Session, model, processor)
    app = create_app(worker, session, "mgm-test", api_key=KEY, max_tokens=N)
    server, thread, port = start(app)
    base = f"http://127.0.0.1:{port}"
    client = openai.OpenAI(base_url=base + "/v1", api_key=KEY, max_retries=0, timeout=60)
    yield SimpleNamespace(base=base, client=client, worker=worker, session=session, model=model,
                          processor=processor, app=app, folder=folder)
    server.should_exit = True
    thread.join(10)
    worker.close(10)


def reference(s, prompt, images=(), **settings):
    """The library's answer (mgm_mlx.generate, greedy), on the worker thread as MLX wants."""
    return s.worker.call(mgm_mlx.generate, s.model, s.processor, prompt, list(images), max_tokens=N, **settings)


def post(s, body, key=KEY, path="/v1/chat/completions", raw=None):
    """The raw answer: (status, JSON)."""
    data = raw if raw is not None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(s.base + path, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def health(s) -> dict:
    with urllib.request.urlopen(s.base + "/health", timeout=10) as r:
        return json.loads(r.read())


def streamed(s, messages, **kw):
    chunks = list(s.client.chat.completions.create(model="mgm", messages=messages, stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return text, finish, chunks


# ---- replies

def test_plain_and_streamed_replies_equal_generate(served):
    s = served
    image = mode_variants()["rgb"]
    expected = reference(s, QUESTION, [image])
    r = s.client.chat.completions.create(model="mgm", messages=[user(QUESTION, data_url(image))], temperature=0)
    assert r.choices[0].message.content == expected
    assert r.choices[0].message.role == "assistant" and r.object == "chat.completion" and r.model == "mgm-test"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens > 576 and r.usage.completion_tokens <= N
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    text, finish, chunks = streamed(s, [user(QUESTION, data_url(image))], temperature=0,
                                    stream_options={"include_usage": True})
    assert text == expected and finish == [r.choices[0].finish_reason]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens

    # text only, and max_completion_tokens
    expected = reference(s, "Hello there")
    assert expected == s.client.chat.completions.create(
        model="mgm", messages=[user("Hello there")], max_completion_tokens=N).choices[0].message.content


def test_the_same_image_again_skips_the_vision_towers(served):
    s = served
    image = mode_variants()["tall"]
    before = s.session.vision_runs
    first = s.client.chat.completions.create(model="mgm", messages=[user(QUESTION, data_url(image))])
    assert s.session.vision_runs == before + 1
    # the same bytes under another URL, another question: no CLIP, ConvNeXt or mining
    again = s.client.chat.completions.create(model="mgm", messages=[user("Describe it.", data_url(image, "image/x-png"))])
    assert s.session.vision_runs == before + 1 and health(s)["vision_runs"] == before + 1
    assert again.choices[0].message.content == reference(s, "Describe it.", [image])
    # and the image tokens came from the KV cache too (same image, same place in the prompt)
    assert again.usage.prompt_tokens_details.cached_tokens >= 576 > first.usage.prompt_tokens_details.cached_tokens


def test_two_turn_conversation_reuses_the_cache(served):
    s = served
    image = mode_variants()["palette"]
    url = data_url(image)
    history = [user(QUESTION, url)]
    first = s.client.chat.completions.create(model="mgm", messages=history)
    answer = first.choices[0].message.content
    history += [{"role": "assistant", "content": answer}, user("And the sky?")]
    runs = s.session.vision_runs
    second = s.client.chat.completions.create(model="mgm", messages=history)
    assert s.session.vision_runs == runs  # the image in the first turn is not encoded again

    def chat_reference():  # Chat with the same history (the text the client sent back)
        chat = Chat(s.model, s.processor)
        chat.add_turn(QUESTION, [image], answer)
        return chat.send("And the sky?", max_tokens=N)

    assert second.choices[0].message.content == s.worker.call(chat_reference)
    # prompt reuse: only the new turn (and the re-tokenized answer) was prefilled
    assert second.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens
    assert second.usage.prompt_tokens > first.usage.prompt_tokens


def test_two_clients_at_once(served):
    s = served
    image = mode_variants()["gray"]
    jobs = {"a": ([user(QUESTION, data_url(image))], reference(s, QUESTION, [image])),
            "b": ([user("Tell me about the green tree.")], reference(s, "Tell me about the green tree."))}
    results, errors = {}, []

    def ask(name, stream):
        try:
            messages = jobs[name][0]
            if stream:
                results[name] = streamed(s, messages)[0]
            else:
                results[name] = s.client.chat.completions.create(model="mgm", messages=messages).choices[0].message.content
        except Exception as e:  # pragma: no cover - shown by the assert below
            errors.append(e)

    threads = [threading.Thread(target=ask, args=("a", True)), threading.Thread(target=ask, args=("b", False))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and results == {name: expected for name, (_, expected) in jobs.items()}


def test_a_client_that_disconnects_stops_its_generation(served):
    s = served
    tokenizer = s.processor.tokenizer
    eos = set(tokenizer.eos_token_ids)
    tokenizer.eos_token_ids = set()  # nothing ends the reply early: only max_tokens or the client
    try:
        before = health(s)["cancelled"]
        stream = s.client.chat.completions.create(model="mgm", messages=[user("Hello there")], max_tokens=1900,
                                                  stream=True)
        for i, _ in enumerate(stream):
            if i == 3:
                break
        stream.close()  # the client goes away mid-reply
        deadline = time.time() + 20
        while not (health(s)["cancelled"] > before and not health(s)["busy"]):
            assert time.time() < deadline, "the generation was not stopped"
            time.sleep(0.05)
        assert health(s)["context_cached"] < 1000  # stopped long before its 1900 tokens
    finally:
        tokenizer.eos_token_ids = eos
    # the server goes on with the next request
    r = s.client.chat.completions.create(model="mgm", messages=[user("Hello there")])
    assert r.choices[0].message.content == reference(s, "Hello there")


def test_a_client_gone_during_the_image_path_stops_before_the_prefill(served, monkeypatch):
    s = served
    encode = s.session.encode

    def slow(*args, **kwargs):  # a full-size image path takes tens of seconds on a CPU
        time.sleep(1.5)
        return encode(*args, **kwargs)

    monkeypatch.setattr(s.session, "encode", slow)
    before = health(s)["cancelled"]
    impatient = openai.OpenAI(base_url=s.base + "/v1", api_key=KEY, max_retries=0, timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        impatient.chat.completions.create(model="mgm", messages=[user(QUESTION, data_url(mode_variants()["rgb"]))])
    deadline = time.time() + 20
    while not (health(s)["cancelled"] > before and not health(s)["busy"]):
        assert time.time() < deadline, "the request was not stopped"
        time.sleep(0.05)
    assert s.session.reply == []  # stopped before the prefill: not one token generated
    monkeypatch.undo()
    assert s.client.chat.completions.create(model="mgm", messages=[user("Hello there")]).choices[0].message.content \
        == reference(s, "Hello there")


def test_stop_strings(served):
    s = served
    full = reference(s, "Hello there")
    stop = full[len(full) // 2: len(full) // 2 + 2]
    assert stop.strip(), full
    cut = full[: full.index(stop)]
    r = s.client.chat.completions.create(model="mgm", messages=[user("Hello there")], stop=[stop])
    assert r.choices[0].message.content == cut and r.choices[0].finish_reason == "stop"
    text, finish, _ = streamed(s, [user("Hello there")], stop=stop)
    assert text == cut and finish == ["stop"]


def test_gen_mode_and_system_prompt(served):
    s = served
    r = s.client.chat.completions.create(model="mgm", messages=[user("Draw a lighthouse")], extra_body={"mgm_gen": True})
    text = r.choices[0].message.content
    assert text == reference(s, with_gen("Draw a lighthouse"))
    assert r.choices[0].message.model_extra["mgm_picture_prompt"] == extract_prompt(text)
    # gemma has no system prompt: it goes before the first user text
    r = s.client.chat.completions.create(model="mgm", messages=[{"role": "system", "content": "Be brief."},
                                                                user("Hello there")])
    assert r.choices[0].message.content == reference(s, "Be brief.\n\nHello there")


def test_session_takes_a_system_prompt_per_conversation(served):
    s = served

    def run():  # a model of its own: the vicuna template adds its stop token to the tokenizer
        model, processor = mgm_mlx.load(s.folder)
        session = Session(model, processor, template="vicuna_v1")
        texts = ["".join(r.text for r in session.stream([Turn("Hello there")], Settings(max_tokens=N), system=sp))
                 for sp in ("Be brief.", None, "Be brief.")]
        expected = [mgm_mlx.generate(model, processor, "Hello there", system=sp, template="vicuna_v1", max_tokens=N)
                    for sp in ("Be brief.", None)]
        with pytest.raises(ValueError, match="no system prompt"):
            next(Session(model, processor).stream([Turn("hi")], system="Be brief."))
        return texts, expected

    texts, expected = s.worker.call(run)
    assert texts == expected + expected[:1]


# ---- errors

def test_errors_are_openai_json_with_their_status(served):
    s = served
    with pytest.raises(openai.BadRequestError) as e:
        s.client.chat.completions.create(
            model="mgm", messages=[user(QUESTION, "data:image/png;base64," + base64.b64encode(b"not a picture").decode())])
    assert e.value.status_code == 400 and e.value.code == "invalid_image"
    with pytest.raises(openai.BadRequestError) as e:
        s.client.chat.completions.create(model="mgm", messages=[user("house " * 3000)])
    assert e.value.code == "context_length_exceeded" and "at most 2048" in e.value.message
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(base_url=s.base + "/v1", api_key="wrong", max_retries=0).chat.completions.create(
            model="mgm", messages=[user("hi")])
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"

    status, body = post(s, {"messages": [user("hi")]}, key=None)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    for bad, param in [({"temperature": "hot"}, "temperature"), ({"max_tokens": 0}, "max_tokens"),
                       ({"max_tokens": 5.5}, "max_tokens"), ({"stream": "yes"}, "stream"),
                       ({"top_p": 2}, "top_p"), ({"n": 2}, "n"), ({"logprobs": True}, "logprobs"),
                       ({"tools": [{"type": "function"}]}, "tools"), ({"stop": [""]}, "stop"),
                       ({"messages": [{"role": "tool", "content": "x"}]}, "messages.0.role"),
                       ({"messages": [user("hi"), {"role": "assistant", "content": "yes"}]}, "messages"),
                       ({"messages": [user("a"), {"role": "system", "content": "b"}, user("c")]}, "messages.1.role"),
                       ({"messages": [user("hi", "/etc/hostname")]}, "messages"),
                       ({"messages": [user("four", *[data_url(mode_variants()["rgb"])] * 4)]}, "messages"),
                       ({"messages": [user("what is <image> here")]}, None)]:
        status, body = post(s, {"messages": [user("hi")], **bad})
        assert status == 400, (bad, body)
        assert set(body["error"]) == {"message", "type", "param", "code"} and body["error"]["message"], body
        assert body["error"]["type"] == "invalid_request_error" and body["error"]["param"] == param, (bad, body)
        assert "Traceback" not in body["error"]["message"]
    status, body = post(s, None, raw=b"{not json")
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    status, body = post(s, {}, path="/v1/nothing")
    assert status == 404 and "error" in body
    # unknown fields are accepted and ignored, as OpenAI clients send many
    status, body = post(s, {"messages": [user("hi")], "user": "me", "metadata": {"a": 1}, "presence_penalty": 0})
    assert status == 200 and body["choices"][0]["message"]["content"] == reference(s, "hi")


def test_images_by_http_url_and_offline(served, tmp_path):
    import functools
    import http.server

    s = served
    image = mode_variants()["rgba"]
    (tmp_path / "pic.png").write_bytes(png(image))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{files.server_address[1]}/pic.png"
        r = s.client.chat.completions.create(model="mgm", messages=[user(QUESTION, url)])
        assert r.choices[0].message.content == reference(s, QUESTION, [image])
        status, body = post(s, {"messages": [user(QUESTION, url + ".missing")]})
        assert status == 400 and body["error"]["code"] == "invalid_image" and "HTTP 404" in body["error"]["message"]
    finally:
        files.shutdown()
        files.server_close()
    status, body = post(s, {"messages": [user(QUESTION, url)]})  # nothing listens there now
    assert status == 400 and body["error"]["code"] == "invalid_image" and "offline" in body["error"]["message"]


def test_bodies_over_the_limit_are_refused(served, monkeypatch):
    import http.client

    import mgm_mlx.server

    s = served
    monkeypatch.setattr(mgm_mlx.server, "MAX_BODY_BYTES", 1000)
    status, body = post(s, {"messages": [user("x" * 2000)]})
    assert status == 413 and body["error"]["code"] == "request_too_large"
    connection = http.client.HTTPConnection(s.base.split("//")[1], timeout=30)  # no Content-Length: chunked
    connection.request("POST", "/v1/chat/completions", body=iter([b'{"messages": [', b" " * 2000, b"]}"]),
                       headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
                       encode_chunked=True)
    response = connection.getresponse()
    assert response.status == 413 and json.loads(response.read())["error"]["code"] == "request_too_large"
    connection.close()


def test_an_unexpected_error_is_a_one_line_500_and_the_server_goes_on(served, monkeypatch):
    s = served

    def broken(*args, **kwargs):
        raise RuntimeError("the GPU caught fire\n  (line two)")

    monkeypatch.setattr(s.session, "stream", broken)
    status, body = post(s, {"messages": [user("hi")]})
    assert status == 500 and body["error"]["message"] == "internal error: the GPU caught fire (line two)"
    monkeypatch.undo()
    status, body = post(s, {"messages": [user("hi")]})
    assert status == 200


def test_models_and_health(served):
    s = served
    assert [m.id for m in s.client.models.list()] == ["mgm-test"]
    h = health(s)
    assert h["status"] == "ok" and h["model"] == "mgm-test" and h["queued"] == 0


# ---- the parts on their own

def test_messages_map_to_turns():
    def turns(messages, template="vicuna_v1"):
        return to_turns(ChatRequest(messages=messages).messages, template)

    system, t = turns([{"role": "system", "content": "Be brief."}, {"role": "developer", "content": "Be kind."},
                       user("one", "data:a"), {"role": "assistant", "content": "A"}, user("two"), user("more", "data:b")])
    assert system == "Be brief.\nBe kind."
    assert [(x.user, x.images, x.assistant) for x in t] == [("one", ["data:a"], "A"), ("two\nmore", ["data:b"], None)]
    system, t = turns([{"role": "system", "content": "Be brief."}, user("hi")], "gemma")
    assert system is None and t[0].user == "Be brief.\n\nhi"
    # text parts are joined by newlines; the bare-string image_url form is taken too
    _, t = turns([{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": "data:x"},
                                               {"type": "text", "text": "b"}]}])
    assert t[0].user == "a\nb" and t[0].images == ["data:x"]


def test_stop_text_holds_back_what_could_start_a_stop_string():
    cut = StopText(["END", "##"])
    assert cut.add("hello E") == ("hello ", False)
    assert cut.add("N") == ("", False)
    assert cut.add("x #") == ("ENx ", False)
    assert cut.add("# more") == ("", True)
    cut = StopText(["END"])
    assert cut.add("abc EN") == ("abc ", False) and cut.flush() == "EN"
    assert StopText([]).add("anything") == ("anything", False)


# ---- the command

def _command(*args, env=None, **kw):
    return subprocess.Popen([sys.executable, "-m", "mgm_mlx.server", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env={**os.environ, **(env or {})}, **kw)


def test_command_serves_and_bad_input_is_one_line(served, tmp_path):
    out = _command("--model", tmp_path / "nope", "--port", 0).communicate(timeout=60)[0]
    assert out.strip() == f"error: model folder not found: {tmp_path / 'nope'}"
    code = ("import runpy, sys; sys.modules['fastapi'] = None; sys.argv = ['mgm-mlx-server', '--model', 'x'];"
            "runpy.run_module('mgm_mlx.server', run_name='__main__')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.strip() == "error: the server needs FastAPI and uvicorn: pip install 'mgm-mlx[server]'"

    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        out = _command("--model", served.folder, "--port", port).communicate(timeout=60)[0]
        assert out.strip() == f"error: cannot listen on 127.0.0.1:{port} (Address already in use)"
    server = _command("--model", served.folder, "--port", port, env={"MGM_MLX_API_KEY": "k2"})
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=5) as r:
                    assert json.loads(r.read())["status"] == "ok"
                break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None and time.time() < deadline, server.stdout.read()
                time.sleep(0.2)
        client = openai.OpenAI(base_url=base + "/v1", api_key="k2", max_retries=0)
        assert client.chat.completions.create(model="m", messages=[user("Hello there")]).choices[0].message.content
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base + "/v1", api_key="k3", max_retries=0).models.list()
    finally:
        server.terminate()
        server.wait(30)


# ---- the README's examples, as written, against a server without a key (the README's start)

def test_the_readmes_examples_as_written(served, tmp_path):
    import re
    import shutil

    from test_readme import README, ROOT

    server, thread, port = start(create_app(served.worker, served.session, "mgm", api_key=None, max_tokens=N))
    section = README[README.index("## Serve the OpenAI API"):]
    section = section[:section.index("\n## ")]
    try:
        curl = next(b for b in re.findall(r"^```bash\n(.*?)^```", section, re.S | re.M) if "curl " in b)
        if shutil.which("curl"):
            out = subprocess.run(["bash", "-c", curl.replace("127.0.0.1:8080", f"127.0.0.1:{port}")], cwd=ROOT,
                                 capture_output=True, text=True, timeout=120)
            assert out.returncode == 0, out.stderr
            decoder, replies = json.JSONDecoder(), []
            for at in (m.start() for m in re.finditer(r'\{"id"', out.stdout)):
                reply, _ = decoder.raw_decode(out.stdout, at)
                if reply["object"] == "chat.completion":  # not a streamed chunk
                    replies.append(reply)
            assert len(replies) == 2 and all(r["choices"][0]["message"]["content"] is not None for r in replies)
            assert "data: [DONE]" in out.stdout and '"usage"' in out.stdout  # the streamed one
        code = next(b for b in re.findall(r"^```python\n(.*?)^```", section, re.S | re.M) if "OpenAI(" in b)
        out = subprocess.run([sys.executable, "-c", code.replace("127.0.0.1:8080", f"127.0.0.1:{port}")], cwd=ROOT,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "CompletionUsage" in out.stdout, out.stderr
    finally:
        server.should_exit = True
        thread.join(10)
