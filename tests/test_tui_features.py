"""The chat app's daily-use features (issue #16), through Textual's Pilot with the scripted
FakeEngine of test_tui.py: settings, the saved-chat list (rename, delete), who said what,
live statistics, the command palette, image copies kept with a chat, the context warning."""

import json
import shutil

from mgm_mlx.tui import store
from mgm_mlx.tui.screens import Ask, Choose, Confirm, SettingsScreen

from textual.widgets import Input, OptionList, Static

from test_tui import App, FakeEngine, home, reply_done, run, say, status, until  # noqa: F401
from test_tui_safety import shown


def test_settings_change_the_next_replies_and_are_checked():
    async def test(app, pilot):
        await pilot.press("f2")
        await until(pilot, lambda: isinstance(app.screen, SettingsScreen))
        for key, value in (("temp", "0.8"), ("top_p", "0.9"), ("max_tokens", "64"), ("system", "Be brief.")):
            app.screen.query_one(f"#{key}", Input).value = value
        await pilot.press("ctrl+s")
        await until(pilot, lambda: not isinstance(app.screen, SettingsScreen))
        assert app.engine.settings == {"max_tokens": 64, "temp": 0.8, "top_p": 0.9} and app.engine.system == "Be brief."
        await say(pilot, "/settings")  # nonsense is refused with one line and changes nothing
        await until(pilot, lambda: isinstance(app.screen, SettingsScreen))
        app.screen.query_one("#top_p", Input).value = "2"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: any("settings not changed" in n and "top_p" in n for n in app.notes))
        assert app.engine.settings["top_p"] == 0.9

    run(test)


def test_regenerate_after_a_greedy_reply_samples_a_new_one():
    async def test(app, pilot):
        await say(pilot, "hello")
        await reply_done(app, pilot)
        await pilot.press("ctrl+r")
        await reply_done(app, pilot)
        assert app.engine.regenerate_temps == [0.7] and any("temperature 0.7" in n for n in app.notes)
        app.engine.settings["temp"] = 0.5  # already sampling: regenerate as set
        await pilot.press("ctrl+r")
        await reply_done(app, pilot)
        assert app.engine.regenerate_temps == [0.7, None]

    run(test)


def _chat(name, title, model="MGM-2B"):
    turn = {"user": title, "images": [], "assistant": "a reply"}
    (store.folder()).mkdir(parents=True, exist_ok=True)
    (store.folder() / f"{name}.json").write_text(json.dumps({"model": model, "turns": [turn]}))


async def _chat_list(app, pilot):
    await pilot.press("ctrl+l")
    await until(pilot, lambda: app.screen.query("#chat-list"))
    return app.screen.query_one("#chat-list", OptionList)


def _titles(options):
    return [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]


def test_the_chat_list_shows_titles_and_renames_and_deletes(home):
    _chat("20250101-000000-aaaaaa", "What is in the first picture?")
    _chat("20250102-000000-bbbbbb", "Second question", model="MGM-7B")

    async def test(app, pilot):
        options = await _chat_list(app, pilot)
        titles = _titles(options)
        assert titles[0].startswith("Second question  ·  MGM-7B  ·  1 turn") and "first picture" in titles[1]
        await pilot.press("r")  # the highlighted (newest) chat
        await until(pilot, lambda: isinstance(app.screen, Ask))
        app.screen.query_one(Input).value = "Renamed chat"
        await pilot.press("enter")
        await until(pilot, lambda: _titles(options)[0].startswith("Renamed chat"))
        assert json.loads(store.path("20250102-000000-bbbbbb").read_text())["title"] == "Renamed chat"
        options.highlighted = 1
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, Confirm))
        await pilot.press("n")  # no: nothing is deleted
        await until(pilot, lambda: app.screen.query("#chat-list"))
        assert store.path("20250101-000000-aaaaaa").exists()
        await pilot.press("d")
        await until(pilot, lambda: isinstance(app.screen, Confirm))
        await pilot.click("#yes")
        await until(pilot, lambda: options.option_count == 1)
        assert not store.path("20250101-000000-aaaaaa").exists() and _titles(options)[0].startswith("Renamed chat")

    run(test)


