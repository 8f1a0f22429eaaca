"""The chat app's engine: the library's Chat (mgm_mlx.session) on one long-lived thread.

MLX streams are thread-local (MLX >= 0.31.2), so the model is loaded and every turn is
generated on the same worker thread; a new thread per turn breaks on the Mac GPU. The
engine reports back with the typed messages of messages.py (posting is thread-safe).
"""

import threading
import time
from dataclasses import replace

from mgm_mlx import worker

from .messages import Done, Drawn, Failed, Loaded, Piece, Progress


class Worker:
    """The app's side of the library's MLX worker thread (mgm_mlx.worker): jobs run in order
    and are not waited for; a job that fails comes back as a Failed message."""

    def __init__(self, post):
        self.post = post  # thread-safe: App.post_message
        self.stop = threading.Event()  # Esc: checked between tokens and denoising steps
        self._worker = worker.Worker("mlx-engine", on_error=lambda job, e: post(Failed(job.name, e)))

    def submit(self, what: str, job, *args):
        self._worker.submit(job, *args, name=what)


class MLXEngine(Worker):
    """mgm-mlx's Chat behind the worker thread (and the picture generator, when asked)."""

    def __init__(self, post, model_path: str, max_tokens: int = 512, temp: float = 0.0,
                 gen_model: str = "flux-schnell", gen_size=(1024, 1024), gen_keep: bool = False, image_dir: str = ".",
                 settings: dict | None = None, system: str | None = None, quantize_bits: int | None = None):
        super().__init__(post)
        self.model_path, self.system, self.quantize_bits = model_path, system, quantize_bits
        # every reply's Settings (chat.py checked them; the settings screen changes them)
        self.settings = {"max_tokens": max_tokens, "temp": temp, **(settings or {})}
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
        self.post(Loaded(f"{self.model_path} ({processor.template}, {time.perf_counter() - tic:.1f} s)",
                         model.vision.num_tokens, model.max_length))

    def configure(self, settings: dict, system: str | None):
        """New settings for the next replies (checked before anything else happens)."""
        from mgm_mlx import Settings

        Settings(**{**self.settings, **settings}).check()
        self.settings.update(settings)
        self.submit("settings", self._set_system, system)

    def _set_system(self, system):
        self.system = system
        if self.chat is not None:
            self.chat.session.set_system(system)

    def send(self, text: str, images: list, draw: bool = False):
        """draw: then draw the reply's <h>...</h> picture prompt (the text carries <GEN>)."""
        self.stop.clear()  # here, not on the worker: an Esc pressed while the job waits must count
        self.submit("reply", self._stream, lambda c, progress: c.stream(text, images, progress, **self.settings), draw)

    def draw(self, prompt: str):
        self.stop.clear()
        self.submit("draw", self._draw, prompt)

    def regenerate(self, temp: float | None = None):
        """Answer the last question again; temp: sample at this temperature with a fresh seed
        (greedy decoding would give the same reply again)."""
        self.stop.clear()
        settings = self.settings if temp is None else {**self.settings, "temp": temp, "seed": None}
        self.submit("regenerate", self._stream, lambda c, progress: c.regenerate(progress, **settings))

    def drop_oldest_image(self):
        """Take the conversation's first image out, to make room for another."""
        self.submit("drop", lambda: self.chat is not None and self.chat.drop_oldest_image())

    def new_chat(self, turns=()):
        """Start over; `turns` (user, image paths, answer) put a saved conversation back."""
        self.submit("open", self._reset, list(turns))

    def _reset(self, turns):
        from mgm_mlx import ImageError

        if self.chat is None:
            return  # nothing to reset; sending will say that no model is loaded
        self.chat.reset()
        missing = []
        for user, images, answer in turns:
            found = []
            for path in images:
                try:
                    found.append(self.chat.session.encode(path))  # each image once, through the cache
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

        def reading(done, total):  # mlx-lm reports the prompt as it goes through it
            self.post(Progress(f"reading the prompt: {done}/{total} tokens (Esc stops after it)"))

        for r in start(self.chat, reading):
            if self.stop.is_set():
                stopped = True
                break
            self.post(Piece(r.text, r))
            text.append(r.text)
        draw = draw and not stopped
        self.post(Done(r, stopped, draw))
        if draw:
            self.submit("draw", self._draw_reply, "".join(text))

    def _draw_reply(self, reply: str):
        from mgm_mlx.imagegen import GenerationError, NoPicturePrompt, picture_prompt

        try:
            prompt = picture_prompt(reply)
        except NoPicturePrompt as e:
            raise GenerationError(f"{e}; /draw draws the reply text itself") from None
        self._draw(prompt)

    def _generator(self):
        from mgm_mlx.imagegen import prepare

        if self.generator is None:
            self.generator, self.request = prepare(self.gen_model, self.gen_size, keep=self.gen_keep)
        else:
            self.generator.check_weights()
        return self.generator

    def _draw(self, prompt: str):
        from mgm_mlx.imagegen import Stopped, next_image_path, save_png

        generator = self._generator()
        request = replace(self.request, prompt=prompt)

        def step(i, n):
            if self.stop.is_set():
                raise Stopped
            self.post(Progress(f"drawing {request.width}x{request.height} with {generator.name}: step {i}/{n} (Esc stops)"))

        if self.stop.is_set():
            raise Stopped
        self.post(Progress(f"drawing {request.width}x{request.height} with {generator.name}: loading the model ..."))
        picture = generator.generate(request, progress=step)
        path = save_png(picture.image, next_image_path(self.image_dir)).resolve()  # saved chats find it anywhere
        self.post(Drawn(str(path), picture.request.prompt, picture.seconds, picture.request.seed))
