"""The benchmark suite's plumbing (benchmarks/): output files, summary, dispatch paths, exit
status.  No timing value is ever asserted -- only that the pieces run and write what they say."""
import csv
import json
import os
import sys
import types

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # `import benchmarks` from any cwd

from benchmarks import bench_dispatch, harness, run  # noqa: E402


def _row(op, case, mode, provider, median, peak, error=""):
    return {"op": op, "case": case, "dtype": "fp32", "mode": mode, "provider": provider,
            "median_ms": None if error else median, "p20_ms": None if error else 0.9 * median,
            "p80_ms": None if error else 1.1 * median, "reps": 0 if error else 7, "speedup_vs_eager": None,
            "peak_extra_MB": None if error else peak, "mem_vs_eager": None, "bytes": 1000, "GB/s": None,
            "pct_floor": None, "numel": 100, "foreign_load": None if error else 0.0, "error": error}


def _synthetic_rows():
    rows = []
    for mode, k in (("fwd", 1.0), ("bwd", 0.5), ("fwd+bwd", 1.5)):
        rows += [_row("focal", "(10, 8) labels", mode, "eager", 10 * k, 8.0),
                 _row("focal", "(10, 8) labels", mode, "compile", 5 * k, 2.0),
                 _row("focal", "(10, 8) labels", mode, "fastloss-cpu", 2 * k, 1.0),
                 _row("focal", "(10, 8) labels", mode, "fastloss-triton", 4 * k, 1.0, error="RuntimeError: broken\nline 2")]
    # a forward-only case whose baseline is named differently and has no compile provider
    rows += [_row("box_iou", "max iou 2x20", "fwd", "eager (matrix+max)", 3.0, 4.0),
             _row("box_iou", "max iou 2x20", "fwd", "fastloss-cpu", 0.5, 0.1)]
    harness._add_relative(rows)
    return rows


META = {"device": "test CPU", "torch": torch.__version__, "git_commit": "0123456789abcdef-dirty"}


def test_results_csv_is_plain_csv(tmp_path):
    rows = _synthetic_rows()
    path = tmp_path / "results.csv"
    harness.write_csv(path, rows)
    with open(path, newline="") as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == list(harness.CSV_COLUMNS)
    assert len(read) == len(rows)
    assert not any(line.startswith("#") for line in path.read_text().splitlines())
    assert read[0]["provider"] == "eager" and float(read[0]["median_ms"]) == rows[0]["median_ms"]
    assert read[3]["error"].startswith("RuntimeError")  # multi-line error survives the quoting
    back = harness.read_csv(path)
    assert back[2]["median_ms"] == rows[2]["median_ms"] and back[3]["median_ms"] is None


def test_committed_results_are_plain_csv():
    d = os.path.join(harness.REPO_ROOT, "benchmarks", "results")
    for device in os.listdir(d):
        for name in ("results.csv", "dispatch.csv"):
            path = os.path.join(d, device, name)
            if os.path.exists(path):
                with open(path, newline="") as f:
                    read = list(csv.DictReader(f))
                assert read and ("median_ms" in read[0] or "median_us" in read[0]), path
        with open(os.path.join(d, device, "metadata.json")) as f:
            assert "git_commit" in json.load(f)


def test_summary_table_and_figure(tmp_path):
    pytest.importorskip("matplotlib")
    rows = _synthetic_rows()
    summary = harness.summary_rows(rows)
    assert [(s["op"], s["mode"]) for s in summary] == [("focal", "fwd+bwd"), ("box_iou", "fwd")]
    focal, iou = summary
    assert focal["fastloss"] == "fastloss-cpu"  # the fastest fastloss provider that did not fail
    assert focal["speedup_vs_eager"] == pytest.approx(15 / 3)
    assert focal["speedup_vs_compile"] == pytest.approx(7.5 / 3)
    assert focal["mem_vs_eager"] == pytest.approx(1 / 8)
    assert iou["eager_ms"] == 3.0 and iou["compile_ms"] is None and iou["speedup_vs_compile"] is None
    text = harness.format_summary(summary)
    assert "fastloss-cpu" in text and "vs compile" in text
    harness.write_summary_csv(tmp_path / "summary.csv", summary)
    with open(tmp_path / "summary.csv", newline="") as f:
        read = list(csv.DictReader(f))
    assert list(read[0]) == list(harness.SUMMARY_COLUMNS) and len(read) == 2
    png = harness.plot_summary(summary, META, str(tmp_path / "summary.png"))
    assert png and os.path.getsize(png) > 0
    plots = harness.plot_cases(rows, META, str(tmp_path))
    assert len(plots) == 4 and all(os.path.getsize(p) > 0 for p in plots)
    assert harness.plot_summary(harness.summary_rows([r for r in rows if r["provider"] == "eager"]), META,
                                str(tmp_path / "none.png")) is None


def test_failures_lists_failed_rows():
    failed = harness.failures(_synthetic_rows())
    assert len(failed) == 3 and all("fastloss-triton" in f and f.endswith("RuntimeError: broken") for f in failed)


