"""Seconds per epoch of a backbone, its teacher and its CKD student, and evaluation time.

On a baby-shaped generated dataset (19,445 users, 7,050 items, ~160k interactions, 4096-d and
384-d features; ``--scale`` shrinks users, items and interactions together), for each
backbone: the median training seconds per epoch of the plain backbone, of a teacher (the
backbone in its "only m" mode) and of the CKD student (with teacher tables in place), the
median seconds of one full evaluation pass, and the ratios to the plain backbone measured in
the same run. Writes JSON and markdown into benchmarks/results/.

    python benchmarks/bench_ckd.py --scale 0.25 --repeats 3 --models VBPR,MMGCN
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from recbole_ckd.config import Config  # noqa: E402
from recbole_ckd.data.dataset import data_preparation  # noqa: E402
from recbole_ckd.data.synthetic import generate_dataset  # noqa: E402
from recbole_ckd.model import MODELS  # noqa: E402
from recbole_ckd.registry import create_dataset, get_trainer  # noqa: E402

BABY = {"n_users": 19445, "n_items": 7050, "n_interactions": 160792}


def dataset_for(scale, root, seed):
    shape = {k: max(50, int(v * scale)) for k, v in BABY.items()}
    name = f"baby-x{scale:g}-s{seed}"
    if not os.path.isfile(os.path.join(root, name, f"{name}.inter")):
        generate_dataset(root, name, seed=seed, **shape)
    return name, shape


def timed(fn, repeats, warmup=1):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def bench_backbone(backbone, dataset, root, args):
    base = {"data_path": root, "state": "ERROR", "show_progress": False, "use_gpu": args.device == "cuda",
            "checkpoint_dir": os.path.join(root, ".bench-saved"), "seed": 2024}
    config = Config(f"{backbone}_CKD", dataset, config_dict=base)
    train_data, valid_data, _ = data_preparation(config, create_dataset(config))
    model_class = MODELS[backbone]
    modality = config["modalities"] and next(iter(config["modalities"]))
    rows = {}

    def measure(label, model_config, model):
        trainer = get_trainer(model_config["MODEL_TYPE"], model_config["model"])(model_config, model)
        trainer.eval_collector.data_collect(train_data)
        epoch, epochs = timed(lambda: trainer._train_epoch(train_data, 0), args.repeats)
        evaluation, evals = timed(lambda: trainer.evaluate(valid_data, load_best_model=False), args.repeats)
        rows[label] = {"train_s_per_epoch": epoch, "train_runs": epochs, "eval_s": evaluation, "eval_runs": evals}
        print(f"  {label:<10} train {epoch:8.3f} s/epoch   eval {evaluation:8.3f} s", flush=True)

    plain_config = Config(backbone, dataset, config_dict=base)
    measure("plain", plain_config, model_class(plain_config, train_data.dataset).to(config["device"]))
    teacher_config = Config(backbone, dataset, config_dict={**base, "active_modalities": [modality]})
    teacher = model_class(teacher_config, train_data.dataset).to(config["device"])
    measure("teacher", teacher_config, teacher)
    student = MODELS[f"{backbone}_CKD"](config, train_data.dataset).to(config["device"])
    with torch.no_grad():
        tables = {m: teacher.eval().forward(student.only(m)) for m in student.modalities}
    student.set_teacher_tables(tables)
    measure("student", config, student)
    plain = rows["plain"]["train_s_per_epoch"]
    for label in ("teacher", "student"):
        rows[label]["train_ratio_to_plain"] = rows[label]["train_s_per_epoch"] / plain
    print(f"  student / plain epoch: {rows['student']['train_ratio_to_plain']:.2f}x", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the Baby shape (default 1.0)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions after one warm-up (median reported)")
    parser.add_argument("--models", default="VBPR,MMGCN", help="comma-separated backbones")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data_root", default=os.path.join(HERE, ".data"))
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args(argv)

    dataset, shape = dataset_for(args.scale, args.data_root, args.seed)
    machine = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "device": args.device,
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
    }
    print(f"dataset {dataset}: {shape}; {machine}", flush=True)
    results = {}
    for backbone in args.models.split(","):
        print(backbone, flush=True)
        results[backbone] = bench_backbone(backbone, dataset, args.data_root, args)

    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    out_dir = os.path.join(HERE, "results")
    os.makedirs(out_dir, exist_ok=True)
    record = {"benchmark": "bench_ckd", "time": stamp, "dataset": dataset, "shape": shape, "machine": machine,
              "repeats": args.repeats, "results": results}
    base = os.path.join(out_dir, f"bench_ckd-{args.device}-x{args.scale:g}-{stamp}")
    with open(base + ".json", "w") as f:
        json.dump(record, f, indent=2)
    lines = [f"# bench_ckd, {args.device}, {dataset} {shape}", "", f"machine: {machine}", "",
             "| model | part | train s/epoch (median) | ratio to plain | eval s (median) |", "| --- | --- | --- | --- | --- |"]
    for backbone, rows in results.items():
        for label, row in rows.items():
            ratio = row.get("train_ratio_to_plain", 1.0)
            lines.append(f"| {backbone} | {label} | {row['train_s_per_epoch']:.3f} | {ratio:.2f} | {row['eval_s']:.3f} |")
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"written: {base}.json, {base}.md")
    return record


if __name__ == "__main__":
    main()
