"""Fair timing of our pruning against llm-compressor's SparseGPT (issue 21, item 5): both sides warm, interleaved.

Each side is a long-lived worker process (`timing_ours.py` in our venv, `peer_worker.py` in the peer's venv built
by `peer_venv.sh`; protocol and per-call measurement in `timing_proto.py`) that loads the model and its processor
once, makes one untimed warm-up call per distinct request, then serves timed prune calls, each on a fresh copy of
the model (the copy is outside the timed span). Both read the same pre-saved batches (`timing_data.py`: the padded
variable-length tokenizer batches users pass; random pixels for the random-init ViTs). Per cell the driver runs
ours, peer, ours, peer, ... (`--pairs` times; one side at a time: the idle worker blocks on its input) and reports
the median and IQR of the paired wall-time ratios ours / peer, wall and CPU time (the worker's process time over
the call, every thread) and peak resident memory per call (VmHWM reset before each call) of each side, our time
split and the peer's phases (tracing / forwards / compression). Extra rows: the peer fed ONE joined batch
(`feed = joined`), and the same cell with one other busy process on the machine (`load = burner`: a 1-thread
numpy matmul loop started by the driver before the cell's timed calls and stopped after; its matmul rate is
reported). With `--warm-batches N` each warm-up call prunes with the first N batches only (the same code paths:
imports, tracing, first-call allocations, at a fraction of a large model's cost). Models: MiniLM, random-init
ViT-B/16 / ViT-L/16, and random-init Llama shapes (`bench_decoder_scaling.MODELS`, base `LlamaModel`, random token
windows). A side that fails is reported in the row (`status: failed`, its error) and the exit status is 1.

  bash benchmarks/peer_venv.sh          # once: /work/peer-venv
  python benchmarks/timing.py --models minilm vit-b vit-l --pairs 3 --out benchmarks/out/timing.json
  python benchmarks/timing.py --table benchmarks/out/timing.json      # the Markdown table again
"""

import argparse
import json
import os
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass

from block_steps import STEP_C, STEP_E, with_method  # benchmarks/ is on the path: this script's folder


HERE = os.path.dirname(os.path.abspath(__file__))
SIDES = ("ours", "peer")
MODELS = ["minilm", "vit-b", "vit-l", "llama-60m", "llama-160m", "llama-410m"]  # llama: bench_decoder_scaling shapes
OURS = {
    "sparsegpt": {"method": "sparsegpt"},
    "mp-wanda+rec": {"method": "mp-wanda", "reconstruct": True},
    "cast+rec": {"method": "cast", "reconstruct": True},
    "mp-wanda+alps": {"method": "mp-wanda", "refine": "alps"},  # issue 22: joint mask / weight optimisation
    "cast+alps": {"method": "cast", "refine": "alps"},
    # issue 22: ALPS capped at 6 / 20 steps (RESULTS "Issue 22 — cutting ALPS's cost")
    "mp-wanda+alps6": {"method": "mp-wanda", "refine": "alps", "refine_iters": 6},
    "mp-wanda+alps20": {"method": "mp-wanda", "refine": "alps", "refine_iters": 20},
    # issue 22: block output reconstruction on top of ALPS (RESULTS "Issue 22 — block output reconstruction")
    "mp-wanda+alps+bt": {"method": "mp-wanda", "refine": "alps", "block_epochs": 10},
    "cast+alps+bt": {"method": "cast", "refine": "alps", "block_epochs": 10},
    "mp-wanda+alps+bt+aug": {"method": "mp-wanda", "refine": "alps", "block_epochs": 10, "block_augment": 3},
    "mp-wanda+alps+bt+aug7": {"method": "mp-wanda", "refine": "alps", "block_epochs": 10, "block_augment": 7},
    # the block step chosen in "Issue 22 — the step's schedule under 7 copies": 15 copies, 5 epochs, cosine rate
    "mp-wanda+alps+bt+aug15cos": with_method("mp-wanda", STEP_C),
    # the block step chosen in "Issue 22 — more copies, fewer passes again": 31 copies, 3 epochs, cosine rate
    "mp-wanda+alps+bt+aug31e3cos": with_method("mp-wanda", STEP_E),
}


