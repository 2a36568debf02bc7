"""The side-by-side benchmark: its turns, medians and ratios with stand-in workers that report
known seconds; and end to end on a tiny shape, this checkout against itself as the baseline and
stand-ins for an MMRec checkout and for the CKD authors' code that implement only the interface
the benchmark calls (no wall time is asserted)."""

import argparse
import json
import os
import sys
import textwrap
import types

import numpy as np
import pytest
from conftest import write_tiny_mmrec

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import bench_reference  # noqa: E402

# the names MMRec's code is imported by (src/ on the path and the working directory)
FAKE_MMREC = {
    "src/utils/configurator.py": '''
        import os
        class Config(dict):
            def __init__(self, model, dataset, config_dict):
                assert os.path.basename(os.getcwd()) == "src", "MMRec runs from its src/ folder"
                super().__init__(config_dict, model=model, dataset=dataset, device="cpu", train_batch_size=64,
                                 eval_batch_size=64, hyper_parameters=["seed", "reg_weight", "n_layers"],
                                 seed=[999], reg_weight=[0.5, 1e-05], n_layers=[3, 4])
            def __getitem__(self, key):
                return self.get(key)
        ''',
    "src/utils/dataset.py": '''
        import os
        class RecDataset:
            def __init__(self, config):
                path = os.path.join(config["data_path"] + config["dataset"], config["inter_file_name"])
                assert os.path.isfile(path), path
            def split(self):
                return self, self, self
            def __str__(self):  # as MMRec's: str() sets inter_num, which its loaders read
                self.inter_num = 1
                return "RecDataset"
        ''',
    "src/utils/dataloader.py": '''
        class TrainDataLoader:
            def __init__(self, config, dataset, batch_size, shuffle):
                assert dataset.inter_num
            def pretrain_setup(self):
                pass
        class EvalDataLoader:
            def __init__(self, config, dataset, additional_dataset, batch_size):
                assert dataset.inter_num
        ''',
    "src/utils/utils.py": '''
        def init_seed(seed):
            assert seed == 2024
        class Model:
            def __init__(self, config, train):
                pass
            def to(self, device):
                return self
            def pre_epoch_processing(self):
                pass
        class Trainer:
            def __init__(self, config, model, mg):
                self.model, self.epochs = model, config["epochs"] or 1000
            def _train_epoch(self, train, epoch):
                pass
            def evaluate(self, valid):
                pass
            def fit(self, train, valid_data, test_data, saved, verbose):  # stops early after 3 epochs (or fewer)
                for epoch in range(min(3, self.epochs)):
                    self.model.pre_epoch_processing()
                    self._train_epoch(train, epoch)
                return 0.5, {"recall@20": 0.5}, {"recall@20": 0.25, "ndcg@20": 0.125, "map@20": 0.1}
        def get_model(name):
            return Model
        def get_trainer():
            return Trainer
        ''',
}
FAKE_CKD_REFERENCE = {
    "codes/train_kd.py": '''
        import sys
        epochs = int(sys.argv[sys.argv.index("--epoch") + 1])
        for epoch in range(epochs):
            print("Epoch %d [%.1fs]: train==[1.0=1.0 + 0.0 + 0.0 + 0.0]" % (epoch, 0.5 + epoch))
        raise NameError("test_ret")  # as the authors' script ends without a validation
        ''',
}


def write_tree(root, files):
    for path, text in files.items():
        os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
        with open(os.path.join(root, path), "w") as f:
            f.write(textwrap.dedent(text))
    return str(root)


