"""The side-by-side benchmark runs end to end on a tiny shape: this checkout against itself as the
baseline, and stand-ins for an MMRec checkout and for the CKD authors' code that implement only
the interface the benchmark calls (no timing is asserted)."""

import json
import os
import sys
import textwrap

import numpy as np
from conftest import write_tiny_mmrec

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import bench_reference  # noqa: E402

# the names MMRec's code is imported by (src/ on the path, the checkout as working directory)
FAKE_MMREC = {
    "src/utils/configurator.py": '''
        import os
        class Config(dict):
            def __init__(self, model, dataset, config_dict):
                assert os.path.isdir("src"), "MMRec runs from its checkout"
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
                sum(range(10000))
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
    assert "Recorded earlier, not this run" in table and "Reference columns absent" not in table


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
