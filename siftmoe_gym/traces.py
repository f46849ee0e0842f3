"""Trace extraction from real MoE language models (``transformers``).

Runs a model over text and records, per token and MoE layer, the router's
scores as the family defines them (softmax probabilities or sigmoid scores,
in [0, 1]), the experts the model selected, the gates it applied to them
(after renormalization, bias-corrected selection and routed scaling: the
tensors its experts kernel multiplies by) and the hidden-state norm ``||x||``
of the MoE block input; estimates ``Delta`` and ``sigma`` per layer by
running every expert on calibration hidden states captured at that layer
(:func:`siftmoe_gym.similarity.similarity_from_outputs`, quantile ``q``);
returns a version-2 :class:`siftmoe_gym.tracefile.Trace`.

    python -m siftmoe_gym.traces extract --model PATH_OR_ID --text FILE --tokens N --out FILE \
        [--tokenizer PATH_OR_ID] [--quantile q] [--calibration-tokens n] [--window W] [--dtype D] [--threads 2]

Gate mode.  The gates are stored, so nothing is recomputed from the scores;
the metadata still says which rule they follow (``gate_mode``):
``"renormalized"`` when they equal ``p[S] / sum p[S]``, ``"plain"`` when
they equal ``p[S]``, else ``"explicit"`` (routed scaling, sparsemixer), each
test at a relative tolerance that fits the dtype the model applied its gates
in (:func:`gate_tolerance`: ``max(1e-5, 4 eps)``, so bfloat16's rounding,
``eps = 2^-7``, does not turn renormalized gates into "explicit").

The command line refuses an unsupported model from its ``config.json`` and
a checkpoint folder without tokenizer files before any weight loads (one
line ``prog: error: ...``, exit status 2).  torch and transformers are
imported only when extraction runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .similarity import similarity_from_outputs
from .tracefile import Trace, save_trace


def gate_tolerance(dtype) -> float:
    """Relative tolerance of the gate-rule tests for gates applied in ``dtype`` (a torch or numpy dtype):
    ``max(1e-5, 4 eps(dtype))`` (bfloat16: 0.03125; float16: 0.0039; float32: 1e-5)."""
    import torch

    eps = torch.finfo(dtype).eps if isinstance(dtype, torch.dtype) else float(np.finfo(dtype).eps)
    return max(1e-5, 4.0 * eps)


def gate_mode(scores: np.ndarray, topk: np.ndarray, gates: np.ndarray, prefer_renorm: bool, tol: float = 1e-5) -> str:
    """Which rule the applied ``gates`` (T, L, k) follow given ``scores`` (T, L, N) and ``topk``:
    ``"renormalized"`` (``p[S] / sum p[S]``), ``"plain"`` (``p[S]``) or ``"explicit"`` (neither, at relative
    tolerance ``tol``); when both fit, ``prefer_renorm`` (the family's rule) decides."""
    sel = np.take_along_axis(scores, topk, axis=-1)
    renorm = sel / np.maximum(sel.sum(axis=-1, keepdims=True), 1e-300)
    scale = np.maximum(np.abs(gates), 1e-6)
    ok_r = bool(np.all(np.abs(renorm - gates) <= tol * np.maximum(scale, np.abs(renorm))))
    ok_p = bool(np.all(np.abs(sel - gates) <= tol * np.maximum(scale, np.abs(sel))))
    if ok_r and (prefer_renorm or not ok_p):
        return "renormalized"
    return "plain" if ok_p else "explicit"


def check_token_ids(ids, config, needed: int) -> None:
    """``ValueError`` (one line) unless ``ids`` holds ``needed`` tokens, all below the config's ``vocab_size``
    (``config``: a ``config.json`` dict or a transformers config; nested ``text_config`` read too)."""
    from .hf.families import _get

    ids = np.asarray(ids, dtype=np.int64)
    if len(ids) < needed:
        raise ValueError(f"text has {len(ids)} tokens, fewer than the {needed} requested (tokens / calibration_tokens)"
                         + ("; the tokenizer produced no token at all: is it this model's tokenizer?" if not len(ids)
                            else ""))
    vocab = _get(config, "vocab_size") or _get(_get(config, "text_config", {}) or {}, "vocab_size")
    top = int(ids[:needed].max()) if needed else 0
    if vocab and top >= int(vocab):
        raise ValueError(f"the tokenizer produced token id {top}, outside the model's vocabulary of {vocab}: "
                         "not this model's tokenizer (name one with --tokenizer)")


def extract_trace(
    model,
    tokenizer,
    text: str,
    tokens: int = 2048,
    *,
    quantile: float = 0.99,
    calibration_tokens: int | None = None,
    window: int | None = None,
    batch_size: int = 8,
    progress: bool = True,
    model_name: str | None = None,
    return_calibration: bool = False,
):
    """Version-2 trace of ``model`` on the first ``tokens`` tokens of ``text`` (see module docstring).

    Arrays (T = ``tokens``, L MoE layers, N experts, top-k): scores (T, L, N),
    ``topk`` and ``gates`` (T, L, k), ``hidden_norms`` (T, L), ``delta``
    (L, N, N), ``sigma`` (L, N).  Raises :class:`~siftmoe_gym.hf.adapters.UnsupportedModelError`
    for a model of no supported family and ``ValueError`` when the text has
    too few tokens or the tokenizer produces ids outside the model's vocabulary.

    ``calibration_tokens`` (default ``min(tokens, 1024)``) hidden states per
    layer, from the start of the text, calibrate ``Delta``/``sigma``; when it
    exceeds ``tokens`` the extra tokens are run but not recorded.  Text is cut
    into independent windows of ``window`` tokens (default
    ``min(max_position_embeddings, 256)``).  With ``return_calibration`` also
    returns ``{"hidden": [(n, d) tensors per layer], "ids": token ids}``.
    """
    import torch

    from .hf.adapters import moe_layers, sort_slots
    from .hf.decisions import patch_experts
    from .hf.loading import encode_text

    layers = moe_layers(model)
    ids = np.asarray(encode_text(tokenizer, text), dtype=np.int64)
    n_cal = int(calibration_tokens) if calibration_tokens is not None else min(tokens, 1024)
    total = max(tokens, n_cal)
    if tokens < 1 or n_cal < 2:
        raise ValueError(f"need tokens >= 1 and calibration_tokens >= 2, got {tokens}, {n_cal}")
    check_token_ids(ids, model.config, total)
    ids = ids[:total]
    if window is None:
        window = int(min(getattr(model.config, "max_position_embeddings", 256) or 256, 256))
    wins = [ids[s : s + window] for s in range(0, total, window)]
    L, N, k = len(layers), layers[0].num_experts, layers[0].top_k
    rec: dict[int, dict[str, list]] = {l.index: {"probs": [], "topk": [], "gates": [], "norms": [], "x": []} for l in layers}
    cal_left = {l.index: n_cal for l in layers}
    gate_dtype = [None]  # the dtype the model's gates come in (bf16 models: bf16 or float32 by family)

    def handler(lay, x, idx, w, orig):
        with torch.no_grad():
            idx_s, w_s = sort_slots(idx, w)
            r = rec[lay.index]
            r["probs"].append(lay.scores(x).double().cpu().numpy())
            r["topk"].append(idx_s.cpu().numpy())
            r["gates"].append(w_s.double().cpu().numpy())
            gate_dtype[0] = w.dtype
            r["norms"].append(torch.linalg.vector_norm(x.double(), dim=-1).cpu().numpy())
            take = min(cal_left[lay.index], x.shape[0])
            if take > 0:
                r["x"].append(x[:take].detach().cpu().clone())
                cal_left[lay.index] -= take
        return orig(x, idx, w)

    groups: list[list[np.ndarray]] = []
    for wv in wins:  # batch equal-length windows together, keep order
        if groups and len(groups[-1]) < batch_size and len(groups[-1][0]) == len(wv):
            groups[-1].append(wv)
        else:
            groups.append([wv])
    it = groups
    if progress:
        from tqdm import tqdm

        it = tqdm(groups, desc="trace: forward", unit="batch", file=sys.stderr)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), patch_experts(layers, handler):
            for g in it:
                model(input_ids=torch.from_numpy(np.stack(g)))
    finally:
        model.train(was_training)

    probs = np.stack([np.concatenate(rec[l]["probs"]) for l in range(L)], axis=1)[:tokens]  # (T, L, N)
    topk = np.stack([np.concatenate(rec[l]["topk"]) for l in range(L)], axis=1)[:tokens].astype(np.int64)
    gates = np.stack([np.concatenate(rec[l]["gates"]) for l in range(L)], axis=1)[:tokens]
    norms = np.stack([np.concatenate(rec[l]["norms"]) for l in range(L)], axis=1)[:tokens]
    hidden = [torch.cat(rec[l]["x"])[:n_cal] for l in range(L)]

    deltas, sigmas = [], []
    lit = layers
    if progress:
        from tqdm import tqdm

        lit = tqdm(layers, desc="trace: similarity", unit="layer", file=sys.stderr)
    for lay in lit:
        x = hidden[lay.index]
        outs = lay.expert_outputs(x).double().cpu().numpy()
        d, s = similarity_from_outputs(outs, x.double().cpu().numpy(), q=quantile)
        deltas.append(d)
        sigmas.append(np.maximum(s, 1e-12))

    mode = gate_mode(probs, topk, gates, layers[0].renormalize, tol=gate_tolerance(gate_dtype[0]))
    fam = layers[0].family
    name = model_name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
    trace = Trace(
        router_probs=probs.astype(np.float32),
        topk=topk,
        hidden_norms=norms.astype(np.float32),
        delta=np.stack(deltas),
        sigma=np.stack(sigmas),
        num_experts=N,
        top_k=k,
        num_layers=L,
        hidden_size=int(model.config.hidden_size),
        renormalize_gates=mode == "renormalized",
        quantile=float(quantile),
        model=name,
        extra={
            "source": "siftmoe_gym.traces.extract_trace",
            "architecture": type(model).__name__,
            "gate_mode": mode,
            "router_score": layers[0].score,
            "gate_rule": fam.rule if fam is not None else "",
            "routed_scaling_factor": fam.scaling(model.config) if fam is not None else 1.0,
            "dtype": str(gate_dtype[0]).replace("torch.", ""),
            "calibration_tokens": n_cal,
            "window": int(window),
            "moe_layer_indices": [l.layer_idx for l in layers],
        },
        gates=gates.astype(np.float32),
    ).validate()
    if return_calibration:
        return trace, {"hidden": hidden, "ids": ids}
    return trace