def test_call_by_name_keeps_defaults_and_names_missing_parameters():
    def impl(a, b, flag=False):
        return a, b, flag

    assert bench_dispatch._call_by_name(impl, {"a": 1, "b": 2, "unused": 3}) == (1, 2, False)
    assert bench_dispatch._call_by_name(impl, {"a": 1, "b": 2, "flag": True}) == (1, 2, True)
    with pytest.raises(TypeError, match="'b'"):
        bench_dispatch._call_by_name(impl, {"a": 1})


def test_dispatch_paths_match_current_signatures():
    x = torch.randn(4, 3, requires_grad=True)
    labels = torch.tensor([0, 3, 1, 3])
    paths, errors = bench_dispatch._paths(x, labels)
    assert errors == {}
    assert set(paths) == {"public", "function", "custom_op", "kernels", "reference"}
    for name, make in paths.items():
        for mode in bench_dispatch.MODES:
            make(mode)()


def test_dispatch_main_fails_when_a_path_fails(monkeypatch, capsys):
    real = bench_dispatch.ops_pw._backward_impl

    def changed(*args, new_required):
        return real(*args)

    monkeypatch.setattr(bench_dispatch.ops_pw, "_backward_impl", changed)
    monkeypatch.setattr(bench_dispatch, "SIZES", ((2, 3),))
    assert bench_dispatch.main(["--device", "cpu", "--quick"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "new_required" in out


def test_dispatch_overhead_never_printed_negative():
    rows = []
    for path, us in (("public", 9.0), ("function", 12.0), ("custom_op", 20.0), ("kernels", 10.0), ("reference", 5.0)):
        rows.append({"shape": "(1, 1)", "numel": 1, "mode": "fwd", "path": path, "backend": "cpu", "median_us": us,
                     "p20_us": us - 1, "p80_us": us + 1, "calls": 10, "foreign_load": 1.3, "error": ""})
    bench_dispatch._add_relative(rows)
    by = {r["path"]: r for r in rows}
    assert by["public"]["overhead_us"] == -1.0 and by["reference"]["overhead_us"] is None
    text = bench_dispatch.format_dispatch(rows)
    assert bench_dispatch.NOISE in text and "+10.0" in text and "-1.0" not in text
    warnings = bench_dispatch.dispatch_warnings(rows)
    assert len(warnings) == 1 and "1.3" in warnings[0]  # names the foreign load


def _fake_module(monkeypatch, providers):
    """A benchmark module ``fake`` with one tiny case whose providers are ``providers``."""
    def make_inputs(device):
        x = torch.randn(8, device=device, requires_grad=True)
        return harness.Inputs(args=(x,), kwargs={}, grad_inputs=[x], bytes={}, numel=8)

    module = types.ModuleType("fake_bench")
    module.cases = lambda device, quick=False: [harness.Case(op="fake", label="tiny", dtype=torch.float32,
                                                            make_inputs=make_inputs, make_providers=lambda d: providers)]
    monkeypatch.setitem(sys.modules, "fake_bench", module)
    monkeypatch.setitem(run.OPS, "fake", "fake_bench")
    monkeypatch.setattr(harness, "measure_bandwidth", lambda device, quick=False: 1.0)


def _broken(x):
    raise RuntimeError("fake provider broke")


ARGS = ["--device", "cpu", "--quick", "--ops", "fake", "--no-dispatch", "--no-plots", "--budget", "0.01"]


def test_run_main_exit_status(monkeypatch, tmp_path, capsys):
    _fake_module(monkeypatch, {"eager": lambda x: (x * x).sum()})
    assert run.main(ARGS + ["--out", str(tmp_path / "ok")]) == 0
    assert (tmp_path / "ok" / "summary.csv").exists()

    _fake_module(monkeypatch, {"eager": lambda x: (x * x).sum(), "fastloss-fake": _broken})
    assert run.main(ARGS + ["--out", str(tmp_path / "bad")]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "fake tiny fp32 fastloss-fake fwd+bwd: RuntimeError: fake provider broke" in out
    with open(tmp_path / "bad" / "results.csv", newline="") as f:
        assert any(r["error"] for r in csv.DictReader(f))
    with open(tmp_path / "bad" / "metadata.json") as f:
        assert len(json.load(f)["failed"]) == 3


def test_run_main_fails_when_dispatch_fails(monkeypatch, tmp_path, capsys):
    _fake_module(monkeypatch, {"eager": lambda x: (x * x).sum()})

    def broken_dispatch(device, quick=False, log=print):
        raise RuntimeError("dispatch broke")

    monkeypatch.setattr(bench_dispatch, "run_dispatch", broken_dispatch)
    args = [a for a in ARGS if a != "--no-dispatch"]
    assert run.main(args + ["--out", str(tmp_path)]) == 1
    assert "dispatch benchmark: RuntimeError: dispatch broke" in capsys.readouterr().out
