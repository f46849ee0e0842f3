"""A tiny, locally trained MoE language model (Mixtral class, byte-level vocabulary).

Trained on real text present on every machine: the Python standard
library's own source files (the ``*.py`` files in the directory of the
``os`` module, sorted by name; every 10th file is held out).  Training is
seeded, single-threaded by default and runs a fixed number of steps, so it
is reproducible for a given Python and torch version; it takes about 2-3
minutes on a free core (a ``--max-seconds`` guard, default 290 s, stops it
early on a busy machine and says so in ``train_info.json``).

    python -m siftmoe_gym.hf.tiny_model train [--out DIR] [--steps N]
    python -m siftmoe_gym.hf.tiny_model eval [--model DIR]

Default folder: ``$XDG_CACHE_HOME/siftmoe_gym/tiny-moe``, else ``~/.cache/siftmoe_gym/tiny-moe``
(``--out`` / ``--model`` choose another).  ``$SIFTMOE_CACHE`` is the model cache's on/off switch
(:mod:`siftmoe_gym.cache`); it used to move this folder, and a value that is not a switch now warns.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from ..cache import SWITCH_WORDS
from .loading import ByteTokenizer

HELDOUT_EVERY = 10
MAX_POSITIONS = 256  # the tiny model's max_position_embeddings: --seq-len stops there
HELDOUT_OFFSET = 7


def default_dir(warn: bool = True) -> Path:
    """The tiny model's default folder (module docstring); ``warn``: about a ``SIFTMOE_CACHE`` that looks like a
    folder (off where the folder is only named, e.g. in ``--help``)."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    path = (Path(xdg) if xdg else Path.home() / ".cache") / "siftmoe_gym" / "tiny-moe"
    old = os.environ.get("SIFTMOE_CACHE")
    if warn and old is not None and old.strip().lower() not in SWITCH_WORDS:
        import warnings

        warnings.warn(f"SIFTMOE_CACHE={old!r} no longer moves the tiny model (it switches the model cache on or off: "
                      f"0/off/false/no); the tiny model's folder is {path}; use --out / --model for another",
                      stacklevel=2)
    return path


def stdlib_files(split: str = "train") -> list[Path]:
    """Deterministic selection of standard-library source files (``train`` or ``heldout``)."""
    files = sorted(p for p in Path(os.__file__).parent.glob("*.py") if p.is_file())
    if split == "train":
        return [p for i, p in enumerate(files) if i % HELDOUT_EVERY != HELDOUT_OFFSET]
    if split == "heldout":
        return [p for i, p in enumerate(files) if i % HELDOUT_EVERY == HELDOUT_OFFSET]
    raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")


def corpus_text(split: str = "train", max_bytes: int | None = None) -> str:
    """The split's files concatenated (UTF-8 with replacement), at most ``max_bytes`` bytes."""
    parts, total = [], 0
    for p in stdlib_files(split):
        txt = p.read_text(encoding="utf-8", errors="replace")
        parts.append(txt)
        total += len(txt)
        if max_bytes is not None and total >= max_bytes:
            break
    text = "\n\n".join(parts)
    return text if max_bytes is None else text[:max_bytes]


def tiny_config(**overrides):
    """The tiny Mixtral configuration (byte vocabulary, 8 experts, top-2, 4 layers)."""
    from transformers import MixtralConfig

    tok = ByteTokenizer()
    kw = dict(
        vocab_size=tok.vocab_size, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, num_local_experts=8, num_experts_per_tok=2,
        max_position_embeddings=MAX_POSITIONS, rope_theta=10000.0, router_aux_loss_coef=0.02, output_router_logits=False,
        tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, sliding_window=None,
    )
    kw.update(overrides)
    return MixtralConfig(**kw)


def _batches(ids: np.ndarray, rng: np.random.Generator, batch: int, seq: int):
    while True:
        starts = rng.integers(0, len(ids) - seq - 1, size=batch)
        yield np.stack([ids[s : s + seq + 1] for s in starts])