@pytest.mark.slow
def test_side_by_side_with_a_baseline_and_both_references(tmp_path):
    mmrec = write_tree(tmp_path / "MMRec", FAKE_MMREC)
    ckd = write_tree(tmp_path / "Balanced-Multimodal-Rec", FAKE_CKD_REFERENCE)
    record = bench_reference.main(["--shape", "devset", "--scale", "0.02", "--models", "VBPR", "--repeats", "2",
                                   "--evals", "1", "--baseline", ROOT, "--mmrec", mmrec, "--ckd_reference", ckd,
                                   "--data_root", str(tmp_path / "data"), "--output", str(tmp_path / "out")])
    vbpr = record["results"]["VBPR"]
    commit = bench_reference.checkout_commit(ROOT)  # results name a checkout by its commit, not its path
    assert record["ours"] == record["baseline"] == commit and "/" not in commit
    assert record["mmrec"] == record["ckd_reference"] == "a copy outside git"
    assert "--mmrec <mmrec>" in record["command"] and "--output <output>" in record["command"]
    assert set(vbpr["plain"]) == {"ours", "baseline", "mmrec"}
    assert set(vbpr["student"]) == {"ours", "baseline", "ckd_reference"}
    for part in ("plain", "student"):
        for kind in ("ours", "baseline"):
            run = vbpr[part][kind]
            assert len(run["train_runs"]) == 2 and len(run["eval_runs"]) == 1 and run["code"] == commit
    # MMRec's grids are set to our values where they list them (VBPR's reg_weight 1e-5), else their first
    assert vbpr["plain"]["mmrec"]["settings"] == {"seed": 2024, "reg_weight": 1e-05, "n_layers": 3}
    assert len(vbpr["plain"]["mmrec"]["eval_runs"]) == 1
    # the authors' logged epoch times, the first (warm-up) dropped
    assert vbpr["student"]["ckd_reference"]["train_runs"] == [1.5, 2.5]
    assert [line.split(":")[0] for line in vbpr["student"]["ckd_reference"]["log"]] == [
        "Epoch 0 [0.5s]", "Epoch 1 [1.5s]", "Epoch 2 [2.5s]"]  # its loss lines are kept
    (json_file,) = (tmp_path / "out").glob("bench_reference-*.json")
    assert str(tmp_path) not in json_file.read_text() + json_file.with_suffix(".md").read_text()
    assert json.loads(json_file.read_text())["machine"]["torch_threads"] == 1
    table = json_file.with_suffix(".md").read_text()
    assert "| VBPR | plain |" in table and "(MMRec)" in table and "(CKD authors)" in table
    assert "Reference columns absent" not in table
    student_row = next(line for line in table.splitlines() if line.startswith("| VBPR | student |"))
    assert "| 2.000 (CKD authors) |" in student_row  # the median of its logged 1.5 and 2.5 s


@pytest.mark.slow
def test_without_references_their_columns_say_not_measured(tmp_path):
    record = bench_reference.main(["--shape", "devset", "--scale", "0.02", "--models", "BM3", "--repeats", "1",
                                   "--evals", "0", "--data_root", str(tmp_path / "data"),
                                   "--output", str(tmp_path / "out")])
    assert set(record["results"]["BM3"]) == {"plain"} and set(record["results"]["BM3"]["plain"]) == {"ours"}
    table = next((tmp_path / "out").glob("*.md")).read_text()
    assert "Reference columns absent for `--mmrec` and `--ckd_reference`" in table
    assert "| BM3 | plain |" in table and "not measured" in table


def test_the_ckd_reference_data_are_our_split_in_its_layout(tmp_path):
    path, df, features = write_tiny_mmrec(str(tmp_path / "data"), rows=[
        (0, 3, 1.0, 1, 0), (0, 1, 1.0, 2, 0), (0, 2, 1.0, 3, 1), (1, 0, 1.0, 4, 0), (1, 4, 1.0, 5, 2)])
    commands = bench_reference.write_ckd_reference_data(path, str(tmp_path / "ckd"), "toy")
    target = tmp_path / "ckd" / "data" / "toy"
    splits = {s: json.loads((target / "5-core" / f"{s}.json").read_text()) for s in ("train", "val", "test")}
    assert splits == {"train": {"0": [3, 1], "1": [0]}, "val": {"0": [2]}, "test": {"1": [4]}}
    for m, name in (("v", "image_feat.npy"), ("t", "text_feat.npy")):
        assert (np.load(target / name) == features[m]).all()
    assert [c.split("--train_type ")[1][0] for c in commands] == ["2", "3"]  # its textual and visual teachers


# ----------------------------------------------------------------------------- turns, medians, ratios
class FakeWorker:
    """A worker that is set up at once (or fails to be) and reports the next of its scripted
    seconds for each "train" or "eval" asked; ``asked`` records the order of the requests."""

    seconds, failing, asked = {}, set(), []

    def __init__(self, kind, code, model, dataset, args, ours_settings="{}"):
        self.key, self.code, self.info = (kind, model), code, None
        self.left = {what: iter(values) for what, values in self.seconds[kind, model].items()}

    def ready(self):
        if self.info is None:
            failed = self.key in self.failing
            self.info = {"error": "ImportError: no src"} if failed else {"ready": True, "code": self.code}
        return "error" not in self.info

    def time(self, what):
        self.asked.append((self.key, what))
        return next(self.left[what])

    def close(self):
        self.asked.append((self.key, "closed"))


