"""Rendering of the siftmoe_gym environments: an ANSI table and an RGB picture (pure numpy)."""

from __future__ import annotations

import numpy as np

from .observations import MARGIN_SCALE_DB

SIZE = 320
_BG = np.array([250, 250, 250], np.uint8)


def _state(env):
    """Node gains (dB margin), costs, feasibility and the last/next decision."""
    s = min(env._s, env._n_steps - 1)
    cost, feas, _ = env._step_costs()
    flat = env._observation()
    margin = flat[env.obs_slices["link_margin"]] * MARGIN_SCALE_DB
    return s, cost, feas, margin


def render_ansi(env) -> str:
    s, cost, feas, margin = _state(env)
    last = env._last
    lines = [f"{type(env).__name__} [{env.setting}] step {env._s}/{env._n_steps}  layer {env.layer}  token {env.token}"]
    lines.append(" node | margin dB | cost (J)  | feasible")
    lines.append(f"   0  |     -     | {0.0:9.3e} | yes")
    for m in range(1, env.n_nodes + 1):
        lines.append(f"  {m:2d}  | {margin[m - 1]:+9.1f} | {cost[m]:9.3e} | {'yes' if feas[m] else 'NO'}")
    if last is None:
        lines.append("no decision yet")
        return "\n".join(lines) + "\n"
    ls = last["s"]
    topk = env._topk[ls]
    node_of = env.system.node_of[last["layer"]]
    lines.append(f"last decision (layer {last['layer']}): slot | expert@node | gate  | served by")
    for i, (e, g) in enumerate(zip(topk, env._gates[ls])):
        a = int(last["assignment"][i])
        how = "kept" if a == e else ("skipped" if a < 0 else f"replaced by {a}@{node_of[a]}")
        lines.append(f"  {i:2d} | {int(e):4d}@{int(node_of[e])}   | {g:.3f} | {how}")
    used = np.flatnonzero(last["used"]).tolist()
    active = np.flatnonzero(last.get("active", last["used"])).tolist()
    lines.append(
        f"nodes activated (paid) {active}  used {used}  energy {last['energy']:.3e} J (top-k {last['topk_energy']:.3e} J)  "
        f"error bound {last['err']:.4f} / budget {last['budget']:.4f}  latency overrun {last['lat']:.2e} s  "
        f"reward {last['reward']:+.3f}"
    )
    return "\n".join(lines) + "\n"


def _disk(img, cy, cx, r, color):
    y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 1, img.shape[0])
    x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 1, img.shape[1])
    yy, xx = np.ogrid[y0:y1, x0:x1]
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    img[y0:y1, x0:x1][mask] = color


def _line(img, p0, p1, color, width=2):
    n = int(max(abs(p1[0] - p0[0]), abs(p1[1] - p0[1]))) + 1
    ys = np.linspace(p0[0], p1[0], n).astype(int)
    xs = np.linspace(p0[1], p1[1], n).astype(int)
    for d in range(-(width // 2), width - width // 2):
        img[np.clip(ys + d, 0, img.shape[0] - 1), np.clip(xs, 0, img.shape[1] - 1)] = color


def render_rgb(env) -> np.ndarray:
    """Node 0 in the centre, edge nodes on a circle, links green (good) to red (infeasible), thick when the
    node was activated (paid); node discs gold when the served experts used them, pale yellow when activated
    but unused; experts as small squares around their node: blue kept, orange replacement, grey skipped
    top-k, light others."""
    s, cost, feas, margin = _state(env)
    img = np.empty((SIZE, SIZE, 3), np.uint8)
    img[:] = _BG
    c = SIZE / 2
    m = env.n_nodes
    ang = 2 * np.pi * np.arange(m) / max(m, 1) - np.pi / 2
    pos = [(c, c)] + [(c + 0.36 * SIZE * np.sin(a), c + 0.36 * SIZE * np.cos(a)) for a in ang]
    last = env._last
    used = last["used"] if last is not None else np.zeros(m + 1, bool)
    active = last.get("active", used) if last is not None else used
    for j in range(1, m + 1):
        q = float(np.clip((margin[j - 1] + 10.0) / 30.0, 0.0, 1.0)) if feas[j] else 0.0
        color = np.array([int(220 * (1 - q)), int(180 * q), 40], np.uint8)
        _line(img, pos[0], pos[j], color, width=4 if active[j] else 1)
    layer = last["layer"] if last is not None else env.layer
    node_of = env.system.node_of[layer]
    ls = last["s"] if last is not None else s
    topk = set(int(e) for e in env._topk[ls])
    served = set(int(a) for a in last["assignment"] if a >= 0) if last is not None else set()
    for j, (py, px) in enumerate(pos):
        _disk(img, py, px, 16, np.array([60, 60, 60] if j == 0 else [110, 110, 160], np.uint8))
        fill = [255, 215, 0] if used[j] else ([255, 245, 170] if active[j] else [240, 240, 240])
        _disk(img, py, px, 12, np.array(fill, np.uint8))
        experts = np.flatnonzero(node_of == j)
        for r, e in enumerate(experts[:12]):
            ey = int(py + 20 + 7 * (r // 6))
            ex = int(px - 21 + 7 * (r % 6))
            if e in topk and e in served:
                col = [30, 90, 220]  # kept
            elif e in served:
                col = [255, 140, 0]  # replacement
            elif e in topk:
                col = [150, 150, 150]  # top-k not served (skipped or replaced)
            else:
                col = [215, 215, 225]
            img[max(ey, 0):min(ey + 5, SIZE), max(ex, 0):min(ex + 5, SIZE)] = np.array(col, np.uint8)
    return img
