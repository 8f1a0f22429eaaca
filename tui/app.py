"""The terminal chat app: multi-turn image chat with MGM, streamed as Markdown.

The layout is in app.tcss, the modal screens in screens.py, the prompt and helpers in
widgets.py; every MLX call runs on the engine's worker thread (engine.py), which answers
with the typed messages of messages.py.
"""

import shlex
import time
from pathlib import Path

from mgm_mlx.image import ImageError, load_image
from mgm_mlx.imagegen import GEN, Stopped, extract_prompt, missing_extra, reply_prompt, with_gen
from mgm_mlx.session import ContextFull

from PIL import Image as PILImage
from rich.text import Text
from textual import on
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.widgets import Footer, Markdown, Static

from . import store
from .messages import Done, Drawn, Failed, Loaded, Piece, Progress
from .screens import ChatDeleted, ChatList, Choose, HelpScreen, ImagePicker, SettingsScreen
from .widgets import OSC52_NOTE, Prompt, pbcopy, preview, shown

REGENERATE_TEMP = 0.7  # Ctrl+R after a greedy reply samples at this temperature (greedy repeats)
TEXT_RESERVE = 256  # tokens kept free for the question and the answer when counting images


class ChatApp(App):
    TITLE = "mgm-mlx"
    CSS_PATH = Path(__file__).with_name("app.tcss")  # absolute: subclasses live elsewhere
    BINDINGS = [
        Binding("escape", "stop", "stop"),
        Binding("ctrl+o", "pick_image", "image"),
        Binding("ctrl+n", "new_chat", "new"),
        Binding("ctrl+r", "regenerate", "regenerate"),
        Binding("ctrl+t", "copy_reply", "copy"),
        Binding("ctrl+s", "export", "export"),
        Binding("ctrl+l", "open_chat", "chats"),
        Binding("f2", "settings", "settings"),
        Binding("f1", "help", "help"),
        Binding("ctrl+q", "quit", "quit"),
    ]

    def __init__(self, engine_factory, model_name: str, image_root: Path | None = None):
        super().__init__()
        self.engine_factory, self.model_name = engine_factory, model_name
        self.image_root = image_root or Path.cwd()
        self.chat = store.new_chat(model_name)
        self.seen = None  # the saved file as this window last read or wrote it (store.stamp)
        self.save_failed = False  # told once; told again only after a save that worked
        self.pending: list[Path] = []
        self.busy = False
        self.image_tokens, self.context_max = 576, 2048  # told by the engine once the model is loaded
        self.reply_widget: Markdown | None = None
        self.stream = None
        self.reply_text = ""

    def notify(self, message, **kwargs) -> None:
        """Every notice as plain, harmless text: paths and errors may hold [markup] or escapes."""
        kwargs.setdefault("markup", False)
        super().notify(shown(str(message)), **kwargs)

    @property
    def base(self):
        """The chat screen (queries must not land in a modal on top of it)."""
        return self.screen_stack[0]

    def compose(self) -> ComposeResult:
        yield VerticalScroll(id="transcript")
        yield Static("", id="attachments", markup=False)  # file names are not markup
        yield Prompt(id="prompt")
        yield Static("starting ...", id="status", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.base.query_one("#transcript").anchor()
        self.base.query_one(Prompt).focus()
        self.engine = self.engine_factory(self.post_message)

    # ---- engine events

    def on_progress(self, event: Progress) -> None:
        self.set_status(event.text)

    def on_loaded(self, event: Loaded) -> None:
        self.image_tokens, self.context_max = event.image_tokens, event.context_max
        self.set_status(f"ready: {event.info}")

    async def on_piece(self, event: Piece) -> None:
        self.reply_text += event.text
        if self.stream is not None:
            await self.stream.write(shown(event.text))
        r = event.response
        if r is not None:  # live: how fast it goes, how much of the context it takes
            self.set_status(f"generating (Esc stops) | {r.generation_tokens} tok, {r.generation_tps:.1f} t/s | "
                            f"prefill {r.prompt_tps:.0f} t/s | ctx {r.context_tokens}/{r.context_max}")

    async def on_done(self, event: Done) -> None:
        await self.finish_reply()
        if not self.reply_text.strip() and self.reply_widget is not None:
            await self.reply_widget.update("*(empty reply)*")
        self.set_status(("stopped" if event.stopped else "") if event.response is None else
                        ("stopped | " if event.stopped else "") + stats_line(event.response))
        self.chat["turns"][-1]["assistant"] = self.reply_text.strip()
        self.save()
        if event.draw:  # the engine draws the reply's picture next; still busy
            self.set_status("drawing ... (Esc stops)")
            return
        self.busy = False  # only now: status, transcript and saved chat all show the finished turn

    async def on_drawn(self, event: Drawn) -> None:
        body = Text(shown(f"[picture: {event.path}]\n"), style="bold")
        try:
            with PILImage.open(event.path) as picture:
                body.append_text(preview(picture.convert("RGB"), 32))
        except OSError:
            pass
        body.append(shown(f"prompt: {event.prompt}"), style="italic")
        await self.base.query_one("#transcript").mount(Static(body, classes="picture"))
        if self.chat["turns"]:
            self.chat["turns"][-1].setdefault("pictures", []).append(event.path)
            self.save()
        self.notify(f"saved {event.path}")
        self.set_status(f"picture saved to {event.path} ({event.seconds:.1f} s, seed {event.seed})")
        self.busy = False

    async def on_failed(self, event: Failed) -> None:
        if isinstance(event.error, Stopped):  # Esc while drawing: not an error
            self.set_status("drawing stopped")
            self.busy = False
            return
        if event.what == "load":  # nothing works without a model: leave with one line, as generate does
            self.exit(f"error: {event.text}", return_code=1)
            return
        hint = "; Ctrl+N starts a new chat" if isinstance(event.error, ContextFull) else ""
        self.notify(f"{event.what} failed: {event.text}{hint}", severity="error", timeout=8)
        if event.what == "open":
            self.set_status(f"reopened {self.chat['id']}, with what could be restored")
        elif event.what == "draw":
            self.set_status("no picture (see the error)")
            self.busy = False
        if event.what in ("reply", "regenerate") and self.busy:
            await self.finish_reply()
            self.set_status(f"{event.what} failed")
            if not self.reply_text.strip() and self.reply_widget is not None:
                await self.reply_widget.remove()
            if event.what == "reply" and not self.reply_text.strip():
                # the turn did not happen: take it off the screen, give back its text and images
                turn = self.chat["turns"].pop()
                await self.base.query(".user").last().remove()
                self.pending = [Path(p) for p in turn["images"]] + self.pending
                self.show_attachments()
                user = turn["user"]
                user = "/gen " + user[: -len(GEN)] if user.endswith(GEN) else user
                prompt = self.base.query_one(Prompt)
                prompt.text = "\n".join(filter(None, (user, prompt.text)))  # and a draft typed meanwhile stays
            elif event.what == "regenerate" and not self.reply_text.strip():
                # show the old reply again
                await self.base.query_one("#transcript").mount(self.reply_box(self.chat["turns"][-1]["assistant"]))
            self.busy = False

    # ---- sending

    @on(Prompt.Submitted)
    async def submitted(self, event: Prompt.Submitted) -> None:
        text = event.text
        if self.busy and (not text.startswith("/") or text.split()[0] in ("/gen", "/draw")):
            self.notify("wait for the reply, or press Esc to stop it; your text stays in the prompt",
                        severity="warning")
            return
        self.base.query_one(Prompt).accept(text)
        if text.startswith("/"):
            await self.command(text)
            return
        await self.send_turn(text)

    async def send_turn(self, text: str, draw: bool = False) -> None:
        images, self.pending = self.pending, []
        self.show_attachments()
        await self.add_user(text, images)
        self.chat["turns"].append({"user": text, "images": [str(p) for p in images], "assistant": "",
                                   "kept": [self.keep(p) for p in images]})
        await self.start_reply()
        if draw:
            self.engine.send(text, [str(p) for p in images], draw=True)
        else:
            self.engine.send(text, [str(p) for p in images])

    async def add_user(self, text: str, images) -> None:
        body = Text()
        for path in images:
            body.append(shown(f"[image: {Path(path).name}]\n"), style="bold")
            try:
                body.append_text(preview(load_image(path)))
            except ImageError:
                pass
        body.append(shown(text))
        widget = Static(body, classes="user")
        widget.border_title = "You"
        await self.base.query_one("#transcript").mount(widget)

    async def start_reply(self) -> None:
        self.busy, self.reply_text = True, ""
        self.reply_widget = self.reply_box("")
        await self.base.query_one("#transcript").mount(self.reply_widget)
        self.stream = Markdown.get_stream(self.reply_widget)
        self.set_status("thinking ...")

    async def finish_reply(self) -> None:
        """Flush the Markdown stream; the caller marks the turn settled (busy = False) last."""
        if self.stream is not None:
            await self.stream.stop()
        self.stream = None

    async def command(self, text: str) -> None:
        name, _, rest = text.partition(" ")
        if name == "/image":
            self.attach_command(rest)
        elif name == "/detach":
            self.detach(rest.strip())
        elif name == "/new":
            await self.action_new_chat()
        elif name == "/export":
            self.action_export(rest.strip() or None)
        elif name == "/open":
            self.action_open_chat()
        elif name == "/help":
            self.action_help()
        elif name == "/settings":
            self.action_settings()
        elif name in ("/gen", "/draw"):
            await self.picture(name, rest.strip())
        else:
            self.notify(f"unknown command {name}; F1 lists them", severity="warning")

    async def picture(self, name: str, text: str) -> None:
        if self.busy:
            self.notify("wait for the reply, or press Esc to stop it", severity="warning")
            return
        problem = missing_extra()
        if problem:
            self.notify(problem, severity="error", timeout=10)
            return
        if name == "/gen":
            if not text:
                self.notify("usage: /gen TEXT (e.g. /gen draw a cat in a spacesuit)", severity="warning")
                return
            await self.send_turn(with_gen(text), draw=True)
            return
        if not text and self.chat["turns"]:
            last = self.chat["turns"][-1]["assistant"]
            text = extract_prompt(last) or reply_prompt(last) or ""
        if not text:
            self.notify("nothing to draw yet: /draw TEXT, or ask with /gen first", severity="warning")
            return
        self.busy = True
        self.set_status("drawing ...")
        self.engine.draw(text)

    def attach_command(self, rest: str) -> None:
        """/image a.png "b c.png", or one unquoted path with spaces; never a fragment of a path."""
        whole = Path(rest.strip()).expanduser()
        try:
            args = [Path(a).expanduser() for a in shlex.split(rest)]
        except ValueError as e:  # e.g. the quote in Bob's photo.png
            args, problem = None, f"/image: {e}"
        if args and all(p.exists() for p in args):
            for path in args:
                self.attach(path)
        elif rest.strip() and whole.is_file():
            self.attach(whole)
        elif args is None:
            self.notify(problem, severity="error")
        elif not args:
            self.notify("usage: /image PATH [PATH ...]", severity="warning")
        else:
            missing = ", ".join(str(p) for p in args if not p.exists())
            self.notify(f"not found: {missing}; nothing attached (quote paths with spaces)", severity="error")

    def detach(self, which: str) -> None:
        """/detach: every pending image; /detach N: the Nth, as numbered in the attachments line."""
        if which in ("", "all"):
            gone, self.pending = self.pending, []
        elif which.isdigit() and 1 <= int(which) <= len(self.pending):
            gone = [self.pending.pop(int(which) - 1)]
        else:
            self.notify(f"/detach: no attachment {which} (there are {len(self.pending)})", severity="warning")
            return
        self.show_attachments()
        self.notify(("detached " + ", ".join(p.name for p in gone)) if gone else "nothing was attached")

    def attach(self, path: Path) -> None:
        try:
            load_image(path)
        except ImageError as e:
            self.notify(str(e), severity="error")
            return
        self.pending.append(path.resolve())  # saved chats must find it from anywhere
        self.show_attachments()
        self.check_room()

    def show_attachments(self) -> None:
        names = "  ".join(f"{i}: {p.name}" for i, p in enumerate(self.pending, 1))
        line = f"attached: {names}  (/detach N removes one)" if names else ""
        self.base.query_one("#attachments", Static).update(shown(line))

    def set_status(self, text: str) -> None:
        self.base.query_one("#status", Static).update(shown(text))

    def save(self) -> None:
        """Save the chat. When that fails the chat stays on screen and Ctrl+S still exports it;
        when another window changed the file, this chat goes on under a new name."""
        name = self.chat["id"]
        try:
            self.seen = store.save(self.chat, self.seen)
        except OSError as e:
            if not self.save_failed:
                self.notify(f"{e}; the chat stays here, Ctrl+S exports it", severity="error", timeout=10)
            self.save_failed = True
            return
        self.save_failed = False
        if self.chat["id"] != name:
            self.notify(f"another window changed chat {name}; this one is saved as a new chat {self.chat['id']}",
                        severity="warning", timeout=10)

    def reply_box(self, text: str) -> Markdown:
        box = Markdown(shown(text), classes="assistant")
        box.border_title = "MGM"
        return box

    def keep(self, path: Path):
        """A copy of an attached image beside the saved chats (None when it cannot be kept)."""
        try:
            return store.keep_image(path)
        except (OSError, ImageError) as e:
            self.notify(f"{e}; the chat refers to the original file only", severity="warning")
            return None

    def check_room(self) -> None:
        """MGM's context holds only a few images: say so when one more is attached, before the
        question is typed, and offer a new chat or dropping the conversation's oldest image."""
        room = max(1, (self.context_max - TEXT_RESERVE) // self.image_tokens)
        count = sum(len(t["images"]) for t in self.chat["turns"]) + len(self.pending)
        if count <= room:
            return
        question = (f"MGM's context ({self.context_max} tokens) holds about {room} image{'s' * (room != 1)} of "
                    f"{self.image_tokens} tokens; this is image {count}.")
        self.push_screen(Choose(question, {"new": "New chat with this image", "drop": "Drop the oldest image",
                                           "keep": "Keep all (may not fit)"}), self.room_chosen)

    async def room_chosen(self, choice) -> None:
        if choice == "new":
            await self.action_new_chat()
        elif choice == "drop":
            for turn in self.chat["turns"]:
                if turn["images"]:
                    gone = turn["images"].pop(0)
                    if turn.get("kept"):
                        turn["kept"].pop(0)
                    self.engine.drop_oldest_image()
                    self.save()
                    break
            else:
                gone = str(self.pending.pop(0))
                self.show_attachments()
            self.notify(f"dropped {Path(gone).name} from the conversation")

    def on_chat_deleted(self, event: ChatDeleted) -> None:
        if event.name == self.chat["id"]:  # what is on screen is no longer saved anywhere
            self.chat["id"], self.seen = store.new_name(), None

    def get_system_commands(self, screen):
        """The command palette (Ctrl+P): the app's own actions first, then Textual's."""
        for title, help, action in (
            ("New chat", "start over (Ctrl+N)", self.action_new_chat),
            ("Saved chats", "open, rename or delete a saved chat (Ctrl+L)", self.action_open_chat),
            ("Settings", "temperature, top-p, max tokens, system prompt (F2)", self.action_settings),
            ("Attach an image", "with a file picker (Ctrl+O)", self.action_pick_image),
            ("Regenerate", "answer the last question again (Ctrl+R)", self.action_regenerate),
            ("Copy the last reply", "to the clipboard (Ctrl+T)", self.action_copy_reply),
            ("Export", "the chat to Markdown (Ctrl+S)", self.action_export),
            ("Stop", "the reply or the picture (Esc)", self.action_stop),
            ("Keys and commands", "help (F1)", self.action_help),
        ):
            yield SystemCommand(title, help, action)
        yield from super().get_system_commands(screen)

    # ---- actions

    def action_settings(self) -> None:
        template = getattr(getattr(self.engine, "chat", None), "template", None)
        has_system = template is None or template != "gemma"
        self.push_screen(SettingsScreen(self.engine.settings, getattr(self.engine, "system", None), has_system),
                         self.settings_chosen)

    def settings_chosen(self, result) -> None:
        if result is None:
            return
        settings, system = result
        try:
            self.engine.configure(settings, system)
        except ValueError as e:
            self.notify(f"settings not changed: {e}", severity="error")
            return
        self.notify("settings saved for the next replies")

    def action_stop(self) -> None:
        if self.busy:
            self.engine.stop.set()

    def action_pick_image(self) -> None:
        self.push_screen(ImagePicker(self.image_root), lambda path: path and self.attach(Path(path)))

    async def action_new_chat(self) -> None:
        if self.busy:
            self.notify("stop the reply first (Esc)", severity="warning")
            return
        await self.base.query_one("#transcript").remove_children()
        # the draft text stays in the prompt, so its attached images stay too
        self.chat, self.seen = store.new_chat(self.model_name), None
        self.engine.new_chat()
        self.set_status("new chat")

    async def action_regenerate(self) -> None:
        if self.busy or not self.chat["turns"]:
            return
        last = self.base.query(".assistant")
        if last:
            await last.last().remove()
        await self.start_reply()
        if self.engine.settings.get("temp", 0) == 0:  # greedy would give the same reply again
            self.notify(f"regenerating with temperature {REGENERATE_TEMP} (greedy repeats the reply; F2 changes it)")
            self.engine.regenerate(REGENERATE_TEMP)
        else:
            self.engine.regenerate()

    def action_copy_reply(self) -> None:
        replies = [t["assistant"] for t in self.chat["turns"] if t["assistant"]]
        if not replies:
            self.notify("no reply to copy yet", severity="warning")
            return
        if pbcopy(replies[-1]):
            self.notify("copied the last reply")
            return
        self.copy_to_clipboard(replies[-1])  # OSC 52: no answer comes back, so say only what was done
        self.notify(OSC52_NOTE)

    def action_export(self, path: str | None = None) -> None:
        target = Path(path or f"mgm-chat-{time.strftime('%Y%m%d-%H%M%S')}.md").expanduser()
        try:
            target.write_text(store.markdown(self.chat))
        except OSError as e:
            self.notify(f"cannot export: {e}", severity="error")
            return
        self.notify(f"exported to {target}")

    def action_open_chat(self) -> None:
        def opened(name):
            if name:
                self.call_later(self.reopen, name)

        self.push_screen(ChatList(), opened)

    async def reopen(self, name: str) -> None:
        if self.busy:
            self.notify("stop the reply first (Esc)", severity="warning")
            return
        try:  # changed or gone since the list was shown
            self.chat, self.seen = store.load(name)
        except (OSError, ValueError) as e:
            self.notify(f"cannot open chat {name}: {e}", severity="error")
            return
        transcript = self.base.query_one("#transcript")
        await transcript.remove_children()
        for turn in self.chat["turns"]:
            await self.add_user(turn["user"], [store.image_path(turn, i) for i in range(len(turn["images"]))])
            await transcript.mount(self.reply_box(turn["assistant"]))
            for path in turn.get("pictures", []):
                await transcript.mount(Static(Text(shown(f"[picture: {path}]"), style="bold"), classes="picture"))
        self.engine.new_chat([(t["user"], [store.image_path(t, i) for i in range(len(t["images"]))], t["assistant"])
                              for t in self.chat["turns"]])
        self.set_status(f"reopened {name}")

    def action_help(self) -> None:
        self.push_screen(HelpScreen())


def stats_line(r) -> str:
    """The status line after a reply: image tokens and vision time, speeds, memory, context."""
    vision = "+".join(f"{r.vision_ms.get(k, 0):.0f}" for k in ("clip", "convnext", "mining"))
    return ((f"{r.image_tokens} image tok, vision {vision} ms | " if r.image_tokens else "")
            + f"prefill {r.prompt_tps:.0f} t/s | gen {r.generation_tps:.1f} t/s | "
            f"{r.peak_memory:.2f} GB | ctx {r.context_tokens}/{r.context_max}")
