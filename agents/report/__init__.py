"""The benchmark report (``python -m agents.compare``), one module per job.

==========================  ===========================================================
:mod:`.scenarios`           scenario YAML: parsing, sweep points, traces a scenario needs
:mod:`.runners`             one scenario point (every policy, bound and agent); local and Ray runners
:mod:`.records`             per-episode records, relative figures, summaries, the dominance check
:mod:`.tables`              console / CSV / JSON comparison table, markdown tables
:mod:`.plots`               comparison, learning curve and scenario figures
:mod:`.benchmark`           the whole report and its command line
==========================  ===========================================================

Arrows point one way: benchmark -> runners -> scenarios, records; tables -> plots -> records,
scenarios; everything may use :mod:`agents.evaluation`, :mod:`agents.models` and :mod:`agents.runio`.
"""

from .benchmark import main, replot, run_benchmark

__all__ = ["main", "replot", "run_benchmark"]