def test_a_new_chat_is_saved_with_its_model_and_title_from_the_first_question(home):
    async def test(app, pilot):
        await say(pilot, "Tell me about the roof")
        await reply_done(app, pilot)
        entry = store.listing()[0][0]
        assert entry.title == "Tell me about the roof" and entry.model == "fake"

    run(test)


def test_who_said_what_and_live_statistics():
    async def test(app, pilot):
        await say(pilot, "hello")
        await until(pilot, lambda: "generating" in status(app))
        assert "t/s" in status(app) and "ctx 70" in status(app)  # live, before the reply is done
        await reply_done(app, pilot)
        assert app.query(".user").last().border_title == "You"
        assert app.query(".assistant").last().border_title == "MGM"
        screen = shown(app.query(".assistant").last())  # rendered as Markdown: bold, not asterisks
        assert "red house" in screen and "**" not in screen

    run(test, engine=lambda post: FakeEngine(post, delay=0.2))


def test_the_command_palette_lists_the_apps_actions():
    async def test(app, pilot):
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for title in ("New chat", "Saved chats", "Settings", "Attach an image", "Regenerate", "Export"):
            assert title in titles
        assert titles.index("New chat") < titles.index("Quit")  # ours first, Textual's after
        await pilot.press("ctrl+p")
        await until(pilot, lambda: app.screen.__class__.__name__ == "CommandPalette")

    run(test)


def test_images_are_kept_with_the_chat(home):
    async def test(app, pilot):
        shutil.copy(home / "house.png", home / "moving.png")
        await say(pilot, f"/image {home / 'moving.png'}")
        await say(pilot, "what is it?")
        await reply_done(app, pilot)
        name = app.chat["id"]
        kept = app.chat["turns"][0]["kept"][0]
        assert (store.folder() / "images" / kept).read_bytes() == (home / "house.png").read_bytes()
        (home / "moving.png").unlink()  # the original moves away
        await pilot.press("ctrl+n")
        await pilot.press("ctrl+l")
        await until(pilot, lambda: app.screen.query("#chat-list"))
        app.screen.query_one("#chat-list", OptionList).action_select()
        await until(pilot, lambda: app.chat["id"] == name and app.engine.turns)
        assert app.engine.turns[0][1] == [str(store.folder() / "images" / kept)]  # the copy stands in
        assert "[image: " in str(app.query(".user").last().render())

    run(test)


def test_a_fourth_image_asks_before_the_question(home):
    async def test(app, pilot):
        for _ in range(3):
            await say(pilot, f"/image {home / 'house.png'}")
        await say(pilot, "three pictures")
        await reply_done(app, pilot)
        assert not isinstance(app.screen, Choose)
        await say(pilot, f"/image {home / 'house.png'}")
        await until(pilot, lambda: isinstance(app.screen, Choose))
        assert "holds about 3 images" in str(app.screen.query_one(Static).render())
        await pilot.click("#drop")
        await until(pilot, lambda: not isinstance(app.screen, Choose))
        assert app.engine.dropped == 1 and len(app.chat["turns"][0]["images"]) == 2 and len(app.pending) == 1
        saved = json.loads(store.path(app.chat["id"]).read_text())
        assert len(saved["turns"][0]["images"]) == 2 and len(saved["turns"][0]["kept"]) == 2
        await say(pilot, f"/image {home / 'house.png'}")  # now the fifth: a new chat with the pending ones
        await until(pilot, lambda: isinstance(app.screen, Choose))
        await pilot.click("#new")
        await until(pilot, lambda: app.chat["turns"] == [] and "new chat" in status(app))
        assert len(app.pending) == 2

    run(test)