@dataclass
class Cell:
    """One row: our method `name` at `target` ("0.6" or "2:4") against the peer's SparseGPT at the same target."""

    model: str
    name: str
    target: str
    feed: str = "batches"  # what the peer is fed: the batches, or all of them "joined" into one
    load: str = "quiet"  # "burner": one other busy process on the machine during the timed calls

    def specs(self, sequential_target: str) -> dict[str, dict]:
        t = {"pattern": self.target} if ":" in self.target else {"sparsity": float(self.target)}
        return {
            "ours": {**OURS[self.name], **t},
            "peer": {**t, "sequential_target": sequential_target, "feed": self.feed},
        }


def plan(models: list[str], extras: list[str]) -> list[Cell]:
    """MiniLM: sparsegpt and mp-wanda+rec at 50/60/70 %, sparsegpt and cast+rec at 2:4, plus at 60 % the peer fed
    one joined batch and the under-load rows (and, with the "frontier" extra, mp-wanda+alps at 60 / 70 % and
    cast+alps at 2:4, the ALPS step caps, ALPS + block reconstruction at 60 % and 2:4, and with 3 or 7 augmented
    copies or the chosen 15-copy cosine step at 60 %); ViT-B/L and the Llama shapes:
    mp-wanda+rec at 50 % and cast+rec at 2:4 (with "frontier": ALPS and ALPS + block reconstruction at 60 %, CAST
    ALPS at 2:4)."""
    cells = []
    for m in models:
        if m != "minilm":
            cells += [Cell(m, "mp-wanda+rec", "0.5"), Cell(m, "cast+rec", "2:4")]
            cells += (
                [Cell(m, "mp-wanda+alps", "0.6"), Cell(m, "mp-wanda+alps+bt", "0.6"), Cell(m, "cast+alps", "2:4")]
                if "frontier" in extras
                else []
            )
            continue
        for t in ("0.5", "0.6", "0.7", "2:4"):
            cells += [Cell(m, n, t) for n in ("sparsegpt", "cast+rec" if ":" in t else "mp-wanda+rec")]
        for n in ("sparsegpt", "mp-wanda+rec"):
            cells += [Cell(m, n, "0.6", feed="joined")] if "joined" in extras else []
            cells += [Cell(m, n, "0.6", load="burner")] if "load" in extras else []
        if "frontier" in extras:
            cells += [Cell(m, "mp-wanda+alps", "0.6"), Cell(m, "mp-wanda+alps", "0.7"), Cell(m, "cast+alps", "2:4")]
            cells += [Cell(m, "mp-wanda+alps6", "0.6"), Cell(m, "mp-wanda+alps20", "0.6")]
            cells += [Cell(m, "mp-wanda+alps+bt", "0.6"), Cell(m, "cast+alps+bt", "2:4")]
            cells += [
                Cell(m, n, "0.6")
                for n in (
                    "mp-wanda+alps+bt+aug",
                    "mp-wanda+alps+bt+aug7",
                    "mp-wanda+alps+bt+aug15cos",
                    "mp-wanda+alps+bt+aug31e3cos",
                )
            ]
    return cells


