"""Eager dispatch overhead of fastloss.sigmoid_focal_loss (a loss of the pointwise engine) at
small sizes.

Is the eager fast path (the public function calls ``PointwiseFunction.apply``, a
``torch.autograd.Function``) worth it against calling the ``torch.library`` custom op
``torch.ops.fastloss.sigmoid_focal_loss`` (dispatcher + registered autograd)?  Paths, all on
the device's default fastloss backend, int64 class labels, ``reduction="mean"``:

* ``public``     -- ``fastloss.sigmoid_focal_loss(x, labels)``: argument checks + autograd.Function;
* ``function``   -- ``PointwiseFunction.apply(...)`` on the prepared arguments (captured
  from a call of the public function, so this follows the op's signature);
* ``custom_op``  -- ``torch.ops.fastloss.sigmoid_focal_loss(...)`` on the same arguments;
* ``kernels``    -- the op module's ``_forward_impl`` / ``_backward_impl`` (the backend's
  implementation) called directly, no autograd, no dispatcher: the floor;
* ``reference``  -- the pure-PyTorch eager reference (autograd).

Modes ``fwd`` (input requires grad, graph built) and ``fwd+bwd`` (``loss.backward()``).
Each sample times a batch of calls (sized to ~2 ms, synchronised on CUDA) and divides;
the median (p20, p80) over samples is reported in microseconds per call.  ``overhead_us`` =
a fastloss path's (public, function, custom_op) median minus the ``kernels`` median (the
floor) at the same size and mode: what the path adds to the backend's work.  It cannot
really be negative; a negative measurement is timing noise (other processes, frequency
changes) and is printed as "~0 (within noise)", with a warning that names the load other
processes put on the machine meanwhile.

A path that fails (e.g. the ``kernels`` path no longer matching the ops module's
signatures) gives a row with ``error`` set; the run then exits non-zero.

    python -m benchmarks.bench_dispatch [--device cpu|cuda] [--quick]
"""
from __future__ import annotations

import argparse
import inspect
import os
import statistics
import sys
import time

import torch

import fastloss
from benchmarks.harness import ForeignLoad, _quantile
from fastloss import _backend
from fastloss.ops import pointwise as ops_pw
from fastloss.reference.pointwise import sigmoid_focal_loss as reference

SIZES = ((1, 1), (16, 64), (1024, 64))  # 1, 1k, 64k logits
MODES = ("fwd", "fwd+bwd")
OVERHEAD_PATHS = ("public", "function", "custom_op")  # run the kernels plus something: overhead_us >= 0 in truth


def _capture_args(x, labels):
    """The prepared arguments that the public function passes to PointwiseFunction.apply
    (captured, so this benchmark follows the op's signature as it evolves)."""
    real = ops_pw.PointwiseFunction
    captured = []

    class _Recorder:
        @staticmethod
        def apply(*args):
            captured.append(args)
            return real.apply(*args)

    ops_pw.PointwiseFunction = _Recorder
    try:
        fastloss.sigmoid_focal_loss(x, labels, reduction="mean")
    finally:
        ops_pw.PointwiseFunction = real
    if not captured:
        raise RuntimeError("fastloss.sigmoid_focal_loss did not call PointwiseFunction.apply in eager mode")
    return captured[0]


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _call_by_name(fn, values):
    """Calls ``fn`` with each of its parameters taken by name from ``values``; a parameter that
    ``values`` does not provide keeps its default (e.g. ``_backward_impl``'s ``in_place=False``).
    A parameter without a default that ``values`` lacks is an error naming it (the op's
    signature changed and this benchmark no longer matches it)."""
    kwargs = {}
    for name, p in inspect.signature(fn).parameters.items():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if name in values:
            kwargs[name] = values[name]
        elif p.default is p.empty:
            raise TypeError(f"{fn.__module__}.{fn.__qualname__}: no value for parameter {name!r} "
                            f"(known: {', '.join(values)})")
    return fn(**kwargs)


