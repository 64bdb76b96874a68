"""The one benchmark harness of fastloss.

A :class:`Case` is (op name, shape/config label, dtype, a function building the inputs on a
device, a function building the providers).  For every provider and mode the harness
measures

* time -- median (and p20 / p80) of repeated runs.  CUDA: CUDA events, the L2 cache flushed
  (a 256 MiB buffer written) before every timed region.  CPU: ``time.perf_counter``.  Every
  (provider, mode) pair of a case is warmed up before any of them is timed (:func:`run_case`);
  the number of repetitions comes from a time budget per (provider, mode), and the pairs are
  timed in interleaved rounds (:func:`time_pairs`), so that the ratios between providers are
  measured side by side even on a machine whose speed drifts;
* peak extra memory of one call -- CUDA: ``torch.cuda.max_memory_allocated`` after
  ``reset_peak_memory_stats`` minus the memory allocated before.  CPU (torch keeps no
  allocator statistics there): the call runs once under ``torch.profiler`` with
  ``profile_memory=True``; every CPU allocation and free is an event of signed size, and the
  peak of their running sum in time order is the peak extra memory (:func:`cpu_peak_extra_bytes`);
* bytes that must move (given by the case), GB/s = bytes / median and % of the floor =
  (bytes / measured bandwidth) / median -- the bandwidth of a device copy measured in the
  same run (:func:`measure_bandwidth`; on CPU a torch copy of a RAM-sized buffer).

Modes (the inputs that need a gradient always have ``requires_grad=True``, as in training):

* ``fwd``     -- the forward call (which also builds the autograd graph / saves what the
  backward needs);
* ``bwd``     -- the backward only: each repetition runs the forward outside the timed
  region, then times ``loss.backward(grad)``; nothing is retained (no ``retain_graph``;
  ``.grad`` is reset to None outside the timed region, so backward allocates the gradient);
* ``fwd+bwd`` -- forward then backward.

Providers are plain callables ``fn(*inputs.args, **inputs.kwargs) -> loss``:
:func:`standard_providers` builds ``eager`` (the pure-PyTorch reference), ``compile``
(``torch.compile`` of that same function, compiled per case outside the timed region) and
``fastloss-<backend>`` for every fastloss backend available on the device (not the Triton
interpreter on CPU, not ``reference``: it is the eager row's work behind the op wrapper).

Output (:func:`write_csv`, :func:`summary_rows`, :func:`plot_cases`, :func:`plot_summary`):
``results.csv`` (one row per case x provider x mode, plain CSV; the run's metadata goes to
``metadata.json`` only), ``summary.csv`` / ``summary.png`` (per case, the training step:
eager vs torch.compile vs the best fastloss backend) and per-case time / memory plots.

Units: ms, MB = 1e6 bytes, GB/s = 1e9 bytes/s.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import gc
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch

MODES = ("fwd", "bwd", "fwd+bwd")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MB = 1e6
GB = 1e9
_MARK = "fastloss_bench_measured"

# --------------------------------------------------------------------------- cases


@dataclasses.dataclass
class Inputs:
    """What a provider is called with, plus what the harness needs to run the modes."""

    args: tuple
    kwargs: dict
    grad_inputs: List[torch.Tensor]  # leaves that require grad (their .grad is reset each rep)
    grad_output: Optional[torch.Tensor] = None  # upstream gradient; None for a scalar loss
    bytes: Dict[str, int] = dataclasses.field(default_factory=dict)  # mode -> bytes that must move
    numel: int = 0


@dataclasses.dataclass
class Case:
    op: str
    label: str  # shape / config, e.g. "(25000, 80) labels mean+avg_factor"
    dtype: torch.dtype
    make_inputs: Callable[[torch.device], Inputs]
    make_providers: Callable[[torch.device], Dict[str, Callable]]
    modes: Sequence[str] = MODES


@dataclasses.dataclass
class Settings:
    device: torch.device
    budget_s: float  # timed budget per (provider, mode)
    min_reps: int
    max_reps: int
    warmup: int
    flush_mb: int = 256  # CUDA: L2 flush buffer


def settings_for(device, quick, budget_s=None):
    device = torch.device(device)
    if device.type == "cuda":
        s = Settings(device, 0.1 if quick else 0.5, 5 if quick else 20, 50 if quick else 1000, 3 if quick else 10)
    else:
        s = Settings(device, 0.1 if quick else 2.0, 3 if quick else 15, 50 if quick else 500, 1 if quick else 3)
    if budget_s is not None:
        s.budget_s = budget_s
    return s


def _dtype_name(dtype):
    return {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}.get(dtype, str(dtype))


# --------------------------------------------------------------------------- providers


def standard_providers(device, reference_fn, fastloss_fn, compile_kwargs=None):
    """eager, compile and one ``fastloss-<backend>`` provider per available backend."""
    import fastloss

    device = torch.device(device)
    providers = {"eager": reference_fn, "compile": torch.compile(reference_fn, **(compile_kwargs or {"dynamic": False}))}
    for name in fastloss.available_backends(device):
        if name == "reference":
            continue  # the same math as "eager" behind the op wrapper: not needed
        if name == "triton" and device.type == "cpu":
            continue  # only the (very slow) Triton interpreter on CPU
        providers[f"fastloss-{name}"] = functools.partial(fastloss_fn, backend=name)
    return providers


# --------------------------------------------------------------------------- timing


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_FLUSH = {}


def _flush_buffer(device, mb):
    """A buffer larger than the L2 cache (50 MB on H100/H200); writing it evicts the inputs."""
    key = (str(device), mb)
    if key not in _FLUSH:
        _FLUSH[key] = torch.empty(mb * 2**20, dtype=torch.int8, device=device)
    return _FLUSH[key]


class _Runner:
    """Runs one mode of one provider; the timed region is between ``start`` and ``stop``."""

    def __init__(self, fn, inputs: Inputs, mode: str, settings: Settings):
        self.fn, self.inputs, self.mode, self.s = fn, inputs, mode, settings
        self.cuda = settings.device.type == "cuda"
        self.flush = _flush_buffer(settings.device, settings.flush_mb) if self.cuda else None

    def _reset_grads(self):
        for t in self.inputs.grad_inputs:
            t.grad = None

    def _call(self):
        return self.fn(*self.inputs.args, **self.inputs.kwargs)

    def _backward(self, out):
        out.backward(self.inputs.grad_output)

    def once(self, start, stop):
        """One repetition; ``start()``/``stop()`` bracket the timed region."""
        self._reset_grads()
        out = None
        if self.mode == "bwd":
            out = self._call()
        if self.cuda:
            self.flush.zero_()
        start()
        if self.mode == "fwd":
            out = self._call()
        elif self.mode == "bwd":
            self._backward(out)
        else:
            out = self._call()
            self._backward(out)
        stop()
        del out
        self._reset_grads()

    def run(self, reps):
        """Times ``reps`` repetitions; returns milliseconds per repetition."""
        if self.cuda:
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
            for a, b in events:
                self.once(a.record, b.record)
            torch.cuda.synchronize(self.s.device)
            return [a.elapsed_time(b) for a, b in events]
        times = []
        for _ in range(reps):
            box = [0.0]

            def start():
                box[0] = time.perf_counter()

            def stop():
                times.append((time.perf_counter() - box[0]) * 1e3)

            self.once(start, stop)
        return times


def _quantile(values, q):
    v = sorted(values)
    if len(v) == 1:
        return v[0]
    pos = q * (len(v) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


ROUNDS = 5  # timed rounds per case: every (provider, mode) pair gets a share of its repetitions in each


def _size_reps(runner, settings):
    """Warms ``runner`` up and returns its repetitions: the timed budget over the median warm-up
    time, but never letting the untimed part (forward in bwd mode, flush) blow it up."""
    t0 = time.perf_counter()
    warm = runner.run(settings.warmup)
    _sync(settings.device)
    per_rep_wall = (time.perf_counter() - t0) / max(settings.warmup, 1)
    est = max(statistics.median(warm) / 1e3, 1e-6)
    reps = int(min(settings.budget_s / est, 2 * settings.budget_s / max(per_rep_wall, 1e-6)))
    return max(settings.min_reps, min(settings.max_reps, reps))


def time_pairs(pairs, inputs: Inputs, settings: Settings, rounds=ROUNDS):
    """Times the (provider, mode) pairs of one case, ``pairs`` = {(name, mode): fn}.  Each pair's
    repetitions (:func:`_size_reps`) are split over ``rounds`` rounds and every round times each
    pair in turn, starting one pair later each round: a slow phase of a noisy machine (a
    neighbour VM, a frequency change) then falls on every provider alike instead of on
    whichever one was being timed, and the ratios stay side by side.  Returns {pair: (median,
    p20, p80, reps, foreign load)} in ms, the load the mean number of cores other processes
    kept busy during that pair's timed rounds (None: unknown), or {pair: error text} for a
    pair that failed (its runner dropped and the device cleaned up at once, so that an
    out-of-memory error does not hold its memory through the other pairs' rounds)."""
    runners, reps, times, load, out = {}, {}, {}, {}, {}

    def fail(key, exc):
        out[key] = _error_text(exc)
        runners.pop(key, None)
        _cleanup(inputs, settings.device)

    for key, fn in pairs.items():
        try:
            runners[key] = _Runner(fn, inputs, key[1], settings)
            reps[key] = _size_reps(runners[key], settings)
        except Exception as exc:  # noqa: BLE001 -- reported by the caller; the others go on
            fail(key, exc)
    keys = list(runners)
    for r in range(rounds):
        for key in keys[r % len(keys):] + keys[:r % len(keys)] if keys else []:
            n = reps[key] // rounds + (1 if r < reps[key] % rounds else 0)
            if key in out or n == 0:
                continue
            meter = ForeignLoad()
            try:
                times.setdefault(key, []).extend(runners[key].run(n))
                _sync(settings.device)
            except Exception as exc:  # noqa: BLE001
                fail(key, exc)
                continue
            foreign, elapsed = meter.core_seconds()
            f0, e0 = load.get(key, (0.0, 0.0))
            load[key] = (None if foreign is None or f0 is None else f0 + foreign, e0 + elapsed)
    for key, ts in times.items():
        if key not in out:
            foreign, elapsed = load[key]
            out[key] = (statistics.median(ts), _quantile(ts, 0.2), _quantile(ts, 0.8), len(ts),
                        None if foreign is None else foreign / max(elapsed, 1e-9))
    return out


# --------------------------------------------------------------------------- memory


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (Kineto prints "USDT ... profiler_start" lines there)."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def cpu_peak_extra_bytes(run, measured):
    """Peak extra CPU memory of ``measured()`` (run after ``run()``'s own set-up part).

    torch keeps no CPU allocator statistics, so everything runs under ``torch.profiler``
    with ``profile_memory=True``: each CPU allocation / free it records is an event of signed
    size.  ``run(measured)`` must call ``measured`` once inside; that call is marked with
    ``record_function``.  The answer is the peak, inside the marked region, of the running sum
    of the events in time order, minus the running sum when the region starts -- so memory
    that the set-up part allocated (e.g. the forward before a timed backward) and the region
    frees counts negative, as on CUDA.  (Frees of memory allocated before profiling started
    are not reported by torch; no measured path frees such memory.)  None if the profiler's
    event tree is unavailable."""
    from torch.profiler import ProfilerActivity, profile, record_function

    def marked():
        with record_function(_MARK):
            measured()

    os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    with _quiet_stderr():
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            run(marked)
        try:
            from torch._C._profiler import _EventType

            stack = list(prof.profiler.kineto_results.experimental_event_tree())
        except Exception:  # noqa: BLE001 -- private API; degrade to "not measured"
            return None
    events, region = [], None
    while stack:
        node = stack.pop()
        if node.typed[0] == _EventType.Allocation:
            f = node.extra_fields
            if f.device.type == "cpu":
                events.append((node.start_time_ns, f.alloc_size))
        elif node.name == _MARK:
            region = (node.start_time_ns, node.end_time_ns)
        stack.extend(node.children)
    if region is None:
        return None
    events.sort(key=lambda e: e[0])
    current, base, peak = 0, None, 0
    for t, size in events:
        if t > region[1]:
            break
        if base is None and t >= region[0]:
            base = current
        current += size
        if base is not None:
            peak = max(peak, current - base)
    return peak


def peak_extra_bytes(fn, inputs: Inputs, mode: str, settings: Settings):
    """Peak memory allocated by one repetition of ``mode`` beyond what was allocated before
    it (in ``bwd`` mode: beyond the state after the forward, whose saved tensors the backward
    frees)."""
    runner = _Runner(fn, inputs, mode, settings)
    runner.cuda = False  # no flush, no events: only allocations
    gc.collect()
    runner._reset_grads()
    holder = {}

    def measured():
        if mode == "fwd":
            holder["out"] = runner._call()
        elif mode == "bwd":
            runner._backward(holder.pop("out"))
        else:
            out = runner._call()
            runner._backward(out)
            holder["out"] = out

    def rep(body):
        if mode == "bwd":
            holder["out"] = runner._call()
        body()

    try:
        if settings.device.type == "cuda":
            def cuda_body():
                torch.cuda.synchronize(settings.device)
                torch.cuda.reset_peak_memory_stats(settings.device)
                before = torch.cuda.memory_allocated(settings.device)
                measured()
                torch.cuda.synchronize(settings.device)
                holder["peak"] = torch.cuda.max_memory_allocated(settings.device) - before

            rep(cuda_body)
            return holder["peak"]
        return cpu_peak_extra_bytes(rep, measured)
    finally:
        holder.clear()
        runner._reset_grads()


# --------------------------------------------------------------------------- bandwidth


def measure_bandwidth(device, quick=False):
    """GB/s of a device copy: ``dst.copy_(src)`` of a 1 GiB tensor on CUDA (256 MiB on CPU,
    64 MiB in quick mode; both far beyond the caches); GB/s = 2 * bytes / median time."""
    device = torch.device(device)
    if device.type == "cuda":
        nbytes, reps = 2**30, (10 if quick else 30)
    else:
        nbytes, reps = (64 if quick else 256) * 2**20, (5 if quick else 15)
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(reps):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            dst.copy_(src)
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b) / 1e3)
    else:
        for _ in range(reps):
            t0 = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t0)
    del src, dst
    return 2 * nbytes / statistics.median(times) / GB


