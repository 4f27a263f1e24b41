"""Fleet simulator: strategies for offloading a DNN from many devices to a shared cloud.

    from edgecut.simulations import load_scenario, simulate
    result = simulate(load_scenario("simulations/examples/phones-lte.toml"))
    result.summary["strategies"]["edgecut"]["latency_ms"]["p95"]

The service times are the cost model's (`edgecut plan --explain --json --no-measure`), the
cuts and envelopes the planner's; docs/simulation.md describes the engine's model of the
world and every scenario key. `example_path("phones-lte")` finds a shipped example scenario.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from edgecut.simulations.run import SimulationResult, prepare, simulate
from edgecut.simulations.scenario import (
    STRATEGIES,
    Scenario,
    ScenarioError,
    load_scenario,
    scenario_from_dict,
)
from edgecut.simulations.sweep import run_sweep

__all__ = [
    "STRATEGIES",
    "Scenario",
    "ScenarioError",
    "SimulationResult",
    "example_names",
    "example_path",
    "load_scenario",
    "prepare",
    "run_sweep",
    "scenario_from_dict",
    "simulate",
]


def example_names() -> list[str]:
    """The example scenarios shipped with edgecut, by name."""
    folder = resources.files("edgecut.simulations").joinpath("examples")
    return sorted(e.name[:-5] for e in folder.iterdir() if e.name.endswith(".toml")
                  and e.name != "budget-phone.toml")


def example_path(name: str) -> Path:
    """The path of a shipped example scenario (`phones-lte`, `city-cameras-wifi`, ...)."""
    if name not in example_names():
        raise ScenarioError(f"no example scenario {name!r}; the examples are "
                            f"{', '.join(example_names())}")
    return Path(str(resources.files("edgecut.simulations").joinpath("examples", f"{name}.toml")))