def _function_arg_names():
    return list(inspect.signature(ops_pw.PointwiseFunction.forward).parameters)[1:]  # drop ctx


def _op_args(args):
    """The custom op's arguments from the autograd.Function's: the same, less the loss code
    (each loss's op binds its own)."""
    named = dict(zip(_function_arg_names(), args))
    return tuple(named[p] for p in ops_pw.OP_ARGS)


def _kernels_path(args):
    """The backend's forward/backward implementations called directly (no autograd, no
    dispatcher): the floor.  Arguments are matched by name to the ops module's
    ``_forward_impl`` / ``_backward_impl`` (:func:`_call_by_name`): the autograd.Function's
    forward arguments, plus ``grad`` (a 0-d one) and ``cache`` (the forward's second output)
    for the backward; parameters with defaults that these do not provide keep the defaults."""
    names = _function_arg_names()
    named = dict(zip(names, args))
    named["input"] = named["input"].detach()
    fwd_impl, bwd_impl = ops_pw._forward_impl, ops_pw._backward_impl
    one = torch.ones((), dtype=torch.float32, device=named["input"].device)

    def make(mode):
        def run():
            out = _call_by_name(fwd_impl, named)
            if mode == "fwd+bwd":
                _call_by_name(bwd_impl, {**named, "grad": one, "cache": out[1]})
            return out
        return run

    make("fwd+bwd")()  # fail here, not inside the timing, if the signatures no longer match
    return make


def _paths(x, labels):
    """``{name: make(mode) -> run}`` for every path that could be built, and
    ``{name: error text}`` for those that could not."""
    args = _capture_args(x, labels)

    def autograd_path(fn):
        def make(mode):
            if mode == "fwd":
                return fn

            def run():
                _first(fn()).backward()
                x.grad = None
            return run
        return make

    paths = {
        "public": autograd_path(lambda: fastloss.sigmoid_focal_loss(x, labels, reduction="mean")),
        "function": autograd_path(lambda: ops_pw.PointwiseFunction.apply(*args)),
        "custom_op": autograd_path(lambda: torch.ops.fastloss.sigmoid_focal_loss(*_op_args(args))),
    }
    errors = {}
    try:
        paths["kernels"] = _kernels_path(args)
    except Exception as exc:  # noqa: BLE001 -- recorded as a failed path; the others still run
        errors["kernels"] = f"{exc.__class__.__name__}: {exc}"
    paths["reference"] = autograd_path(lambda: reference(x, labels, reduction="mean"))
    return paths, errors


def _time_us(run, device, budget_s, samples, warmup=20):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        run()
    sync()
    t0 = time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < 0.002 or n < 2:
        run()
        n += 1
    sync()
    per_call = (time.perf_counter() - t0) / n
    inner = max(1, int(budget_s / samples / per_call))
    times = []
    for _ in range(samples):
        sync()
        t0 = time.perf_counter()
        for _ in range(inner):
            run()
        sync()
        times.append((time.perf_counter() - t0) / inner * 1e6)
    return statistics.median(times), _quantile(times, 0.2), _quantile(times, 0.8), inner * samples


