"""benchmarks/common.py: the timers and the results file every benchmark script uses."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "common.py"
_spec = importlib.util.spec_from_file_location("benchmarks_common", _PATH)
common = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(common)


def test_median_time_returns_the_median_and_the_last_result(monkeypatch):
    ticks = iter([0.0, 1.0, 10.0, 13.0, 20.0, 22.0])  # durations 1, 3, 2
    monkeypatch.setattr(common.time, "perf_counter", lambda: next(ticks))
    calls = []
    median, last = common.median_time(lambda: calls.append(len(calls)) or len(calls), 3)
    assert median == 2.0 and last == 3 and calls == [0, 1, 2]


def test_time_calls_pauses_the_collector_and_synchronises():
    events = []
    times, _ = common.time_calls(lambda: events.append(("call", common.gc.isenabled())), 2, pause_gc=True,
                                 sync=lambda: events.append("sync"))
    assert len(times) == 2 and all(t >= 0 for t in times)
    assert events == ["sync", ("call", False), "sync"] * 2
    assert common.gc.isenabled()


def test_interleaved_medians_warm_up_then_alternate():
    order = []
    medians = common.interleaved_medians({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, 2)
    assert set(medians) == {"a", "b"} and order == ["a", "b"] * 3


def test_write_json_creates_the_folder(tmp_path):
    out = common.write_json(tmp_path / "results" / "x.json", {"a": 1}, indent=2)
    assert json.loads(out.read_text()) == {"a": 1}


def test_device_name_names_the_cpu():
    assert common.device_name() == common.device_name("cpu") == common.cpu_name() != ""


@pytest.mark.cuda
def test_device_name_names_the_gpu():
    assert common.device_name("cuda") == torch.cuda.get_device_name(0)
