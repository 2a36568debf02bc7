"""The page's tables: the method x metric summary over seeds, published reference columns, and each variant
against its backbone."""

from recbole_ckd.leaderboard.statistics import mean_std, paired_t_test, relative_improvement

TABLE_METRICS = ["recall@10", "recall@20", "ndcg@10", "ndcg@20", "precision@10", "precision@20"]


# MMRec's public leaderboard (evaluation/README.md of the MMRec repository): random per-user
# 8:1:1 split, full ranking, only training items masked at test time, embedding size 64.
MMREC_REFERENCE = {
    "source": "MMRec public leaderboard (train-only masking)",
    "baby": {
        "BPR": {"recall@10": 0.0357, "recall@20": 0.0575, "ndcg@10": 0.0192, "ndcg@20": 0.0249},
        "LightGCN": {"recall@10": 0.0479, "recall@20": 0.0754, "ndcg@10": 0.0257, "ndcg@20": 0.0328},
        "VBPR": {"recall@10": 0.0423, "recall@20": 0.0663, "ndcg@10": 0.0223, "ndcg@20": 0.0284},
        "MMGCN": {"recall@10": 0.0378, "recall@20": 0.0615, "ndcg@10": 0.0200, "ndcg@20": 0.0261},
        "GRCN": {"recall@10": 0.0539, "recall@20": 0.0833, "ndcg@10": 0.0288, "ndcg@20": 0.0363},
        "LATTICE": {"recall@10": 0.0547, "recall@20": 0.0850, "ndcg@10": 0.0292, "ndcg@20": 0.0370},
        "BM3": {"recall@10": 0.0564, "recall@20": 0.0883, "ndcg@10": 0.0301, "ndcg@20": 0.0383},
        "FREEDOM": {"recall@10": 0.0627, "recall@20": 0.0992, "ndcg@10": 0.0330, "ndcg@20": 0.0424},
    },
    "sports": {
        "BPR": {"recall@10": 0.0432, "recall@20": 0.0653, "ndcg@10": 0.0241, "ndcg@20": 0.0298},
        "LightGCN": {"recall@10": 0.0569, "recall@20": 0.0864, "ndcg@10": 0.0311, "ndcg@20": 0.0387},
        "VBPR": {"recall@10": 0.0558, "recall@20": 0.0856, "ndcg@10": 0.0307, "ndcg@20": 0.0384},
        "MMGCN": {"recall@10": 0.0370, "recall@20": 0.0605, "ndcg@10": 0.0193, "ndcg@20": 0.0254},
        "GRCN": {"recall@10": 0.0598, "recall@20": 0.0915, "ndcg@10": 0.0332, "ndcg@20": 0.0414},
        "LATTICE": {"recall@10": 0.0620, "recall@20": 0.0953, "ndcg@10": 0.0335, "ndcg@20": 0.0421},
        "BM3": {"recall@10": 0.0656, "recall@20": 0.0980, "ndcg@10": 0.0355, "ndcg@20": 0.0438},
        "FREEDOM": {"recall@10": 0.0717, "recall@20": 0.1089, "ndcg@10": 0.0385, "ndcg@20": 0.0481},
    },
}


def summarize(cells, metrics=TABLE_METRICS):
    """``{model: {metric: (mean, std, values)}}`` over seeds, test results."""
    return {
        model: {m: (*mean_std(values := [r["test_result"][m] for r in records]), values) for m in metrics}
        for model, records in cells.items()
    }


def variant_comparisons(summary, cells, metrics=TABLE_METRICS):
    """Each variant (``X_CKD``, its ablations, ``X_MDrop``, ...) against its plain backbone ``X``:
    relative improvement of the means and the paired test across seeds."""
    from recbole_ckd.model import variant_backbone_name

    rows = []
    for label in summary:
        backbone = variant_backbone_name(cells[label][0]["model"])
        if backbone not in summary:
            continue
        for m in metrics:
            new, old = summary[label][m], summary[backbone][m]
            test = paired_t_test(new[2], old[2]) if len(new[2]) == len(old[2]) else None
            rows.append({"model": label, "backbone": backbone, "metric": m, "variant": new[0], "base": old[0],
                         "improvement": relative_improvement(new[0], old[0]),
                         "t": None if test is None else test[0], "p": None if test is None else test[1]})
    return rows


def _cell(mean, std):
    return f"{mean:.4f} ± {std:.4f}"


def method_table(summary, reference=None, metrics=TABLE_METRICS):
    head = ["method", *metrics]
    ref_metrics = [m for m in metrics if reference and any(m in v for v in reference.values())]
    head += [f"{m} (ref.)" for m in ref_metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for model, row in summary.items():
        cells = [_cell(*row[m][:2]) for m in metrics]
        ref = (reference or {}).get(model, {})
        cells += [f"{ref[m]:.4f}" if m in ref else "-" for m in ref_metrics]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_table(rows, n_seeds):
    lines = ["| variant | metric | backbone | variant | improvement | paired t | p |", "|" + " --- |" * 7]
    for r in rows:
        improvement = "-" if r["improvement"] is None else f"{100 * r['improvement']:+.2f}%"
        t = "-" if r["t"] is None else f"{r['t']:.2f}"
        p = "-" if r["p"] is None else f"{r['p']:.3g}"
        lines.append(f"| {r['model']} | {r['metric']} | {r['base']:.4f} | {r['variant']:.4f} | {improvement} | {t} | {p} |")
    note = (f"Paired two-sided t-test across the {n_seeds} seeds (same seed, same data, backbone vs its "
            "variant); with few seeds it has little power, read p together with the spread.")
    return "\n".join(lines) + "\n\n" + note
