"""The training log a person follows: one line per evaluation, on the console and in ``train.log``.

Each periodic evaluation (:class:`agents.callbacks.ComparisonEvalCallback`) becomes one line::

    [eval 3/10] steps 245,760/819,200 (30%)  fps 5,012  score 0.962 [0.951, 0.970]  regret 3.9% [2.8, 5.1]
                excess viol. 0.00%  feasible yes  | best: score 0.962 at 245,760

written to the run folder's ``train.log`` (appended, flushed at once) and printed, above the progress bar
when one is shown.  The progress bar (:class:`agents.callbacks.ProgressBarCallback`) counts towards the
step target the run will really reach (whole rollouts) and is shown only on a terminal, so a redirected
run prints the evaluation lines alone.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path
from typing import Any


def _pct_ci(mean: float, lo: float, hi: float) -> str:
    if not math.isfinite(mean):
        return "n/a"
    ci = f" [{100 * lo:.1f}, {100 * hi:.1f}]" if math.isfinite(lo) and math.isfinite(hi) else ""
    return f"{100 * mean:.1f}%{ci}"


def _score_ci(rec: dict[str, Any]) -> str:
    s = rec.get("score", math.nan)
    if not isinstance(s, (int, float)) or not math.isfinite(s):
        return "n/a"
    lo, hi = rec.get("score_ci95_low", math.nan), rec.get("score_ci95_high", math.nan)
    return f"{s:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if math.isfinite(lo) and math.isfinite(hi) else "")


def eval_line(rec: dict[str, Any], index: int, planned: int, target: int, fps: float,
              best: dict[str, Any] | None) -> str:
    """One evaluation as a line (see the module docstring)."""
    steps = int(rec["timesteps"])
    pct = 100.0 * steps / max(target, 1)
    best_txt = (f"best: score {_score_ci(best).split(' ')[0]} at {int(best['timesteps']):,}"
                if best is not None else "best: -")
    return (f"[eval {index}/{planned}] steps {steps:,}/{target:,} ({pct:.0f}%)  fps {fps:,.0f}  "
            f"score {_score_ci(rec)}  regret {_pct_ci(rec.get('regret', math.nan), rec.get('regret_ci95_low', math.nan), rec.get('regret_ci95_high', math.nan))}  "
            f"excess viol. {100 * rec.get('excess_violation_rate', math.nan):.2f}%  "
            f"feasible {'yes' if rec.get('feasible') else 'NO'}  | {best_txt}")


class TrainLog:
    """Lines to ``path`` (appended and flushed) and to the console (through ``tqdm.write`` so a bar stays intact)."""

    def __init__(self, path: str | os.PathLike, echo: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.echo = echo

    def write(self, text: str, echo: bool | None = None) -> None:
        """Append ``text`` to the file, and print it unless ``echo`` (default: the log's) is false."""
        with open(self.path, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
        if self.echo if echo is None else echo:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stdout)
            sys.stdout.flush()
