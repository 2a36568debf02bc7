"""Leaderboards: table arithmetic by hand, cell caching and resume, the page and its plots."""

import json
import math
import os
import re
import struct

import pytest
from conftest import fast_args, fast_config

from recbole_ckd import leaderboard as lb
from recbole_ckd.run_keys import RUN_KEY_LENGTH


def test_mean_and_sample_std():
    assert lb.mean_std([0.10, 0.12, 0.14]) == pytest.approx((0.12, 0.02))
    assert lb.mean_std([0.5]) == (0.5, 0.0)


def test_relative_improvement():
    assert lb.relative_improvement(0.11, 0.10) == pytest.approx(0.1)
    assert lb.relative_improvement(0.09, 0.10) == pytest.approx(-0.1)
    assert lb.relative_improvement(0.1, 0.0) is None


def test_paired_t_test_by_hand():
    # differences 0.01, 0.02, 0.01: mean 0.013333, sd 0.0057735, t = 4.0 with 2 degrees of freedom;
    # for df = 2 the two-sided p is 1 - t / sqrt(2 + t^2) = 1 - 4 / sqrt(18)
    t, p = lb.paired_t_test([0.11, 0.14, 0.15], [0.10, 0.12, 0.14])
    assert t == pytest.approx(4.0)
    assert p == pytest.approx(1 - 4 / math.sqrt(18))
    assert lb.paired_t_test([0.1], [0.2]) is None
    assert lb.paired_t_test([0.5, 0.75], [0.25, 0.5]) == (math.inf, 0.0)  # identical differences
    assert lb.paired_t_test([0.10, 0.11, 0.12], [0.14, 0.15, 0.16]) == (-math.inf, 0.0)  # identical but for rounding
    assert lb.paired_t_test([0.1, 0.2], [0.1, 0.2]) == (0.0, 1.0)


def fake_record(model, seed, recall20, modes=None, stats=None):
    metrics = {m: recall20 for m in lb.TABLE_METRICS}
    return {"model": model, "seed": seed, "test_masking": "train", "valid_metric": "Recall@20", "best_valid_score": recall20,
            "test_result": metrics, "valid_result": metrics, "modes": modes or {}, "epoch_stats": stats or [],
            "dataset_statistics": {"users": 3, "items": 4, "interactions": 9, "split": {"train": 7, "valid": 1, "test": 1}}}


def test_summary_and_variant_comparison():
    cells = {
        "VBPR": [fake_record("VBPR", s, v) for s, v in zip((1, 2, 3), (0.10, 0.12, 0.14))],
        "VBPR_CKD": [fake_record("VBPR_CKD", s, v) for s, v in zip((1, 2, 3), (0.11, 0.14, 0.15))],
    }
    summary = lb.summarize(cells)
    assert summary["VBPR"]["recall@20"][:2] == pytest.approx((0.12, 0.02))
    (row, *_) = [r for r in lb.variant_comparisons(summary, cells) if r["metric"] == "recall@20"]
    assert row["improvement"] == pytest.approx((0.4 / 3 - 0.12) / 0.12)
    assert row["t"] == pytest.approx(4.0) and row["p"] == pytest.approx(1 - 4 / math.sqrt(18))
    table = lb.method_table(summary, lb.PUBLISHED["baby"])
    assert "| VBPR | 0.1200 ± 0.0200 |" in table and "recall@20 (ref.)" in table and "0.0663" in table


