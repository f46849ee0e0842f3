"""Rendering of the siftmoe_gym environments: an ANSI table, an RGB picture with labels and a colour key, and a
window (``render_mode="human"``, needs pygame: ``pip install -e ".[render]"``).

The picture is drawn with numpy; its text (node labels with link margins, a status line and the colour key)
with Pillow, which matplotlib already requires."""

from __future__ import annotations

import numpy as np

from .observations import MARGIN_SCALE_DB

SIZE = 320
"""Side of the network drawing (pixels); the frame adds a status line above and the colour key below."""
HEADER = 34
KEY = 78
_BG = np.array([250, 250, 250], np.uint8)
KEY_ITEMS = (
    ((30, 90, 220), "expert kept"), ((255, 140, 0), "replacement"), ((150, 150, 150), "top-k expert not served"),
    ((215, 215, 225), "other expert"), ((255, 215, 0), "node used"), ((255, 245, 170), "node paid, unused"),
    ((40, 180, 40), "link: strong"), ((220, 0, 40), "link: weak / infeasible"),
)


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
    """The frame (``SIZE + HEADER + KEY``, ``SIZE``, 3) uint8: a status line (step, layer, token, the last
    decision's energy against top-k's, error bound against the budget, reward), then node 0 in the centre and the
    edge nodes on a circle, each labelled with its number and link margin (dB above the one-token feasibility
    threshold; "infeasible" below it); links green (good) to red (infeasible), thick when the node was
    activated (paid); node discs gold when the served experts used them, pale yellow when activated but unused;
    experts as small squares around their node: blue kept, orange replacement, grey top-k not served, light
    others; then the colour key."""
    net = _network(env)
    return _annotate(env, net)


def _network(env) -> np.ndarray:
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


def _annotate(env, net: np.ndarray) -> np.ndarray:
    """``net`` with the status line above, node labels on it and the colour key below (Pillow text)."""
    from PIL import Image, ImageDraw, ImageFont

    s, cost, feas, margin = _state(env)
    frame = np.empty((HEADER + SIZE + KEY, SIZE, 3), np.uint8)
    frame[:] = _BG
    frame[HEADER:HEADER + SIZE] = net
    img = Image.fromarray(frame)
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=11) if hasattr(ImageFont, "load_default") else None
    last = env._last
    head = f"{env.setting}  step {env._s}/{env._n_steps}  layer {env.layer}  token {env.token}"
    if last is None:
        sub = "no decision yet"
    else:
        sub = (f"last: E {last['energy']:.1e} J (top-k {last['topk_energy']:.1e}), err/budget "
               f"{last['err'] / max(last['budget'], 1e-300):.2f}, r {last['reward']:+.1f}")
    draw.text((6, 3), head, fill=(20, 20, 20), font=font)
    draw.text((6, 18), sub, fill=(20, 20, 20), font=font)
    c = SIZE / 2
    m = env.n_nodes
    ang = 2 * np.pi * np.arange(m) / max(m, 1) - np.pi / 2
    draw.text((c + 18, HEADER + c - 22), "node 0 (source)", fill=(20, 20, 20), font=font)
    for j, a in enumerate(ang, start=1):
        py, px = c + 0.36 * SIZE * np.sin(a), c + 0.36 * SIZE * np.cos(a)
        label = f"node {j}: " + (f"{margin[j - 1]:+.0f} dB" if feas[j] else "infeasible")
        w = draw.textlength(label, font=font) if hasattr(draw, "textlength") else 7 * len(label)
        x = float(np.clip(px - w / 2, 2, SIZE - w - 2))
        y = HEADER + py - 32 if py < c else HEADER + py + 34
        draw.text((x, float(np.clip(y, HEADER, HEADER + SIZE - 12))), label, fill=(20, 20, 20), font=font)
    y0 = HEADER + SIZE + 4
    for i, (col, text) in enumerate(KEY_ITEMS):
        x, y = 6 + (i % 2) * (SIZE // 2), y0 + (i // 2) * 18
        draw.rectangle([x, y + 2, x + 10, y + 12], fill=tuple(col), outline=(90, 90, 90))
        draw.text((x + 16, y), text, fill=(20, 20, 20), font=font)
    return np.asarray(img, dtype=np.uint8).copy()


class HumanWindow:
    """A pygame window showing :func:`render_rgb` frames (``render_mode="human"``)."""

    def __init__(self, fps: int):
        try:
            import pygame
        except ImportError:
            from gymnasium.error import DependencyNotInstalled

            raise DependencyNotInstalled('render_mode="human" needs pygame: pip install -e ".[render]" (or pip install '
                                         'pygame); render_mode="rgb_array" and "ansi" need nothing more') from None
        self.pygame = pygame
        self.fps = int(fps)
        self.screen = None
        self.clock = pygame.time.Clock()

    def show(self, frame: np.ndarray) -> None:
        pg = self.pygame
        if self.screen is None:
            pg.init()
            pg.display.set_caption("siftmoe_gym")
            self.screen = pg.display.set_mode((frame.shape[1], frame.shape[0]))
        pg.event.pump()
        self.screen.blit(pg.surfarray.make_surface(np.transpose(frame, (1, 0, 2))), (0, 0))
        pg.display.flip()
        self.clock.tick(self.fps)

    def close(self) -> None:
        if self.screen is not None:
            self.pygame.display.quit()
            self.pygame.quit()
            self.screen = None
