"""The fast path: cost every prefix of the topological order in one incremental pass.

Prefix k puts the first k nodes of `graph.order` on the device (k = 0: all cloud; k = N: all
device). These are the cuts `list_cuts` offers, so the scan is exact over them, and only over
them: a DAG has cuts that are no prefix of this order (the min-cut finds those).

Moving one node to the device changes the sums in O(its degree), so all N + 1 prefixes cost
O(N + E) in all. Device memory uses that a tensor's live range while the head runs does not
depend on where the head stops: a tensor is live at step s of prefix k >= s exactly when it
is live at step s of the all-device run (a reader after step k is a cloud reader, which also
keeps it live to the end of the head). So memory(k) = weights(k) + max(live(s) for s <= k).

Example:
    >>> from edgecut.partitioner.cost import CostParameters
    >>> from edgecut.partitioner.costgraph import chain_costgraph
    >>> g = chain_costgraph(device_ms=[1, 9], cloud_ms=[0.1, 0.9], tensor_bytes=[8000, 80, 8])
    >>> costs = scan_prefixes(g, CostParameters(uplink_mbps=1, downlink_mbps=1))
    >>> [round(c.latency_ms, 3) for _, c in costs]
    [65.064, 2.604, 10.0]
"""

from __future__ import annotations

from edgecut.partitioner.cost import CostParameters, CutCost, cost_from_totals
from edgecut.partitioner.costgraph import CostGraph

__all__ = ["live_activation_bytes", "scan_prefixes"]


def live_activation_bytes(graph: CostGraph) -> list[int]:
    """Bytes live at each step 0..N of the all-device run (step 0: only the graph inputs)."""
    n = len(graph.order)
    diff = [0] * (n + 2)
    for t in graph.tensors:
        start = 0 if t.producer is None else graph.position[t.producer] + 1
        end = n if t.is_graph_output else max((graph.position[c] + 1 for c in t.consumers), default=start)
        diff[start] += t.bytes
        diff[end + 1] -= t.bytes
    live: list[int] = []
    running = 0
    for s in range(n + 1):
        running += diff[s]
        live.append(running)
    return live


def scan_prefixes(graph: CostGraph, params: CostParameters) -> list[tuple[int, CutCost]]:
    """(k, cost) for every feasible prefix k = 0..N, in order of k.

    A prefix is infeasible, and left out, when a pinned input would cross (some cloud node
    reads it); the all-device prefix is always feasible.
    """
    n = len(graph.order)
    nodes, tensors = graph.nodes, graph.tensors
    # Suffix sums for the cloud side, so no float is ever subtracted back out.
    cloud_suffix = [0.0] * (n + 1)
    for k in range(n - 1, -1, -1):
        cloud_suffix[k] = cloud_suffix[k + 1] + nodes[graph.order[k]].cloud_ms
    live = live_activation_bytes(graph)

    remaining = [len(t.consumers) for t in tensors]  # readers still in the cloud
    up = sum(t.bytes for t in tensors if t.producer is None and t.consumers)
    pinned_crossing = sum(1 for t in tensors if t.pinned_on_device and t.consumers)
    down = sum(t.bytes for t in tensors if t.is_graph_output and t.producer is not None)
    device_ms = 0.0
    weights = 0
    peak = live[0]

    results: list[tuple[int, CutCost]] = []
    for k in range(n + 1):
        if k:
            v = graph.order[k - 1]
            device_ms += nodes[v].device_ms
            weights += nodes[v].weight_bytes
            peak = max(peak, live[k])
            for ti in graph.inputs_of[v]:
                remaining[ti] -= 1
                if remaining[ti] == 0:
                    up -= tensors[ti].bytes
                    pinned_crossing -= tensors[ti].pinned_on_device
            for ti in graph.outputs_of[v]:
                if remaining[ti]:
                    up += tensors[ti].bytes
                if tensors[ti].is_graph_output:
                    down -= tensors[ti].bytes
        if pinned_crossing:
            continue
        results.append(
            (
                k,
                cost_from_totals(
                    params,
                    device_ms=device_ms,
                    cloud_ms=cloud_suffix[k],
                    up_bytes=up,
                    down_bytes=down,
                    device_memory_bytes=weights + peak,
                    uses_cloud=k < n,
                ),
            )
        )
    return results
