"""What LLM calls cost: prices per model (settings `[prices]` over `config.DEFAULT_PRICES`) and the cost
counter every answered request adds to, by stage, model and lane (online or batch)."""

from __future__ import annotations

import logging
from typing import Any, Mapping

from streamer import metrics
from streamer.config import DEFAULT_PRICES, ModelPrice

log = logging.getLogger(__name__)

LANES = ("online", "batch")
SIMULATED_PREFIX = "synthstream-simulator/"  # the simulator answers as "synthstream-simulator/<requested model>"

_unpriced_said: set[str] = set()


class Prices:
    """Prices by model: the configured ones over the defaults."""

    def __init__(self, configured: Mapping[str, ModelPrice] | None = None) -> None:
        self.table: dict[str, ModelPrice] = {**DEFAULT_PRICES, **(configured or {})}
        # Per answered request on the online path: the price and the counter child are looked up once.
        self._counters: dict[tuple[str, str, str, str], Any] = {}
        self._prices: dict[tuple[str, ...], ModelPrice | None] = {}

    def of(self, *models: str) -> ModelPrice | None:
        """The price of the first of `models` that has one: an exact name, else the longest priced name
        it starts with followed by '-' (a dated snapshot takes its family's price)."""
        for model in models:
            if not model:
                continue
            name = model[len(SIMULATED_PREFIX):] if model.startswith(SIMULATED_PREFIX) else model
            if name in self.table:
                return self.table[name]
            family = max((k for k in self.table if name.startswith(k + "-")), key=len, default=None)
            if family is not None:
                return self.table[family]
        return None

    def cost(self, prompt_tokens: float, completion_tokens: float, lane: str, *models: str) -> float:
        """US dollars for these tokens in this lane; 0 for a model without a price (said once)."""
        price = self._prices.get(models, ...)
        if price is ...:
            price = self._prices[models] = self.of(*models)
        if price is None:
            key = models[0] if models else ""
            if key not in _unpriced_said:
                _unpriced_said.add(key)
                log.warning("no price for model %s: its calls count as $0; set [prices.%r] input/output "
                            "(USD per million tokens)", key, key)
            return 0.0
        factor = 1.0 - price.batch_discount if lane == "batch" else 1.0
        return (prompt_tokens * price.input + completion_tokens * price.output) * factor / 1_000_000

    def charge(self, stage: str, endpoint: str, model: str, answered_by: str, lane: str,
               prompt_tokens: int, completion_tokens: int) -> float:
        """Adds one answered request's cost to the metric (priced by the configured model, else by the
        model that answered) and returns it."""
        usd = self.cost(prompt_tokens, completion_tokens, lane, model, answered_by)
        key = (stage, endpoint, model, lane)
        if (counter := self._counters.get(key)) is None:
            counter = self._counters[key] = metrics.LLM_COST.labels(*key)
        counter.inc(usd)
        return usd
