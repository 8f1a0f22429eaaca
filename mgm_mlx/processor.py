"""The processor: a conversation and its images -> what the model takes (token ids with
<image> placeholders, and pixels), with MGM's template and the checkpoint's tokenizer."""

import copy
from pathlib import Path

import mlx.core as mx

from .image import preprocess
from .prompt import STOP_TOKENS, TEMPLATES, TOKENIZER_FILES, format_prompt, label_images, pick_template, tokenize


def special_ids(tokenizer) -> set:
    """Ids a Hugging Face tokenizer leaves out with skip_special_tokens=True."""
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, token in tokenizer.added_tokens_decoder.items() if getattr(token, "special", False))
    return ids


class SkipSpecial:
    """An mlx-lm streaming detokenizer that leaves out special tokens (<|startoftext|> in a Yi
    vocabulary, <|eot_id|> when another template is forced, ...)."""

    def __init__(self, inner, skip: set):
        self.inner, self.skip = inner, skip

    def __copy__(self):  # mlx-lm copies the detokenizer for each request
        return SkipSpecial(copy.copy(self.inner), self.skip)

    def add_token(self, token):
        if token not in self.skip:
            self.inner.add_token(token)

    def __getattr__(self, name):
        return getattr(self.inner, name)


class Processor:
    """Turns images and text into model inputs: the tokenizer, image size and template."""

    def __init__(self, tokenizer, image_size: int, template: str):
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.template = template
        self._longest = None

    @classmethod
    def from_folder(cls, path, config: dict, image_size: int, template: str | None = None):
        from mlx_lm.tokenizer_utils import load as load_tokenizer

        from .loading import model_file

        if template is not None and template not in TEMPLATES:
            raise ValueError(f"unknown template {template!r}; choose from {', '.join(TEMPLATES)}")
        from transformers.utils import logging as hf_logging

        path = Path(path)
        if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
            raise FileNotFoundError(f"{path} has no tokenizer files (tokenizer.json or tokenizer.model)")
        for name in TOKENIZER_FILES:  # no FIFO, device or link out of the folder reaches transformers
            if (path / name).exists() or (path / name).is_symlink():
                model_file(path, name)
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # AutoTokenizer warns that it does not know mgm_* types
        try:
            # Never run code a checkpoint ships (auto_map + *.py): transformers would ask, or run it.
            tokenizer = load_tokenizer(path, {"trust_remote_code": False})
        except Exception as e:
            if "auto_map" in (path / "tokenizer_config.json").read_text(errors="replace") if (
                    path / "tokenizer_config.json").is_file() else False:
                raise ValueError(f"the tokenizer in {path} wants to run code that ships with the checkpoint "
                                 "(auto_map); mgm-mlx never runs code from a checkpoint") from None
            raise ValueError(f"cannot load the tokenizer in {path} ({str(e).splitlines()[0][:200]})") from None
        finally:
            hf_logging.set_verbosity(verbosity)
        # The length limit is checked on text + image tokens (Chat); no tokenizer warning.
        tokenizer._tokenizer.model_max_length = 1 << 40
        # Shown text leaves out special tokens, as the reference's decode(skip_special_tokens=True)
        tokenizer._detokenizer = SkipSpecial(tokenizer._detokenizer, special_ids(tokenizer._tokenizer))
        template = template or config.get("mgm_template") or pick_template(config, tokenizer.get_vocab())
        return cls(tokenizer, image_size, template)

    def max_chars(self, max_tokens: int) -> int:
        """A length in characters that no text of max_tokens tokens can reach (no token is
        longer than the longest vocabulary entry; x4 for normalisers that fold characters)."""
        if self._longest is None:
            self._longest = max((len(t) for t in self.tokenizer.get_vocab()), default=16)
        return 4 * self._longest * max_tokens

    def images(self, sources) -> mx.array:
        """Image paths / PIL images / arrays -> high-res pixels [N, S, S, 3]."""
        return mx.stack([mx.array(preprocess(s, self.image_size)) for s in sources])

    def use_template(self, template: str):
        """Make the template's end-of-turn tokens stop a reply (mlx-lm stops on eos ids)."""
        if template not in TEMPLATES:
            raise ValueError(f"unknown template {template!r}; choose from {', '.join(TEMPLATES)}")
        vocab = self.tokenizer.get_vocab()
        for token in STOP_TOKENS[template]:
            if token in vocab:
                self.tokenizer.add_eos_token(token)

    def prompt_ids(self, template: str, messages: list, system: str | None = None) -> list:
        """[user, assistant, ..., user] -> token ids, IMAGE_TOKEN_INDEX where images go."""
        prompt = label_images(format_prompt(template, messages + [None], system))
        return tokenize(self.tokenizer._tokenizer, prompt)

    def decode(self, tokens: list) -> str:
        """A reply as the reference keeps it in the history: special tokens out, stripped."""
        stops = self.tokenizer.eos_token_ids
        return self.tokenizer.decode([t for t in tokens if t not in stops], skip_special_tokens=True).strip()
