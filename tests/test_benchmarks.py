"""The benchmark script on a tiny shape: what it records, with a fake clock standing in for
``time.perf_counter``, so medians and ratios are checked against known durations (wall time is
never asserted)."""

import json
import os
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))

import bench_ckd  # noqa: E402


class FakeClock:
    """``perf_counter`` for code that reads it twice per timed call (start, end): the n-th timed
    call lasts ``durations[n]`` seconds."""

    def __init__(self, durations):
        self.durations, self.now, self.running = iter(durations), 0.0, False

    def __call__(self):
        if self.running:
            self.now += next(self.durations)
        self.running = not self.running
        return self.now


def fake_clock(monkeypatch, durations):
    monkeypatch.setattr(bench_ckd, "time", types.SimpleNamespace(perf_counter=FakeClock(durations)))


def bench(tmp_path, *args):
    return bench_ckd.main(["--scale", "0.005", "--device", "cpu", "--data_root", str(tmp_path / "data"),
                           "--output", str(tmp_path / "out"), *args])


def test_timed_is_the_median_of_the_repeats_after_a_warm_up(monkeypatch):
    fake_clock(monkeypatch, [4.0, 1.0, 2.0])  # median 2, mean 7/3
    calls = []
    assert bench_ckd.timed(lambda: calls.append(1), 3, "cpu") == (2.0, [4.0, 1.0, 2.0])
    assert len(calls) == 4  # the warm-up is run, not timed


def test_bench_ckd_records_times_memory_and_ratios(tmp_path, monkeypatch):
    # per part: three training epochs, then three evaluations (VBPR: plain, teacher, student; BM3: plain)
    # (medians, never means or first runs)
    fake_clock(monkeypatch, [4.0, 1.0, 2.0, 0.5, 0.5, 0.5,  # VBPR plain: median epoch 2
                             4.0, 8.0, 3.0, 1.0, 1.0, 1.0,  # teacher: 4
                             6.0, 12.0, 5.0, 0.25, 1.5, 0.5,  # student: 6, evaluation 0.5
                             1.0, 1.0, 1.0, 1.0, 1.0, 1.0])  # BM3 plain
    record = bench(tmp_path, "--repeats", "3", "--models", "VBPR,BM3")
    vbpr, bm3 = record["results"]["VBPR"], record["results"]["BM3"]
    assert list(vbpr) == ["plain", "teacher", "student"] and list(bm3) == ["plain"]  # BM3 has no CKD parts
    assert vbpr["plain"]["train_runs"] == [4.0, 1.0, 2.0] and vbpr["plain"]["train_s_per_epoch"] == 2.0
    assert vbpr["student"]["eval_runs"] == [0.25, 1.5, 0.5] and vbpr["student"]["eval_s"] == 0.5
    # each part's median over the plain backbone's, both measured in this run
    ratios = {part: row["train_ratio_to_plain"] for part, row in vbpr.items()}
    assert ratios == {"plain": 1.0, "teacher": 2.0, "student": 3.0}
    assert "train_ratio_to_plain" not in bm3["plain"]  # no CKD parts to compare
    for row in list(vbpr.values()) + list(bm3.values()):
        assert row["peak_host_mib"] > 0 and row["peak_gpu_mib"] is None
    assert record["shape"] == {"n_users": 97, "n_items": 50, "n_interactions": 803} and record["repeats"] == 3
    (json_file,) = (tmp_path / "out").glob("*.json")
    assert json.loads(json_file.read_text()) == record
    table = json_file.with_suffix(".md").read_text()
    assert "| VBPR | student | 6.000 | 3.00 | 0.500 |" in table and "| BM3 | plain | 1.000 | - | 1.000 |" in table


def test_bench_ckd_measures_only_the_parts_asked_for(tmp_path):
    record = bench(tmp_path, "--repeats", "1", "--models", "VBPR", "--parts", "student")
    (row,) = record["results"]["VBPR"].values()
    assert list(record["results"]["VBPR"]) == ["student"] and "train_ratio_to_plain" not in row
    assert len(row["train_runs"]) == 1 and len(row["eval_runs"]) == 1
    assert "| VBPR | student |" in next((tmp_path / "out").glob("*.md")).read_text()


def test_a_backbone_that_fails_is_recorded_and_the_others_are_measured(tmp_path, monkeypatch):
    real = bench_ckd.bench_backbone

    def out_of_memory_for_vbpr(backbone, *args):
        if backbone == "VBPR":
            raise RuntimeError("out of memory\nthe rest of the message")
        return real(backbone, *args)

    monkeypatch.setattr(bench_ckd, "bench_backbone", out_of_memory_for_vbpr)
    record = bench(tmp_path, "--repeats", "1", "--models", "VBPR,BM3")
    assert record["results"]["VBPR"] == {"error": "out of memory"} and list(record["results"]["BM3"]) == ["plain"]
    table = next((tmp_path / "out").glob("*.md")).read_text()
    assert "| VBPR | failed: out of memory |" in table and "| BM3 | plain |" in table


def test_bench_ckd_graphs_mode_records_the_user_graph_build(tmp_path):
    record = bench_ckd.main(["--scale", "0.005", "--repeats", "1", "--graphs", "--device", "cpu",
                             "--data_root", str(tmp_path / "data"), "--output", str(tmp_path / "out")])
    row = record["graphs"]["user_graph"]
    assert record["results"] == {} and row["k"] == 40 and len(row["build_runs"]) == 1
    assert row["build_s"] > 0 and row["peak_host_mib"] > 0 and 0 < row["train_pairs"] < 803
    assert 0 < row["edges"] <= 40 * record["shape"]["n_users"]
    table = next((tmp_path / "out").glob("*.md")).read_text()
    assert f"| user_graph | {row['train_pairs']} | 40 | {row['edges']} |" in table
