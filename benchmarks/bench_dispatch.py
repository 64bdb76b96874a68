"""Eager dispatch overhead of fastloss.sigmoid_focal_loss at small sizes.

Is the eager fast path (the public function calls ``SigmoidFocalLossFunction.apply``, a
``torch.autograd.Function``) worth it against calling the ``torch.library`` custom op
``torch.ops.fastloss.sigmoid_focal_loss`` (dispatcher + registered autograd)?  Paths, all on
the device's default fastloss backend, int64 class labels, ``reduction="mean"``:

* ``public``     -- ``fastloss.sigmoid_focal_loss(x, labels)``: argument checks + autograd.Function;
* ``function``   -- ``SigmoidFocalLossFunction.apply(...)`` on prepared arguments;
* ``custom_op``  -- ``torch.ops.fastloss.sigmoid_focal_loss(...)`` on the same prepared arguments;
* ``kernels``    -- the backend's forward (and backward) callables directly, no autograd: the floor;
* ``reference``  -- the pure-PyTorch eager reference (autograd).

Modes ``fwd`` (input requires grad, graph built) and ``fwd+bwd`` (``loss.backward()``).
Each sample times a batch of calls (sized to ~2 ms, synchronised on CUDA) and divides;
the median (p20, p80) over samples is reported in microseconds per call.

    python -m benchmarks.bench_dispatch [--device cpu|cuda] [--quick]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import fastloss
from benchmarks.harness import _quantile
from fastloss import _backend
from fastloss.ops import sigmoid_focal_loss as ops_focal
from fastloss.reference.sigmoid_focal_loss import sigmoid_focal_loss as reference

SIZES = ((1, 1), (16, 64), (1024, 64))  # 1, 1k, 64k logits
MODES = ("fwd", "fwd+bwd")
MEAN = 2  # reduction code of the kernel calling convention


def _paths(x, labels):
    args = (x, labels, None, 0.25, 2.0, MEAN, None)
    forward, backward = _backend.implementation("sigmoid_focal_loss", x.device)
    one = torch.ones((), dtype=torch.float32, device=x.device)

    def kernels(mode):
        def run():
            loss = forward(x.detach(), labels, None, 0.25, 2.0, MEAN)
            if mode == "fwd+bwd":
                backward(one, x.detach(), labels, None, 0.25, 2.0, MEAN)
            return loss
        return run

    def autograd_path(fn):
        def make(mode):
            if mode == "fwd":
                return fn

            def run():
                loss = fn()
                loss.backward()
                x.grad = None
            return run
        return make

    return {
        "public": autograd_path(lambda: fastloss.sigmoid_focal_loss(x, labels, reduction="mean")),
        "function": autograd_path(lambda: ops_focal.SigmoidFocalLossFunction.apply(*args)),
        "custom_op": autograd_path(lambda: torch.ops.fastloss.sigmoid_focal_loss(*args)),
        "kernels": kernels,
        "reference": autograd_path(lambda: reference(x, labels, reduction="mean")),
    }


def _time_us(run, device, budget_s, samples):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(20):
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
    device = torch.device(device)
    backend = _backend.resolve("sigmoid_focal_loss", device)
    budget, samples = (0.05, 7) if quick else (0.3, 21)
    rows = []
    for rows_, C in SIZES:
        x = torch.randn(rows_, C, device=device, requires_grad=True)
        labels = torch.randint(0, C + 1, (rows_,), device=device)
        paths = _paths(x, labels)
        for mode in MODES:
            for name, make in paths.items():
                median, p20, p80, calls = _time_us(make(mode), device, budget, samples)
                rows.append({"numel": rows_ * C, "shape": f"({rows_}, {C})", "mode": mode, "path": name, "backend": backend,
                             "median_us": median, "p20_us": p20, "p80_us": p80, "calls": calls})
            ref = {r["path"]: r for r in rows if r["numel"] == rows_ * C and r["mode"] == mode}
            log(f"    dispatch {rows_ * C:>6d} logits {mode:8s} " + "  ".join(f"{k} {v['median_us']:.1f}" for k, v in ref.items()) + " us")
    for r in rows:
        same = {q["path"]: q for q in rows if q["numel"] == r["numel"] and q["mode"] == r["mode"]}
        r["vs_function"] = r["median_us"] / same["function"]["median_us"]
    return rows


DISPATCH_COLUMNS = ("shape", "numel", "mode", "path", "backend", "median_us", "p20_us", "p80_us", "vs_function", "calls")


def format_dispatch(rows):
    header = list(DISPATCH_COLUMNS)
    body = []
    for r in rows:
        body.append([str(r["shape"]), str(r["numel"]), r["mode"], r["path"], r["backend"], f"{r['median_us']:.1f}",
                     f"{r['p20_us']:.1f}", f"{r['p80_us']:.1f}", f"{r['vs_function']:.2f}x", str(r["calls"])])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    prev = None
    for r, b in zip(rows, body):
        if prev is not None and (r["numel"], r["mode"]) != prev:
            lines.append("")
        prev = (r["numel"], r["mode"])
        lines.append("  ".join(c.rjust(w) if i >= 5 else c.ljust(w) for i, (c, w) in enumerate(zip(b, widths))))
    lines.append("")
    for numel in dict.fromkeys(r["numel"] for r in rows):
        for mode in MODES:
            s = {r["path"]: r["median_us"] for r in rows if r["numel"] == numel and r["mode"] == mode}
            if "function" in s and "custom_op" in s:
                d = s["custom_op"] - s["function"]
                lines.append(f"{numel:>6d} logits {mode:8s}: custom_op - function = {d:+.1f} us "
                             f"({d / s['custom_op'] * 100:+.0f}% of the custom-op call); "
                             f"public wrapper adds {s['public'] - s['function']:+.1f} us; kernels alone {s['kernels']:.1f} us")
    return "\n".join(lines)


def write_dispatch_csv(path, rows, meta):
    import csv
    import json

    with open(path, "w", newline="") as f:
        for k, v in meta.items():
            f.write(f"# {k}: {json.dumps(v) if not isinstance(v, str) else v}\n")
        w = csv.DictWriter(f, fieldnames=list(DISPATCH_COLUMNS), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: (round(r[c], 4) if isinstance(r[c], float) else r[c]) for c in DISPATCH_COLUMNS})


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    device = "cuda" if a.device == "auto" and torch.cuda.is_available() else ("cpu" if a.device == "auto" else a.device)
    rows = run_dispatch(device, a.quick)
    print(format_dispatch(rows))


if __name__ == "__main__":
    main()
