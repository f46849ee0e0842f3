"""Trace extraction from real MoE language models (``transformers``).

Runs a model over text and records, per token and MoE layer, the router
probabilities, the model's top-k and the hidden-state norm ``||x||`` of the
MoE block input; estimates ``Delta`` and ``sigma`` per layer by running every
expert on calibration hidden states captured at that layer
(:func:`siftmoe_gym.similarity.similarity_from_outputs`, quantile ``q``);
returns a :class:`siftmoe_gym.tracefile.Trace`.

    python -m siftmoe_gym.traces extract --model PATH_OR_ID --text FILE --tokens N --out FILE \
        [--quantile q] [--calibration-tokens n] [--window W] [--threads 2]

Gates.  The trace stores router probabilities plus a ``renormalize_gates``
flag from which the core recomputes gates.  Extraction checks which of
``p[topk] / sum p[topk]`` or ``p[topk]`` reproduces the model's own gates
(to 1e-5) and records it (``gate_mode`` "renormalized"/"plain" in the
metadata).  Architectures whose gates are neither (PhiMoE's sparsemixer,
DeepSeek's ``routed_scaling_factor``) get ``gate_mode = "explicit"``: the
stored probabilities hold the model's exact gates at the top-k positions
(and router scores elsewhere), with ``renormalize_gates = False``, so the
bound ``sum_i g_i Delta_{i,a(i)}`` uses the gates the model really applies.

torch and transformers are imported only when extraction runs.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from .similarity import similarity_from_outputs
from .tracefile import Trace, save_trace


def _gate_mode(probs: np.ndarray, topk: np.ndarray, gates: np.ndarray, prefer_renorm: bool, tol: float = 1e-5):
    sel = np.take_along_axis(probs, topk, axis=-1)
    renorm = sel / np.maximum(sel.sum(axis=-1, keepdims=True), 1e-300)
    scale = np.maximum(1.0, np.abs(gates))
    ok_r = bool(np.all(np.abs(renorm - gates) <= tol * scale))
    ok_p = bool(np.all(np.abs(sel - gates) <= tol * scale))
    if ok_r and (prefer_renorm or not ok_p):
        return "renormalized", probs, True
    if ok_p:
        return "plain", probs, False
    out = probs.copy()
    np.put_along_axis(out, topk, gates, axis=-1)
    return "explicit", out, False


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
    """Trace of ``model`` on the first ``tokens`` tokens of ``text`` (see module docstring).

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
    if len(ids) < total:
        raise ValueError(f"text has {len(ids)} tokens, fewer than the {total} requested (tokens / calibration_tokens)")
    ids = ids[:total]
    if window is None:
        window = int(min(getattr(model.config, "max_position_embeddings", 256) or 256, 256))
    wins = [ids[s : s + window] for s in range(0, total, window)]
    L, N, k = len(layers), layers[0].num_experts, layers[0].top_k
    rec: dict[int, dict[str, list]] = {l.index: {"probs": [], "topk": [], "gates": [], "norms": [], "x": []} for l in layers}
    cal_left = {l.index: n_cal for l in layers}

    def handler(lay, x, idx, w, orig):
        with torch.no_grad():
            idx_s, w_s = sort_slots(idx, w)
            r = rec[lay.index]
            r["probs"].append(lay.router_probs(x).double().cpu().numpy())
            r["topk"].append(idx_s.cpu().numpy())
            r["gates"].append(w_s.double().cpu().numpy())
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

    mode, probs_store, renorm = _gate_mode(probs, topk, gates, layers[0].renormalize)
    name = model_name or str(getattr(model.config, "_name_or_path", "") or type(model).__name__)
    trace = Trace(
        router_probs=probs_store.astype(np.float32),
        topk=topk,
        hidden_norms=norms.astype(np.float32),
        delta=np.stack(deltas),
        sigma=np.stack(sigmas),
        num_experts=N,
        top_k=k,
        num_layers=L,
        hidden_size=int(model.config.hidden_size),
        renormalize_gates=renorm,
        quantile=float(quantile),
        model=name,
        extra={
            "source": "siftmoe_gym.traces.extract_trace",
            "architecture": type(model).__name__,
            "gate_mode": mode,
            "router_score": layers[0].score,
            "calibration_tokens": n_cal,
            "window": int(window),
            "moe_layer_indices": [l.layer_idx for l in layers],
        },
    ).validate()
    if return_calibration:
        return trace, {"hidden": hidden, "ids": ids}
    return trace


