"""A scripted stand-in for a timing worker (tests/test_timing.py): the real request loop of
`benchmarks/timing_proto.serve`, scripted answers. Every prune call appends "side warmup start end" to `--log`
and prints noise on stdout (which `serve` must keep off the protocol).

  python tests/timing_fake_worker.py --side peer --log L --walls 4,4,4 [--fail-at 2] [--die-at 1] [--fail-load]
"""

import argparse
import json
import os
import sys
import time


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))

from timing_proto import serve  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--side", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--walls", default="1")
    p.add_argument("--fail-at", type=int, default=-1, help="this timed call (0-based) raises")
    p.add_argument("--die-at", type=int, default=-1, help="the worker process exits during this timed call")
    p.add_argument("--fail-load", action="store_true")
    args = p.parse_args()
    walls = [float(v) for v in args.walls.split(",")]
    timed = []

    def handle(req: dict) -> dict:
        if req["op"] == "load":
            if args.fail_load:
                raise FileNotFoundError("no such model")
            return {"side": args.side}
        if req["op"] != "prune":
            return {}
        t0 = time.time()
        print("progress bar noise", json.dumps({"id": -1, "ok": True, "not": "the answer"}))
        sys.stdout.flush()
        time.sleep(0.01)
        i = len(timed)
        warm = bool(req.get("warmup"))
        with open(args.log, "a") as f:
            f.write(f"{args.side} {int(warm)} {t0:.6f} {time.time():.6f}\n")
        if warm:
            return {"wall_s": 99.0, "cpu_s": 99.0, "peak_rss_mib": 999.0, "rss_before_mib": 1.0,
                    "peak_method": "vmhwm", "achieved": 0.5, "phases": {}}  # fmt: skip
        timed.append(i)
        if i == args.die_at:
            os._exit(3)
        if i == args.fail_at:
            raise RuntimeError(f"scripted failure of {args.side} at call {i}")
        w = walls[i % len(walls)]
        return {"wall_s": w, "cpu_s": w * (1.5 if args.side == "ours" else 1.0), "peak_rss_mib": 100.0 + i,
                "rss_before_mib": 50.0, "peak_method": "vmhwm", "achieved": 0.5, "phases": {"step_s": float(i)}}  # fmt: skip

    serve(handle)


if __name__ == "__main__":
    main()