def test_epochs_run_in_turns_and_each_is_the_median_of_its_runs(monkeypatch):
    FakeWorker.seconds = {
        ("ours", "VBPR"): {"train": [4.0, 1.0, 2.0], "eval": [0.5, 0.25, 2.0]},  # medians, never means
        ("ours", "VBPR_CKD"): {"train": [6.0, 12.0, 5.0], "eval": [1.0, 4.0, 1.5]},
        ("baseline", "VBPR"): {"train": [9.0, 8.0, 1.0], "eval": [None] * 3},  # no evaluation: not a number
        ("mmrec", "VBPR"): {},
    }
    FakeWorker.failing, FakeWorker.asked = {("mmrec", "VBPR")}, []
    monkeypatch.setattr(bench_reference, "Worker", FakeWorker)
    monkeypatch.setattr(bench_reference, "our_settings", lambda *args: "{}")
    jobs = [("plain", "ours", ROOT, "VBPR"), ("student", "ours", ROOT, "VBPR_CKD"),
            ("plain", "baseline", "/b", "VBPR"), ("plain", "mmrec", "/m", "VBPR")]
    args = types.SimpleNamespace(repeats=3, evals=3, ckd_reference_dataset="x")
    runs = bench_reference.time_side_by_side("VBPR", jobs, "tiny", args)

    plain, student, baseline = ("ours", "VBPR"), ("ours", "VBPR_CKD"), ("baseline", "VBPR")
    turns = [[plain, student, baseline], [baseline, student, plain]]  # the order reversed every other turn
    expected = [(key, "train") for turn in (0, 1, 0) for key in turns[turn]]
    expected += [(key, "eval") for turn in (0, 1, 0) for key in turns[turn]]
    assert FakeWorker.asked[: len(expected)] == expected  # the failed worker is never timed
    assert sorted(FakeWorker.asked[len(expected):]) == sorted((key, "closed") for key in FakeWorker.seconds)
    assert runs["plain", "ours"] == {"train_runs": [4.0, 1.0, 2.0], "eval_runs": [0.5, 0.25, 2.0], "code": ROOT,
                                     "train_s_per_epoch": 2.0, "eval_s": 0.5}
    assert runs["student", "ours"]["train_s_per_epoch"] == 6.0 and runs["student", "ours"]["eval_s"] == 1.5
    assert runs["plain", "baseline"]["train_s_per_epoch"] == 8.0 and runs["plain", "baseline"]["eval_s"] is None
    assert runs["plain", "mmrec"] == {"error": "ImportError: no src"}


def test_the_table_divides_the_medians_it_shows():
    def measured(train, evaluation=None):
        return {"train_s_per_epoch": train, "eval_s": evaluation}

    record = {"baseline": "/b", "results": {"VBPR": {
        "plain": {"ours": measured(2.0, 0.5), "baseline": measured(4.0), "mmrec": measured(8.0, 1.0)},
        "student": {"ours": measured(3.0), "baseline": {"error": "boom"}, "ckd_reference": measured(1.5)},
    }}}
    head, _, plain, student = bench_reference.table(record)
    assert head == ("| backbone | part | ours s/epoch | baseline s/epoch | ours / baseline | reference s/epoch | "
                    "ours / reference | student / plain (ours) | student / plain (baseline) | ours eval s | "
                    "reference eval s |")
    assert plain == "| VBPR | plain | 2.000 | 4.000 | 0.50 | 8.000 (MMRec) | 0.25 | 1.00 | 1.00 | 0.500 | 1.000 |"
    assert student == "| VBPR | student | 3.000 | failed | - | 1.500 (CKD authors) | 2.00 | 1.50 | - | - | - |"


# ----------------------------------------------------------------------------- accuracy (--accuracy)
def measured_runs(ours, mmrec=None):
    """Records of ``ours`` and ``mmrec`` runs given as ``(recall, ndcg)`` pairs (None: MMRec not run)."""
    def record(recall, ndcg, epochs, seconds):
        return {"test": {"recall@20": recall, "ndcg@20": ndcg}, "epochs": epochs, "s_per_epoch": seconds}

    runs = {"ours": [record(r, n, 40 + k, 0.1 * (k + 1)) for k, (r, n) in enumerate(ours)]}
    if mmrec is not None:
        runs["mmrec"] = [record(r, n, 60, 0.5) for r, n in mmrec]
    return runs


