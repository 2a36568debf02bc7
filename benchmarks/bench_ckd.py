"""Seconds per epoch, evaluation seconds and peak memory of every backbone, its teacher and its CKD student.

On a generated dataset of a published shape (``--shape``: Baby 19,445 users / 7,050 items /
160,792 interactions, Clothing 39,387 / 23,033 / 278,677, Elec 192,403 / 63,001 / 1,689,188;
4096-d and 384-d features; or ``devset``, the shape of the shipped ckd-devset, 3,000 / 1,200 / 30,047
with 512-d and 384-d features; ``--scale`` shrinks users, items and interactions together), for
each backbone: the median training seconds per epoch of the plain backbone, of a teacher (the
backbone in its "only m" mode) and of the CKD student (with teacher tables in place), the
median seconds of one full evaluation pass (all validation users, all items, every metric of
the config), the peak memory of each part (GPU: ``max_memory_allocated``; host: the peak
resident set size sampled while the part runs) and the ratios to the plain backbone measured
in the same run. A backbone that does not rank with its modalities (BM3) has no CKD parts.
Writes JSON and markdown into benchmarks/results/, with the machine it ran on.

``--graphs`` measures instead the median seconds and the peak host memory of building the
user-user co-interaction graph of DualGNN and DRAGON from the training split (uncached).

    python benchmarks/bench_ckd.py --shape baby --scale 0.25 --repeats 3 --models VBPR,LATTICE
    python benchmarks/bench_ckd.py --shape baby --graphs
"""

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from datetime import datetime, timezone

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from recbole_ckd.config import Config  # noqa: E402
from recbole_ckd.data.dataset import data_preparation  # noqa: E402
from recbole_ckd.data.synthetic import generate_dataset  # noqa: E402
from recbole_ckd.model import BACKBONES as BACKBONE_CLASSES  # noqa: E402
from recbole_ckd.model import MODELS, graphs  # noqa: E402
from recbole_ckd.registry import create_dataset, get_trainer  # noqa: E402

# the sizes of the Amazon Baby, Clothing and Elec datasets as MMRec preprocesses them
SHAPES = {
    # the shape of the shipped ckd-devset (recbole_ckd/datasets/ckd-devset: 512-d image features)
    "devset": {"n_users": 3000, "n_items": 1200, "n_interactions": 30047,
               "modalities": {"v": ("image_feat.npy", 512, 0.3), "t": ("text_feat.npy", 384, 0.8)}},
    "baby": {"n_users": 19445, "n_items": 7050, "n_interactions": 160792},
    "clothing": {"n_users": 39387, "n_items": 23033, "n_interactions": 278677},
    "elec": {"n_users": 192403, "n_items": 63001, "n_interactions": 1689188},
}
BACKBONES = ",".join(cls.__name__ for cls in BACKBONE_CLASSES if cls.trains)  # every backbone with an epoch to time
MIB = 2**20


def dataset_for(shape_name, scale, root, seed):
    shape = {k: v if k == "modalities" else max(50, int(v * scale)) for k, v in SHAPES[shape_name].items()}
    name = f"{shape_name}-x{scale:g}-s{seed}"
    if not os.path.isfile(os.path.join(root, name, f"{name}.inter")):
        print(f"generating {name} {shape} ...", flush=True)
        generate_dataset(root, name, seed=seed, **shape)
    return name, shape