class Worker:
    """A worker process spoken to in JSON lines; `call` returns its answer, or {"ok": False, "error": ...} when it
    died, timed out or could not be started (lines that are not the answer are kept in `noise`)."""

    def __init__(self, side: str, cmd: list[str], log_path: str, env: dict | None = None):
        self.side, self.n, self.noise, self.log_path = side, 0, [], log_path
        self.lines: queue.Queue = queue.Queue()
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, env=env,
                                         text=True, bufsize=1)  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _fail(self, why: str) -> dict:
        with open(self.log_path, "rb") as f:
            tail = f.read()[-1500:].decode(errors="replace")
        return {"ok": False, "error": f"{self.side} worker {why}; its stderr ends: {tail}"}

    def call(self, req: dict, timeout: float = 3600.0) -> dict:
        self.n += 1
        req = {"id": self.n, **req}
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            return self._fail(f"is gone (exit status {self.proc.poll()})")
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                self.proc.kill()
                return self._fail(f"timed out after {timeout:.0f} s on {req.get('op')}")
            if line is None:
                self.lines.put(None)  # later calls see the end too
                return self._fail(f"exited (status {self.proc.wait()}) during {req.get('op')}")
            try:
                msg = json.loads(line)
            except ValueError:
                msg = None
            if isinstance(msg, dict) and msg.get("id") == req["id"]:
                return msg
            self.noise.append(line.rstrip()[:300])

    def close(self):
        if self.proc.poll() is None:
            self.call({"op": "quit"}, timeout=30)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def median_iqr(xs: list[float]) -> tuple[float, float, float] | None:
    """(median, first quartile, third quartile) of `xs` (inclusive quartiles), None when empty."""
    if not xs:
        return None
    if len(xs) == 1:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q2, q1, q3


def paired_ratios(ours: list[dict], peer: list[dict], key: str = "wall_s") -> list[float]:
    """ours_i / peer_i of the i-th call of each side, for the pairs where both calls succeeded."""
    return [a[key] / b[key] for a, b in zip(ours, peer) if a.get("ok") and b.get("ok") and b[key] > 0]


def side_summary(calls: list[dict]) -> dict:
    ok = [c for c in calls if c.get("ok")]
    out = {"calls": len(calls), "ok": len(ok), "achieved": [c["achieved"] for c in ok]}
    for key in ("wall_s", "cpu_s", "peak_rss_mib", "rss_before_mib", "omp_regions"):
        vals = [c[key] for c in ok if key in c]
        out[key] = vals
        out[f"{key}_median"] = statistics.median(vals) if vals else None
    phases = {k for c in ok for k, v in c.get("phases", {}).items() if isinstance(v, (int, float))}
    out["phases_median"] = {
        k: round(statistics.median(c["phases"].get(k, 0.0) for c in ok), 3) for k in sorted(phases)
    }
    out["peak_method"] = sorted({c["peak_method"] for c in ok})
    return out


def summarize(cell: Cell, calls: dict[str, list[dict]], errors: dict[str, str], order: list[str]) -> dict:
    """The JSON row of a cell: paired ratios (wall and CPU) with median and IQR, each side's summary, errors."""
    row = asdict(cell) | {"order": order, "errors": errors}
    for key, label in (("wall_s", "ratio"), ("cpu_s", "cpu_ratio")):
        r = paired_ratios(calls["ours"], calls["peer"], key)
        m = median_iqr(r)
        row[f"{label}s"] = [round(x, 4) for x in r]
        row[f"{label}_median"], row[f"{label}_iqr"] = (
            (round(m[0], 4), [round(m[1], 4), round(m[2], 4)]) if m else (None, None)
        )
    row |= {side: side_summary(calls[side]) for side in SIDES}
    row["pairs"] = len(row["ratios"])
    row["status"] = "ok" if not errors and row["pairs"] else "failed"
    return row


def light_warmup(spec: dict) -> dict:
    """`--warm-light`: our warm-up runs one ALPS / ADMM iteration and one block epoch (the same code paths)."""
    out = {"block_epochs": 1} if spec.get("block_epochs") else {}
    return out | ({"refine_iters": 1} if spec.get("refine") in ("alps", "admm") else {})


