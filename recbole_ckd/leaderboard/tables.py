"""The page's tables: the method x metric summary over seeds, published reference columns, and each variant
against its backbone."""

from recbole_ckd.leaderboard.statistics import mean_std, paired_t_test, relative_improvement

TABLE_METRICS = ["recall@10", "recall@20", "ndcg@10", "ndcg@20", "precision@10", "precision@20"]


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

    return _comparisons(summary, [(label, variant_backbone_name(cells[label][0]["model"])) for label in summary],
                        metrics)


def ablation_comparisons(summary, cells, metrics=TABLE_METRICS):
    """Each ablation of a study (a row that is its model with other settings, ``X_CKD-uniform_weights``)
    against the row of its model as published (``X_CKD``)."""
    return _comparisons(summary, [(label, cells[label][0]["model"]) for label in summary
                                  if cells[label][0].get("overrides")], metrics)


CONTROL_METRICS = ["recall@20", "ndcg@20"]


def control_comparisons(cells, controls, metrics=CONTROL_METRICS):
    """Each variant row against the plain backbone at its selected setting; ``controls`` is
    ``{row: (control label, control records)}`` (a tuned study's
    :func:`~recbole_ckd.leaderboard.sweeps.setting_controls`, run)."""
    summary = summarize({**cells, **{label: records for label, records in controls.values()}}, metrics)
    return _comparisons(summary, [(row, label) for row, (label, _) in controls.items()], metrics)


def _comparisons(summary, pairs, metrics):
    rows = []
    for label, base in pairs:
        if base not in summary or base == label:
            continue
        for m in metrics:
            new, old = summary[label][m], summary[base][m]
            test = paired_t_test(new[2], old[2]) if len(new[2]) == len(old[2]) else None
            rows.append({"model": label, "backbone": base, "metric": m, "variant": new[0], "base": old[0],
                         "improvement": relative_improvement(new[0], old[0]),
                         "t": None if test is None else test[0], "p": None if test is None else test[1]})
    return rows


def _cell(mean, std):
    return f"{mean:.4f} ± {std:.4f}"


def method_table(summary, reference=None, metrics=TABLE_METRICS):
    """The method x metric table; ``reference`` (``{model: (source, {metric: value})}``, as in
    :data:`~recbole_ckd.leaderboard.published.PUBLISHED`) adds the published columns, with "-" where a
    row has no number or its source does not report that metric."""
    reference = {model: values for model, (_, values) in (reference or {}).items()}
    head = ["method", *metrics]
    ref_metrics = [m for m in metrics if any(m in v for v in reference.values())]
    head += [f"{m} (ref.)" for m in ref_metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for model, row in summary.items():
        cells = [_cell(*row[m][:2]) for m in metrics]
        ref = reference.get(model, {})
        cells += [f"{ref[m]:.4f}" if m in ref else "-" for m in ref_metrics]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_table(rows, n_seeds, base="backbone", new="variant"):
    """The rows of :func:`variant_comparisons` (or :func:`ablation_comparisons`: ``base`` "CKD", ``new``
    "ablation") as a table and a note on the test."""
    lines = [f"| {new} | metric | {base} | {new} | improvement | paired t | p |", "|" + " --- |" * 7]
    for r in rows:
        improvement = "-" if r["improvement"] is None else f"{100 * r['improvement']:+.2f}%"
        t = "-" if r["t"] is None else f"{r['t']:.2f}"
        p = "-" if r["p"] is None else f"{r['p']:.3g}"
        lines.append(f"| {r['model']} | {r['metric']} | {r['base']:.4f} | {r['variant']:.4f} | {improvement} | {t} | {p} |")
    note = (f"Paired two-sided t-test across the {n_seeds} seeds (same seed, same data, {base} vs its "
            f"{new}); with few seeds it has little power, read p together with the spread.")
    return "\n".join(lines) + "\n\n" + note