def run_dispatch(device, quick=False, log=print):
    """One row per (size, mode, path): median / p20 / p80 microseconds per call, the number of
    timed calls, the cores other processes kept busy meanwhile (``foreign_load``), the ratio
    to the ``function`` path and ``overhead_us`` (median minus the ``kernels`` median).  A path
    that could not be built or run gives a row with ``error`` set (and no times)."""
    device = torch.device(device)
    backend = _backend.resolve("sigmoid_focal_loss", device)
    budget, samples, warmup = (0.03, 5, 5) if quick else (0.3, 21, 20)
    rows = []
    for rows_, C in SIZES:
        base = {"numel": rows_ * C, "shape": f"({rows_}, {C})", "backend": backend}
        x = torch.randn(rows_, C, device=device, requires_grad=True)
        labels = torch.randint(0, C + 1, (rows_,), device=device)
        try:
            paths, errors = _paths(x, labels)
        except Exception as exc:  # noqa: BLE001 -- e.g. the public function changed: record, go on
            paths, errors = {}, {"(all paths)": f"{exc.__class__.__name__}: {exc}"}
        for mode in MODES:
            done = []
            for name in [*paths, *errors]:
                row = dict(base, mode=mode, path=name, median_us=None, p20_us=None, p80_us=None, calls=0,
                           foreign_load=None, error=errors.get(name, ""))
                if name in paths:
                    load = ForeignLoad()
                    try:
                        median, p20, p80, calls = _time_us(paths[name](mode), device, budget, samples, warmup)
                        row.update(median_us=median, p20_us=p20, p80_us=p80, calls=calls, foreign_load=load.value())
                        done.append(row)
                    except Exception as exc:  # noqa: BLE001 -- report, go on
                        row["error"] = f"{exc.__class__.__name__}: {exc}"
                if row["error"]:
                    log(f"    dispatch {rows_ * C:>6d} logits {mode:8s} {name} FAILED: {row['error'].splitlines()[0]}")
                rows.append(row)
            if done:
                log(f"    dispatch {rows_ * C:>6d} logits {mode:8s} "
                    + "  ".join(f"{r['path']} {r['median_us']:.1f}" for r in done) + " us")
    _add_relative(rows)
    return rows


def _same(rows, r):
    """The successful rows of ``r``'s size and mode, by path."""
    return {q["path"]: q for q in rows if q["numel"] == r["numel"] and q["mode"] == r["mode"] and not q.get("error")}


def _add_relative(rows):
    for r in rows:
        r["vs_function"] = r["overhead_us"] = None
        if r.get("error"):
            continue
        same = _same(rows, r)
        if "function" in same:
            r["vs_function"] = r["median_us"] / same["function"]["median_us"]
        if "kernels" in same and r["path"] in OVERHEAD_PATHS:
            r["overhead_us"] = r["median_us"] - same["kernels"]["median_us"]


NOISE = "~0 (within noise)"


def _overhead(d):
    """An overhead (a difference that cannot really be negative) for printing."""
    if d is None:
        return "-"
    return NOISE if d < 0 else f"+{d:.1f}"


def _overlap(a, b):
    return a["p20_us"] <= b["p80_us"] and b["p20_us"] <= a["p80_us"]


def _negative_overheads(rows):
    """Descriptions of the overheads that measured negative (timing noise)."""
    out = [f"{r['numel']} logits {r['mode']} {r['path']} - kernels" for r in rows
           if r.get("overhead_us") is not None and r["overhead_us"] < 0]
    for r in rows:
        same = _same(rows, r)
        if r["path"] == "public" and "function" in same and not r.get("error") \
                and r["median_us"] < same["function"]["median_us"]:
            out.append(f"{r['numel']} logits {r['mode']} public - function")
    return out


def dispatch_warnings(rows, busy_threshold=0.5):
    """Warnings about the trustworthiness of these timings: negative overheads (printed as
    "~0 (within noise)") and the load other processes put on the CPU meanwhile."""
    loads = [r["foreign_load"] for r in rows if r.get("foreign_load") is not None]
    busy = max(loads) if loads else None
    load_text = ("other processes' load is unknown (no /proc)" if busy is None
                 else f"other processes kept up to {busy:.1f} of {os.cpu_count()} cores busy meanwhile (foreign load)")
    out = []
    negative = _negative_overheads(rows)
    if negative:
        listed = "; ".join(negative[:4]) + ("; ..." if len(negative) > 4 else "")
        out.append(f"WARNING: {len(negative)} dispatch overhead(s) measured negative ({listed}), printed as "
                   f"'{NOISE}': these timings are noisy; {load_text}. Rerun on a quiet machine.")
    elif busy is not None and busy > busy_threshold:
        out.append(f"WARNING: {load_text}: the dispatch timings are not trustworthy. Rerun on a quiet machine.")
    return out


