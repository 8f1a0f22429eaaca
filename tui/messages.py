"""What the MLX worker tells the app, as typed Textual messages (posting is thread-safe)."""

from dataclasses import dataclass

from mgm_mlx.session import Response

from textual.message import Message


@dataclass
class Loaded(Message):
    """The model is ready; info says which and how long it took. image_tokens per image and
    context_max let the app tell how many pictures a conversation holds."""

    info: str
    image_tokens: int = 576
    context_max: int = 2048


@dataclass
class Progress(Message):
    """Something long is under way (loading, drawing a picture)."""

    text: str


@dataclass
class Piece(Message):
    """A piece of the reply being streamed, with the reply's statistics so far."""

    text: str
    response: Response | None = None


@dataclass
class Done(Message):
    """A reply ended. response: its last piece, with the statistics (None if stopped before
    the first token); draw: a picture is drawn from this reply next."""

    response: Response | None
    stopped: bool
    draw: bool = False


@dataclass
class Drawn(Message):
    """A picture was drawn and saved."""

    path: str
    prompt: str
    seconds: float
    seed: int


@dataclass
class Failed(Message):
    """A job failed; the app decides by the error's type (ContextFull, Stopped, ...)."""

    what: str  # load, reply, regenerate, open, draw
    error: Exception

    @property
    def text(self) -> str:
        return " ".join(str(self.error).split()) or type(self.error).__name__
