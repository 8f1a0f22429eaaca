"""The chat app through Textual's Pilot: a scripted fake engine for behaviour, and one run
through the real MLX engine on a tiny checkpoint."""

import asyncio
import json
import shutil
import sys
import time

from mgm_mlx.session import ContextFull, Response
from mgm_mlx.tui import app as app_module
from mgm_mlx.tui import store, widgets
from mgm_mlx.tui.app import ChatApp, HelpScreen, ImagePicker, Prompt
from mgm_mlx.tui.engine import MLXEngine, Worker
from mgm_mlx.tui.messages import Done, Drawn, Loaded, Piece

import pytest
from textual.widgets import Static

from checkpoints import make_checkpoint
from common import mode_variants

REPLY = "Here is a **red house** under a yellow sun.\n\n```python\nprint('house')\n```"


class FakeEngine(Worker):
    """Streams a fixed reply word by word on its own thread; can be told to fail."""

    def __init__(self, post, delay=0.0, load_error=None, busy_first=0.0):
        super().__init__(post)
        self.delay, self.error, self.sent, self.turns, self.regenerated = delay, None, [], None, 0
        self.drawn = []
        self.settings, self.system, self.regenerate_temps, self.dropped = {"max_tokens": 512, "temp": 0.0}, None, [], 0
        self.submit("load", self._load, load_error)
        self.busy_first = busy_first  # seconds the next job waits behind other work

    def _load(self, error):
        if error:
            raise RuntimeError(error)
        self.post(Loaded("fake model"))

    def send(self, text, images, draw=False):
        self.stop.clear()
        self.sent.append((text, images))
        if self.busy_first:
            self.submit("other", time.sleep, self.busy_first)
        self.submit("reply", self._stream, draw)

    def draw(self, prompt):
        self.stop.clear()
        self.submit("draw", self._draw, prompt)

    def _draw(self, prompt):
        self.drawn.append(prompt)
        path = f"mgm-image-{len(self.drawn):03d}.png"
        mode_variants()["rgb"].resize((64, 48)).save(path)
        self.post(Drawn(path, prompt, 1.5, 42))

    def regenerate(self, temp=None):
        self.stop.clear()
        self.regenerated += 1
        self.regenerate_temps.append(temp)
        self.submit("regenerate", self._stream)

    def new_chat(self, turns=()):
        self.turns = list(turns)

    def configure(self, settings, system):
        from mgm_mlx import Settings

        Settings(**{**self.settings, **settings}).check()
        self.settings.update(settings)
        self.system = system

    def drop_oldest_image(self):
        self.dropped += 1

    def _stream(self, draw=False):
        if self.error:
            error, self.error = self.error, None
            raise error
        stopped = False
        for n, word in enumerate(REPLY.split(" "), 1):
            if self.stop.is_set():
                stopped = True
                break
            self.post(Piece(word + " ", stats(0, {}, 100.0, 20.0, n, 0.5, 700 + n, 2048)))
            time.sleep(self.delay)
        self.post(Done(stats(576, {"clip": 5, "convnext": 6, "mining": 7}, 100.0, 20.0, 12, 0.5, 700, 2048), stopped,
                       draw and not stopped))
        if draw and not stopped:
            self.submit("draw", self._draw, "a red house under a yellow sun")


def stats(image_tokens, vision_ms, prompt_tps, generation_tps, generation_tokens, peak_memory, context, context_max):
    """The last piece of a reply, as the engine sends it in Done."""
    return Response("", 0, None, False, 0, prompt_tps, generation_tokens, generation_tps, peak_memory, "stop",
                    image_tokens=image_tokens, vision_ms=vision_ms, context_tokens=context, context_max=context_max)