# --------------------------------------------------------------------------- running


def _error_text(exc):
    return f"{exc.__class__.__name__}: {exc}"


def _first_line(text):
    return text.splitlines()[0] if text else ""


def _cleanup(inputs, device):
    """After a failure (e.g. out of memory): drop gradients and cached memory, go on."""
    for t in inputs.grad_inputs:
        t.grad = None
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_case(case: Case, settings: Settings, bandwidth_gbps: float, provider_filter=None, mode_filter=None, log=print):
    """All providers x modes of one case.  Returns a list of row dicts (a failed provider or
    mode gives a row with ``error`` set; the run goes on).

    Order: (1) one untimed forward+backward call of every provider (torch.compile compiles,
    Triton JITs); (2) an untimed warm-up of every (provider, mode) pair, ``settings.warmup``
    repetitions each, so that no timing pays for a first use (allocator growth, page faults,
    lazy initialisation) that a later one does not -- without it eager ``fwd``, timed first,
    measured slower than eager ``fwd+bwd``; (3) :func:`time_pairs` (which warms up once more to
    size the repetitions, then times every pair in interleaved rounds); (4) per pair
    :func:`peak_extra_bytes`."""
    device = settings.device
    torch._dynamo.reset()  # torch.compile: fresh caches (no recompile limit across cases)
    inputs = case.make_inputs(device)
    providers = case.make_providers(device)
    if provider_filter:
        providers = {k: v for k, v in providers.items() if k in provider_filter}
    modes = [m for m in case.modes if not mode_filter or m in mode_filter]
    errors = {}  # (provider, mode) -> error text

    def failed(name, mode_list, exc, stage):  # exc: the exception, or its text
        text = exc if isinstance(exc, str) else _error_text(exc)
        where = f"{name:18s} " + (f"{mode_list[0]:8s} " if len(mode_list) == 1 else "")
        log(f"    {where}FAILED ({stage}): {_first_line(text)}")
        for m in mode_list:
            errors[(name, m)] = text
        _cleanup(inputs, device)

    first = {}
    for name, fn in providers.items():  # (1) first call outside any measurement
        t0 = time.perf_counter()
        try:
            _Runner(fn, inputs, "fwd+bwd", settings).once(lambda: None, lambda: None)
            _sync(device)
        except Exception as exc:  # noqa: BLE001 -- one broken provider must not end the run
            failed(name, modes, exc, "first call")
            continue
        first[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    for name, fn in providers.items():  # (2) warm up every pair before timing any
        for mode in modes:
            if (name, mode) in errors:
                continue
            try:
                _Runner(fn, inputs, mode, settings).run(max(settings.warmup, 1))
                _sync(device)
            except Exception as exc:  # noqa: BLE001
                failed(name, [mode], exc, "warm-up")
    warmup_s = time.perf_counter() - t0
    if warmup_s > 1.0:
        log(f"    (warm-up of all providers and modes: {warmup_s:.1f} s)")
    pairs = {(name, mode): fn for name, fn in providers.items() for mode in modes if (name, mode) not in errors}
    timed = time_pairs(pairs, inputs, settings)  # (3) time, interleaved
    rows = []
    for name, fn in providers.items():  # (4) measure memory
        for mode in modes:
            if (name, mode) not in errors:
                stats = timed[(name, mode)]
                if isinstance(stats, str):  # e.g. out of memory: record it, go on
                    failed(name, [mode], stats, "timing")
                else:
                    try:
                        peak = peak_extra_bytes(fn, inputs, mode, settings)
                    except Exception as exc:  # noqa: BLE001
                        failed(name, [mode], exc, "memory")
            if (name, mode) in errors:
                rows.append(_row(case, name, mode, inputs, None, None, bandwidth_gbps, error=errors[(name, mode)]))
                continue
            rows.append(_row(case, name, mode, inputs, stats, peak, bandwidth_gbps))
            r = rows[-1]
            log(f"    {name:18s} {mode:8s} median {r['median_ms']:9.3f} ms  [p20 {r['p20_ms']:.3f}, p80 {r['p80_ms']:.3f}, "
                f"{r['reps']} reps]  peak extra {_fmt(r['peak_extra_MB'], '.1f')} MB"
                + (f"  [other processes busy: {r['foreign_load']:.1f} cores]" if (r["foreign_load"] or 0) > 0.2 else "")
                + (f"  (first call {first[name]:.1f} s)" if mode == modes[0] and first.get(name, 0) > 1.0 else ""))
    _add_relative(rows)
    del inputs
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def failures(rows):
    """One line per row that failed: ``op case dtype provider mode: error`` (first line)."""
    return [f"{r['op']} {r['case']} {r['dtype']} {r['provider']} {r['mode']}: {_first_line(r['error'])}"
            for r in rows if r.get("error")]


def _row(case, provider, mode, inputs, stats, peak, bandwidth_gbps, error=""):
    nbytes = inputs.bytes.get(mode)
    row = {
        "op": case.op, "case": case.label, "dtype": _dtype_name(case.dtype), "mode": mode, "provider": provider,
        "median_ms": None, "p20_ms": None, "p80_ms": None, "reps": 0,
        "speedup_vs_eager": None, "peak_extra_MB": None if peak is None else peak / MB, "mem_vs_eager": None,
        "bytes": nbytes, "GB/s": None, "pct_floor": None, "numel": inputs.numel, "foreign_load": None, "error": error,
    }
    if stats is not None:
        median, p20, p80, reps, foreign = stats
        row.update(median_ms=median, p20_ms=p20, p80_ms=p80, reps=reps, foreign_load=foreign)
        if nbytes:
            row["GB/s"] = nbytes / (median / 1e3) / GB
            if bandwidth_gbps:
                row["pct_floor"] = (nbytes / (bandwidth_gbps * GB)) / (median / 1e3) * 100
    return row


def _add_relative(rows):
    eager = {r["mode"]: r for r in rows if r["provider"] == "eager"}
    for r in rows:
        e = eager.get(r["mode"])
        if e is None:
            continue
        if r["median_ms"] and e["median_ms"]:
            r["speedup_vs_eager"] = e["median_ms"] / r["median_ms"]
        if r["peak_extra_MB"] is not None and e["peak_extra_MB"]:
            r["mem_vs_eager"] = r["peak_extra_MB"] / e["peak_extra_MB"]


class ForeignLoad:
    """CPU time that *other* processes used while we ran (Linux /proc), in cores: system busy
    time minus this process's own.  CPU timings are only meaningful when this is ~0 (a
    concurrent build or test run on a 2-core machine slows eager PyTorch's parallel regions by
    10-100x).  ``value()`` is None where /proc is unavailable."""

    def __init__(self):
        self._t0, self._busy0, self._own0 = time.perf_counter(), self._system_busy(), self._own()

    @staticmethod
    def _system_busy():
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
            hz = os.sysconf("SC_CLK_TCK")
            return (sum(fields[:8]) - fields[3] - fields[4]) / hz  # all but idle and iowait
        except (OSError, ValueError, IndexError):
            return None

    @staticmethod
    def _own():
        t = os.times()
        return t.user + t.system

    def core_seconds(self):
        """(CPU seconds used by other processes, wall seconds) since construction."""
        busy = self._system_busy()
        elapsed = time.perf_counter() - self._t0
        if busy is None or self._busy0 is None:
            return None, elapsed
        return max(0.0, (busy - self._busy0) - (self._own() - self._own0)), elapsed

    def value(self):
        foreign, elapsed = self.core_seconds()
        return None if foreign is None else foreign / max(elapsed, 1e-9)


# --------------------------------------------------------------------------- metadata


def _git(*args):
    try:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30).stdout.strip()
    except Exception:  # noqa: BLE001
        return ""


