"""Eager dispatch overhead of fastloss.sigmoid_focal_loss at small sizes.

Is the eager fast path (the public function calls ``SigmoidFocalLossFunction.apply``, a
``torch.autograd.Function``) worth it against calling the ``torch.library`` custom op
``torch.ops.fastloss.sigmoid_focal_loss`` (dispatcher + registered autograd)?  Paths, all on
the device's default fastloss backend, int64 class labels, ``reduction="mean"``:

* ``public``     -- ``fastloss.sigmoid_focal_loss(x, labels)``: argument checks + autograd.Function;
* ``function``   -- ``SigmoidFocalLossFunction.apply(...)`` on the prepared arguments (captured
  from a call of the public function, so this follows the op's signature);
* ``custom_op``  -- ``torch.ops.fastloss.sigmoid_focal_loss(...)`` on the same arguments;
* ``kernels``    -- the op module's ``_forward_impl`` / ``_backward_impl`` (the backend's
  implementation) called directly, no autograd, no dispatcher: the floor;
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


def _capture_args(x, labels):
    """The prepared arguments that the public function passes to SigmoidFocalLossFunction.apply
    (captured, so this benchmark follows the op's signature as it evolves)."""
    real = ops_focal.SigmoidFocalLossFunction
    captured = []

    class _Recorder:
        @staticmethod
        def apply(*args):
            captured.append(args)
            return real.apply(*args)

    ops_focal.SigmoidFocalLossFunction = _Recorder
    try:
        fastloss.sigmoid_focal_loss(x, labels, reduction="mean")
    finally:
        ops_focal.SigmoidFocalLossFunction = real
    if not captured:
        raise RuntimeError("fastloss.sigmoid_focal_loss did not call SigmoidFocalLossFunction.apply in eager mode")
    return captured[0]


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _kernels_path(args):
    """The backend's forward/backward implementations called directly (no autograd, no
    dispatcher): the floor.  Arguments are matched by name to the ops module's
    ``_forward_impl`` / ``_backward_impl``."""
    import inspect

    names = list(inspect.signature(ops_focal.SigmoidFocalLossFunction.forward).parameters)[1:]  # drop ctx
    named = dict(zip(names, args))
    named["input"] = named["input"].detach()
    fwd_impl, bwd_impl = ops_focal._forward_impl, ops_focal._backward_impl
    fwd_params = list(inspect.signature(fwd_impl).parameters)
    bwd_params = list(inspect.signature(bwd_impl).parameters)
    one = torch.ones((), dtype=torch.float32, device=named["input"].device)

    def make(mode):
        def run():
            out = fwd_impl(**{k: named[k] for k in fwd_params})
            if mode == "fwd+bwd":
                extra = {"grad": one}
                if "cache" in bwd_params:
                    extra["cache"] = out[1]
                bwd_impl(**{k: extra[k] if k in extra else named[k] for k in bwd_params})
            return out
        return run

    make("fwd+bwd")()  # fail here, not inside the timing, if the signatures no longer match
    return make


def _paths(x, labels):
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
        "function": autograd_path(lambda: ops_focal.SigmoidFocalLossFunction.apply(*args)),
        "custom_op": autograd_path(lambda: torch.ops.fastloss.sigmoid_focal_loss(*args)),
    }
    try:
        paths["kernels"] = _kernels_path(args)
    except Exception as exc:  # noqa: BLE001 -- the floor is optional
        print(f"    dispatch: no 'kernels' path ({exc.__class__.__name__}: {exc})")
    paths["reference"] = autograd_path(lambda: reference(x, labels, reduction="mean"))
    return paths


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
    device = torch.device(device)
    backend = _backend.resolve("sigmoid_focal_loss", device)
    budget, samples, warmup = (0.03, 5, 5) if quick else (0.3, 21, 20)
    rows = []
    for rows_, C in SIZES:
        x = torch.randn(rows_, C, device=device, requires_grad=True)
        labels = torch.randint(0, C + 1, (rows_,), device=device)
        paths = _paths(x, labels)
        for mode in MODES:
            for name, make in paths.items():
                try:
                    median, p20, p80, calls = _time_us(make(mode), device, budget, samples, warmup)
                except Exception as exc:  # noqa: BLE001 -- report, go on
                    log(f"    dispatch {name} {mode} FAILED: {exc.__class__.__name__}: {exc}")
                    continue
                rows.append({"numel": rows_ * C, "shape": f"({rows_}, {C})", "mode": mode, "path": name, "backend": backend,
                             "median_us": median, "p20_us": p20, "p80_us": p80, "calls": calls})
            ref = {r["path"]: r for r in rows if r["numel"] == rows_ * C and r["mode"] == mode}
            log(f"    dispatch {rows_ * C:>6d} logits {mode:8s} " + "  ".join(f"{k} {v['median_us']:.1f}" for k, v in ref.items()) + " us")
    for r in rows:
        same = {q["path"]: q for q in rows if q["numel"] == r["numel"] and q["mode"] == r["mode"]}
        r["vs_function"] = r["median_us"] / same["function"]["median_us"] if "function" in same else None
    return rows


DISPATCH_COLUMNS = ("shape", "numel", "mode", "path", "backend", "median_us", "p20_us", "p80_us", "vs_function", "calls")


def format_dispatch(rows):
    header = list(DISPATCH_COLUMNS)
    body = []
    for r in rows:
        body.append([str(r["shape"]), str(r["numel"]), r["mode"], r["path"], r["backend"], f"{r['median_us']:.1f}",
                     f"{r['p20_us']:.1f}", f"{r['p80_us']:.1f}",
                     "-" if r["vs_function"] is None else f"{r['vs_function']:.2f}x", str(r["calls"])])
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
            if {"function", "custom_op", "public"} <= set(s):
                d = s["custom_op"] - s["function"]
                lines.append(f"{numel:>6d} logits {mode:8s}: custom_op - function = {d:+.1f} us "
                             f"({d / s['custom_op'] * 100:+.0f}% of the custom-op call); "
                             f"public wrapper adds {s['public'] - s['function']:+.1f} us"
                             + (f"; kernels alone {s['kernels']:.1f} us" if "kernels" in s else ""))
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
            w.writerow({c: (round(r[c], 4) if isinstance(r[c], float) else ("" if r[c] is None else r[c])) for c in DISPATCH_COLUMNS})


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
