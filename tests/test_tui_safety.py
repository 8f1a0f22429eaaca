"""The chat app keeps working and keeps the conversation (issue #11, section 6): bad or foreign
chat files, a chats folder that cannot be written, two windows on one chat, and the traps found
by use. Same Pilot set-up as test_tui.py (a scripted FakeEngine, MGM_MLX_HOME in a tmp folder)."""

import errno
import json
import os
import shutil
import threading
import types

from mgm_mlx.session import ContextFull
from mgm_mlx.tui import screens, store, widgets
from mgm_mlx.tui.app import ChatApp
from mgm_mlx.tui.messages import Done, Piece

import pytest
from textual.app import App as TextualApp
from textual.geometry import Region
from textual.widgets import OptionList, Static

from test_tui import REPLY, App, FakeEngine, Prompt, home, reply_done, run, say, stats, status, until  # noqa: F401

TURN = {"user": "hello there", "images": [], "assistant": "hi"}


def chats_folder(home):
    folder = home / "home" / "chats"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shown(widget) -> str:
    """What a widget (and what is inside it) sends to the terminal, as text."""
    out = []
    for w in [widget, *widget.query("*")]:
        size = w.outer_size  # borders and padding included
        if size.width and size.height:
            for strip in w.render_lines(Region(0, 0, size.width, size.height)):
                out.append("".join(segment.text for segment in strip))
    return "\n".join(out)


async def open_list(app, pilot):
    await pilot.press("ctrl+l")
    await until(pilot, lambda: app.screen.query("#chat-list"), timeout=10)
    return app.screen.query_one("#chat-list", OptionList)


# ---- a chats folder that cannot be written: a notice, the chat stays, Ctrl+S exports it

