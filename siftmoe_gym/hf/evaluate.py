"""Next-token accuracy, perplexity and bound coverage of a policy run inside the model."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .adapters import MoELayer, moe_layers
from .decisions import DecisionLog, LayerRouting, follow_decisions


def token_windows(ids, window: int) -> list[np.ndarray]:
    """Consecutive windows (sequences) of at most ``window`` tokens (the last may be shorter, >= 2)."""
    ids = np.asarray(ids, dtype=np.int64)
    out = [ids[s : s + window] for s in range(0, len(ids), window)]
    return [w for w in out if len(w) >= 2]


@torch.no_grad()
def evaluate_policy(
    model: torch.nn.Module,
    ids,
    policy_fn: Callable[[LayerRouting], np.ndarray | None] | None,
    *,
    window: int = 128,
    delta: np.ndarray | None = None,
    sigma: np.ndarray | None = None,
    layers: list[MoELayer] | None = None,
    on_sequence: Callable[[int], None] | None = None,
    reference: np.ndarray | None = None,
    rtol: float = 1e-9,
    progress: bool = False,
) -> dict:
    """Run ``model`` over ``ids`` in windows, following ``policy_fn`` (``None``: unmodified model).

    Returns ``accuracy`` (argmax next token == true next token), ``perplexity``,
    ``predictions`` (argmax per predicted position), ``agreement`` with
    ``reference`` predictions when given, and, with ``delta``/``sigma``
    (L, N, N)/(L, N), the measured deviation vs. error bound over all
    (token, layer) decisions: ``coverage`` (share within the bound, up to the
    dtype's rounding, see :meth:`DecisionLog.coverage`), ``mean_deviation``,
    ``max_deviation``, ``mean_bound``; plus ``log`` (the :class:`DecisionLog`).
    """
    windows = token_windows(ids, window)
    layers = moe_layers(model) if layers is None and policy_fn is not None else layers
    it = windows
    if progress:
        from tqdm import tqdm

        it = tqdm(windows, desc="evaluate", unit="seq")
    preds, correct, nll = [], 0, 0.0
    log = DecisionLog()
    for si, win in enumerate(it):
        if on_sequence is not None:
            on_sequence(si)
        x = torch.from_numpy(win)[None]
        if policy_fn is None:
            logits = model(input_ids=x).logits
        else:
            with follow_decisions(model, policy_fn, layers=layers) as lg:
                lg.sequence = si
                logits = model(input_ids=x).logits
            log.records.extend(lg.records)
        lp = torch.log_softmax(logits[0, :-1].double(), dim=-1)
        tgt = x[0, 1:]
        nll += float(-lp.gather(-1, tgt[:, None]).sum())
        p = lp.argmax(-1)
        correct += int((p == tgt).sum())
        preds.append(p.numpy())
    n = sum(len(w) - 1 for w in windows)
    pred = np.concatenate(preds) if preds else np.zeros(0, dtype=np.int64)
    res = {
        "tokens": n,
        "accuracy": correct / max(n, 1),
        "perplexity": float(np.exp(nll / max(n, 1))),
        "predictions": pred,
        "log": log,
    }
    if reference is not None:
        res["agreement"] = float(np.mean(pred == np.asarray(reference)))
    if delta is not None and sigma is not None and log.records:
        dev, bnd = log.bounds(delta, sigma)
        res.update(
            coverage=log.coverage(delta, sigma, rtol=rtol),
            mean_deviation=float(dev.mean()),
            max_deviation=float(dev.max()),
            mean_bound=float(bnd.mean()),
        )
    return res