class PeakMemory:
    """Peak host RSS (sampled every 5 ms from /proc) and peak GPU allocation inside a ``with`` block."""

    def __init__(self, device):
        self.device, self.host_mib, self.gpu_mib = device, None, None

    @staticmethod
    def _rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()

    def _sample(self):
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, self._rss())

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self._peak, self._stop = self._rss(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.host_mib = max(self._peak, self._rss()) / MIB
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.gpu_mib = torch.cuda.max_memory_allocated() / MIB


def timed(fn, repeats, device, warmup=1):
    """Median seconds of ``repeats`` calls after ``warmup`` calls, all of them."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def bench_backbone(backbone, dataset, root, args):
    base = {"data_path": root, "state": "ERROR", "show_progress": False, "use_gpu": args.device == "cuda",
            "checkpoint_dir": os.path.join(root, ".bench-saved"), "seed": 2024}
    model_class = MODELS[backbone]
    with_ckd = model_class.ranks_with_modalities and model_class.trains
    config = Config(f"{backbone}_CKD" if with_ckd else backbone, dataset, config_dict=base)
    train_data, valid_data, _ = data_preparation(config, create_dataset(config))
    device = config["device"]
    rows = {}

    def measure(label, model_config, build):
        with PeakMemory(args.device) as memory:
            model = build()
            trainer = get_trainer(model_config["MODEL_TYPE"], model_config["model"])(model_config, model)
            trainer.eval_collector.data_collect(train_data)
            epoch, epochs = timed(lambda: trainer._train_epoch(train_data, 0), args.repeats, args.device)
            evaluation, evals = timed(lambda: trainer.evaluate(valid_data, load_best_model=False), args.repeats, args.device)
        rows[label] = {"train_s_per_epoch": epoch, "train_runs": epochs, "eval_s": evaluation, "eval_runs": evals,
                       "peak_host_mib": memory.host_mib, "peak_gpu_mib": memory.gpu_mib}
        gpu = f"   gpu {memory.gpu_mib:8.0f} MiB" if memory.gpu_mib is not None else ""
        print(f"  {label:<8} train {epoch:8.3f} s/epoch   eval {evaluation:8.3f} s   host {memory.host_mib:8.0f} MiB{gpu}",
              flush=True)
        return model

    parts = args.parts.split(",")
    plain_config = Config(backbone, dataset, config_dict=base)
    if "plain" in parts:
        measure("plain", plain_config, lambda: model_class(plain_config, train_data.dataset).to(device))
    if not with_ckd or not {"teacher", "student"} & set(parts):
        return rows
    modality = next(iter(config["modalities"]))
    teacher_config = Config(backbone, dataset, config_dict={**base, "active_modalities": [modality]})
    if "teacher" in parts:
        teacher = measure("teacher", teacher_config, lambda: model_class(teacher_config, train_data.dataset).to(device))
    else:  # the student only needs a teacher's tables, not its timing
        teacher = model_class(teacher_config, train_data.dataset).to(device)
    if "student" not in parts:
        return rows

    def build_student():
        student = MODELS[f"{backbone}_CKD"](config, train_data.dataset).to(device)
        with torch.no_grad():  # one teacher stands in for every modality's: the cost is the same
            student.set_teacher_tables({m: teacher.eval().forward(student.only(m)) for m in student.modalities})
        return student

    measure("student", config, build_student)
    if "plain" in rows:
        plain = rows["plain"]["train_s_per_epoch"]
        for row in rows.values():
            row["train_ratio_to_plain"] = row["train_s_per_epoch"] / plain
        print(f"  student / plain epoch: {rows['student']['train_ratio_to_plain']:.2f}x", flush=True)
    return rows


def bench_graphs(dataset, root, args):
    """The build of the user-user co-interaction graph (DualGNN's default ``user_knn_k``), on the CPU."""
    settings = {"data_path": root, "state": "ERROR", "show_progress": False, "use_gpu": False,
                "checkpoint_dir": os.path.join(root, ".bench-saved")}
    config = Config("DualGNN", dataset, config_dict=settings)
    train_data, _, _ = data_preparation(config, create_dataset(config))
    users, items = graphs.interaction_edges(train_data.dataset)
    n_users, n_items, k = train_data.dataset.user_num, train_data.dataset.item_num, int(config["user_knn_k"])

    built = []

    def build():
        built[:] = [graphs.co_interaction_graph(users, items, n_users, n_items, k)]

    with PeakMemory("cpu") as memory:
        seconds, runs = timed(build, args.repeats, "cpu")
    row = {"build_s": seconds, "build_runs": runs, "peak_host_mib": memory.host_mib, "train_pairs": len(users),
           "k": k, "edges": built[0]._nnz()}
    print(f"  user-user graph ({len(users)} training pairs, k {k}): {seconds:.3f} s   host {memory.host_mib:.0f} MiB",
          flush=True)
    return {"user_graph": row}


def machine_info(device):
    return {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "device": device, "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
    }


def write_results(record, base):
    with open(base + ".json", "w") as f:
        json.dump(record, f, indent=2)

    def number(value, digits):
        return "-" if value is None else f"{value:.{digits}f}"

    lines = [f"# bench_ckd, {record['machine']['device']}, {record['dataset']} {record['shape']}", "",
             f"machine: {record['machine']}", "", f"median of {record['repeats']} runs after one warm-up", ""]
    if "graphs" in record:
        lines += ["| graph | training pairs | k | edges | build s | peak host MiB |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for graph, row in record["graphs"].items():
            lines.append(f"| {graph} | {row['train_pairs']} | {row['k']} | {row['edges']} | {row['build_s']:.3f} "
                         f"| {row['peak_host_mib']:.0f} |")
    else:
        lines += ["peak host MiB: resident set of the benchmark process while the part ran (it includes the dataset "
                  "and what earlier parts left); peak GPU MiB: torch.cuda.max_memory_allocated during the part", "",
                  "| model | part | train s/epoch | ratio to plain | eval s | peak host MiB | peak GPU MiB |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
    for backbone, rows in record["results"].items():
        if "error" in rows:
            lines.append(f"| {backbone} | failed: {rows['error']} | | | | | |")
            continue
        for label, row in rows.items():
            lines.append(
                f"| {backbone} | {label} | {row['train_s_per_epoch']:.3f} | {number(row.get('train_ratio_to_plain'), 2)} "
                f"| {row['eval_s']:.3f} | {row['peak_host_mib']:.0f} | {number(row['peak_gpu_mib'], 0)} |"
            )
    with open(base + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="baby", help="published dataset shape (default baby)")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the shape (default 1.0)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions after one warm-up (median reported)")
    parser.add_argument("--models", default=BACKBONES, help=f"comma-separated backbones (default {BACKBONES})")
    parser.add_argument("--parts", default="plain,teacher,student",
                        help="which of plain, teacher, student to measure (default all; ratios need plain)")
    parser.add_argument("--graphs", action="store_true", help="time the build of the user-user graph instead of models")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--data_root", default=os.path.join(HERE, ".data"))
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--output", default=os.path.join(HERE, "results"), help="folder of the JSON and markdown")
    args = parser.parse_args(argv)

    dataset, shape = dataset_for(args.shape, args.scale, args.data_root, args.seed)
    machine = machine_info(args.device)
    print(f"dataset {dataset}: {shape}; {machine}", flush=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    os.makedirs(args.output, exist_ok=True)
    kind = "bench_ckd-graphs" if args.graphs else "bench_ckd"
    base = os.path.join(args.output, f"{kind}-{args.device}-{args.shape}-x{args.scale:g}-{stamp}")
    record = {"benchmark": "bench_ckd", "time": stamp, "dataset": dataset, "shape": shape, "machine": machine,
              "repeats": args.repeats, "results": {}}
    if args.graphs:
        record["graphs"] = bench_graphs(dataset, args.data_root, args)
    for backbone in [] if args.graphs else args.models.split(","):
        print(backbone, flush=True)
        try:
            record["results"][backbone] = bench_backbone(backbone, dataset, args.data_root, args)
        except (RuntimeError, MemoryError) as error:  # out of memory on a big shape: record it, go on
            print(f"  failed: {error}", flush=True)
            record["results"][backbone] = {"error": str(error).splitlines()[0][:200]}
            if args.device == "cuda":
                torch.cuda.empty_cache()
        write_results(record, base)  # after every backbone: an interrupted run keeps what it measured
    print("\n".join(write_results(record, base)))
    print(f"written: {base}.json, {base}.md")
    return record


if __name__ == "__main__":
    main()
