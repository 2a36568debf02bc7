"""The side-by-side benchmark: its turns, medians and ratios with stand-in workers that report
known seconds; and end to end on a tiny shape, this checkout against itself as the baseline and
stand-ins for an MMRec checkout and for the CKD authors' code that implement only the interface
the benchmark calls (no wall time is asserted)."""

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
                assert os.path.isdir("configs"), "MMRec runs from its src/ folder"
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
                pass
            def _train_epoch(self, train, epoch):
                pass
            def evaluate(self, valid):
                pass
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