def run_cell(
    cell: Cell, workers: dict, specs: dict, pairs: int, warmed: dict, timeout: float, warm_batches: int | None = None,
    warm_light: bool = False,
) -> dict:  # fmt: skip
    """Warm each side on its request once (untimed; with `warm_batches`, on that many first batches only: the same
    code paths at a fraction of the cost; with `warm_light`, our warm-up also runs one ALPS / ADMM iteration and one
    block epoch, again the same code paths), then ours / peer alternately `pairs` times."""
    errors: dict[str, str] = {}
    for side in SIDES:
        key = json.dumps(specs[side], sort_keys=True)
        if key not in warmed[side]:
            spec = specs[side] | ({"warmup_batches": warm_batches} if warm_batches else {})
            spec |= light_warmup(spec) if warm_light and side == "ours" else {}
            r = workers[side].call({"op": "prune", "spec": spec, "warmup": True}, timeout)
            if r.get("ok"):
                warmed[side].add(key)
            else:
                errors[side] = "warm-up: " + str(r.get("error"))
    calls: dict[str, list[dict]] = {s: [] for s in SIDES}
    order = []
    burner = Burner() if cell.load == "burner" else None
    try:
        for _ in range(pairs):
            for side in SIDES:
                if side in errors and not calls[side]:
                    continue  # its warm-up failed: nothing to time
                r = workers[side].call({"op": "prune", "spec": specs[side]}, timeout)
                print(f"# {cell.model} {cell.name} {cell.target} {cell.feed} {cell.load} {side}: "
                      f"{r.get('wall_s', r.get('error', '?'))}", file=sys.stderr, flush=True)  # fmt: skip
                calls[side].append(r)
                order.append(side)
                if not r.get("ok"):
                    errors.setdefault(side, str(r.get("error")))
    finally:
        burn = burner.stop() if burner else None
    row = summarize(cell, calls, errors, order)
    row["burner"] = burn
    return row


class Burner:
    """One other busy process: `timing.py --burn`, a 1-thread numpy matmul loop (256×256 float64 by an orthogonal
    matrix), until stopped; `stop()` returns its matmul count and rate."""

    def __init__(self):
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--burn"], stdout=subprocess.PIPE,
                                     text=True, env=env)  # fmt: skip
        self.proc.stdout.readline()  # "ready": the loop is spinning

    def stop(self) -> dict:
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        lines = [ln for ln in out.splitlines() if ln.startswith("{")]
        return json.loads(lines[-1]) if lines else {"error": f"burner exit status {self.proc.returncode}"}


def burn() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((256, 256)), np.linalg.qr(rng.standard_normal((256, 256)))[0]  # b orthogonal
    state = {"n": 0, "t0": time.perf_counter(), "stop": False}
    signal.signal(signal.SIGTERM, lambda *_: state.update(stop=True))
    print("ready", flush=True)
    while not state["stop"]:
        a = a @ b  # norm-preserving: no overflow however long it runs
        state["n"] += 1
    secs = time.perf_counter() - state["t0"]
    print(json.dumps({"matmuls": state["n"], "seconds": round(secs, 2), "matmuls_per_s": round(state["n"] / secs, 1)}))


def _fmt(v, spec=".2f") -> str:
    return "–" if v is None else format(v, spec)


def table(doc: dict) -> str:
    """The Markdown table of a results document (`--out`): one line per cell."""
    head = ("| model | ours | target | peer fed | load | pairs | ours wall s | peer wall s | wall ratio ours/peer, "
            "median [IQR] | CPU ratio, median | ours / peer CPU s | ours / peer peak MiB | peer phases s: tracing / "
            "forwards / compression / other | ours / peer OpenMP regions | status |")  # fmt: skip
    lines = [head, "|" + "---|" * head.count(" |")]
    for r in doc["rows"]:
        o, p = r["ours"], r["peer"]
        ph = p["phases_median"]
        phases = " / ".join(_fmt(ph.get(k)) for k in ("tracing_s", "forwards_s", "compression_s", "other_s"))
        iqr = r["ratio_iqr"] or [None, None]
        errors = "; ".join(f"{s}: {e[:120]}" for s, e in r["errors"].items())
        status = "ok" if r["status"] == "ok" else "FAILED: " + (errors or "no pairs")
        lines.append(
            f"| {r['model']} | {r['name']} | {r['target']} | {r['feed']} | {r['load']} | {r['pairs']} | "
            f"{_fmt(o['wall_s_median'])} | {_fmt(p['wall_s_median'])} | ×{_fmt(r['ratio_median'])} "
            f"[{_fmt(iqr[0])}, {_fmt(iqr[1])}] | ×{_fmt(r['cpu_ratio_median'])} | {_fmt(o['cpu_s_median'], '.1f')} / "
            f"{_fmt(p['cpu_s_median'], '.1f')} | {_fmt(o['peak_rss_mib_median'], '.0f')} / "
            f"{_fmt(p['peak_rss_mib_median'], '.0f')} | {phases} | {_fmt(o['omp_regions_median'], '.0f')} / "
            f"{_fmt(p['omp_regions_median'], '.0f')} | {status.replace('|', '/')} |"
        )
    return "\n".join(lines)