def test_each_ablation_is_compared_with_the_full_method():
    cells = {label: [{**fake_record(model, s, v), "overrides": overrides} for s, v in zip((1, 2, 3), values)]
             for label, model, overrides, values in (
                 ("VBPR", "VBPR", {}, (0.09, 0.10, 0.11)),
                 ("VBPR_CKD", "VBPR_CKD", {}, (0.11, 0.14, 0.15)),
                 ("VBPR_CKD-uniform_weights", "VBPR_CKD", {"ckd_weighting": "uniform"}, (0.10, 0.12, 0.14)),
                 ("VBPR_MDrop", "VBPR_MDrop", {}, (0.10, 0.10, 0.10)))}
    summary = lb.summarize(cells)
    rows = lb.ablation_comparisons(summary, cells)
    assert {(r["model"], r["backbone"]) for r in rows} == {("VBPR_CKD-uniform_weights", "VBPR_CKD")}
    (row,) = [r for r in rows if r["metric"] == "recall@20"]
    assert row["improvement"] == pytest.approx((0.12 - 0.4 / 3) / (0.4 / 3))
    assert row["t"] == pytest.approx(-4.0) and row["p"] == pytest.approx(1 - 4 / math.sqrt(18))
    table = lb.comparison_table(rows, 3, "CKD", "ablation")
    assert table.startswith("| ablation | metric | CKD | ablation | improvement | paired t | p |")
    assert "| VBPR_CKD-uniform_weights | recall@20 | 0.1333 | 0.1200 | -10.00% | -4.00 | 0.0572 |" in table
    assert "(same seed, same data, CKD vs its ablation)" in table


def test_reference_rows_from_other_code_say_so():
    """A published number beside a backbone that follows other code than the source ran: the page names that code."""
    from recbole_ckd.leaderboard.page import _other_code

    summary = {name: {} for name in ("BPR", "VBPR", "FREEDOM", "MMGCN", "LGMRec")}
    note = _other_code(summary, lb.PUBLISHED["baby"])
    assert "VBPR follows the CKD authors' code, MMGCN follows the CKD authors' code" in note
    for other in ("FREEDOM", "BPR", "LGMRec"):  # MMRec's own code, or no reference row
        assert not re.search(rf"\b{other}\b", note), other
    assert _other_code({"FREEDOM": {}}, lb.PUBLISHED["baby"]) == ""


def results_row(page_text, label):
    """``{column: cell}`` of one row of the page's results table."""
    lines = page_text.split("## Results (test)")[1].strip().splitlines()
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    (row,) = [line for line in lines if line.startswith(f"| {label} |")]
    return dict(zip(head, (c.strip() for c in row.strip("|").split("|"))))


@pytest.mark.parametrize("masking", ["train", "train_valid"])
def test_published_reference_columns_name_each_rows_source(tmp_path, masking):
    """Clothing: VBPR's numbers from SMORE's table, LATTICE's from MENTOR's (@20 only), none for DRAGON;
    a page under RecBole's masking shows none, another protocol than theirs."""
    cells = {model: [{**fake_record(model, 1, 0.1), "test_masking": masking}]
             for model in ("VBPR", "LATTICE", "DRAGON")}
    text = open(lb.write_page("clothing", cells, str(tmp_path))).read()
    if masking == "train_valid":
        assert "(ref.)" not in text and "Reference columns" not in text
        return
    vbpr, lattice, dragon = (results_row(text, label) for label in ("VBPR", "LATTICE", "DRAGON"))
    assert vbpr["recall@10 (ref.)"] == "0.0281" and vbpr["ndcg@20 (ref.)"] == "0.0190"
    assert lattice["recall@20 (ref.)"] == "0.0733" and lattice["ndcg@20 (ref.)"] == "0.0330"
    assert lattice["recall@10 (ref.)"] == lattice["ndcg@10 (ref.)"] == "-"  # MENTOR's table reports @20 only
    assert {dragon[f"{m} (ref.)"] for m in ("recall@10", "recall@20", "ndcg@10", "ndcg@20")} == {"-"}
    assert "precision@10 (ref.)" not in vbpr  # no source reports precision
    (paragraph,) = [line for line in text.splitlines() if line.startswith("Reference columns")]
    assert f"VBPR: {lb.SOURCES['smore']}" in paragraph and f"LATTICE: {lb.SOURCES['mentor']}" in paragraph
    assert "DRAGON" not in paragraph and lb.SOURCES["mmrec"] not in paragraph
    assert "VBPR follows the CKD authors' code" in paragraph