DTYPES = ("float32", "float16", "bfloat16", "float64")
PROG = "python -m siftmoe_gym.traces"


def _check_extract_args(args) -> None:
    """Every option checked before anything loads (:class:`siftmoe_gym.cli.UsageError` naming the option)."""
    from .cli import UsageError, at_least, check_writable

    for name, low in (("--tokens", 1), ("--calibration-tokens", 2), ("--window", 2), ("--batch-size", 1),
                      ("--threads", 1)):
        at_least(name, getattr(args, name[2:].replace("-", "_")), low)
    if not (0.0 < args.quantile <= 1.0):
        raise UsageError(f"--quantile must be in (0, 1], got {args.quantile}")
    if args.dtype is not None and args.dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of {list(DTYPES)}, got {args.dtype!r}")
    text = Path(args.text)
    if not text.is_file():
        raise UsageError(f"--text: {'a folder, not a file' if text.is_dir() else 'no such file'}: {args.text}")
    out = Path(args.out)
    if out.suffix not in (".safetensors", ".npz"):
        raise UsageError(f"--out must end in .safetensors or .npz, got {args.out!r}")
    if out.is_dir():
        raise UsageError(f"--out is a folder: {args.out}")
    check_writable("--out", out.parent)
    from .hf.families import UnsupportedModelError, check_config, read_config
    from .hf.loading import has_tokenizer_files, missing_tokenizer_message

    model = Path(args.model)
    if model.exists():
        if not (model / "config.json").is_file():
            raise UsageError(f"--model: {args.model} has no config.json (not a transformers checkpoint folder)")
        try:  # from config.json alone: no weight is read
            check_config(read_config(model), f"--model {args.model}")
        except UnsupportedModelError as exc:
            raise UsageError(str(exc)) from None
        if args.tokenizer is None and not has_tokenizer_files(model):
            raise UsageError(f"--model: {missing_tokenizer_message(args.model)}")
    elif not _hub_id(args.model):
        raise UsageError(f"--model: no such folder, and not a hub id of the form org/name: {args.model!r}")
    if args.tokenizer is not None:
        tok = Path(args.tokenizer)
        if tok.exists():
            if not has_tokenizer_files(tok):
                raise UsageError(f"--tokenizer: {missing_tokenizer_message(args.tokenizer)}")
        elif not _hub_id(args.tokenizer):
            raise UsageError(f"--tokenizer: no such folder, and not a hub id of the form org/name: {args.tokenizer!r}")