class App(ChatApp):
    def __init__(self, engine, **kw):
        super().__init__(lambda post: engine(post), "fake", **kw)
        self.notes = []

    def notify(self, message, **kwargs):
        self.notes.append(str(message))
        super().notify(message, **kwargs)


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("MGM_MLX_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    mode_variants()["rgb"].save(tmp_path / "house.png")
    (tmp_path / "notes.txt").write_text("not a picture")
    return tmp_path


def run(test, engine=FakeEngine, size=(100, 40), **kw):
    async def main():
        app = App(engine, **kw)
        async with app.run_test(size=size) as pilot:
            await until(pilot, lambda: "ready" in status(app) or app.notes)
            await test(app, pilot)

    asyncio.run(main())


async def until(pilot, condition, timeout=30.0):
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        await pilot.pause(0.05)


def status(app):
    return str(app.query_one("#status", Static).render())


async def say(pilot, text):
    pilot.app.query_one(Prompt).insert(text)
    await pilot.press("enter")


async def reply_done(app, pilot):
    await until(pilot, lambda: not app.busy and "gen " in status(app))


def test_send_and_stream(home):
    async def test(app, pilot):
        await say(pilot, "What is this?")
        await reply_done(app, pilot)
        assert [str(w.render()) for w in app.query(".user")] == ["What is this?"]
        replies = list(app.query(".assistant"))
        assert len(replies) == 1 and "red house" in app.reply_text
        assert "576 image tok" in status(app) and "ctx 700/2048" in status(app)
        saved = json.loads(next((home / "home" / "chats").glob("*.json")).read_text())
        assert saved["turns"][0]["assistant"].startswith("Here is a **red house**")

    run(test)


def test_escape_stops_mid_reply_and_keeps_it():
    async def test(app, pilot):
        await say(pilot, "Go on")
        await until(pilot, lambda: len(app.reply_text) > 0)
        await pilot.press("escape")
        await until(pilot, lambda: not app.busy)
        assert "stopped" in status(app)
        assert 0 < len(app.reply_text.strip()) < len(REPLY)
        assert app.chat["turns"][-1]["assistant"] == app.reply_text.strip()

    run(test, engine=lambda post: FakeEngine(post, delay=0.15))


def test_escape_while_the_reply_waits_in_line():
    async def test(app, pilot):
        await say(pilot, "Go on")
        await pilot.press("escape")  # before the engine even starts the reply
        await until(pilot, lambda: not app.busy)
        assert "stopped" in status(app) and app.reply_text == ""
        assert "(empty reply)" in app.query(".assistant").last().source

    run(test, engine=lambda post: FakeEngine(post, busy_first=0.5))


def test_typing_stays_responsive_while_streaming():
    async def test(app, pilot):
        await say(pilot, "Long answer please")
        await until(pilot, lambda: app.busy and app.reply_text)
        await pilot.press("a", "b", "c")
        assert app.busy and app.query_one(Prompt).text == "abc"
        await pilot.press("escape")
        await until(pilot, lambda: not app.busy)

    run(test, engine=lambda post: FakeEngine(post, delay=0.2))


def test_attach_by_command_and_bad_images(home):
    async def test(app, pilot):
        await say(pilot, f"/image {home / 'house.png'}")
        assert "house.png" in str(app.query_one("#attachments", Static).render())
        await say(pilot, "/image missing.png")
        await say(pilot, f"/image {home / 'notes.txt'}")
        assert any("not found" in n for n in app.notes) and any("not an image" in n for n in app.notes)
        await say(pilot, "Describe it")
        await reply_done(app, pilot)
        assert app.engine.sent == [("Describe it", [str(home / "house.png")])]
        assert "[image: house.png]" in str(app.query(".user").first().render())

    run(test)


def test_attach_with_the_picker(home):
    async def test(app, pilot):
        await pilot.press("ctrl+o")
        await until(pilot, lambda: isinstance(app.screen, ImagePicker))
        tree = app.screen.query_one("ImageTree")
        await until(pilot, lambda: len(tree.root.children) > 0)
        names = [str(c.label) for c in tree.root.children]
        assert "house.png" in names and "notes.txt" not in names  # only images are offered
        tree.select_node(tree.root.children[names.index("house.png")])
        await until(pilot, lambda: not isinstance(app.screen, ImagePicker))
        assert app.pending == [home / "house.png"]

    run(test, image_root=None)


def test_new_chat_regenerate_copy_export(home):
    async def test(app, pilot):
        await say(pilot, "First")
        await reply_done(app, pilot)
        await pilot.press("ctrl+r")
        await until(pilot, lambda: app.engine.regenerated == 1 and not app.busy)
        await reply_done(app, pilot)
        assert len(app.query(".assistant")) == 1  # the reply was replaced, not added
        await pilot.press("ctrl+t")
        mac = sys.platform == "darwin" and shutil.which("pbcopy")  # else only OSC 52, which is not "copied"
        assert app.notes[-1] == ("copied the last reply" if mac else widgets.OSC52_NOTE)
        await say(pilot, "/export chat.md")
        text = (home / "chat.md").read_text()
        assert "**You:**" in text and "First" in text and "red house" in text
        await pilot.press("ctrl+n")
        await until(pilot, lambda: len(app.query(".user")) == 0)
        assert app.chat["turns"] == [] and app.engine.turns == []

    run(test)


def test_reopen_a_saved_chat(home):
    async def test(app, pilot):
        await say(pilot, "Remember me")
        await reply_done(app, pilot)
        old = app.chat["id"]
        await pilot.press("ctrl+n")
        await say(pilot, "/open")
        await until(pilot, lambda: app.screen.query("#chat-list"))
        app.screen.query_one("#chat-list").action_select()  # first (newest) entry
        # reopen mounts the transcript, then hands the turns to the engine: wait for both
        await until(pilot, lambda: app.chat["id"] == old and len(app.query(".user")) == 1 and app.engine.turns)
        assert app.engine.turns[0][0] == "Remember me"

    run(test)


def test_history_help_and_unknown_command():
    async def test(app, pilot):
        await say(pilot, "one")
        await reply_done(app, pilot)
        await pilot.press("up")
        assert app.query_one(Prompt).text == "one"
        await pilot.press("f1")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.press("escape")
        await until(pilot, lambda: not isinstance(app.screen, HelpScreen))
        await say(pilot, "/dance")
        assert any("unknown command /dance" in n for n in app.notes)

    run(test)


def test_errors_are_notifications_and_the_app_goes_on(home):
    async def test(app, pilot):
        app.engine.error = ContextFull("the prompt is 2100 tokens (576 for images); the model takes at most 2048")
        await say(pilot, f"/image {home / 'house.png'}")
        await say(pilot, "too much")
        await until(pilot, lambda: any("at most 2048" in n for n in app.notes) and not app.busy)
        assert any("Ctrl+N starts a new chat" in n for n in app.notes)
        assert app.chat["turns"] == [] and len(app.query(".assistant")) == 0 and len(app.query(".user")) == 0
        # the text and the image come back, ready to edit and send again
        assert app.query_one(Prompt).text == "too much" and app.pending == [home / "house.png"]
        app.query_one(Prompt).clear()
        app.pending = []
        await say(pilot, "again")
        await reply_done(app, pilot)
        assert len(app.chat["turns"]) == 1
        app.engine.error = RuntimeError("out of memory")  # a failed regenerate keeps the old reply
        await pilot.press("ctrl+r")
        await until(pilot, lambda: any("regenerate failed" in n for n in app.notes) and not app.busy)
        assert len(app.query(".assistant")) == 1 and app.chat["turns"][0]["assistant"].startswith("Here is")

    run(test)


def test_model_that_fails_to_load():
    """The app exits with the error as one line (python -m mgm_mlx.chat prints it, status 1)."""
    async def main():
        app = App(lambda post: FakeEngine(post, load_error="model folder not found: nowhere"))
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.return_code is not None, timeout=10)
        return app

    app = asyncio.run(main())
    assert app.return_code == 1 and app.return_value == "error: model folder not found: nowhere"