def worker_commands(peer_venv: str, preload: str | None = None) -> dict[str, tuple[list[str], dict]]:
    """side -> (command, environment) of the real workers; the peer's runs in its venv without our PYTHONPATH.
    `preload`: a shared library both workers get as LD_PRELOAD (the region counter)."""
    ours = dict(os.environ) | ({"LD_PRELOAD": preload} if preload else {})
    peer = {k: v for k, v in ours.items() if k != "PYTHONPATH"}
    return {
        "ours": ([sys.executable, os.path.join(HERE, "timing_ours.py")], ours),
        "peer": ([os.path.join(peer_venv, "bin", "python"), os.path.join(HERE, "peer_worker.py")], peer),
    }


def build_region_counter(folder: str) -> str:
    """Compile `omp_regions.c` (gcc) into `folder`; returns the library's path."""
    lib = os.path.join(folder, "libompregions.so")
    cmd = ["gcc", "-O2", "-shared", "-fPIC", "-o", lib, os.path.join(HERE, "omp_regions.c"), "-ldl"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"--count-regions needs gcc: {' '.join(cmd)} failed: {proc.stderr[-500:]}")
    return lib


def run_model(req: dict, cells: list[Cell], commands: dict, opts: dict, on_row=lambda row: None) -> list[dict]:
    """Start both workers for one model, load it in each (one after the other), run its cells, stop the workers.
    `req`: the load request of `timing_data` (model, batch_files, sequential_target, describe); `opts`: threads,
    pairs, timeout, logs (folder of the workers' stderr logs)."""
    workers, rows = {}, []
    try:
        loads = {}
        for side in SIDES:
            cmd, env = commands[side]
            log = os.path.join(opts["logs"], f"{cells[0].model}-{side}.log")
            workers[side] = Worker(side, cmd, log, env)
            loads[side] = workers[side].call({"op": "load", "model": req["model"], "batch_files": req["batch_files"],
                                              "threads": opts["threads"]}, opts["timeout"])  # fmt: skip
        warmed: dict[str, set] = {s: set() for s in SIDES}
        for cell in cells:
            load_avg = os.getloadavg()[0]
            failed = {s: "load: " + str(r.get("error")) for s, r in loads.items() if not r.get("ok")}
            specs = cell.specs(req["sequential_target"])
            if failed:
                row = summarize(cell, {s: [] for s in SIDES}, failed, []) | {"burner": None}
            else:
                row = run_cell(cell, workers, specs, opts["pairs"], warmed, opts["timeout"], opts.get("warm_batches"),
                               opts.get("warm_light", False))  # fmt: skip
            row |= {"specs": specs, "inputs": req["describe"], "loadavg_1min_before": round(load_avg, 2),
                    "workers": {s: {k: v for k, v in r.items() if k not in ("id", "traceback")} for s, r in loads.items()},
                    "noise_lines": {s: len(w.noise) for s, w in workers.items()}}  # fmt: skip
            rows.append(row)
            on_row(row)
            print(json.dumps({k: row[k] for k in ("model", "name", "target", "feed", "load", "ratio_median",
                                                  "ratio_iqr", "status")}), flush=True)  # fmt: skip
    finally:
        for w in workers.values():
            w.close()
    return rows


