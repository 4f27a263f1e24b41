"""The bandwidth envelope: against direct evaluation, contiguity, lookup and JSON."""

from __future__ import annotations

import doctest
import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import edgecut.partitioner.envelope as envelope_module
from edgecut.errors import BadPlanError, UserInputError
from edgecut.partitioner.cost import CostParameters
from edgecut.partitioner.costgraph import chain_costgraph
from edgecut.partitioner.envelope import (
    EnvelopeSegment,
    cut_for_bandwidth,
    envelope_candidate,
    lower_envelope,
)
from edgecut.partitioner.search.scan import scan_prefixes

BANDWIDTHS = [0.0, 1e-3, *(10 ** (k / 8) for k in range(-24, 33)), 1e6, math.inf]

# No subnormal floats: a crossing of 1e-313 megabits is no tensor, and a breakpoint it makes
# (1e-317 Mbit/s) sits where float arithmetic keeps a few bits, so no lookup can be exact.
values = st.one_of(st.integers(0, 50).map(float),
                   st.floats(0, 1e4, allow_nan=False, allow_subnormal=False))
candidates = st.lists(st.tuples(values, values), min_size=1, max_size=25).map(
    lambda ab: [(i, a, b) for i, (a, b) in enumerate(ab)]
)


def latency(a: float, b: float, mbps: float) -> float:
    if mbps == 0:
        return math.inf if b else a
    return a + b / mbps


def test_docstring_examples_run() -> None:
    assert doctest.testmod(envelope_module).failed == 0


@settings(max_examples=300, deadline=None)
@given(candidates)
def test_envelope_picks_the_fastest_cut_at_every_bandwidth(cands: list[tuple[int, float, float]]) -> None:
    env = lower_envelope(cands)
    assert env[0].min_mbps == 0.0 and env[-1].max_mbps == math.inf
    for left, right in itertools.pairwise(env):
        assert left.max_mbps == right.min_mbps
        assert left.cut != right.cut
    by_id = {cut: (a, b) for cut, a, b in cands}
    probes = BANDWIDTHS + [s.min_mbps for s in env] + [(s.min_mbps + s.max_mbps) / 2 for s in env[:-1]]
    for mbps in probes:
        chosen = latency(*by_id[cut_for_bandwidth(env, mbps)], mbps)
        best = min(latency(a, b, mbps) for _, a, b in cands)
        if math.isinf(mbps):
            # A breakpoint beyond the float range (a cut faster by 1e-300 ms) is dropped.
            assert by_id[cut_for_bandwidth(env, mbps)][0] == pytest.approx(min(a for _, a, _ in cands),
                                                                          abs=1e-9)
        elif mbps == 0:  # likewise a breakpoint below the least positive float
            assert by_id[cut_for_bandwidth(env, mbps)][1] == pytest.approx(min(b for _, _, b in cands),
                                                                          abs=1e-9)
        else:
            assert chosen == pytest.approx(best, rel=1e-9, abs=1e-9)


def test_lookup_at_breakpoints_and_ends() -> None:
    env = lower_envelope([(0, 50.0, 800.0), (1, 20.0, 2000.0), (2, 90.0, 0.0)])
    assert [cut_for_bandwidth(env, x) for x in (0, 19.999, 20, 39.999, 40, 1e9, math.inf)] == [
        2, 2, 0, 0, 1, 1, 1]
    with pytest.raises(UserInputError, match=">= 0"):
        cut_for_bandwidth(env, -1)
    with pytest.raises(UserInputError, match=">= 0"):
        cut_for_bandwidth(env, math.nan)


def test_duplicates_dominated_and_single_candidates() -> None:
    assert lower_envelope([(7, 3.0, 0.0)]) == [EnvelopeSegment(cut=7, min_mbps=0.0, max_mbps=math.inf)]
    # 1 is dominated everywhere; 2 repeats 0 and loses the tie to the one given first.
    env = lower_envelope([(0, 10.0, 100.0), (1, 11.0, 100.0), (2, 10.0, 100.0), (3, 10.0, 200.0)])
    assert [s.cut for s in env] == [0]
    with pytest.raises(UserInputError, match="at least one"):
        lower_envelope([])
    with pytest.raises(UserInputError, match="b >= 0"):
        lower_envelope([(0, 1.0, -1.0)])


def test_json_round_trip_uses_null_for_infinity() -> None:
    env = lower_envelope([(0, 50.0, 800.0), (1, 20.0, 2000.0)])
    data = [s.to_json() for s in env]
    assert data[-1]["max_mbps"] is None and data[0]["min_mbps"] == 0.0
    assert [EnvelopeSegment.from_json(d) for d in data] == env
    with pytest.raises(BadPlanError, match="expected keys"):
        EnvelopeSegment.from_json({"cut": 0, "min_mbps": 0.0})


def test_envelope_of_a_model_matches_re_costing_at_each_bandwidth() -> None:
    """a + b/bw from one profile equals a fresh cost at bw (downlink scaled with the uplink)."""
    graph = chain_costgraph(device_ms=[2, 3, 30, 4, 1], cloud_ms=[0.2, 0.3, 3, 0.4, 0.1],
                            tensor_bytes=[600_000, 800_000, 90_000, 40_000, 2_000, 400])
    base = CostParameters(uplink_mbps=10, downlink_mbps=40, rtt_ms=25, encode_mbps=800,
                          compression_ratio=1.5, cloud_queue_ms=2)
    prefixes = scan_prefixes(graph, base)
    env = lower_envelope([envelope_candidate(k, cost, base) for k, cost in prefixes])
    assert len(env) > 1
    for mbps in BANDWIDTHS[2:-1]:
        params = CostParameters(uplink_mbps=mbps, downlink_mbps=4 * mbps, rtt_ms=25, encode_mbps=800,
                                compression_ratio=1.5, cloud_queue_ms=2)
        fresh = dict(scan_prefixes(graph, params))
        chosen = fresh[cut_for_bandwidth(env, mbps)].latency_ms
        assert chosen == pytest.approx(min(c.latency_ms for c in fresh.values()), rel=1e-9)