def git_commit():
    """HEAD, with '-dirty' if the work tree has uncommitted changes (untracked, not ignored files count)."""
    head = _git("rev-parse", "HEAD") or "unknown"
    return head + ("-dirty" if _git("status", "--porcelain") else "")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device):
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"


def device_slug(device):
    device = torch.device(device)
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"cpu-{cpu_model()}-{os.cpu_count()}c"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


def metadata(device, bandwidth_gbps, args=None):
    import fastloss
    from fastloss import _backend, _extension

    device = torch.device(device)
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # noqa: BLE001
        triton_version = None
    C = _extension.C
    ext = {"loaded": C is not None}
    if C is None:
        ext["load_error"] = _extension.load_error
    else:
        ext.update(SOURCE_HASH=C.SOURCE_HASH, CPU_CAPABILITY=C.CPU_CAPABILITY, WITH_CUDA=bool(C.WITH_CUDA))
    meta = {
        "device": device_name(device),
        "device_type": device.type,
        "device_slug": device_slug(device),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        "fastloss": fastloss.__version__,
        "fastloss_C": ext,
        "available_backends": fastloss.available_backends(device),
        "default_backends": {op: _backend.resolve(op, device) for op in _backend.ops()},
        "git_commit": git_commit(),
        "bandwidth_GBps": round(bandwidth_gbps, 2),
        "bandwidth_method": ("cuda: dst.copy_(src) of 1 GiB uint8, CUDA events, GB/s = 2 * bytes / median" if device.type == "cuda"
                             else "cpu: torch dst.copy_(src) of a 256 MiB uint8 buffer (64 MiB with --quick; memcpy-like, "
                                  "all torch threads), perf_counter, GB/s = 2 * bytes / median"),
        "timing": ("CUDA events, L2 flushed (256 MiB write) before each rep" if device.type == "cuda"
                   else "time.perf_counter, after warm-up; caches not flushed"),
        "memory": ("torch.cuda.max_memory_allocated - memory_allocated before" if device.type == "cuda"
                   else "torch.profiler profile_memory: peak of the running sum of CPU alloc/free events"),
        "units": "ms; MB = 1e6 B; GB/s = 1e9 B/s; pct_floor = (bytes / bandwidth) / median * 100",
        "loadavg_at_start": _loadavg(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "argv": sys.argv,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        meta["cuda_capability"] = f"{props.major}.{props.minor}"
        meta["gpu_memory_GB"] = round(props.total_memory / GB, 1)
    if args is not None:
        meta["args"] = {k: v for k, v in vars(args).items()}
    return meta


# --------------------------------------------------------------------------- output

TABLE_COLUMNS = ("op", "case", "dtype", "mode", "provider", "median_ms", "p20_ms", "p80_ms", "speedup_vs_eager",
                 "peak_extra_MB", "mem_vs_eager", "GB/s", "pct_floor")
CSV_COLUMNS = TABLE_COLUMNS + ("reps", "bytes", "numel", "foreign_load", "error")


def _fmt(v, spec):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec)


def _cell(col, v):
    if col in ("median_ms", "p20_ms", "p80_ms"):
        return _fmt(v, ".4g" if v is not None and v < 1 else ".2f")
    if col in ("speedup_vs_eager", "mem_vs_eager"):
        return _fmt(v, ".2f") + ("x" if v is not None else "")
    if col in ("peak_extra_MB", "GB/s", "pct_floor"):
        return _fmt(v, ".1f")
    return "-" if v is None else str(v)


def format_table(rows, columns=TABLE_COLUMNS):
    header = [c.replace("_ms", "") if c in ("p20_ms", "p80_ms") else c for c in columns]
    body = [[_cell(c, r.get(c)) for c in columns] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    numeric = {i for i, c in enumerate(columns) if c not in ("op", "case", "dtype", "mode", "provider")}

    def line(cells):
        return "  ".join(c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    out = [line(header), line(["-" * w for w in widths])]
    prev = None
    for r, b in zip(rows, body):
        key = (r.get("op"), r.get("case"), r.get("dtype"))
        if prev is not None and key != prev:
            out.append("")
        prev = key
        out.append(line(b))
    return "\n".join(out)


def write_csv(path, rows, columns=CSV_COLUMNS):
    """``results.csv``: a header line, then one line per row -- nothing else, so a plain CSV
    reader (``csv.DictReader``) reads it; the run's metadata is in ``metadata.json``."""
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: ("" if r.get(c) is None else (round(r[c], 6) if isinstance(r[c], float) else r[c])) for c in columns})


def read_csv(path):
    """The rows of a ``results.csv`` (or ``summary.csv``) as written by :func:`write_csv`:
    empty cells become None, numeric ones numbers -- e.g. to redo the summary of a run."""
    import csv

    def value(v):
        if v == "":
            return None
        try:
            return int(v)
        except ValueError:
            try:
                return float(v)
            except ValueError:
                return v

    with open(path, newline="") as f:
        return [{k: (v if k in ("op", "case", "dtype", "mode", "provider", "fastloss", "error") else value(v))
                 for k, v in r.items()} for r in csv.DictReader(f)]


def write_metadata(path, meta):
    with open(path, "w") as f:
        json.dump(meta, f, indent=2, default=str)
        f.write("\n")


def _safe(name):
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


def _short_commit(meta):
    commit = meta.get("git_commit", "") or ""
    return commit[:12] + ("-dirty" if commit.endswith("-dirty") else "")


def _case_keys(rows):
    return list(dict.fromkeys((r["op"], r["case"], r["dtype"]) for r in rows))


def plot_cases(rows, meta, out_dir):
    """Per case two grouped bar charts (groups = modes, bars = providers): median time
    (with p20-p80 whiskers, said in the legend) and peak extra memory.  Returns the written paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    written = []
    commit = _short_commit(meta)
    for op, case, dtype in _case_keys(rows):
        sub = [r for r in rows if (r["op"], r["case"], r["dtype"]) == (op, case, dtype)]
        modes = [m for m in MODES if any(r["mode"] == m for r in sub)]
        providers = list(dict.fromkeys(r["provider"] for r in sub))
        for metric, ylabel, suffix in (("median_ms", "median time (ms)", "time"), ("peak_extra_MB", "peak extra memory (MB)", "memory")):
            fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(modes) * max(len(providers), 1) * 0.45, 4.2))
            width = 0.8 / max(len(providers), 1)
            reps = []
            for i, p in enumerate(providers):
                xs, ys, lo, hi = [], [], [], []
                for j, m in enumerate(modes):
                    r = next((r for r in sub if r["provider"] == p and r["mode"] == m), None)
                    if r is None or r.get(metric) is None:
                        continue
                    xs.append(j + (i - (len(providers) - 1) / 2) * width)
                    ys.append(r[metric])
                    if metric == "median_ms":
                        lo.append(r[metric] - r["p20_ms"])
                        hi.append(r["p80_ms"] - r[metric])
                        reps.append(r.get("reps") or 0)
                bars = ax.bar(xs, ys, width, label=p, yerr=[lo, hi] if metric == "median_ms" and xs else None, capsize=2)
                for b, y in zip(bars, ys):
                    text = f"{y:.3g}" if metric == "median_ms" or y >= 0.05 else "0"
                    ax.annotate(text, (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=7)
            handles, labels = ax.get_legend_handles_labels()
            if metric == "median_ms" and reps:
                n = f"{min(reps)}" if min(reps) == max(reps) else f"{min(reps)}-{max(reps)}"
                handles.append(Line2D([], [], color="black", marker="|", markersize=9, linestyle="none"))
                labels.append(f"whiskers: p20–p80 of {n} reps")
            ax.set_xticks(range(len(modes)))
            ax.set_xticklabels(modes)
            ax.set_ylabel(ylabel)
            ax.set_title(f"{op} {case} {dtype}\n{meta.get('device', '')} | {commit}", fontsize=8)
            ax.legend(handles, labels, fontsize=7)
            ax.margins(y=0.12)
            fig.tight_layout()
            path = os.path.join(out_dir, f"{_safe(op)}__{_safe(case)}__{dtype}__{suffix}.png")
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written


# --------------------------------------------------------------------------- summary

SUMMARY_MODE = "fwd+bwd"  # the training step
SUMMARY_COLUMNS = ("op", "case", "dtype", "mode", "eager_ms", "compile_ms", "fastloss", "fastloss_ms",
                   "speedup_vs_eager", "speedup_vs_compile", "mem_vs_eager")


def _ratio(a, b):
    return a / b if a is not None and b else None


def summary_rows(rows, mode=SUMMARY_MODE):
    """One row per (op, case, dtype): the median time of ``eager``, ``compile`` and the fastest
    ``fastloss-*`` provider in ``mode`` (forward+backward = a training step; a forward-only
    case gives its ``fwd`` row instead), the speedups of that fastloss provider over eager and
    over torch.compile (baseline median / fastloss median) and its peak extra memory over
    eager's.  Failed rows are skipped; what is missing stays None."""
    out = []
    for op, case, dtype in _case_keys(rows):
        sub = [r for r in rows if (r["op"], r["case"], r["dtype"]) == (op, case, dtype)
               and not r.get("error") and r.get("median_ms") is not None]
        case_modes = [r["mode"] for r in sub]
        m = mode if mode in case_modes else next((x for x in reversed(MODES) if x in case_modes), None)
        if m is None:
            continue
        sub = [r for r in sub if r["mode"] == m]
        eager = next((r for r in sub if r["provider"] == "eager"), None) or \
            next((r for r in sub if r["provider"].startswith("eager")), None)  # e.g. "eager (matrix+max)"
        compiled = next((r for r in sub if r["provider"] == "compile"), None)
        fast = min((r for r in sub if r["provider"].startswith("fastloss")), key=lambda r: r["median_ms"], default=None)
        e_ms = eager["median_ms"] if eager else None
        c_ms = compiled["median_ms"] if compiled else None
        f_ms = fast["median_ms"] if fast else None
        out.append({
            "op": op, "case": case, "dtype": dtype, "mode": m, "eager_ms": e_ms, "compile_ms": c_ms,
            "fastloss": fast["provider"] if fast else None, "fastloss_ms": f_ms,
            "speedup_vs_eager": _ratio(e_ms, f_ms), "speedup_vs_compile": _ratio(c_ms, f_ms),
            "mem_vs_eager": _ratio(fast.get("peak_extra_MB") if fast else None, eager.get("peak_extra_MB") if eager else None),
        })
    return out


def format_summary(summary):
    """The summary rows as an aligned text table."""
    def ms(v):
        return _fmt(v, ".3g" if v is not None and v < 1 else (".2f" if v is not None and v < 100 else ".0f"))

    def x(v):
        return _fmt(v, ".2f" if v is not None and v < 10 else ".0f") + ("x" if v is not None else "")

    header = ["op", "case", "dtype", "mode", "eager ms", "compile ms", "fastloss", "fastloss ms", "vs eager", "vs compile",
              "mem vs eager"]
    body = [[s["op"], s["case"], s["dtype"], s["mode"], ms(s["eager_ms"]), ms(s["compile_ms"]), s["fastloss"] or "-",
             ms(s["fastloss_ms"]), x(s["speedup_vs_eager"]), x(s["speedup_vs_compile"]),
             _fmt(s["mem_vs_eager"], ".2f" if (s["mem_vs_eager"] or 0) >= 0.1 else ".2g")
             + ("x" if s["mem_vs_eager"] is not None else "")] for s in summary]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    text = {0, 1, 2, 3, 6}

    def line(cells):
        return "  ".join(c.ljust(w) if i in text else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(b) for b in body])