def dispatch_failures(rows):
    """One line per failed path: ``dispatch <shape> <mode> <path>: <error>``."""
    return [f"dispatch {r['shape']} {r['mode']} {r['path']}: {r['error'].splitlines()[0]}" for r in rows if r.get("error")]


DISPATCH_COLUMNS = ("shape", "numel", "mode", "path", "backend", "median_us", "p20_us", "p80_us", "vs_function", "overhead_us",
                    "calls", "foreign_load", "error")


def format_dispatch(rows, warnings=True):
    """The rows as a table (``over_kernels_us`` = overhead_us; negative values shown as noise),
    the custom-op / public-wrapper / autograd.Function differences per size and mode, and
    (``warnings``) the warnings of :func:`dispatch_warnings`."""
    header = ["shape", "numel", "mode", "path", "backend", "median_us", "p20_us", "p80_us", "vs_function", "over_kernels_us",
              "calls"]
    body = []
    for r in rows:
        if r.get("error"):
            body.append([str(r["shape"]), str(r["numel"]), r["mode"], r["path"], r["backend"], "FAILED", "", "", "", "", ""])
            continue
        body.append([str(r["shape"]), str(r["numel"]), r["mode"], r["path"], r["backend"], f"{r['median_us']:.1f}",
                     f"{r['p20_us']:.1f}", f"{r['p80_us']:.1f}",
                     "-" if r["vs_function"] is None else f"{r['vs_function']:.2f}x", _overhead(r["overhead_us"]), str(r["calls"])])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)] if body else [len(h) for h in header]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    prev = None
    for r, b in zip(rows, body):
        if prev is not None and (r["numel"], r["mode"]) != prev:
            lines.append("")
        prev = (r["numel"], r["mode"])
        line = "  ".join(c.rjust(w) if i >= 5 else c.ljust(w) for i, (c, w) in enumerate(zip(b, widths)))
        lines.append(line.rstrip() + (f"  {r['error'].splitlines()[0]}" if r.get("error") else ""))
    lines.append("")
    for numel in dict.fromkeys(r["numel"] for r in rows):
        for mode in MODES:
            s = {r["path"]: r for r in rows if r["numel"] == numel and r["mode"] == mode and not r.get("error")}
            if not {"function", "custom_op", "public"} <= set(s):
                continue
            d = s["custom_op"]["median_us"] - s["function"]["median_us"]
            text = (f"{numel:>6d} logits {mode:8s}: custom_op - function = {d:+.1f} us "
                    f"({d / s['custom_op']['median_us'] * 100:+.0f}% of the custom-op call"
                    + ("; within noise" if _overlap(s["custom_op"], s["function"]) else "") + "); "
                    f"public wrapper adds {_overhead(s['public']['median_us'] - s['function']['median_us'])} us")
            if "kernels" in s:
                text += (f"; kernels alone {s['kernels']['median_us']:.1f} us, autograd.Function adds "
                         f"{_overhead(s['function']['overhead_us'])} us")
            lines.append(text)
    for w in dispatch_warnings(rows) if warnings else []:
        lines += ["", w]
    return "\n".join(lines)


def write_dispatch_csv(path, rows):
    """``dispatch.csv``: a header line and one line per row (plain CSV; the metadata is in
    ``metadata.json``).  ``overhead_us`` is the measured difference, negative = noise."""
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(DISPATCH_COLUMNS), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: (round(r[c], 4) if isinstance(r.get(c), float) else ("" if r.get(c) is None else r[c]))
                        for c in DISPATCH_COLUMNS})


def main(argv=None):
    """Runs the dispatch benchmark and prints its table; returns 1 if any path failed."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_dispatch", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    device = "cuda" if a.device == "auto" and torch.cuda.is_available() else ("cpu" if a.device == "auto" else a.device)
    rows = run_dispatch(device, a.quick)
    print(format_dispatch(rows))
    failed = dispatch_failures(rows)
    if failed:
        print(f"\nFAILED: {len(failed)} dispatch path(s):")
        for f in failed:
            print(f"  {f}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
