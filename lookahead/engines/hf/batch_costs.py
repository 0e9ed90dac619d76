"""The decode-step cost by batch size, measured once per machine and model, and the batch planner.

On CPUs small odd batch sizes can fall on a slow matrix-multiply path (measured with
SmolLM2-135M fp32: batch 3 = 1.96x batch 1, batch 4 = 1.48x, batch 5 = 1.29x), so decoding 3 live
rows as 4 is faster. `measure_batch_costs` times one decode step at every batch size,
`BatchCostCurve` remembers the curve per model and machine, and `plan_batch` picks the batch
positions of the next decode steps from it (the live rows plus fillers).

Example:
    >>> plan_batch([0, 2], 3, [float("inf"), 1.0, 1.9, 2.0, 1.5, 1.3])
    [0, 1, 2, 0, 2]
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import PreTrainedModel
from transformers.cache_utils import DynamicCache

logger = logging.getLogger(__name__)

MAX_PLANNED_BATCH = 8  # largest batch size the cost curve covers (rows)
MIN_PADDED_ROWS = 3  # fewest live rows whose decode consults the cost curve (rows); see `BatchCostCurve`


def measure_batch_costs(model: PreTrainedModel, max_batch: int = MAX_PLANNED_BATCH, context: int = 96,
                        steps: int = 4, repeats: int = 3) -> list[float]:
    """Seconds of one decode step at batch sizes 1..max_batch (index 0 is unused, +inf).

    Sizes are timed round-robin and the best of `repeats` is kept (see the module docstring).
    """
    device = next(model.parameters()).device
    vocab = int(model.config.vocab_size)
    best = [float("inf")] * (max_batch + 1)
    generator = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for _ in range(repeats):
            for batch in range(1, max_batch + 1):
                ids = torch.randint(0, vocab, (batch, context), generator=generator).to(device)
                cache = DynamicCache(config=model.config)
                model(input_ids=ids, past_key_values=cache, use_cache=True)
                step = torch.randint(0, vocab, (batch, 1), generator=generator).to(device)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(steps):
                    model(input_ids=step, past_key_values=cache, use_cache=True)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                best[batch] = min(best[batch], (time.perf_counter() - start) / steps)
    return best


def _costs_key(model: PreTrainedModel, source: str, dtype: str) -> str:
    device = next(model.parameters()).device
    return "|".join([source, dtype, str(device), torch.__version__, str(os.cpu_count()), str(torch.get_num_threads())])


class BatchCostCurve:
    """`measure_batch_costs` of one model, remembered in ``<root>/batch-costs.json`` per model and
    machine, and measured only when first needed.

    Why lazy: a first run used to pay the measurement of both models (seconds idle, minutes on a
    loaded machine) before its first token, though a γ = 1 round decodes at most 2 rows and
    padding only pays from 3 live rows (1 and 2 rows are the cheapest sizes on every curve we
    measured: batch 3 = 1.96x batch 1, batch 4 = 1.48x on SmolLM2-135M fp32). So `known` gives a
    stored curve or None, and `needed` measures (and stores) on the first decode of
    `MIN_PADDED_ROWS` or more rows.
    """

    def __init__(self, model: PreTrainedModel, source: str, dtype: str, root: Path) -> None:
        self.model, self.source, self.path = model, source, root / "batch-costs.json"
        self.key = _costs_key(model, source, dtype)
        self.known: list[float] | None = self._stored()  # seconds by batch size, or None until measured
        self._lock = threading.Lock()

    def _stored(self) -> list[float] | None:
        try:
            costs = json.loads(self.path.read_text()).get(self.key)
        except (OSError, ValueError, AttributeError):
            return None
        if isinstance(costs, list) and len(costs) == MAX_PLANNED_BATCH + 1:
            return [float("inf") if c is None else float(c) for c in costs]
        return None

    def needed(self) -> list[float]:
        """The curve, measured now (once, also across threads) if no stored one exists."""
        with self._lock:
            if self.known is None:
                logger.info("measuring decode cost by batch size for %s (one time, a few seconds)", Path(self.source).name)
                self.known = measure_batch_costs(self.model)
                self._store(self.known)
            return self.known

    def _store(self, costs: list[float]) -> None:
        try:
            table = json.loads(self.path.read_text())
        except (OSError, ValueError):
            table = {}
        table[self.key] = [None if c == float("inf") else round(c, 6) for c in costs]
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(f".tmp{os.getpid()}")
            tmp.write_text(json.dumps(table, indent=1))
            os.replace(tmp, self.path)
        except OSError as exc:  # a read-only cache only costs the measurement next time
            logger.warning("could not save %s: %s", self.path, exc)


def plan_batch(live: list[int], current: int, costs: Sequence[float] | BatchCostCurve | None) -> list[int]:
    """Batch positions to keep for the next decode steps: the ``live`` ones plus fillers.

    Without a cost curve the batch shrinks to the live rows. With one, it takes the cheapest
    size >= the live count (smallest size on a tie; a larger one only if it saves >5%):
    fillers are finished positions of the ``current`` batch first, then copies of live ones.
    A `BatchCostCurve` is measured here on the first decode of `MIN_PADDED_ROWS` or more rows.
    """
    n = len(live)
    if isinstance(costs, BatchCostCurve):
        costs = costs.needed() if n >= MIN_PADDED_ROWS else costs.known
    size = n
    if costs is not None and n < len(costs):
        for k in range(n + 1, len(costs)):
            if costs[k] < 0.95 * costs[size]:
                size = k
    spare = [j for j in range(current) if j not in live]
    fillers = (spare + live * size)[: size - n]
    return sorted(live + fillers[: len(spare)]) + fillers[len(spare) :]
