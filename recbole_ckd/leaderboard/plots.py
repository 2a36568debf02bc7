"""The page's diagnostic plots: each modality alone and jointly, and CKD's weights per epoch."""


def plot_modalities(cells, path):
    """The "1 + 1 < 2" picture: Recall@20 of each teacher, of the backbone and of its CKD
    student, each modality alone and jointly (test, mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from recbole_ckd.model import ckd_backbone_name

    groups = {}
    for model, records in cells.items():
        backbone = ckd_backbone_name(model)
        if backbone is None:
            continue
        bars = {}
        for label_prefix, source in (("", model), ("backbone ", backbone)):
            for record in cells.get(source, []):
                for mode, result in (record.get("modes") or {}).items():
                    label = mode if source == model else label_prefix + mode
                    bars.setdefault(label, []).append(result["test"]["recall@20"])
        if bars:
            groups[model] = {k: sum(v) / len(v) for k, v in sorted(bars.items())}
    if not groups:
        return None
    fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4), squeeze=False)
    for ax, (model, bars) in zip(axes[0], groups.items()):
        labels = list(bars)
        colors = ["tab:green" if l.startswith("teacher") else "tab:gray" if l.startswith("backbone") else "tab:blue"
                  for l in labels]
        ax.bar(range(len(labels)), [bars[l] for l in labels], color=colors)
        ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
        ax.set_title(model)
        ax.set_ylabel("test Recall@20")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def study_modes(cells):
    """``{backbone: {method: {mode: mean test Recall@20}}}`` for the study's picture: the plain
    backbone, its teachers, the CKD student and each balancing baseline, jointly and per "only m"."""
    from recbole_ckd.model import variant_backbone_name

    groups = {}
    for label, records in cells.items():
        model = records[0]["model"]
        if records[0].get("overrides"):
            continue  # ablations: the table has them
        backbone = variant_backbone_name(model) or model
        for record in records:
            for mode, result in (record.get("modes") or {}).items():
                if mode.startswith("backbone "):
                    continue  # the plain backbone has its own cells
                method, _, mode_name = mode.rpartition(" ")
                if method == "teacher":  # "teacher t" ranks with t only
                    method, mode_name = "teachers", f"only_{mode_name}"
                else:
                    method = label
                values = groups.setdefault(backbone, {}).setdefault(method, {}).setdefault(mode_name, [])
                values.append(result["test"]["recall@20"])
    return {b: {method: {mode: sum(v) / len(v) for mode, v in modes.items()} for method, modes in methods.items()}
            for b, methods in groups.items()}


def plot_study_modalities(cells, path):
    """Grouped bars per backbone: each mode (joint, only m) for every method of :func:`study_modes`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = study_modes(cells)
    if not groups:
        return None
    fig, axes = plt.subplots(1, len(groups), figsize=(7 * len(groups), 4), squeeze=False)
    for ax, (backbone, methods) in zip(axes[0], groups.items()):
        modes = sorted({mode for values in methods.values() for mode in values}, key=lambda m: (m != "joint", m))
        width = 0.8 / len(methods)
        for k, (method, values) in enumerate(methods.items()):
            xs = [i + k * width for i, mode in enumerate(modes) if mode in values]
            ax.bar(xs, [values[mode] for mode in modes if mode in values], width, label=method)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(modes))], modes)
        ax.set_title(backbone)
        ax.set_ylabel("test Recall@20")
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, never over them
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_weights(cells, path):
    """Per-epoch mean weight r_m of every CKD model during stage 2 (first seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {}
    for model, records in cells.items():
        stats = records[0].get("epoch_stats") or []
        for key in sorted({k for row in stats for k in row if k.startswith("r_") and k.endswith("_mean")}):
            series[f"{model} {key[:-5]}"] = ([row["epoch"] for row in stats if key in row],
                                             [row[key] for row in stats if key in row])
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, (x, y) in series.items():
        ax.plot(x, y, label=label)
    ax.axhline(1.0, color="black", linewidth=0.5, linestyle=":")
    ax.set_xlabel("epoch (stage 2)")
    ax.set_ylabel("mean weight r_m")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