DTYPES = ("float32", "float16", "bfloat16", "float64")
PROG = "python -m siftmoe_gym.traces"


def _check_extract_args(args) -> None:
    """Every option checked before anything loads (:class:`siftmoe_gym.cli.UsageError` naming the option)."""
    from .cli import UsageError, at_least

    for name, low in (("--tokens", 1), ("--calibration-tokens", 1), ("--window", 2), ("--batch-size", 1),
                      ("--threads", 1)):
        at_least(name, getattr(args, name[2:].replace("-", "_")), low)
    if not (0.0 < args.quantile <= 1.0):
        raise UsageError(f"--quantile must be in (0, 1], got {args.quantile}")
    if args.dtype is not None and args.dtype not in DTYPES:
        raise UsageError(f"--dtype must be one of {list(DTYPES)}, got {args.dtype!r}")
    text = Path(args.text)
    if not text.is_file():
        raise UsageError(f"--text: no such file: {args.text}")
    out = Path(args.out)
    if out.suffix not in (".safetensors", ".npz"):
        raise UsageError(f"--out must end in .safetensors or .npz, got {args.out!r}")
    if out.is_dir():
        raise UsageError(f"--out is a folder: {args.out}")
    if out.parent.exists() and not out.parent.is_dir():
        raise UsageError(f"--out: {out.parent} is not a folder")
    model = Path(args.model)
    if model.exists():
        if not (model / "config.json").is_file():
            raise UsageError(f"--model: {args.model} has no config.json (not a transformers checkpoint folder)")
    elif args.model.startswith((".", "/", "~")) or args.model.count("/") != 1:
        raise UsageError(f"--model: no such folder, and not a hub id of the form org/name: {args.model!r}")


def main(argv: list[str] | None = None) -> int:
    from .cli import OneLineParser, UsageError, run_main
    from .tracefile import TraceError

    ap = OneLineParser(prog=PROG, description="Trace tools for real MoE models.")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=OneLineParser)
    e = sub.add_parser("extract", help="extract a trace (router scores, top-k, norms, Delta, sigma) from a model")
    e.add_argument("--model", required=True, help="local checkpoint folder (with config.json) or hub id org/name")
    e.add_argument("--text", required=True, help="UTF-8 text file to run the model on")
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

        from .hf.loading import load_moe_model

        torch.set_num_threads(args.threads)
        dtype = getattr(torch, args.dtype) if args.dtype else None
        try:
            model, tok = load_moe_model(args.model, dtype=dtype)
        except (OSError, ValueError, KeyError) as exc:  # a folder transformers cannot read, an unknown family
            raise UsageError(f"--model: cannot load {args.model}: {exc}") from None
        text = Path(args.text).read_text(encoding="utf-8", errors="replace")
        trace = extract_trace(model, tok, text, args.tokens, quantile=args.quantile,
                              calibration_tokens=args.calibration_tokens, window=args.window,
                              batch_size=args.batch_size, model_name=str(args.model))
        path = save_trace(trace, args.out)
        print(f"wrote {path}: T={trace.num_tokens} L={trace.num_layers} N={trace.num_experts} k={trace.top_k} "
              f"d={trace.hidden_size} gate_mode={trace.extra['gate_mode']} q={trace.quantile}")
        return 0

    return run_main(PROG, body, errors=(TraceError, ValueError))


if __name__ == "__main__":
    raise SystemExit(main())