def test_the_parity_table_gives_the_gap_in_units_of_our_seed_std():
    # ours: recall 0.10 / 0.12 / 0.14 (mean 0.12, sample std 0.02), ndcg 0.05 / 0.06 / 0.07 (0.06, 0.01)
    runs = measured_runs([(0.10, 0.05), (0.12, 0.06), (0.14, 0.07)], mmrec=[(0.17, 0.07)])
    head, _, recall, ndcg, epochs, seconds = bench_reference.accuracy_table("LATTICE", runs)
    assert head == "| LATTICE | ours (3 seeds) | MMRec (1 seed) | gap (our std) | within 2 std |"
    assert recall == "| test Recall@20 | 0.1200 ± 0.0200 | 0.1700 | +2.50 | no |"  # (0.17 - 0.12) / 0.02
    assert ndcg == "| test NDCG@20 | 0.0600 ± 0.0100 | 0.0700 | +1.00 | yes |"
    assert epochs == "| epochs trained | 40, 41, 42 | 60 | | |"
    assert seconds == "| median s/epoch | 0.200 | 0.500 | | |"
    gap, within = bench_reference.parity([0.10, 0.12, 0.14], [0.08])
    assert gap == pytest.approx(-2.0) and within  # exactly 2 std below: still parity


def test_without_mmrec_runs_the_reference_is_not_measured_never_a_number():
    runs = measured_runs([(0.10, 0.05), (0.12, 0.06)])
    _, _, recall, _, epochs, seconds = bench_reference.accuracy_table("EgoGCN", runs)
    assert recall == "| test Recall@20 | 0.1100 ± 0.0141 | not measured | - | - |"
    assert epochs.endswith("| not measured | | |") and seconds.endswith("| not measured | | |")
    # one seed of ours has no spread: no gap and no verdict
    assert bench_reference.parity([0.1], [0.2]) == (None, None)
    # a deterministic model (ItemKNNCBF): no spread, so parity means the same value to 4 decimals
    assert bench_reference.parity([0.1156, 0.1156], [0.1156]) == (0.0, True)
    assert bench_reference.parity([0.1156, 0.1156], [0.1157]) == (None, False)
    failed = {**measured_runs([(0.1, 0.05), (0.2, 0.06)]), "mmrec": [{"error": "KeyError: 'x'"}]}
    table = bench_reference.accuracy_table("VBPR", failed)
    assert "| failed: KeyError: 'x' | - | - |" in table[2] and "| failed | - | - |" in table[3]


def test_the_page_says_which_backbones_did_not_finish(tmp_path):
    record = {"dataset": "devset-x0.3-s2024", "shape": bench_reference_shape(), "data_seed": 2024, "command": "c",
              "machine": {"cpu_count": 2, "processor": "x86_64", "platform": "Linux", "torch": "2", "device": "cpu"},
              "ours": "abc", "mmrec": "def+dirty", "seeds": [1, 2], "mmrec_seeds": (1, {"VBPR": 2}), "max_epochs": None,
              "models": ["VBPR", "BM3"], "not_in_this_project": ["LightGCN"],
              "results": {"VBPR": measured_runs([(0.1, 0.05), (0.2, 0.06)], mmrec=[(0.3, 0.07)])}}
    record["results"]["VBPR"]["mmrec"][0]["code"] = "e775373+dirty"  # a cached run keeps its code's commit
    lines = bench_reference.write_parity_page(record, str(tmp_path / "mmrec-parity"))
    assert any(line.endswith("ours: -; MMRec: e775373+dirty") for line in lines)
    bm3 = lines.index("## BM3")
    assert lines[bm3 + 2] == "not measured (run did not finish)"
    assert "- MMRec's LightGCN: not in this project yet." in lines and "- EgoGCN (this project) is not in MMRec." in lines
    assert any(line.startswith("Edits to MMRec needed") for line in lines)  # its checkout had local changes
    assert "- outside 2 std on at least one metric: VBPR" in lines  # recall (0.3 - 0.15) / 0.0707 = +2.12 std

    assert json.loads((tmp_path / "mmrec-parity.json").read_text())["results"]["VBPR"]["mmrec"][0]["epochs"] == 60


def bench_reference_shape():
    return {"n_users": 900, "n_items": 360, "n_interactions": 9014,
            "modalities": {"v": ("image_feat.npy", 512, 0.3), "t": ("text_feat.npy", 384, 0.8)}}


