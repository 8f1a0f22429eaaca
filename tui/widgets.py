"""The app's own widgets and the helpers that keep what it shows harmless."""

import re
import shutil
import subprocess
import sys

from rich.text import Text
from textual.message import Message
from textual.widgets import DirectoryTree, TextArea

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
OSC52_NOTE = "sent the last reply to the terminal's clipboard (OSC 52; not every terminal accepts it)"
# what a terminal acts on instead of showing: C0 controls but newline and tab, DEL, C1
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def shown(text: str) -> str:
    """Text made harmless for the screen: the model, a chat file or a file name could otherwise
    clear it or set the clipboard (ESC [2J, OSC 52). Controls become visible symbols (ESC -> ␛)."""
    return CONTROL.sub(lambda m: chr(0x2400 + ord(m[0])) if m[0] < " " else "␡" if m[0] == "\x7f" else "\ufffd",
                       text.replace("\r\n", "\n"))


def pbcopy(text: str) -> bool:
    """Copy with macOS's pbcopy; False where there is none or it failed."""
    exe = sys.platform == "darwin" and shutil.which("pbcopy")
    if not exe:
        return False
    try:
        return subprocess.run([exe], input=text, text=True, timeout=5, check=False).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def preview(image, width: int = 16) -> Text:
    """A few lines of coloured half blocks: a thumbnail in any truecolor terminal."""
    h = max(2, round(width * image.height / image.width / 2) * 2)
    small = image.resize((width, min(h, 12)))
    px = small.load()
    text = Text()
    for y in range(0, small.height - 1, 2):
        for x in range(small.width):
            top, bottom = px[x, y], px[x, y + 1]
            text.append("▀", style=f"rgb({top[0]},{top[1]},{top[2]}) on rgb({bottom[0]},{bottom[1]},{bottom[2]})")
        text.append("\n")
    return text


class Prompt(TextArea):
    """Multi-line prompt: Enter sends, Ctrl+J adds a line, Up/Down walk the history."""

    class Submitted(Message):
        def __init__(self, text: str):
            super().__init__()
            self.text = text

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.sent, self.index = [], 0

    def accept(self, text: str) -> None:
        """Take the sent `text` out of the prompt; what was typed after Enter, before this, stays."""
        self.sent.append(text)
        self.index = len(self.sent)
        rest = self.text.strip()
        self.text = rest[len(text):].lstrip() if rest.startswith(text) else ""

    async def _on_key(self, event) -> None:
        row = self.cursor_location[0]
        if event.key == "enter":
            event.prevent_default()
            event.stop()
            text = self.text.strip()
            if text:  # cleared by the app once it takes the text (accept): a refused draft stays
                self.post_message(self.Submitted(text))
        elif event.key == "ctrl+j":
            event.prevent_default()
            event.stop()
            self.insert("\n")
        elif event.key == "up" and row == 0 and self.sent:
            event.prevent_default()
            event.stop()
            self.index = max(0, self.index - 1)
            self.text = self.sent[self.index]
        elif event.key == "down" and row == self.document.line_count - 1 and self.index < len(self.sent):
            event.prevent_default()
            event.stop()
            self.index += 1
            self.text = self.sent[self.index] if self.index < len(self.sent) else ""


class ImageTree(DirectoryTree):
    def filter_paths(self, paths):
        return [p for p in paths if p.is_dir() or p.suffix.lower() in IMAGE_SUFFIXES]
