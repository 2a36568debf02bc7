"""The benchmark script runs end to end on a tiny shape and records what it promises (no timing is asserted)."""

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "benchmarks"))

import bench_ckd  # noqa: E402


def test_bench_ckd_records_times_memory_and_ratios(tmp_path):
    record = bench_ckd.main(["--scale", "0.005", "--repeats", "1", "--models", "VBPR,BM3", "--device", "cpu",
                             "--data_root", str(tmp_path / "data"), "--output", str(tmp_path / "out")])
    vbpr, bm3 = record["results"]["VBPR"], record["results"]["BM3"]
    assert set(vbpr) == {"plain", "teacher", "student"} and set(bm3) == {"plain"}  # BM3 has no CKD parts
    for row in list(vbpr.values()) + list(bm3.values()):
        assert row["train_s_per_epoch"] > 0 and row["eval_s"] > 0 and len(row["train_runs"]) == 1
        assert row["peak_host_mib"] > 0 and row["peak_gpu_mib"] is None
    assert vbpr["student"]["train_ratio_to_plain"] == vbpr["student"]["train_s_per_epoch"] / vbpr["plain"]["train_s_per_epoch"]
    assert record["shape"] == {"n_users": 97, "n_items": 50, "n_interactions": 803}
    (json_file,) = (tmp_path / "out").glob("*.json")
    assert json.loads(json_file.read_text())["machine"]["device"] == "cpu"
    table = json_file.with_suffix(".md").read_text()
    assert "| VBPR | student |" in table and "| BM3 | plain |" in table


def test_bench_ckd_measures_only_the_parts_asked_for(tmp_path):
    record = bench_ckd.main(["--scale", "0.005", "--repeats", "1", "--models", "VBPR", "--parts", "student",
                             "--device", "cpu", "--data_root", str(tmp_path / "data"), "--output", str(tmp_path / "out")])
    (row,) = record["results"]["VBPR"].values()
    assert list(record["results"]["VBPR"]) == ["student"] and "train_ratio_to_plain" not in row
    assert "| VBPR | student |" in next((tmp_path / "out").glob("*.md")).read_text()


def test_bench_ckd_graphs_mode_records_the_user_graph_build(tmp_path):
    record = bench_ckd.main(["--scale", "0.005", "--repeats", "1", "--graphs", "--device", "cpu",
                             "--data_root", str(tmp_path / "data"), "--output", str(tmp_path / "out")])
    row = record["graphs"]["user_graph"]
    assert record["results"] == {} and row["k"] == 40 and len(row["build_runs"]) == 1
    assert row["build_s"] > 0 and row["peak_host_mib"] > 0 and 0 < row["train_pairs"] < 803
    assert 0 < row["edges"] <= 40 * record["shape"]["n_users"]
    table = next((tmp_path / "out").glob("*.md")).read_text()
    assert f"| user_graph | {row['train_pairs']} | 40 | {row['edges']} |" in table
