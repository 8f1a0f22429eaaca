"""The chat app's engine: every MLX call on one long-lived thread.

MLX streams are thread-local (MLX >= 0.31.2), so the model is loaded and every turn is
generated on the same worker thread; a new thread per turn breaks on the Mac GPU. The
engine reports back by posting Textual messages, which is safe from any thread.
"""

import queue
import threading
import time
from dataclasses import dataclass, field

from textual.message import Message


class Loaded(Message):
    def __init__(self, info: str):
        super().__init__()
        self.info = info


class Progress(Message):
    def __init__(self, text: str):
        super().__init__()
        self.text = text


class Piece(Message):
    """A piece of the reply being streamed."""

    def __init__(self, text: str):
        super().__init__()
        self.text = text


@dataclass
class Stats:
    image_tokens: int = 0
    vision_ms: dict = field(default_factory=dict)
    prompt_tps: float = 0.0
    generation_tps: float = 0.0
    generation_tokens: int = 0
    peak_memory: float = 0.0
    context_used: int = 0
    context_max: int = 0


class Done(Message):
    def __init__(self, stats: Stats, stopped: bool, draw: bool = False):
        super().__init__()
        self.stats = stats
        self.stopped = stopped
        self.draw = draw  # a picture is drawn from this reply next


class Drawn(Message):
    """A picture was drawn and saved."""

    def __init__(self, path: str, prompt: str, seconds: float, seed: int):
        super().__init__()
        self.path, self.prompt, self.seconds, self.seed = path, prompt, seconds, seed


class Failed(Message):
    def __init__(self, what: str, error: str):
        super().__init__()
        self.what = what
        self.error = error


class Worker:
    """One daemon thread that runs submitted jobs in order."""

    def __init__(self, post):
        self.post = post  # thread-safe: App.post_message
        self.stop = threading.Event()
        self._jobs = queue.Queue()
        threading.Thread(target=self._run, name="mlx-engine", daemon=True).start()

    def submit(self, what: str, job, *args):
        self._jobs.put((what, job, args))

    def _run(self):
        while True:
            what, job, args = self._jobs.get()
            try:
                job(*args)
            except Exception as e:  # the app shows it and keeps running
                self.post(Failed(what, " ".join(str(e).split()) or type(e).__name__))


class MLXEngine(Worker):
    """mgm-mlx's Chat behind the worker thread (and the picture generator, when asked)."""

    def __init__(self, post, model_path: str, max_tokens: int = 512, temp: float = 0.0,
                 gen_model: str = "flux-schnell", gen_size=(1024, 1024), gen_keep: bool = False, image_dir: str = ".",
                 settings: dict | None = None, system: str | None = None, quantize_bits: int | None = None):
        super().__init__(post)
        self.model_path, self.max_tokens, self.temp = model_path, max_tokens, temp
        # every reply's Settings (chat.py checked them); the system prompt and bits at load
        self.settings = {"max_tokens": max_tokens, "temp": temp, **(settings or {})}
        self.system, self.quantize_bits = system, quantize_bits
        self.gen_model, self.gen_size, self.gen_keep, self.image_dir = gen_model, gen_size, gen_keep, image_dir
        self.chat = None
        self.generator = None
        self.submit("load", self._load)

    @property
    def ready(self) -> bool:
        return self.chat is not None

    def _load(self):
        from mgm_mlx import Chat, load

        self.post(Progress(f"loading {self.model_path} ..."))
        tic = time.perf_counter()
        model, processor = load(self.model_path, quantize_bits=self.quantize_bits)
        self.chat = Chat(model, processor, self.system)
        self.post(Loaded(f"{self.model_path} ({processor.template}, {time.perf_counter() - tic:.1f} s)"))

    def send(self, text: str, images: list, draw: bool = False):
        """draw: then draw the reply's <h>...</h> picture prompt (the text carries <GEN>)."""
        self.stop.clear()  # here, not on the worker: an Esc pressed while the job waits must count
        self.submit("reply", self._stream, lambda c: c.stream(text, images, **self.settings),
                    draw)

    def draw(self, prompt: str):
        self.stop.clear()
        self.submit("draw", self._draw, prompt)

    def regenerate(self):
        self.stop.clear()
        self.submit("regenerate", self._stream, lambda c: c.regenerate(**self.settings))

    def new_chat(self, turns=()):
        """Start over; `turns` (user, image paths, answer) put a saved conversation back."""
        self.submit("open", self._reset, list(turns))

    def _reset(self, turns):
        from mgm_mlx import ImageError, load_image

        if self.chat is None:
            return  # nothing to reset; sending will say that no model is loaded
        self.chat.reset()
        missing = []
        for user, images, answer in turns:
            found = []
            for path in images:
                try:
                    load_image(path)  # is it still there? add_turn does the preprocessing once
                    found.append(path)
                except ImageError:
                    missing.append(path)
            self.chat.add_turn(user, found, answer)
        if missing:
            raise RuntimeError(f"{len(missing)} image(s) are gone and were left out: {', '.join(missing)}")

    def _stream(self, start, draw=False):
        if self.chat is None:
            raise RuntimeError("no model is loaded")
        if draw:  # what would stop the picture fails the turn now, not after the reply
            self._generator()
        r, stopped, text = None, False, []
        for r in start(self.chat):
            if self.stop.is_set():
                stopped = True
                break
            self.post(Piece(r.text))
            text.append(r.text)
        stats = Stats(context_used=self.chat.context_used, context_max=self.chat.model.max_length)
        if r is not None:
            stats = Stats(r.image_tokens, r.vision_ms, r.prompt_tps, r.generation_tps, r.generation_tokens,
                          r.peak_memory, self.chat.context_used, self.chat.model.max_length)
        draw = draw and not stopped
        self.post(Done(stats, stopped, draw))
        if draw:
            self.submit("draw", self._draw_reply, "".join(text))

    def _draw_reply(self, reply: str):
        from mgm_mlx.imagegen import extract_prompt

        prompt = extract_prompt(reply)
        if prompt is None:
            raise RuntimeError("the reply has no <h>...</h> picture prompt (MGM-2B often leaves it out); "
                               "/draw draws the reply text itself")
        self._draw(prompt)

    def _generator(self):
        from mgm_mlx.imagegen import ImageRequest, get_generator

        if self.generator is None:
            self.generator = get_generator(model=self.gen_model, keep=self.gen_keep)
            self.generator.check(ImageRequest("a picture", *self.gen_size))
        self.generator.check_weights()
        return self.generator

    def _draw(self, prompt: str):
        from mgm_mlx.imagegen import ImageRequest, Stopped, next_image_path, save_png

        generator = self._generator()
        width, height = self.gen_size

        def step(i, n):
            if self.stop.is_set():
                raise Stopped
            self.post(Progress(f"drawing {width}x{height} with {generator.name}: step {i}/{n} (Esc stops)"))

        if self.stop.is_set():
            raise Stopped
        self.post(Progress(f"drawing {width}x{height} with {generator.name}: loading the model ..."))
        picture = generator.generate(ImageRequest(prompt, width, height), progress=step)
        path = save_png(picture.image, next_image_path(self.image_dir)).resolve()  # saved chats find it anywhere
        self.post(Drawn(str(path), picture.request.prompt, picture.seconds, picture.request.seed))
