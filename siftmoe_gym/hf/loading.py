"""Loading MoE checkpoints and their tokenizers (``AutoTokenizer`` or the byte-level one).

:func:`load_moe_model` checks the checkpoint's config (:func:`siftmoe_gym.hf.families.check_config`) and
loads the tokenizer before any weight loads, so an unsupported model or a folder without tokenizer files
fails in a second with one line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

BYTE_TOKENIZER_FILE = "siftmoe_byte_tokenizer.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "vocab.txt", "tiktoken.model", BYTE_TOKENIZER_FILE)
"""Files that hold a tokenizer's vocabulary; a folder without any of them has no tokenizer
(``tokenizer_config.json`` alone describes one but cannot build it)."""


class MissingTokenizerError(ValueError):
    """A checkpoint folder holds no tokenizer files (name a tokenizer explicitly)."""


def has_tokenizer_files(folder: str | Path) -> bool:
    """Whether ``folder`` holds one of :data:`TOKENIZER_FILES`."""
    p = Path(folder)
    return p.is_dir() and any((p / f).is_file() for f in TOKENIZER_FILES)


def missing_tokenizer_message(folder: str | Path) -> str:
    return (f"{folder} has no tokenizer files (none of {', '.join(TOKENIZER_FILES[:-1])}); name a tokenizer with "
            "--tokenizer PATH|HUB_ID (the folder or hub id of the model's tokenizer)")


class ByteTokenizer:
    """Byte-level tokenizer: UTF-8 bytes are ids 0..255, then BOS, EOS, PAD."""

    bos_token_id = 256
    eos_token_id = 257
    pad_token_id = 258
    vocab_size = 259

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = list(text.encode("utf-8"))
        return [self.bos_token_id] + ids if add_special_tokens else ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def __call__(self, text: str, **_) -> dict:
        return {"input_ids": self.encode(text)}

    def save_pretrained(self, directory: str | Path) -> Path:
        path = Path(directory) / BYTE_TOKENIZER_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"type": "bytes", "bos": self.bos_token_id, "eos": self.eos_token_id,
                                    "pad": self.pad_token_id, "vocab_size": self.vocab_size}))
        return path

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> "ByteTokenizer":
        spec = json.loads((Path(directory) / BYTE_TOKENIZER_FILE).read_text())
        if spec.get("type") != "bytes":
            raise ValueError(f"{directory}: unknown tokenizer spec {spec}")
        return cls()


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` without special tokens (ByteTokenizer or a transformers tokenizer)."""
    if isinstance(tokenizer, ByteTokenizer):
        return tokenizer.encode(text)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def load_tokenizer(path_or_id: str | Path, **kwargs):
    """The byte tokenizer saved next to a checkpoint, else ``AutoTokenizer.from_pretrained`` (a folder or a hub id).

    Raises :class:`MissingTokenizerError` for a local folder without :data:`TOKENIZER_FILES`."""
    p = Path(path_or_id)
    if p.is_dir() and (p / BYTE_TOKENIZER_FILE).exists():
        return ByteTokenizer.from_pretrained(p)
    if p.is_dir() and not has_tokenizer_files(p):
        raise MissingTokenizerError(missing_tokenizer_message(p))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path_or_id), **kwargs)


def model_config(path_or_id: str | Path):
    """The checkpoint's config without its weights: ``config.json`` of a local folder as a dict, else
    ``AutoConfig.from_pretrained`` (hub ids)."""
    from .families import read_config

    p = Path(path_or_id)
    if p.is_dir():
        return read_config(p)
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(path_or_id))


def load_moe_model(path_or_id: str | Path, *, dtype=None, device: str = "cpu", with_tokenizer: bool = True,
                   tokenizer: str | Path | None = None, **kwargs):
    """Load a causal-LM MoE checkpoint (local dir or hub id) in eval mode.

    Returns ``(model, tokenizer)`` (tokenizer ``None`` when ``with_tokenizer``
    is false); ``tokenizer`` names the tokenizer's folder or hub id (default:
    the checkpoint's own).  Before any weight loads: raises
    :class:`~siftmoe_gym.hf.families.UnsupportedModelError` when the config
    names no supported family (:func:`~siftmoe_gym.hf.families.check_config`)
    and :class:`MissingTokenizerError` when the tokenizer folder holds no
    tokenizer files.
    """
    from transformers import AutoModelForCausalLM

    from .adapters import moe_layers
    from .families import check_config

    check_config(model_config(path_or_id), str(path_or_id))
    tok = load_tokenizer(tokenizer if tokenizer is not None else path_or_id) if with_tokenizer else None
    kw = dict(kwargs)
    if dtype is not None:
        kw["dtype"] = dtype
    model = AutoModelForCausalLM.from_pretrained(str(path_or_id), **kw)
    model.to(device).eval()
    moe_layers(model)  # the layers themselves (a config can promise MoE layers the weights lack)
    return model, tok
