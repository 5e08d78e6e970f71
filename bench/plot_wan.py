#!/usr/bin/env python3
"""Plots bench/wan's JSON: training throughput and DHT get latency against one-way link delay.

    python3 bench/plot_wan.py IN.json OUT.png

Left: steady samples/s of dmoe-train, synchronous (--in-flight 1) and pipelined (--in-flight N),
and the curve a synchronous trainer follows when each step costs its 0 ms step time plus two round
trips (forward, backward): batch / (t0 + 4 x delay), i.e. ~1/latency.
Right: DHT get p50 (and p90 as a band). Needs python3-matplotlib; renders without a display (Agg).
"""
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(argv):
    if len(argv) != 3:
        sys.stderr.write("usage: plot_wan.py IN.json OUT.png\n")
        return 2
    with open(argv[1]) as f:
        data = json.load(f)
    rows = data["delays"]
    delays = [r["delay_ms"] for r in rows]
    sync = [r["sync"]["samples_per_s"] for r in rows]
    pipe = [r["pipelined"]["samples_per_s"] for r in rows]
    p50 = [r["dht_get_ms"]["p50"] for r in rows]
    p90 = [r["dht_get_ms"]["p90"] for r in rows]
    n = data.get("pipelined_in_flight", "N")

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(delays, pipe, "o-", label=f"pipelined (--in-flight {n})")
    left.plot(delays, sync, "s-", label="synchronous (--in-flight 1)")
    batch = data.get("batch_size", 64)
    if sync and delays[0] == 0 and sync[0] > 0:
        t0 = batch / sync[0]
        xs = list(range(0, max(delays) + 1, max(1, max(delays) // 100)))
        left.plot(xs, [batch / (t0 + 4 * x / 1000.0) for x in xs], ":", color="gray",
                  label="batch / (t0 + 2 round trips)")
    left.set_xlabel("one-way delay per link (ms)")
    left.set_ylabel("training samples/s (steady)")
    left.set_title("dmoe-train throughput vs link delay")
    left.set_ylim(bottom=0)
    left.grid(True, alpha=0.3)
    left.legend()

    right.plot(delays, p50, "o-", label="p50")
    right.fill_between(delays, p50, p90, alpha=0.2, label="p50..p90")
    right.plot(delays, [2 * d for d in delays], ":", color="gray", label="one round trip (2 x delay)")
    right.set_xlabel("one-way delay per link (ms)")
    right.set_ylabel("DHT get latency (ms)")
    right.set_title("DHT get (expert/ffn.I.J) vs link delay")
    right.set_ylim(bottom=0)
    right.grid(True, alpha=0.3)
    right.legend()

    fig.suptitle(
        f"bench/wan: 4 dmoe-server x 4 ffn experts, batch {data.get('batch_size')}, "
        f"{data.get('seconds_per_run'):g} s per run, {data.get('cores')} cores"
    )
    fig.tight_layout()
    fig.savefig(argv[2], dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
