"""The app's modal screens: attaching an image, reopening a chat, the keys and commands."""

import time
from dataclasses import dataclass
from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import Button, DirectoryTree, Input, Label, Markdown, OptionList, Static

from . import store
from .widgets import ImageTree, shown

HELP = """\
# Keys

| key | what |
|---|---|
| Enter | send |
| Ctrl+J | new line in the prompt |
| Up / Down | earlier prompts (on the first / last line) |
| Esc | stop the reply (the part so far stays) |
| Ctrl+O | attach an image with a file picker |
| Ctrl+N | new chat |
| Ctrl+R | regenerate the last reply (at temperature 0 it samples at 0.7, so you get a new one) |
| Ctrl+T | copy the last reply |
| Ctrl+S | export the chat to Markdown (a file in this folder) |
| Ctrl+L | saved chats: open, rename (r), delete (d) |
| F2 | settings: temperature, top-p, max tokens, system prompt |
| Ctrl+P | every action, searchable |
| F1 | this help |
| Ctrl+Q | quit |

# Commands

`/image PATH [PATH ...]` attach images to the next message (quote paths with spaces when
attaching several) · `/detach [N]` remove attached image N (as numbered), or all of them ·
`/new` · `/export [FILE]` · `/open` · `/settings` · `/help`

MGM's context (2048 tokens; HD models 4096) holds about three images: attaching one more asks
whether to start a new chat with it or to drop the conversation's oldest image. Attached images
are copied into the chats folder (up to 20 MB each; larger ones as a 2048-pixel PNG), so a
saved chat keeps them when the originals move.

`/gen TEXT` asks for a picture: MGM answers and writes a prompt inside `<h>...</h>`, which a
diffusion model draws into the next free `mgm-image-NNN.png` here (needs the `[gen]` extra; see
the README) · `/draw [TEXT]` draws TEXT, or else the last reply's `<h>` prompt or the reply itself

Copying uses pbcopy on macOS, else the terminal's clipboard (OSC 52): not every terminal
accepts it, and tmux needs `set -g set-clipboard on`.

Press Esc to close.
"""


class ImagePicker(ModalScreen):
    """Pick an image file; Esc cancels."""

    BINDINGS = [Binding("escape", "dismiss", "cancel")]

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def compose(self) -> ComposeResult:
        with Vertical(id="picker"):
            yield Static("Attach an image (Enter picks, Esc cancels; /image PATH for files elsewhere)")
            yield ImageTree(self.root)

    @on(DirectoryTree.FileSelected)
    def picked(self, event: DirectoryTree.FileSelected) -> None:
        self.dismiss(event.path)


class ChatList(ModalScreen):
    """Saved chats, newest first: Enter opens, r renames, d deletes (after a yes)."""

    BINDINGS = [Binding("escape", "dismiss", "cancel"), Binding("r", "rename", "rename"),
                Binding("d,delete", "delete", "delete")]

    def compose(self) -> ComposeResult:
        with Vertical(id="chats"):
            yield Static("", id="chats-title", markup=False)
            yield OptionList(id="chat-list", markup=False)
            yield Static("Enter opens · r renames · d deletes · Esc closes", classes="hint")

    def on_mount(self) -> None:
        self.refresh_list()
        n = len(self.skipped)
        if n:
            names = ", ".join(sorted(self.skipped)[:10]) + (", ..." if n > 10 else "")
            what = "chat file that is not a chat" if n == 1 else "chat files that are not chats"
            self.app.notify(f"skipped {n} {what}: {names}", severity="warning", timeout=8)

    def refresh_list(self) -> None:
        self.entries, self.skipped = store.listing()
        options = self.query_one("#chat-list", OptionList)
        options.clear_options()
        options.add_options([shown(f"{e.title}  ·  {e.model}  ·  {e.turns} turn{'s' * (e.turns != 1)}  ·  "
                                   f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(e.changed))}")
                             for e in self.entries])
        if self.entries:
            options.highlighted = 0
        self.query_one("#chats-title", Static).update("Saved chats" if self.entries else "No saved chats yet (Esc)")

    def chosen(self):
        index = self.query_one("#chat-list", OptionList).highlighted
        return self.entries[index] if index is not None and index < len(self.entries) else None

    @on(OptionList.OptionSelected)
    def picked(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.entries[event.option_index].name)

    def action_rename(self) -> None:
        entry = self.chosen()
        if entry is not None:
            self.app.push_screen(Ask(f"New title for “{entry.title}”", entry.title), lambda text: self.renamed(entry, text))

    def renamed(self, entry, text) -> None:
        if text is None:
            return
        try:
            store.rename(entry.name, text)
        except (OSError, ValueError) as e:
            self.app.notify(f"cannot rename: {e}", severity="error")
        self.refresh_list()

    def action_delete(self) -> None:
        entry = self.chosen()
        if entry is not None:
            self.app.push_screen(Confirm(f"Delete “{entry.title}” ({entry.turns} turns)? This cannot be undone."),
                                 lambda yes: self.deleted(entry, yes))

    def deleted(self, entry, yes) -> None:
        if not yes:
            return
        try:
            store.delete(entry.name)
        except OSError as e:
            self.app.notify(f"cannot delete: {e}", severity="error")
        else:
            self.app.post_message(ChatDeleted(entry.name))
            self.app.notify(f"deleted {entry.title}")
        self.refresh_list()


