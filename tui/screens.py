"""The app's modal screens: attaching an image, reopening a chat, the keys and commands."""

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import DirectoryTree, Markdown, OptionList, Static

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
| Ctrl+R | regenerate the last reply |
| Ctrl+T | copy the last reply |
| Ctrl+S | export the chat to Markdown (a file in this folder) |
| Ctrl+L | reopen a saved chat |
| F1 | this help |
| Ctrl+Q | quit |

# Commands

`/image PATH [PATH ...]` attach images to the next message (quote paths with spaces when
attaching several) · `/detach [N]` remove attached image N (as numbered), or all of them ·
`/new` · `/export [FILE]` · `/open` · `/help`

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
    BINDINGS = [Binding("escape", "dismiss", "cancel")]

    def compose(self) -> ComposeResult:
        chats, self.skipped = store.listing()
        with Vertical(id="chats"):
            yield Static("Reopen a chat (Enter opens, Esc cancels)" if chats else "No saved chats yet (Esc)")
            yield OptionList(*[shown(f"{name}  {title}  ({n} turn{'s' * (n != 1)})") for name, title, n in chats],
                             id="chat-list", markup=False)
        self.ids = [name for name, _, _ in chats]

    def on_mount(self) -> None:
        n = len(self.skipped)
        if n:
            names = ", ".join(sorted(self.skipped)[:10]) + (", ..." if n > 10 else "")
            what = "chat file that is not a chat" if n == 1 else "chat files that are not chats"
            self.app.notify(f"skipped {n} {what}: {names}", severity="warning", timeout=8)

    @on(OptionList.OptionSelected)
    def picked(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(self.ids[event.option_index])


class HelpScreen(ModalScreen):
    BINDINGS = [Binding("escape", "dismiss", "close"), Binding("f1", "dismiss", "close")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Markdown(HELP)