@pytest.mark.parametrize("how", ["home is a file", "disk full", "read-only folder"])
def test_a_chat_that_cannot_be_saved_stays_and_exports(home, monkeypatch, how):
    if how == "home is a file":
        monkeypatch.setenv("MGM_MLX_HOME", str(home / "notes.txt"))
    elif how == "disk full":
        def full(*a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(store.json, "dump", full)
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes anywhere: the other two cases stand in for it")
        (home / "home").mkdir(mode=0o500)

    async def test(app, pilot):
        await say(pilot, "one")
        await reply_done(app, pilot)
        await say(pilot, "two")
        await reply_done(app, pilot)
        assert [str(w.render()) for w in app.query(".user")] == ["one", "two"]  # still on screen
        notices = [n for n in app.notes if "cannot save" in n]
        assert len(notices) == 1 and "Ctrl+S" in notices[0]  # told once, not every turn
        await pilot.press("ctrl+s")
        await until(pilot, lambda: any(n.startswith("exported to") for n in app.notes), timeout=10)
        exported = next(home.glob("mgm-chat-*.md")).read_text()
        assert "one" in exported and "two" in exported and "red house" in exported

    run(test)


def test_store_save_failure_is_a_clear_oserror(home, monkeypatch):
    monkeypatch.setenv("MGM_MLX_HOME", str(home / "notes.txt"))
    with pytest.raises(OSError, match="cannot save the chat in"):
        store.save(store.new_chat("m"))


# ---- chat files that are not chats: skipped in the list, with one notice

BAD_FILES = {
    "list": "[1,2]",
    "null": "null",
    "turns-string": '{"turns": "abc"}',
    "user-number": json.dumps({"model": "m", "turns": [{"user": 5, "images": [], "assistant": "x"}]}),
    "images-string": json.dumps({"model": "m", "turns": [{**TURN, "images": "a.png"}]}),
    "nested": "[" * 100_000 + "]" * 100_000,
    "broken": '{"turns": [',
}


def test_bad_chat_files_are_skipped_with_a_notice(home):
    folder = chats_folder(home)
    for name, text in BAD_FILES.items():
        (folder / f"{name}.json").write_text(text)
    (folder / "good.json").write_text(json.dumps({"model": "m", "turns": [TURN]}))

    async def test(app, pilot):
        options = await open_list(app, pilot)
        assert options.option_count == 1 and "hello there" in str(options.get_option_at_index(0).prompt)
        names = ", ".join(sorted(f"{n}.json" for n in BAD_FILES))
        assert [n for n in app.notes if "skipped" in n] == [f"skipped {len(BAD_FILES)} chat files that are not chats: "
                                                             f"{names}"]
        options.action_select()
        await until(pilot, lambda: len(app.query(".user")) == 1 and "reopened" in status(app), timeout=10)

    run(test)


def test_store_listing_and_load_check_the_shape(home):
    folder = chats_folder(home)
    for name, text in BAD_FILES.items():
        (folder / f"{name}.json").write_text(text)
    (folder / "good.json").write_text(json.dumps({"model": "m", "turns": [TURN]}))
    chats, skipped = store.listing()
    assert [c[0] for c in chats] == ["good"] and sorted(skipped) == sorted(f"{n}.json" for n in BAD_FILES)
    for name in BAD_FILES:
        with pytest.raises(ValueError):
            store.load(name)


# ---- a chat's "id" is content, never a path: the file name is the chat's name

def test_chat_ids_are_never_paths(home):
    folder = chats_folder(home)
    for name, inside in (("20990101-000000-aaaaaa", "../../escaped"), ("20980101-000000-bbbbbb", "another-name")):
        (folder / f"{name}.json").write_text(json.dumps({"id": inside, "model": "m", "turns": [TURN]}))

    async def test(app, pilot):
        for index, name in ((0, "20990101-000000-aaaaaa"), (1, "20980101-000000-bbbbbb")):
            options = await open_list(app, pilot)
            options.highlighted = index
            options.action_select()
            await until(pilot, lambda: len(app.query(".user")) == 1 and status(app) == f"reopened {name}",  # noqa: B023
                        timeout=10)
            await say(pilot, "more")
            await reply_done(app, pilot)
            assert len(json.loads((folder / f"{name}.json").read_text())["turns"]) == 2
        assert not list(home.rglob("escaped*")) and not (folder / "another-name.json").exists()
        assert sorted(p.stem for p in folder.glob("*.json")) == ["20980101-000000-bbbbbb", "20990101-000000-aaaaaa"]

    run(test)


def test_store_writes_only_inside_the_chats_folder(home):
    for bad in ("../../x", "/tmp/x", "..", "", "a/b"):
        with pytest.raises(ValueError):
            store.save({"id": bad, "model": "m", "turns": []})
    assert not (home / "x.json").exists() and not (home / "home" / "x.json").exists()


# ---- two windows on one chat: the second writer saves a new chat instead of overwriting

def test_a_chat_changed_by_another_window_is_saved_as_a_new_chat(home):
    async def test(app, pilot):
        await say(pilot, "mine")
        await reply_done(app, pilot)
        name = app.chat["id"]
        path = home / "home" / "chats" / f"{name}.json"
        theirs = json.loads(path.read_text())  # another window continues the same chat
        theirs["turns"].append({"user": "theirs", "images": [], "assistant": "their answer"})
        path.write_text(json.dumps(theirs))
        await say(pilot, "second")
        await reply_done(app, pilot)
        assert [t["user"] for t in json.loads(path.read_text())["turns"]] == ["mine", "theirs"]  # kept
        assert app.chat["id"] != name
        mine = home / "home" / "chats" / f"{app.chat['id']}.json"
        assert [t["user"] for t in json.loads(mine.read_text())["turns"]] == ["mine", "second"]
        assert any("another window changed" in n and app.chat["id"] in n for n in app.notes)
        await say(pilot, "third")  # goes on in the new file, quietly
        await reply_done(app, pilot)
        assert len(json.loads(mine.read_text())["turns"]) == 3
        assert len([n for n in app.notes if "another window" in n]) == 1

    run(test)


# ---- traps found by use

def test_new_chat_after_context_full_keeps_the_images(home):
    async def test(app, pilot):
        app.engine.error = ContextFull("the prompt is 2100 tokens (576 for images); the model takes at most 2048")
        await say(pilot, f"/image {home / 'house.png'}")
        await say(pilot, "too much")
        await until(pilot, lambda: any("Ctrl+N starts a new chat" in n for n in app.notes) and not app.busy)
        await pilot.press("ctrl+n")
        await until(pilot, lambda: "new chat" in status(app), timeout=10)
        assert app.query_one(Prompt).text == "too much" and app.pending == [home / "house.png"]
        assert "house.png" in str(app.query_one("#attachments", Static).render())
        await pilot.press("enter")
        await reply_done(app, pilot)
        assert app.engine.sent[-1] == ("too much", [str(home / "house.png")])

    run(test)


def test_enter_while_a_reply_streams_keeps_the_draft():
    async def test(app, pilot):
        await say(pilot, "first")
        await until(pilot, lambda: app.busy and app.reply_text)
        await say(pilot, "the next question")
        assert app.query_one(Prompt).text == "the next question"
        assert any("stays in the prompt" in n for n in app.notes)
        await pilot.press("escape")
        await until(pilot, lambda: not app.busy)
        await pilot.press("enter")
        await until(pilot, lambda: len(app.engine.sent) == 2 and not app.busy, timeout=10)
        assert app.engine.sent[-1][0] == "the next question" and app.query_one(Prompt).text == ""

    run(test, engine=lambda post: FakeEngine(post, delay=0.2))


def test_text_typed_between_enter_and_sending_stays():
    async def test(app, pilot):
        prompt = app.query_one(Prompt)
        prompt.text = "first question and then"  # Enter was pressed on "first question" ...
        prompt.post_message(Prompt.Submitted("first question"))  # ... and more typed before the app took it
        await until(pilot, lambda: app.engine.sent and not app.busy, timeout=10)
        assert app.engine.sent[0][0] == "first question" and prompt.text == "and then"

    run(test)


def test_a_failed_reply_gives_its_text_back_without_eating_the_draft():
    async def test(app, pilot):
        app.engine.error = RuntimeError("out of memory")
        await say(pilot, "the question")
        app.query_one(Prompt).insert("a draft")  # typed while the reply waits in line
        await until(pilot, lambda: "reply failed" in status(app) and not app.busy)
        assert app.query_one(Prompt).text == "the question\na draft"

    run(test, engine=lambda post: FakeEngine(post, busy_first=2.0))


def test_unquoted_image_path_with_spaces(home):
    shutil.copy(home / "house.png", home / "my house.png")

    async def test(app, pilot):
        await say(pilot, "/image my house.png")
        assert app.pending == [home / "my house.png"] and not any("not found" in n for n in app.notes)
        await say(pilot, "/image other house.png")  # no such file: no fragment of it is attached
        assert app.pending == [home / "my house.png"]
        assert any("not found: other" in n and "nothing attached" in n for n in app.notes)

    run(test)


def test_detach_removes_pending_images(home):
    shutil.copy(home / "house.png", home / "cat.png")

    async def test(app, pilot):
        await say(pilot, "/image house.png cat.png")
        assert app.pending == [home / "house.png", home / "cat.png"]
        await say(pilot, "/detach 1")
        assert app.pending == [home / "cat.png"] and "house.png" not in str(app.query_one("#attachments").render())
        await say(pilot, "/detach 5")
        assert app.pending == [home / "cat.png"] and any("no attachment 5" in n for n in app.notes)
        await say(pilot, "/detach")
        assert app.pending == [] and str(app.query_one("#attachments", Static).render()) == ""
        assert "/detach" in screens.HELP

    run(test)


def test_chat_command_prints_the_load_error(monkeypatch, capsys):
    from mgm_mlx import chat
    from mgm_mlx.tui import engine

    monkeypatch.setattr(engine, "MLXEngine", lambda post, *a, **k: FakeEngine(post, load_error="no model at nowhere"))
    started = []

    def headless(self):  # no terminal here; and never wait forever for an app that stays open
        timer = threading.Timer(15, lambda: self.call_from_thread(self.exit))
        started.append(timer)
        timer.start()
        try:
            return TextualApp.run(self, headless=True)
        finally:
            timer.cancel()

    monkeypatch.setattr(ChatApp, "run", headless)
    with pytest.raises(SystemExit) as e:
        chat.main(["--model", "nowhere"])
    assert str(e.value) == "error: no model at nowhere"  # sys.exit(text): on stderr, status 1


def test_copy_never_claims_what_it_did_not_do():
    async def test(app, pilot):
        await say(pilot, "hi")
        await reply_done(app, pilot)
        with pytest.MonkeyPatch.context() as mac:  # a Mac without pbcopy
            mac.setattr(widgets, "sys", types.SimpleNamespace(platform="darwin"))
            mac.setenv("PATH", "")
            await pilot.press("ctrl+t")
        await pilot.press("ctrl+t")  # Linux: OSC 52 only
        assert not any("copied" in n for n in app.notes)
        assert [n for n in app.notes if "clipboard" in n] == [widgets.OSC52_NOTE] * 2

    run(test)


def test_pbcopy_reports_failure(monkeypatch):
    false, cat = shutil.which("false"), shutil.which("cat")  # stand-ins for a failing and a working pbcopy
    monkeypatch.setattr(widgets, "sys", types.SimpleNamespace(platform="darwin"))
    for found, works in ((None, False), (false, False), (cat, True)):
        monkeypatch.setattr(widgets.shutil, "which", lambda name, found=found: found)
        assert widgets.pbcopy("x") is works


# ---- what the model, a chat file or a file name holds is shown, never acted on

EVIL = "clear \x1b[2J clipboard \x1b]52;c;aGk=\x07 red \x1b[31mtext\x1b[0m [/x] [@click=app.quit]q[/]"


class EvilEngine(FakeEngine):
    def _stream(self, draw=False):
        self.post(Piece(EVIL))
        self.post(Done(stats(0, {}, 1.0, 1.0, 1, 0.1, 10, 2048), False))


def test_terminal_escapes_in_replies_are_shown_not_sent(home):
    async def test(app, pilot):
        await say(pilot, "say \x1b[2J")
        await reply_done(app, pilot)
        for widget in (app.query(".assistant").last(), app.query(".user").last()):
            text = shown(widget)
            assert "\x1b" not in text and "\x07" not in text and "␛[2J" in text
        reply = shown(app.query(".assistant").last())
        assert "␛]52;c;aGk=␇" in reply and "[/x]" in reply
        saved = json.loads(next((home / "home" / "chats").glob("*.json")).read_text())
        assert saved["turns"][0]["assistant"] == EVIL.strip()  # the chat keeps what the model said
        await pilot.press("ctrl+n")
        options = await open_list(app, pilot)
        assert "\x1b" not in str(options.get_option_at_index(0).prompt)
        options.action_select()
        await until(pilot, lambda: len(app.query(".assistant")) == 1 and "reopened" in status(app), timeout=10)
        assert "\x1b" not in shown(app.query(".assistant").last())

    run(test, engine=EvilEngine)


def test_markup_in_names_titles_and_errors_is_plain_text(home):
    (home / "[b]x.png").write_bytes((home / "house.png").read_bytes())
    title = {**TURN, "user": "[/x] [@click=app.quit]q"}
    (chats_folder(home) / "c.json").write_text(json.dumps({"model": "m", "turns": [title]}))

    async def test(app, pilot):
        await say(pilot, "/image [b]x.png")
        assert "[b]x.png" in str(app.query_one("#attachments", Static).render())
        await say(pilot, '/image "[/nope].png"')
        assert any("[/nope].png" in n for n in app.notes)
        options = await open_list(app, pilot)
        assert "[/x] [@click=app.quit]q" in str(options.get_option_at_index(0).prompt)
        await pilot.pause(0.2)
        assert app.is_running

    run(test)