def _hub_id(name: str) -> bool:
    return not name.startswith((".", "/", "~")) and name.count("/") == 1


def main(argv: list[str] | None = None) -> int:
    from .cli import OneLineParser, UsageError, run_main
    from .tracefile import TraceError

    ap = OneLineParser(prog=PROG, description="Trace tools for real MoE models.")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=OneLineParser)
    e = sub.add_parser("extract", help="extract a trace (router scores, top-k, norms, Delta, sigma) from a model")
    e.add_argument("--model", required=True, help="local checkpoint folder (with config.json) or hub id org/name")
    e.add_argument("--text", required=True, help="UTF-8 text file to run the model on")
    e.add_argument("--tokenizer", default=None,
                   help="tokenizer folder or hub id org/name (default: the model's own; needed when its folder has none)")
    e.add_argument("--tokens", type=int, required=True, help="tokens to record (>= 1)")
    e.add_argument("--out", required=True, help="output trace (.safetensors or .npz)")
    e.add_argument("--quantile", type=float, default=0.99, help="q of the Delta/sigma estimate, in (0, 1] (1.0 = max)")
    e.add_argument("--calibration-tokens", type=int, default=None, help="hidden states per layer for Delta/sigma")
    e.add_argument("--window", type=int, default=None, help="tokens per sequence (default min(max_pos, 256))")
    e.add_argument("--batch-size", type=int, default=8)
    e.add_argument("--dtype", default=None, help=f"torch dtype to load the model in: {', '.join(DTYPES)}")
    e.add_argument("--threads", type=int, default=2, help="torch CPU threads")

    def body() -> int:
        args = ap.parse_args(argv)
        _check_extract_args(args)
        import torch

        from .hf.families import check_config
        from .hf.loading import MissingTokenizerError, encode_text, load_moe_model, load_tokenizer, model_config

        torch.set_num_threads(args.threads)
        dtype = getattr(torch, args.dtype) if args.dtype else None
        try:  # config, tokenizer and text first: every refusal comes before the weights load
            config = model_config(args.model)
            check_config(config, f"--model {args.model}")
            tok = load_tokenizer(args.tokenizer if args.tokenizer is not None else args.model)
        except MissingTokenizerError as exc:
            raise UsageError(f"--tokenizer: {exc}") from None
        except (OSError, ValueError, KeyError) as exc:  # a hub id or tokenizer transformers cannot read
            raise UsageError(f"--model: cannot load {args.model}: {exc}") from None
        text = Path(args.text).read_text(encoding="utf-8", errors="replace")
        check_token_ids(encode_text(tok, text), config, max(args.tokens, args.calibration_tokens or 0))
        try:
            model, _ = load_moe_model(args.model, dtype=dtype, with_tokenizer=False)
        except (OSError, ValueError, KeyError) as exc:  # weights transformers cannot read
            raise UsageError(f"--model: cannot load {args.model}: {exc}") from None
        trace = extract_trace(model, tok, text, args.tokens, quantile=args.quantile,
                              calibration_tokens=args.calibration_tokens, window=args.window,
                              batch_size=args.batch_size, model_name=str(args.model))
        path = save_trace(trace, args.out)
        print(f"wrote {path}: T={trace.num_tokens} L={trace.num_layers} N={trace.num_experts} k={trace.top_k} "
              f"d={trace.hidden_size} scores={trace.extra['router_score']} gate_mode={trace.extra['gate_mode']} "
              f"scaling={trace.extra['routed_scaling_factor']:g} q={trace.quantile} (trace version {trace.version})")
        return 0

    return run_main(PROG, body, errors=(TraceError, ValueError))


if __name__ == "__main__":
    raise SystemExit(main())
