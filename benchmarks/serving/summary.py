"""The headline ratios of the throughput section (benchmarks/README.md lists each key)."""

from __future__ import annotations

from typing import Any

__all__ = ["summarise_throughput"]


def _find(rows: list[dict], **want: Any) -> dict | None:
    for r in rows:
        if all(r.get(k) == v for k, v in want.items()):
            return r
    return None


def summarise_throughput(section: dict, *, level: int) -> dict:
    """The headline ratios, each at `level` clients with tritonclient driving both servers:
    server_vs_ort and server_vs_triton on the small CNN with batching on (Triton's own
    setting), batching_gain_vs_ort_gain on the wide MLP (where batching pays on one core);
    the `_by_model` dicts hold every model and mode."""
    rows = section["rows"]
    models = tuple(dict.fromkeys(r["model"] for r in rows))
    out: dict[str, Any] = {}
    ratios = {}
    for name in models:
        for batching in (False, True):
            r = _find(rows, server="edgecut", client="triton", model=name, batching=batching,
                      clients=level)
            if r and r["vs_ort"] is not None:
                ratios[f"{name}/{'on' if batching else 'off'}"] = r["vs_ort"]
    out["server_vs_ort_by_model"] = ratios
    out["server_vs_ort"] = ratios.get("small_cnn/on", next(iter(ratios.values()), None))
    gains = {}
    for name in models:
        off = _find(rows, server="edgecut", client="triton", model=name, batching=False,
                    clients=level)
        on = _find(rows, server="edgecut", client="triton", model=name, batching=True,
                   clients=level)
        if off and on and on["ort_limit_rps"] and off["throughput_rps"]:
            server_gain = on["throughput_rps"] / off["throughput_rps"]
            ort_gain = on["ort_limit_rps"] / on["ort_batch1_rps"]
            gains[name] = {"server_gain": server_gain, "ort_gain": ort_gain,
                           "ratio": server_gain / ort_gain, "mean_batch": on["mean_batch"]}
    out["batching_gain_by_model"] = gains
    headline = gains.get("wide_mlp") or next(iter(gains.values()), {})
    out["batching_gain_vs_ort_gain"] = headline.get("ratio")
    vs_triton, same_ort = {}, {}
    for name in models:
        for batching in (False, True):
            e = _find(rows, server="edgecut", client="triton", model=name, batching=batching,
                      clients=level)
            t = _find(rows, server="triton", client="triton", model=name, batching=batching,
                      clients=level)
            if e and t and t["throughput_rps"]:
                vs_triton[f"{name}/{'on' if batching else 'off'}"] = (
                    e["throughput_rps"] / t["throughput_rps"])
            if e and t and e["vs_ort"] and t["vs_ort"]:
                same_ort[f"{name}/{'on' if batching else 'off'}"] = e["vs_ort"] / t["vs_ort"]
    out["server_vs_triton_by_model"] = vs_triton
    # Each server's rows/s over onnxruntime alone measured right after it, compared: the two
    # servers ran minutes apart, and a shared VM's speed drifts by more than their gap.
    out["server_vs_triton_at_same_ort_by_model"] = same_ort
    out["server_vs_triton_at_same_ort"] = same_ort.get("small_cnn/on")
    unshared = {}
    for name in models:
        for batching in (False, True):
            r = _find(rows, server="edgecut-unshared", client="triton", model=name,
                      batching=batching, clients=level)
            e = _find(rows, server="edgecut", client="triton", model=name, batching=batching,
                      clients=level)
            if r and e and r["vs_ort"] is not None:
                unshared[f"{name}/{'on' if batching else 'off'}"] = {
                    "vs_ort": r["vs_ort"], "rows_per_s": r["throughput_rps"],
                    "vs_shared": r["throughput_rps"] / e["throughput_rps"]}
    out["share_weights_off"] = unshared
    out["server_vs_triton"] = vs_triton.get("small_cnn/on",
                                            next(iter(vs_triton.values()), None))
    triton_row = _find(rows, server="triton", model="small_cnn", batching=True, clients=level)
    out["triton_vs_ort"] = triton_row["vs_ort"] if triton_row else None
    # The most a server on each transport could reach: the bare handler's time per request
    # (same bytes, same TLS, no model) plus onnxruntime's time per row at the mix edgecut formed.
    for floor, key in (("bare-grpcio", "python_grpc_ceiling_vs_ort"),
                       ("bare-native", "native_ceiling_vs_ort")):
        ceilings = {}
        for name in models:
            bare = _find(rows, server=floor, model=name, clients=level)
            for batching in (False, True):
                e = _find(rows, server="edgecut", client="triton", model=name,
                          batching=batching, clients=level)
                if bare and bare["throughput_rps"] and e and e["ort_limit_rps"]:
                    ceiling = 1.0 / (1.0 / bare["throughput_rps"] + 1.0 / e["ort_limit_rps"])
                    ceilings[f"{name}/{'on' if batching else 'off'}"] = (
                        ceiling / e["ort_limit_rps"])
        out[f"{key}_by_model"] = ceilings
        out[key] = ceilings.get("small_cnn/on")
    transport = {}
    for name in models:
        for batching in (False, True):
            e = _find(rows, server="edgecut", client="triton", model=name, batching=batching,
                      clients=level)
            g = _find(rows, server="edgecut-grpcio", client="triton", model=name,
                      batching=batching, clients=level)
            if e and g and g["throughput_rps"]:
                transport[f"{name}/{'on' if batching else 'off'}"] = (
                    e["throughput_rps"] / g["throughput_rps"])
    out["native_vs_grpcio_by_model"] = transport
    out["edgecut_frontend"] = section.get("edgecut_frontend")
    return out