def test_store_is_atomic(home, monkeypatch):
    chat = store.new_chat("m")
    store.save(chat)
    monkeypatch.setattr(json, "dump", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        store.save({**chat, "turns": [{"user": "x", "images": [], "assistant": "y"}]})
    files = list((home / "home" / "chats").iterdir())
    assert [f.name for f in files] == [f"{chat['id']}.json"] and json.loads(files[0].read_text())["turns"] == []


def test_image_paths_with_spaces_and_empty_image_command(home):
    (home / "my house.png").write_bytes((home / "house.png").read_bytes())

    async def test(app, pilot):
        await say(pilot, f'/image "{home / "my house.png"}"')
        await say(pilot, "/image")
        assert app.pending == [home / "my house.png"] and any("usage: /image" in n for n in app.notes)

    run(test)


def test_reopening_with_an_image_that_is_gone(home):
    folder, _ = make_checkpoint(home / "tiny", "gemma")
    posted = []
    engine = MLXEngine(posted.append, str(folder), max_tokens=4)
    end = time.monotonic() + 60
    while not any(isinstance(m, Loaded) for m in posted):
        assert time.monotonic() < end, posted
        time.sleep(0.05)
    engine.new_chat([("hi", [str(home / "gone.png")], "hello"), ("and?", [], "more")])
    while not any(getattr(m, "what", None) == "open" for m in posted):
        assert time.monotonic() < end
        time.sleep(0.05)
    assert "gone.png" in [m for m in posted if getattr(m, "what", None) == "open"][0].text
    assert engine.chat.messages == ["hi", "hello", "and?", "more"]  # every turn kept, the image left out


def test_real_engine_with_a_tiny_checkpoint(home):
    folder, _ = make_checkpoint(home / "tiny", "gemma")

    async def test(app, pilot):
        assert "ready" in status(app), app.notes
        await say(pilot, f"/image {home / 'house.png'}")
        await say(pilot, "What is in the picture?")
        await until(pilot, lambda: not app.busy and "gen " in status(app), timeout=120)
        assert "576 image tok" in status(app)
        assert app.query(".assistant") and app.chat["turns"][0]["images"] == [str(home / "house.png")]

    run(test, engine=lambda post: MLXEngine(post, str(folder), max_tokens=8))


# ---- pictures: /gen asks MGM for a <h> prompt and draws it, /draw draws text or the last reply

def test_gen_and_draw_with_a_fake_engine(home, monkeypatch):
    monkeypatch.setattr(app_module, "missing_extra", lambda: None)

    async def test(app, pilot):
        await say(pilot, "/draw")
        assert any("nothing to draw yet" in n for n in app.notes)
        await say(pilot, "/gen")
        assert any("usage: /gen TEXT" in n for n in app.notes)
        await say(pilot, "/gen a house at night")
        await until(pilot, lambda: not app.busy and "picture saved" in status(app))
        assert app.engine.sent[-1][0] == "a house at night <GEN>"  # as the reference sends it
        assert app.engine.drawn == ["a red house under a yellow sun"]
        picture = str(app.query(".picture").last().render())
        assert "[picture: mgm-image-001.png]" in picture and "prompt: a red house" in picture  # the fake's relative path
        assert "seed 42" in status(app) and (home / "mgm-image-001.png").exists()
        saved = json.loads(next((home / "home" / "chats").glob("*.json")).read_text())
        assert saved["turns"][0]["pictures"] == ["mgm-image-001.png"]
        await say(pilot, "/draw")  # the last reply has no <h> block: its text is drawn
        await until(pilot, lambda: not app.busy and "mgm-image-002.png" in status(app))
        assert app.engine.drawn[-1].startswith("Here is a **red house** under a yellow sun.")
        await say(pilot, "/draw a blue dog")
        await until(pilot, lambda: not app.busy and "mgm-image-003.png" in status(app))
        assert app.engine.drawn[-1] == "a blue dog" and len(app.query(".picture")) == 3
        assert "![mgm-image-001.png](mgm-image-001.png)" in app_module.store.markdown(app.chat)

    run(test)


def test_gen_without_the_extra_says_how_to_install(home, monkeypatch):
    monkeypatch.setattr(app_module, "missing_extra", lambda: "image generation needs diffusionkit: pip install ...")

    async def test(app, pilot):
        await say(pilot, "/gen a cat")
        assert any("pip install" in n for n in app.notes) and not app.busy and not app.engine.sent

    run(test)


def test_real_engine_draws_with_tiny_diffusionkit(home, offline):
    offline("flux")
    folder, _ = make_checkpoint(home / "tiny", "gemma")

    async def test(app, pilot):
        app.engine.gen_size = (100, 64)  # not a size FLUX can draw: the turn fails before the reply
        await say(pilot, "/gen draw a house")
        await until(pilot, lambda: not app.busy and "reply failed" in status(app), timeout=120)
        assert any("multiples of 16" in n for n in app.notes) and not app.chat["turns"]
        assert app.query_one(Prompt).text == "/gen draw a house"  # given back to edit
        app.query_one(Prompt).text = ""
        app.engine.gen_size, app.engine.generator = (96, 64), None
        await say(pilot, "/gen draw a house")  # the tiny random LLM writes no <h> block: one clear error
        await until(pilot, lambda: not app.busy and "no picture" in status(app), timeout=120)
        assert any("no <h>...</h> picture prompt" in n for n in app.notes)
        assert app.chat["turns"][0]["user"] == "draw a house <GEN>"
        await say(pilot, "/draw a red cat on the sky")
        await until(pilot, lambda: not app.busy and "picture saved" in status(app), timeout=120)
        from PIL import Image

        assert Image.open(home / "mgm-image-001.png").size == (96, 64)
        assert app.chat["turns"][-1]["pictures"] == [str(home / "mgm-image-001.png")]  # absolute
        app.engine.stop.set()  # Esc pressed while the draw waits in line: nothing drawn, not an error
        app.engine.submit("draw", app.engine._draw, "a blue dog")
        await until(pilot, lambda: "drawing stopped" in status(app), timeout=60)
        assert not (home / "mgm-image-002.png").exists()

    run(test, engine=lambda post: MLXEngine(post, str(folder), max_tokens=8, gen_size=(96, 64), image_dir=str(home)))
