#!/usr/bin/env python
"""Benchmark the labelling app: N concurrent annotators x L labels over loopback; prints one JSON line.

    .venv/bin/python scripts/bench_label.py                 # 50 clients x 200 labels (the issue's scale)
    .venv/bin/python scripts/bench_label.py --clients 10 --labels 20

The server runs in its own process (`rlhfkit label serve`, SQLite WAL, synchronous=FULL by default); clients use
the same load generator as tests/test_label_load.py (10% double submits, 5% lost responses retried with the same
idempotency key). Latency = time from a label's first submit to its acknowledgement. After the run it checks that
every acknowledged label is stored exactly once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhfkit.app.loadgen import Server, add_users, check_stored, make_items, percentile, run_load  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--labels", type=int, default=200, help="labels per client")
    ap.add_argument("--overlap", type=int, default=3)
    ap.add_argument("--synchronous", default="FULL", choices=["FULL", "NORMAL"])
    ap.add_argument("--dup-rate", type=float, default=0.1)
    ap.add_argument("--lost-rate", type=float, default=0.05)
    ap.add_argument("--log", default=None, help="keep the server's log here")
    args = ap.parse_args()
    load_before = round(os.getloadavg()[0], 2)  # other work on the machine skews everything below

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        log = Path(args.log) if args.log else d / "server.log"
        db = d / "labels.sqlite"
        n_items = args.clients * args.labels // args.overlap + args.labels + 10
        items = make_items(d / "items.jsonl", n_items)
        tokens = add_users(db, [f"ann{i:03d}" for i in range(args.clients)])
        with Server(db, items=items, overlap=args.overlap, synchronous=args.synchronous, retrain_every=200,
                    log=log) as srv:
            res = asyncio.run(run_load(srv.url, tokens, args.labels, dup_rate=args.dup_rate,
                                       lost_rate=args.lost_rate))
        check = check_stored(db, res.acked)
    ok = check["integrity"] == "ok" and check["missing"] == check["wrong"] == check["multi"] == 0 and not res.errors
    print(json.dumps({
        "bench": "label", "clients": args.clients, "labels_per_client": args.labels, "overlap": args.overlap,
        "synchronous": args.synchronous, "acked": len(res.acked), "seconds": round(res.seconds, 2),
        "labels_per_s": round(len(res.acked) / res.seconds, 1),
        "p50_ms": round(1000 * percentile(res.latencies, 50), 1),
        "p99_ms": round(1000 * percentile(res.latencies, 99), 1),
        "duplicates_sent": res.duplicates_sent, "retries": res.retries, "transport_retries": res.transport_retries, "errors": len(res.errors),
        "stored_once": ok, "cpus": os.cpu_count(), "loadavg_1m_before": load_before, "python": platform.python_version(),
    }))
    if not ok:
        raise SystemExit(f"check failed: {check} {res.errors[:3]}")


if __name__ == "__main__":
    main()