def prepare(model: str, folder: str, args) -> dict:
    import timing_data

    os.makedirs(folder, exist_ok=True)
    if model.startswith("llama"):
        return timing_data.llama_inputs(folder, model, args.llama_samples, args.llama_seq, args.seed)
    if model != "minilm":
        return timing_data.vit_inputs(folder, model, args.vit_samples, args.vit_batch_size, args.seed)
    sentences = timing_data.corpus_sentences(args.corpus) if args.corpus else timing_data.docstring_sentences()
    return timing_data.minilm_inputs(folder, sentences, args.samples, args.batch_size, args.seed)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["minilm", "vit-b", "vit-l"], choices=MODELS)
    p.add_argument("--extras", nargs="*", default=["joined", "load"], choices=["joined", "load", "frontier"])
    p.add_argument("--cells", nargs="+", default=list(OURS), choices=list(OURS), help="our cells to run")
    p.add_argument("--targets", nargs="+", default=None, help="only these targets (e.g. 0.6 2:4)")
    p.add_argument("--pairs", type=int, default=3, help="ours / peer pairs per cell (the protocol: >= 3)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="torch threads of both sides")
    p.add_argument("--peer-venv", default=os.environ.get("PEER_VENV", "/work/peer-venv"))
    p.add_argument(
        "--corpus", default=None, help="MiniLM sentences: .txt / .jsonl file or folder (default: numpy docstrings)"
    )
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--vit-samples", type=int, default=16)
    p.add_argument("--vit-batch-size", type=int, default=8)
    p.add_argument("--llama-samples", type=int, default=16, help="random token windows (Llama shapes)")
    p.add_argument("--llama-seq", type=int, default=512)
    p.add_argument("--warm-batches", type=int, default=None,
                   help="warm-ups on this many first batches only (default: the full call)")  # fmt: skip
    p.add_argument("--warm-light", action="store_true",
                   help="our warm-up: one ALPS / ADMM iteration and one block epoch (same code paths, cheaper)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per worker call")
    p.add_argument("--workdir", default=None, help="parent of the temp folder holding the inputs (default: $TMPDIR)")
    p.add_argument("--count-regions", action="store_true",
                   help="preload omp_regions.c (gcc) and report multi-thread OpenMP regions per call")  # fmt: skip
    p.add_argument("--out", default=None)
    p.add_argument("--table", metavar="JSON", help="print the Markdown table of an --out file and exit")
    p.add_argument("--burn", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.burn:
        return burn()
    if args.table:
        with open(args.table) as f:
            return print(table(json.load(f)))
    doc = {"meta": {"argv": sys.argv[1:], "threads": args.threads, "cpus": len(os.sched_getaffinity(0)),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S"), "python": sys.version.split()[0]}, "rows": []}  # fmt: skip

    def save(row):
        doc["rows"].append(row)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(doc, f, indent=1)

    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        logs = f"{args.out}.logs" if args.out else work  # the workers' stderr, kept next to --out
        os.makedirs(logs, exist_ok=True)
        commands = worker_commands(args.peer_venv, build_region_counter(work) if args.count_regions else None)
        for model in args.models:
            cells = [c for c in plan([model], args.extras) if c.name in args.cells]
            cells = [c for c in cells if args.targets is None or c.target in args.targets]
            if not cells:
                continue
            req = prepare(model, os.path.join(work, model), args)
            opts = {"threads": args.threads, "pairs": args.pairs, "timeout": args.timeout, "logs": logs,
                    "warm_batches": args.warm_batches, "warm_light": args.warm_light}  # fmt: skip
            run_model(req, cells, commands, opts, save)
    print(table(doc))
    sys.exit(0 if all(r["status"] == "ok" for r in doc["rows"]) else 1)


if __name__ == "__main__":
    main()
