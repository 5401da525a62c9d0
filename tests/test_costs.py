"""Prices and cost accounting: the price table, and the client's cost counter against the simulator's ledger."""

from __future__ import annotations

import aiohttp
import pytest
from pydantic import BaseModel, Field

from streamer import metrics
from streamer.config import ConfigError, LLMSettings, ModelPrice, load_settings
from streamer.llm.client import LLMPool
from streamer.llm.prices import Prices
from streamer.llm.simulator import SimulatorSettings, start_simulator


class Answer(BaseModel):
    title: str
    points: list[str] = Field(min_length=1, max_length=4)


def test_prices_default_configured_family_and_batch_discount() -> None:
    prices = Prices({"my-local": ModelPrice(input=1.0, output=2.0, batch_discount=0.25),
                     "gpt-4o": ModelPrice(input=5.0, output=15.0)})
    assert prices.of("gpt-4o-mini").input == 0.15  # a default
    assert prices.of("gpt-4o").input == 5.0  # configured over the default
    assert prices.of("gpt-4o-mini-2024-07-18").output == 0.60  # a dated snapshot takes its family's price
    assert prices.of("synthstream-simulator/gpt-4.1-nano").input == 0.10  # as the simulator names it
    assert prices.of("unknown-model") is None
    assert prices.of("unknown-model", "gpt-4.1") is prices.table["gpt-4.1"]  # the fallback name
    assert prices.cost(1_000_000, 1_000_000, "online", "my-local") == pytest.approx(3.0)
    assert prices.cost(1_000_000, 1_000_000, "batch", "my-local") == pytest.approx(2.25)
    assert prices.cost(2_000_000, 0, "batch", "gpt-4o-mini") == pytest.approx(0.15)
    assert prices.cost(10, 10, "online", "unknown-model") == 0.0


def test_prices_come_from_settings(tmp_path) -> None:
    path = tmp_path / "synthstream.toml"
    path.write_text('[prices."my-model"]\ninput = 0.5\noutput = 1.5\n\n[stages.judge.llm]\nmode = "batch"\n')
    settings = load_settings(path, env={})
    assert settings.prices["my-model"].batch_discount == 0.5  # the stated default
    assert settings.stage_settings("judge").llm.mode == "batch"
    assert settings.stage_settings("answer").llm.mode == "online"
    path.write_text('[prices."my-model"]\ninput = -1\noutput = 1\n')
    with pytest.raises(ConfigError, match="prices.my-model.input"):
        load_settings(path, env={})


@pytest.mark.asyncio
async def test_reported_cost_equals_the_ledger_times_prices() -> None:
    runner, port = await start_simulator(SimulatorSettings(port=0))
    base = f"http://127.0.0.1:{port}"
    # system_role pinned: the auto probe is one more charged request, counted under stage llm-probe
    settings = LLMSettings(base_url=f"{base}/v1", model="gpt-4o-mini", cache=False, max_retries=0,
                           system_role="system")
    pool = LLMPool()
    client = pool.client(settings, "t-cost")
    try:
        for i in range(12):
            await client.structured([{"role": "user", "content": f"Topic {i}: consumer lag and offsets."}], Answer)
        async with aiohttp.ClientSession() as session, session.get(f"{base}/ledger") as response:
            ledger = await response.json()
    finally:
        await pool.close()
        await runner.cleanup()
    online = ledger["totals"]["online"]
    assert online["requests"] >= 12 and "batch" not in ledger["totals"]
    expected = (online["prompt_tokens"] * 0.15 + online["completion_tokens"] * 0.60) / 1e6
    reported = metrics.total(metrics.LLM_COST, stage="t-cost")
    assert expected > 0 and reported == pytest.approx(expected, rel=1e-9)
    assert metrics.total(metrics.LLM_COST, stage="t-cost", lane="batch") == 0