@dataclass
class ChatDeleted(Message):
    name: str


class Ask(ModalScreen):
    """One line of text; Enter answers it, Esc cancels (None)."""

    BINDINGS = [Binding("escape", "cancel", "cancel")]

    def __init__(self, question: str, value: str = ""):
        super().__init__()
        self.question, self.value = question, value

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, markup=False)
            yield Input(self.value, id="answer")

    @on(Input.Submitted)
    def answered(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class Confirm(ModalScreen):
    """A yes/no question: y or the Yes button answers True; n, Esc or No answers False."""

    BINDINGS = [Binding("y", "answer(True)", "yes"), Binding("n,escape", "answer(False)", "no")]

    def __init__(self, question: str):
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Yes (y)", id="yes", variant="error")
                yield Button("No (n)", id="no")

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


class Choose(ModalScreen):
    """A question with a few answers, one button each; Esc answers None."""

    BINDINGS = [Binding("escape", "dismiss(None)", "cancel")]

    def __init__(self, question: str, answers: dict):
        super().__init__()
        self.question, self.answers = question, answers  # id -> label

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Static(self.question, markup=False)
            with Horizontal(classes="buttons"):
                for key, label in self.answers.items():
                    yield Button(label, id=key)

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id)


class SettingsScreen(ModalScreen):
    """Temperature, top-p, max tokens and the system prompt for the next replies."""

    BINDINGS = [Binding("escape", "dismiss(None)", "cancel"), Binding("ctrl+s", "save", "save")]

    def __init__(self, settings: dict, system: str | None, has_system: bool):
        super().__init__()
        self.settings, self.system, self.has_system = settings, system, has_system

    def compose(self) -> ComposeResult:
        with Vertical(id="settings", classes="dialog"):
            yield Static("Settings for the next replies (Ctrl+S or Save keeps them, Esc cancels)")
            for key, label in (("temp", "Temperature (0: greedy)"), ("top_p", "Top-p (1: off)"),
                               ("max_tokens", "Max tokens per reply")):
                yield Label(label)
                yield Input(str(self.settings.get(key, "")), id=key)
            yield Label("System prompt" + ("" if self.has_system else " (this model's template has none)"))
            yield Input(self.system or "", id="system", disabled=not self.has_system)
            with Horizontal(classes="buttons"):
                yield Button("Save", id="save", variant="primary")
                yield Button("Cancel", id="cancel")

    @on(Button.Pressed)
    def pressed(self, event: Button.Pressed) -> None:
        self.action_save() if event.button.id == "save" else self.dismiss(None)

    @on(Input.Submitted)
    def submitted(self) -> None:
        self.action_save()

    def action_save(self) -> None:
        values = {k: self.query_one(f"#{k}", Input).value.strip() for k in ("temp", "top_p", "max_tokens", "system")}
        try:
            settings = {"temp": float(values["temp"]), "top_p": float(values["top_p"]),
                        "max_tokens": int(values["max_tokens"])}
        except ValueError:
            self.app.notify("temperature and top-p are numbers, max tokens a whole number", severity="error")
            return
        self.dismiss((settings, values["system"] or None))


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape", "dismiss", "close"), Binding("f1", "dismiss", "close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Markdown(HELP)