def page_line(text, start):
    (line,) = [line for line in text.splitlines() if line.startswith(start)]
    return line


@pytest.mark.parametrize("seeds, given", [([2020, 2021, 2022], "3"), ([1, 5], "1,5"), ([7], "7,"), ([2021, 2022], "2021,2022")])
def test_a_page_gives_the_whole_command_that_writes_it(tmp_path, monkeypatch, seeds, given):
    """The page's command names the dataset, the models (a study's backbones) and the seeds, which parse back."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("epochs: 5\n")
    cells = {label: [{**fake_record(model, seed, 0.1), "overrides": overrides} for seed in seeds]
             for label, model, overrides in (("VBPR", "VBPR", {}), ("VBPR_CKD-no_generic", "VBPR_CKD", {"ckd_generic": False}),
                                             ("LATTICE", "LATTICE", {}), ("LATTICE_MDrop", "LATTICE_MDrop", {}))}
    text = open(lb.write_page("tiny", cells, str(tmp_path), config_files=["mine.yaml"], config_dict={"epochs": 5},
                              study="balancing")).read()
    command = page_line(text, "Generated by").split("`")[1]
    assert command == (f"python run_recbole_ckd.py --leaderboard --study=balancing --dataset=tiny --models=VBPR,LATTICE "
                       f"--seeds={given} --config_files=mine.yaml --epochs=5")
    assert lb.parse_seeds(given) == seeds
    plain = open(lb.write_page("tiny", {k: cells[k] for k in ("VBPR", "LATTICE_MDrop")}, str(tmp_path))).read()
    assert f"--dataset=tiny --models=VBPR,LATTICE_MDrop --seeds={given}`" in page_line(plain, "Generated by")


def test_a_page_names_the_rows_of_each_training_protocol(tmp_path):
    """One line per protocol; a backbone stands for its rows when all of them trained under that protocol."""
    def protocol(rate):
        return {"name": "mmrec", "train_batch_size": 2048, "train_sampler": "shuffled", "learning_rate": rate,
                "learning_rate_scheduler": None, "eval_step": 1, "stopping_step": 20}

    rows = (("VBPR", "VBPR", 0.001), ("VBPR_CKD", "VBPR_CKD", 0.001), ("EgoGCN", "EgoGCN", 0.001),
            ("LATTICE", "LATTICE", 0.0005), ("LATTICE_MDrop", "LATTICE_MDrop", 0.001))
    cells = {label: [{**fake_record(model, 1, 0.1), "training_protocol": protocol(rate)}] for label, model, rate in rows}
    text = open(lb.write_page("tiny", cells, str(tmp_path))).read()
    lines = [line for line in text.splitlines() if line.startswith("- Training protocol")]
    assert [line.split(": ")[0] for line in lines] == ["- Training protocol of the VBPR and EgoGCN rows and LATTICE_MDrop",
                                                        "- Training protocol of LATTICE"]
    assert "Adam lr 0.001," in lines[0] and "Adam lr 0.0005," in lines[1]
    one = open(lb.write_page("tiny", {"VBPR": cells["VBPR"], "EgoGCN": cells["EgoGCN"]}, str(tmp_path))).read()
    assert page_line(one, "- Training protocol").startswith("- Training protocol: mmrec: shuffled interactions in batches")


def png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", head[16:24])


def test_page_and_plots_render(tmp_path):
    modes = {"student joint": {"test": {"recall@20": 0.2}}, "student only_v": {"test": {"recall@20": 0.1}},
             "teacher v": {"test": {"recall@20": 0.15}}}
    stats = [{"epoch": e, "r_v_mean": 1.0 + 0.1 * e, "r_t_mean": 1.0 - 0.1 * e} for e in range(3)]
    cells = {
        "VBPR": [fake_record("VBPR", 1, 0.1, {"joint": {"test": {"recall@20": 0.1}}, "only_v": {"test": {"recall@20": 0.05}}})],
        "VBPR_CKD": [fake_record("VBPR_CKD", 1, 0.12, modes, stats)],
    }
    page = lb.write_page("baby", cells, str(tmp_path))
    text = open(page).read()
    for part in ("Code: not recorded by cells older than that record (2 cells)",
                 "## Experimental setting", "## Dataset statistics", "## Properties used", "## Results (test)",
                 "## Each variant against its backbone", "MMRec's public leaderboard",
                 "![modalities](baby-modalities.png)", "![weights](baby-weights.png)", "train 7, valid 1, test 1", "kd_weight"):
        assert part in text, part
    for name in ("baby-modalities.png", "baby-weights.png"):
        width, height = png_size(tmp_path / name)
        assert width > 100 and height > 100
    assert (tmp_path / "baby.csv").read_text().startswith("model,metric,mean,std,n_seeds,values")


def test_cells_are_cached_and_only_missing_ones_run(tiny_dataset, tmp_path, monkeypatch):
    settings = fast_config(tiny_dataset["root"], tmp_path / "saved")
    out = str(tmp_path / "results")
    first = lb.run_cells("tiny", ["BPR"], [1, 2], out, config_dict=settings, log=lambda *a: None)
    assert [r["seed"] for r in first["BPR"]] == [1, 2]

    import recbole_ckd.quick_start as qs

    calls = []
    real_run = qs.run
    monkeypatch.setattr(qs, "run", lambda *a, **k: calls.append(a[0]) or real_run(*a, **k))
    again = lb.run_cells("tiny", ["BPR", "VBPR"], [1, 2], out, config_dict=settings, log=lambda *a: None)
    assert calls == ["VBPR", "VBPR"]  # BPR came from the cache
    assert again["BPR"][0]["test_result"] == first["BPR"][0]["test_result"]
    page = lb.write_page("tiny", again, out)
    assert "| BPR |" in open(page).read() and os.path.isfile(os.path.join(out, "tiny-modalities.png")) is False


@pytest.mark.parametrize("damage", ["truncated", "not UTF-8", "a list", "no test_result", "a metric missing",
                                    "a metric not a number"])
def test_an_unreadable_or_incomplete_cell_is_reported_and_recomputed(tiny_dataset, tmp_path, damage):
    settings = fast_config(tiny_dataset["root"], tmp_path / "saved")
    out = str(tmp_path / "results")
    (first,) = lb.run_cells("tiny", ["BPR"], [1], out, config_dict=settings, log=lambda *a: None)["BPR"]
    (cell_file,) = (tmp_path / "results" / "tiny" / "cells").glob("BPR-seed1-*.json")
    good = cell_file.read_text()
    record = json.loads(good)
    if damage == "truncated":
        cell_file.write_text(good[: len(good) // 2])
    elif damage == "not UTF-8":
        cell_file.write_bytes(b"\xff\xfe" + good.encode())
    else:
        test = record["test_result"]
        broken = {"a list": [record], "no test_result": {k: v for k, v in record.items() if k != "test_result"},
                  "a metric missing": {**record, "test_result": {k: v for k, v in test.items() if k != "ndcg@20"}},
                  "a metric not a number": {**record, "test_result": {**test, "recall@10": "0.5"}}}[damage]
        cell_file.write_text(json.dumps(broken))
    messages = []
    (again,) = lb.run_cells("tiny", ["BPR"], [1], out, config_dict=settings, log=messages.append)["BPR"]
    (warning,) = [m for m in messages if m.startswith("warning:")]
    assert str(cell_file) in warning and "unusable" in warning and "running it again" in warning
    assert again["test_result"] == first["test_result"]
    assert json.loads(cell_file.read_text())["test_result"] == first["test_result"]  # rewritten whole
    messages.clear()
    lb.run_cells("tiny", ["BPR"], [1], out, config_dict=settings, log=messages.append)
    assert not [m for m in messages if m.startswith("warning:")] and any("cached" in m for m in messages)


def test_a_cell_is_rerun_when_its_data_or_properties_changed(tiny_dataset, tmp_path, monkeypatch):
    settings = fast_config(tiny_dataset["root"], tmp_path / "saved")
    out = str(tmp_path / "results")
    (first,) = lb.run_cells("tiny", ["BPR"], [1], out, config_dict=settings, log=lambda *a: None)["BPR"]
    assert first["run_key"][: RUN_KEY_LENGTH] == os.path.basename(os.path.dirname(first["checkpoint"])).split("-")[-1]
    assert first["code"]["recbole_ckd"] == __import__("recbole_ckd").__version__

    import recbole_ckd.quick_start as qs

    calls, messages = [], []
    real_run = qs.run
    monkeypatch.setattr(qs, "run", lambda *a, **k: calls.append(a[0]) or real_run(*a, **k))
    (cell_file,) = (tmp_path / "results" / "tiny" / "cells").glob("BPR-seed1-*.json")
    assert cell_file.name == f"BPR-seed1-{first['run_key'][: RUN_KEY_LENGTH]}.json"
    legacy = {k: v for k, v in first.items() if k != "run_key"}  # written before cells stored their key
    cell_file.rename(cell_file.with_name("BPR-seed1-0123456789ab.json"))  # and named by the command line
    cell_file.with_name("BPR-seed1-0123456789ab.json").write_text(__import__("json").dumps(legacy))
    runtime_only = {**settings, "state": "ERROR", "checkpoint_dir": str(tmp_path / "elsewhere")}  # not part of a run
    lb.run_cells("tiny", ["BPR"], [1], out, config_dict=runtime_only, log=messages.append)
    assert calls == [] and "cached" in messages[-1]  # the key read from the checkpoint folder's name

    inter = os.path.join(tiny_dataset["path"], "tiny.inter")
    lines = open(inter).read().splitlines()
    with open(inter, "w") as f:  # the dataset changed under the cached cell: one interaction fewer
        f.write("\n".join(lines[:-1]) + "\n")
    (again,) = lb.run_cells("tiny", ["BPR"], [1], out, config_dict=settings, log=messages.append)["BPR"]
    assert calls == ["BPR"] and any("computed under another config or data" in m for m in messages)
    assert again["run_key"] != first["run_key"]

    import shutil

    import recbole_ckd.config

    properties = tmp_path / "properties"  # a user edits a model's defaults
    shutil.copytree(recbole_ckd.config.properties_dir(), properties)
    with open(properties / "model" / "BPR.yaml", "a") as f:
        f.write("\nembedding_size: 32\n")
    monkeypatch.setattr(recbole_ckd.config, "properties_dir", lambda: properties)
    (edited,) = lb.run_cells("tiny", ["BPR"], [1], out, config_dict=settings, log=messages.append)["BPR"]
    assert calls == ["BPR", "BPR"] and edited["run_key"] != again["run_key"]


@pytest.mark.slow
def test_leaderboard_command_end_to_end(tiny_dataset, tmp_path):
    import run_recbole_ckd

    argv = ["--leaderboard", "--dataset=tiny", "--models=VBPR,VBPR_CKD", "--seeds=2", f"--output={tmp_path / 'res'}",
            f"--data_path={tiny_dataset['root']}", f"--checkpoint_dir={tmp_path / 'saved'}", "--gd_samples=20"]
    argv += fast_args()
    page = run_recbole_ckd.main(argv)
    text = open(page).read()
    assert "| VBPR_CKD | recall@20 |" in text
    png_size(tmp_path / "res" / "tiny-modalities.png")
    png_size(tmp_path / "res" / "tiny-weights.png")


def test_seeds_are_a_count_or_a_list_and_a_huge_count_is_refused(capsys):
    import run_recbole_ckd

    parse_seeds = lb.parse_seeds
    assert parse_seeds("3") == [2020, 2021, 2022]
    assert parse_seeds("1,5,9") == [1, 5, 9]
    assert parse_seeds("2020,") == [2020]
    with pytest.raises(SystemExit):
        run_recbole_ckd.main(["--leaderboard", "--dataset=tiny", "--models=BPR", "--seeds=2020"])
    assert "for the single seed 2020 write --seeds=2020," in capsys.readouterr().err


@pytest.mark.parametrize("failure", ["OSError", "RuntimeError"])
def test_a_full_disk_while_writing_a_cell_is_one_error_line(tmp_path, monkeypatch, failure):
    """The file's OSError, or the RuntimeError a writer such as torch.save(path) wraps it in."""
    import errno
    import json

    from recbole_ckd.errors import UserError
    from recbole_ckd.leaderboard import cells

    def dump(record, f, **kwargs):
        f.write('{"half": ')
        full = OSError(errno.ENOSPC, "No space left on device")
        if failure == "OSError":
            raise full
        raise RuntimeError("[enforce fail at inline_container.cc:672] . file write failed") from full

    monkeypatch.setattr(json, "dump", dump)
    path = tmp_path / "cells" / "BPR-seed1-abc.json"
    with pytest.raises(UserError, match=f"^{path}: no space left on device; free some space"):
        cells.write_json({"seed": 1}, str(path))
    assert os.listdir(tmp_path / "cells") == []  # no half file, under any name


