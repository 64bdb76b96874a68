"""Main entry of the fastloss benchmarks.

    python -m benchmarks.run [--device cpu|cuda|auto] [--quick] [--ops sigmoid_focal_loss] [--out DIR]

Runs every case of the chosen ops (providers eager / compile / fastloss-<backend>, modes
fwd / bwd / fwd+bwd) and the eager dispatch benchmark, prints the table, and writes
results.csv (with '#' metadata lines), metadata.json, dispatch.csv and PNG plots to --out
(default benchmarks/out/<device>-<timestamp>/, git-ignored; use
--out benchmarks/results/<device-slug>/ for results to keep).
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
    "sigmoid_focal_loss": "benchmarks.bench_sigmoid_focal_loss",
    "box_iou": "benchmarks.bench_box_iou",
    "dice": "benchmarks.bench_dice",
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
    rows = []
    for i, case in enumerate(cases, 1):
        print(f"[{i}/{len(cases)}] {case.op} {case.label} {harness._dtype_name(case.dtype)}  ({time.perf_counter() - t_start:.0f} s)",
              flush=True)
        rows += harness.run_case(case, settings, bandwidth, args.providers, args.modes,
                                 log=lambda s: print(s, flush=True))

    dispatch_rows = []
    if not args.no_dispatch:
        print(f"[dispatch] eager dispatch overhead  ({time.perf_counter() - t_start:.0f} s)", flush=True)
        dispatch_rows = bench_dispatch.run_dispatch(device, args.quick, log=lambda s: print(s, flush=True))

    meta["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    loads = [r["foreign_load"] for r in rows if r.get("foreign_load") is not None]
    meta["foreign_load_cores_max"] = round(max(loads), 2) if loads else None
    meta["foreign_load_cores_mean"] = round(sum(loads) / len(loads), 2) if loads else None
    spare = max(0, (os.cpu_count() or 1) - torch.get_num_threads())  # cores our torch threads leave free
    noisy = device.type == "cpu" and loads and max(loads) > spare + 0.2
    harness.write_metadata(os.path.join(out_dir, "metadata.json"), meta)
    harness.write_csv(os.path.join(out_dir, "results.csv"), rows, meta)
    if dispatch_rows:
        bench_dispatch.write_dispatch_csv(os.path.join(out_dir, "dispatch.csv"), dispatch_rows, meta)
    plots = [] if args.no_plots else harness.plot_cases(rows, meta, out_dir)

    print()
    print(f"device {meta['device']} | torch {meta['torch']} | triton {meta['triton']} | commit {meta['git_commit']} | "
          f"copy bandwidth {bandwidth:.1f} GB/s")
    print(harness.format_table(rows))
    if dispatch_rows:
        print()
        print("eager dispatch overhead (us per call)")
        print(bench_dispatch.format_dispatch(dispatch_rows))
    print()
    print(f"wrote {out_dir}/results.csv, metadata.json" + (", dispatch.csv" if dispatch_rows else "") + f", {len(plots)} PNG")
    print(f"total {time.perf_counter() - t_start:.0f} s")
    if _extension.C is None:
        print(f"WARNING: fastloss._C was not loaded ({_extension.load_error})")
    if noisy:
        print(f"WARNING: other processes kept up to {max(loads):.1f} of {os.cpu_count()} cores busy during the timings while "
              f"torch used {torch.get_num_threads()} threads (CSV column foreign_load); CPU numbers from this run are not "
              "trustworthy -- rerun on a quiet machine (--wait-quiet S) or with fewer threads (--threads 1).")
    failed = [r for r in rows if r.get("error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