def test_each_run_is_cached_per_seed_and_a_rerun_trains_nothing(tmp_path, monkeypatch):
    trained = []

    def stand_in(kind, code, backbone, dataset, seed, path, args, ours_settings="{}"):
        trained.append((kind, backbone, seed))
        record = {"test": {"recall@20": 0.1 * seed, "ndcg@20": 0.0}, "epochs": 1, "s_per_epoch": 0.1}
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(record, f)
        return record

    monkeypatch.setattr(bench_reference, "fit_cell", stand_in)
    monkeypatch.setattr(bench_reference, "our_settings", lambda *args: "{}")
    args = types.SimpleNamespace(data_root=str(tmp_path), seeds=2, mmrec_seeds=(1, {"BM3": 3}), mmrec=str(tmp_path / "m"),
                                 seed=5)
    first = bench_reference.accuracy_runs("GRCN", "tiny", args, log=lambda message: None)
    assert trained == [("ours", "GRCN", 5), ("ours", "GRCN", 6), ("mmrec", "GRCN", 5)]
    again = bench_reference.accuracy_runs("GRCN", "tiny", args, log=lambda message: None)
    assert again == first and len(trained) == 3  # every run came from its cell
    args.seeds = 3  # one more seed of ours: only that one trains
    bench_reference.accuracy_runs("GRCN", "tiny", args, log=lambda message: None)
    assert trained[3:] == [("ours", "GRCN", 7)]
    bench_reference.accuracy_runs("BM3", "tiny", args, log=lambda message: None)  # --mmrec_seeds 1,BM3=3
    assert [(kind, seed) for kind, backbone, seed in trained if backbone == "BM3"] == [
        ("ours", 5), ("ours", 6), ("ours", 7), ("mmrec", 5), ("mmrec", 6), ("mmrec", 7)]
    assert len(os.listdir(tmp_path / "parity-cells" / "tiny")) == 10
    assert bench_reference.seed_counts("1,BM3=3,GRCN=3") == (1, {"BM3": 3, "GRCN": 3})
    assert bench_reference.describe_seeds((1, {"BM3": 3, "GRCN": 3}), 2024) == "2024; 2024, 2025, 2026 for BM3, GRCN"
    assert bench_reference.describe_seeds((1, {"MVGAE": 0}), 2024) == "2024; none for MVGAE"
    with pytest.raises(argparse.ArgumentTypeError, match="BM3=3"):
        bench_reference.seed_counts("1,BM3")


def test_the_user_graph_for_mmrec_is_the_training_split_s_co_interactions(tmp_path):
    # training rows: user 0 has items 0, 1, 2; user 1 has 0, 1; user 2 has 2; user 3 has 4 (its 3 is a test row)
    rows = [(0, 0, 1.0, 1, 0), (0, 1, 1.0, 2, 0), (0, 2, 1.0, 3, 0), (1, 0, 1.0, 4, 0), (1, 1, 1.0, 5, 0),
            (2, 2, 1.0, 6, 0), (3, 4, 1.0, 7, 0), (3, 3, 1.0, 8, 2), (2, 3, 1.0, 9, 0)]
    path, _, _ = write_tiny_mmrec(str(tmp_path), rows=rows, n_items=5)
    graph = np.load(bench_reference.write_user_graph_dict(path), allow_pickle=True).item()
    assert graph == {0: [[1, 2], [2.0, 1.0]], 1: [[0], [2.0]], 2: [[0], [1.0]], 3: [[], []]}


@pytest.mark.slow
def test_accuracy_end_to_end_with_a_stand_in_mmrec(tmp_path, monkeypatch):
    mmrec = write_tree(tmp_path / "MMRec", {**FAKE_MMREC, "src/configs/model/VBPR.yaml": "", "src/configs/model/BPR.yaml": ""})
    argv = ["--accuracy", "--shape", "devset", "--scale", "0.02", "--models", "VBPR", "--seeds", "1",
            "--max_epochs", "2", "--mmrec", mmrec, "--data_root", str(tmp_path / "data"), "--output", str(tmp_path / "out")]
    record = bench_reference.main(argv)
    (ours,), (theirs,) = record["results"]["VBPR"]["ours"], record["results"]["VBPR"]["mmrec"]
    assert ours["epochs"] == 2 and len(ours["seconds"]) == 2 and set(ours["test"]) == {"recall@20", "ndcg@20"}
    assert theirs["test"] == {"recall@20": 0.25, "ndcg@20": 0.125} and theirs["epochs"] == 2  # its fit, capped
    assert theirs["settings"] == {"seed": 2024, "reg_weight": 1e-05, "n_layers": 3}
    assert record["not_in_this_project"] == ["BPR"]
    page = (tmp_path / "out" / "mmrec-parity.md").read_text()
    assert "| test Recall@20 | " in page and "| 0.2500 |" in page and str(tmp_path) not in page

    def no_training(*args, **kwargs):
        raise AssertionError("a cached run was trained again")

    monkeypatch.setattr(bench_reference, "fit_cell", no_training)
    assert bench_reference.main(argv)["results"] == record["results"]