def test_the_page_compares_each_variant_with_the_backbone_at_its_setting(tmp_path):
    def row(model, values, overrides=None):
        return [{**fake_record(model, seed, value), "overrides": overrides or {}} for seed, value in zip((1, 2, 3), values)]

    cells = {"VBPR": row("VBPR", (0.10, 0.11, 0.12)), "VBPR_CKD": row("VBPR_CKD", (0.14, 0.15, 0.16)),
             "VBPR_MDrop": row("VBPR_MDrop", (0.10, 0.12, 0.14))}
    control = [{**record, "best_valid_score": 0.2}
               for record in row("VBPR", (0.13, 0.15, 0.14), {"learning_rate": 0.0003, "reg_weight": 0.02})]
    controls = {"VBPR_CKD": ("VBPR-at-VBPR_CKD", control), "VBPR_MDrop": ("VBPR", cells["VBPR"])}
    page = lb.write_page("tiny", cells, str(tmp_path), study="balancing", controls=controls)
    text = open(page).read()
    section = text.split("## Each variant against the backbone at its setting")[1].split("\n## ")[0]
    assert "| VBPR-at-VBPR_CKD | learning_rate 0.0003, reg_weight 0.02 | VBPR_CKD |" in section
    assert "| VBPR | the backbone row's own | VBPR_MDrop |" in section
    # CKD 0.15 against its control's 0.14: +7.14%, differences 0.01, 0, 0.02 (t = 1.73)
    assert "| VBPR_CKD | recall@20 | 0.1400 | 0.1500 | +7.14% | 1.73 | 0.225 |" in section
    assert "| VBPR_MDrop | recall@20 | 0.1100 | 0.1200 | +9.09% |" in section
    assert "precision@10" not in section
    # chosen on validation among the backbone's runs: the control (0.2) over the row (0.11)
    assert ("- Of VBPR's 2 runs (its row and those above), VBPR-at-VBPR_CKD has the best mean validation Recall@20 "
            "(0.2000); its test recall@20 is 0.1400.") in section
    assert "VBPR-at-VBPR_CKD" not in text.split("## Results (test)")[1].split("\n## ")[0]  # not a row of the study
    csv_rows = open(tmp_path / "tiny-balancing.csv").read().splitlines()
    assert any(line.startswith("VBPR-at-VBPR_CKD,recall@20,0.140000,") for line in csv_rows)