def train(
    out: str | Path | None = None,
    *,
    steps: int = 600,
    batch_size: int = 16,
    seq_len: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
    threads: int | None = 1,
    max_seconds: float | None = 290.0,
    train_bytes: int = 3_000_000,
    eval_tokens: int = 16384,
    config_overrides: dict | None = None,
    progress: bool = True,
) -> dict:
    """Train the tiny MoE and save it (model, byte tokenizer, ``train_info.json``) to ``out``.

    Stops after ``steps`` optimizer steps or ``max_seconds`` (whichever comes
    first; the info file records which).  Returns the info dict, including
    held-out next-token accuracy on ``eval_tokens`` tokens.
    """
    import torch
    from transformers import MixtralForCausalLM

    if threads:
        torch.set_num_threads(threads)
    out = Path(out) if out is not None else default_dir()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    tok = ByteTokenizer()
    ids = np.frombuffer(corpus_text("train", train_bytes).encode("utf-8"), dtype=np.uint8).astype(np.int64)
    config = tiny_config(**(config_overrides or {}))
    config.output_router_logits = True
    model = MixtralForCausalLM(config)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.01)
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    )
    it = _batches(ids, rng, batch_size, seq_len)
    t0 = time.perf_counter()
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, desc="train tiny-moe", unit="step")
    done, stopped, loss_v = 0, "steps", float("nan")
    for step in range(steps):
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            stopped = "time"
            break
        xb = torch.from_numpy(next(it))
        # labels == inputs: transformers shifts them itself (and adds the load-balancing loss)
        outp = model(input_ids=xb, labels=xb, output_router_logits=True)
        opt.zero_grad(set_to_none=True)
        outp.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss_v = float(outp.loss.detach())
        done = step + 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss_v:.3f}")
    if bar is not None:
        bar.close()
    train_s = time.perf_counter() - t0
    model.eval()
    model.config.output_router_logits = False
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tok.save_pretrained(out)
    acc, ppl = heldout_accuracy(model, eval_tokens, seq_len)
    info = {
        "steps": done, "stopped_by": stopped, "train_seconds": round(train_s, 1), "final_loss": loss_v,
        "heldout_accuracy": acc, "heldout_perplexity": ppl, "eval_tokens": eval_tokens, "seed": seed,
        "batch_size": batch_size, "seq_len": seq_len, "lr": lr, "threads": threads,
        "train_files": len(stdlib_files("train")), "heldout_files": len(stdlib_files("heldout")),
        "python_stdlib": str(Path(os.__file__).parent), "torch": torch.__version__,
        "parameters": int(sum(p.numel() for p in model.parameters())),
    }
    (out / "train_info.json").write_text(json.dumps(info, indent=2))
    return info


def heldout_ids(num_tokens: int, offset: int = 0) -> np.ndarray:
    """Byte ids of held-out text (files never seen in training)."""
    text = corpus_text("heldout", offset + num_tokens + 16)
    ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
    return ids[offset : offset + num_tokens]


def heldout_accuracy(model, num_tokens: int = 16384, window: int = 128) -> tuple[float, float]:
    """Next-token accuracy and perplexity of ``model`` on held-out text."""
    from .evaluate import evaluate_policy

    res = evaluate_policy(model, heldout_ids(num_tokens), None, window=window)
    return res["accuracy"], res["perplexity"]


def load_or_train(path: str | Path | None = None, **train_kwargs):
    """``(model, tokenizer)`` from ``path`` (default cache), training it first if missing."""
    from .loading import load_moe_model

    path = Path(path) if path is not None else default_dir()
    if not (path / "config.json").exists():
        train(path, **train_kwargs)
    return load_moe_model(path)


def _check_args(args) -> None:
    """Every option checked before torch loads (:class:`siftmoe_gym.cli.UsageError` naming the option)."""
    from ..cli import UsageError, at_least, check_writable

    if args.cmd == "train":
        for name, low, high in (("--steps", 1, None), ("--batch-size", 1, None), ("--seq-len", 2, MAX_POSITIONS),
                                ("--seed", 0, None), ("--threads", 1, None)):
            at_least(name, getattr(args, name[2:].replace("-", "_")), low, high)
        if not 0 < args.lr < math.inf:
            raise UsageError(f"--lr must be a positive finite number, got {args.lr}")
        if not args.max_seconds > 0:
            raise UsageError(f"--max-seconds must be > 0, got {args.max_seconds}")
        check_writable("--out", Path(args.out) if args.out is not None else default_dir())
        return
    at_least("--tokens", args.tokens, 2)
    at_least("--threads", args.threads, 1)
    model = Path(args.model or default_dir())
    if not (model / "config.json").is_file():
        raise UsageError(f"--model: no saved tiny model (config.json) at {model}; train one first: "
                         "python -m siftmoe_gym.hf.tiny_model train" + (f" --out {args.model}" if args.model else ""))


def main(argv: list[str] | None = None) -> int:
    from ..cli import OneLineParser, run_main

    prog = "python -m siftmoe_gym.hf.tiny_model"
    ap = OneLineParser(prog=prog, description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train the tiny MoE and save it")
    t.add_argument("--out", default=None, help=f"output folder (default {default_dir(warn=False)})")
    t.add_argument("--steps", type=int, default=600)
    t.add_argument("--batch-size", type=int, default=16)
    t.add_argument("--seq-len", type=int, default=128)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1, help="torch threads (1: same weights on any machine)")
    t.add_argument("--max-seconds", type=float, default=290.0)
    e = sub.add_parser("eval", help="held-out next-token accuracy of a saved tiny model")
    e.add_argument("--model", default=None)
    e.add_argument("--tokens", type=int, default=16384)
    e.add_argument("--threads", type=int, default=2)

    def body() -> int:
        args = ap.parse_args(argv)
        _check_args(args)
        if args.cmd == "train":
            info = train(args.out, steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr,
                         seed=args.seed, threads=args.threads, max_seconds=args.max_seconds)
            print(json.dumps(info, indent=2))
        else:
            import torch

            from .loading import load_moe_model

            torch.set_num_threads(args.threads)
            model, _ = load_moe_model(args.model or default_dir())
            acc, ppl = heldout_accuracy(model, args.tokens)
            print(json.dumps({"heldout_accuracy": acc, "heldout_perplexity": ppl, "tokens": args.tokens}))
        return 0

    return run_main(prog, body)


if __name__ == "__main__":
    sys.exit(main())