def write_summary_csv(path, summary):
    write_csv(path, summary, SUMMARY_COLUMNS)


def plot_summary(summary, meta, path):
    """``summary.png``: per case two bars, the fastest fastloss provider's speedup over eager
    PyTorch and over torch.compile (baseline median time / fastloss median time), on a log
    axis; the bars start at the baselines' 1x line (up: fastloss faster, down: slower).
    Returns ``path``, or None if there is nothing to plot."""
    import textwrap

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = [s for s in summary if s["speedup_vs_eager"] or s["speedup_vs_compile"]]
    if not summary:
        return None
    n = len(summary)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.25 * n + 1.5), 5.2))
    width = 0.38
    values = []
    ax.set_yscale("log")
    for k, (key, label, color) in enumerate((("speedup_vs_eager", "vs eager PyTorch", "tab:blue"),
                                             ("speedup_vs_compile", "vs torch.compile", "tab:orange"))):
        xs = [i + (k - 0.5) * width for i, s in enumerate(summary) if s[key]]
        ys = [s[key] for s in summary if s[key]]
        values += ys
        ax.bar(xs, [y - 1.0 for y in ys], width, bottom=1.0, label=f"fastloss {label}", color=color)
        for x, y in zip(xs, ys):
            ax.annotate(f"{y:.2g}x" if y < 10 else f"{y:.0f}x", (x, y), ha="center", va="bottom" if y >= 1 else "top",
                        fontsize=7)
        for i, s in enumerate(summary):
            if not s[key]:
                ax.annotate("n/a", (i + (k - 0.5) * width, 1.0), ha="center", va="bottom", fontsize=7, color=color)
    ax.axhline(1.0, color="black", linewidth=1.2, linestyle="--", label="1x = baseline (eager / torch.compile time)")
    lo, hi = min(values + [1.0]), max(values + [1.0])
    ax.set_ylim(lo / 2.0, hi * 2.5)
    ax.set_ylabel("speedup of fastloss (baseline median time / fastloss median time)", fontsize=8)
    ax.set_xticks(range(n))
    ax.set_xticklabels(["\n".join([f"{s['op']}"] + textwrap.wrap(f"{s['case']} {s['dtype']}", 20)
                                  + ([s["mode"]] if s["mode"] != SUMMARY_MODE else [])) for s in summary], fontsize=7)
    forward_only = "; cases marked fwd: forward only" if any(s["mode"] != SUMMARY_MODE for s in summary) else ""
    ax.set_title(f"fastloss speedup per case, {SUMMARY_MODE} (a training step{forward_only}), fastest fastloss backend\n"
                 f"{meta.get('device', '')} | torch {meta.get('torch', '?')} | commit {_short_commit(meta)}", fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
