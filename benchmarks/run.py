"""Main entry of the fastloss benchmarks.

    python -m benchmarks.run [--device cpu|cuda|auto] [--quick] [--ops pointwise] [--out DIR]

Runs every case of the chosen ops (providers eager / compile / fastloss-<backend>, modes
fwd / bwd / fwd+bwd) and the eager dispatch benchmark, prints the full table and then a
summary (per case, forward+backward: eager / torch.compile / best fastloss backend, speedups,
memory), and writes to --out (default benchmarks/out/<device-slug>-<timestamp>/, git-ignored;
use --out benchmarks/results/<device-slug>/ for results to keep):

    summary.csv, summary.png   the summary table and its speedup bars
    results.csv                every case x provider x mode (plain CSV)
    metadata.json              device, versions, commit, bandwidth, load, arguments
    dispatch.csv               the dispatch benchmark
    <op>__<case>__<dtype>__time.png / __memory.png   per case

Exits 1 if any case, provider, mode or dispatch path failed (listed at the end).
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time

import torch

from benchmarks import bench_dispatch, harness

OPS = {
    "pointwise": "benchmarks.bench_pointwise",
    "box_iou": "benchmarks.bench_box_iou",
    "dice": "benchmarks.bench_dice",
    "rowwise": "benchmarks.bench_rowwise",
    "assign": "benchmarks.bench_assign",
    "match_cost": "benchmarks.bench_match_cost",
}


def _parse(argv):
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description="fastloss benchmarks")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--quick", action="store_true", help="small sizes, few repetitions (< 1 min on a 2-core CPU)")
    p.add_argument("--ops", nargs="+", default=list(OPS), choices=list(OPS), help="op families to run (default: all)")
    p.add_argument("--out", default=None, help="output folder (default benchmarks/out/<device>-<timestamp>/)")
    p.add_argument("--providers", nargs="+", default=None, help="only these providers (e.g. eager fastloss-cpu)")
    p.add_argument("--modes", nargs="+", default=None, choices=harness.MODES, help="only these modes")
    p.add_argument("--budget", type=float, default=None, help="timed seconds per (case, provider, mode)")
    p.add_argument("--no-dispatch", action="store_true", help="skip the eager dispatch benchmark")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU; default: torch's choice)")
    p.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                   help="first wait up to S seconds until other processes leave the CPU idle (shared machines)")
    return p.parse_args(argv)


def _wait_quiet(timeout_s, window_s=3.0, threshold=0.15):
    deadline = time.perf_counter() + timeout_s
    while True:
        load = harness.ForeignLoad()
        time.sleep(window_s)
        busy = load.value()
        if busy is None or busy < threshold:
            return
        if time.perf_counter() > deadline:
            print(f"--wait-quiet: other processes still use {busy:.1f} cores; running anyway", flush=True)
            return
        print(f"--wait-quiet: other processes use {busy:.1f} cores; waiting", flush=True)


def main(argv=None):
    args = _parse(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.wait_quiet > 0 and device.type == "cpu":
        _wait_quiet(args.wait_quiet)
    t_start = time.perf_counter()

    import importlib

    import fastloss
    from fastloss import _extension

    if _extension.C is None:
        print(f"WARNING: fastloss._C is not loaded ({_extension.load_error}); the compiled backends are missing "
              "from this run.", flush=True)
    settings = harness.settings_for(device, args.quick, args.budget)
    print(f"fastloss benchmarks on {harness.device_name(device)}; backends {fastloss.available_backends(device)}", flush=True)
    bandwidth = harness.measure_bandwidth(device, args.quick)
    print(f"measured copy bandwidth: {bandwidth:.1f} GB/s", flush=True)
    meta = harness.metadata(device, bandwidth, args)

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = args.out or os.path.join(harness.REPO_ROOT, "benchmarks", "out", f"{meta['device_slug']}-{stamp}")
    os.makedirs(out_dir, exist_ok=True)

    cases = []
    for op in args.ops:
        cases += importlib.import_module(OPS[op]).cases(device, quick=args.quick)
    rows, failed = [], []  # failed: what broke outside a row (a whole case, the dispatch benchmark)
    for i, case in enumerate(cases, 1):
        name = f"{case.op} {case.label} {harness._dtype_name(case.dtype)}"
        print(f"[{i}/{len(cases)}] {name}  ({time.perf_counter() - t_start:.0f} s)", flush=True)
        try:
            rows += harness.run_case(case, settings, bandwidth, args.providers, args.modes,
                                     log=lambda s: print(s, flush=True))
        except Exception as exc:  # noqa: BLE001 -- e.g. building the inputs ran out of memory: record, go on
            print(f"    case FAILED: {exc.__class__.__name__}: {exc}", flush=True)
            failed.append(f"{name}: {exc.__class__.__name__}: {exc}")

    dispatch_rows = []
    if not args.no_dispatch:
        print(f"[dispatch] eager dispatch overhead  ({time.perf_counter() - t_start:.0f} s)", flush=True)
        try:
            dispatch_rows = bench_dispatch.run_dispatch(device, args.quick, log=lambda s: print(s, flush=True))
        except Exception as exc:  # noqa: BLE001 -- the results above are still written; the run fails at the end
            print(f"    dispatch FAILED: {exc.__class__.__name__}: {exc}", flush=True)
            failed.append(f"dispatch benchmark: {exc.__class__.__name__}: {exc}")
    failed = harness.failures(rows) + bench_dispatch.dispatch_failures(dispatch_rows) + [f.splitlines()[0] for f in failed]

    meta["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    loads = [r["foreign_load"] for r in rows if r.get("foreign_load") is not None]
    meta["foreign_load_cores_max"] = round(max(loads), 2) if loads else None
    meta["foreign_load_cores_mean"] = round(sum(loads) / len(loads), 2) if loads else None
    spare = max(0, (os.cpu_count() or 1) - torch.get_num_threads())  # cores our torch threads leave free
    noisy = device.type == "cpu" and loads and max(loads) > spare + 0.2
    meta["failed"] = failed
    summary = harness.summary_rows(rows)
    harness.write_metadata(os.path.join(out_dir, "metadata.json"), meta)
    harness.write_csv(os.path.join(out_dir, "results.csv"), rows)
    harness.write_summary_csv(os.path.join(out_dir, "summary.csv"), summary)
    if dispatch_rows:
        bench_dispatch.write_dispatch_csv(os.path.join(out_dir, "dispatch.csv"), dispatch_rows)
    plots, summary_png = [], None
    if not args.no_plots:
        plots = harness.plot_cases(rows, meta, out_dir)
        summary_png = harness.plot_summary(summary, meta, os.path.join(out_dir, "summary.png"))

    print()
    print(f"device {meta['device']} | torch {meta['torch']} | triton {meta['triton']} | commit {meta['git_commit']} | "
          f"copy bandwidth {bandwidth:.1f} GB/s")
    print(harness.format_table(rows))
    if dispatch_rows:
        print()
        print("eager dispatch overhead (us per call)")
        print(bench_dispatch.format_dispatch(dispatch_rows, warnings=False))
    print()
    print(f"summary: {harness.SUMMARY_MODE} (a training step; forward-only cases: fwd), median ms; speedup = baseline / fastloss; "
          "fastloss = its fastest backend")
    print(harness.format_summary(summary))
    print()
    print(f"wrote to {out_dir}:")
    print("  " + ", ".join(["summary.png"] * bool(summary_png) + ["summary.csv", "results.csv", "metadata.json"]
                           + ["dispatch.csv"] * bool(dispatch_rows)) + f"; {len(plots)} per-case PNG")
    if not args.no_plots and not summary_png:
        print("  (no summary.png: no case has both a baseline and a fastloss result)")
    print(f"total {time.perf_counter() - t_start:.0f} s")
    if _extension.C is None:
        print(f"WARNING: fastloss._C was not loaded ({_extension.load_error})")
    if noisy:
        print(f"WARNING: other processes kept up to {max(loads):.1f} of {os.cpu_count()} cores busy during the timings while "
              f"torch used {torch.get_num_threads()} threads (CSV column foreign_load); CPU numbers from this run are not "
              "trustworthy -- rerun on a quiet machine (--wait-quiet S) or with fewer threads (--threads 1).")
    for w in bench_dispatch.dispatch_warnings(dispatch_rows):
        print(w)
    if failed:
        print(f"FAILED: {len(failed)} benchmark(s) did not run (error column of results.csv / dispatch.csv):")
        for f in failed:
            print(f"  {f}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
