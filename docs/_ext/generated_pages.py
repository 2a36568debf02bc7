"""Pages written at build time from the code, so they cannot drift from it.

- ``docs/zoo/``: one page per backbone in ``recbole_ckd.model.BACKBONES`` (its paper, its
  defaults from ``properties/model/<Name>.yaml``, which variants it has, its class docstring,
  its rows in the committed results) and an index table of them all.
- ``docs/results/``: one page per committed ``results/<name>.md``, which it includes.

Both folders are rebuilt on every build and are not committed. Links written for GitHub as
``../results/<name>.md`` (from a page in ``docs/``) are pointed at the included copies.
"""

import csv
import re
import shutil
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
RESULTS = ROOT / "results"
ZOO = DOCS / "zoo"
RESULT_PAGES = DOCS / "results"


def _fresh(folder):
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()


# ----------------------------------------------------------------------------- results
def result_pages():
    """``{name: title}`` of every committed results page."""
    pages = {}
    for path in sorted(RESULTS.glob("*.md")):
        first = path.read_text(encoding="utf-8").splitlines()[0]
        pages[path.stem] = first.lstrip("# ").strip()
    return pages


def write_result_pages():
    _fresh(RESULT_PAGES)
    for name in result_pages():
        (RESULT_PAGES / f"{name}.md").write_text(
            f"```{{include}} ../../results/{name}.md\n:relative-images:\n```\n", encoding="utf-8"
        )


def results_rows(backbone):
    """Every results row of the backbone and of its variants: ``[(page, model, metric cells)]``."""
    rows = []
    for path in sorted(RESULTS.glob("*.csv")):
        table = {}
        with path.open(newline="", encoding="utf-8") as f:
            for record in csv.DictReader(f):
                model = record["model"]
                if model == backbone or model.startswith(f"{backbone}_"):
                    cell = f"{float(record['mean']):.4f} ± {float(record['std']):.4f}"
                    table.setdefault(model, {"seeds": record["n_seeds"]})[record["metric"]] = cell
        rows += [(path.stem, model, cells) for model, cells in table.items()]
    return rows


# ----------------------------------------------------------------------------- model zoo
def model_yaml(name):
    """The header comment and ``[(key, value, comment)]`` of ``properties/model/<name>.yaml``."""
    path = ROOT / "properties" / "model" / f"{name}.yaml"
    if not path.is_file():
        return "", []
    header, keys = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") and not keys:
            header.append(line.lstrip("# "))
        elif line.strip() and not line.startswith((" ", "#")):
            setting, _, comment = line.partition("#")
            key, _, value = setting.partition(":")
            keys.append((key.strip(), yaml.safe_load(value) if value.strip() else None, comment.strip()))
    return " ".join(header), keys


def _module_summary(backbone):
    """The first paragraph of the backbone's module docstring: its paper and what it is."""
    doc = (sys.modules[backbone.__module__].__doc__ or "").strip()
    return " ".join(doc.split("\n\n")[0].split()) if doc else backbone.__name__


def _value(value):
    return "`~` (None)" if value is None else f"`{yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}`"


VARIANT_WORDS = {"CKD": "CKD student", "MDrop": "modality dropout", "OGMGE": "OGM-GE gradient modulation",
                 "MMPareto": "MMPareto gradient combination"}


def _variants(backbone):
    """Its variants, and the registry's own refusal text for those it cannot have (so the page says
    what the command line says)."""
    from recbole_ckd.registry import model_refusal

    name = backbone.__name__
    built, refused = [], []
    for suffix, words in VARIANT_WORDS.items():
        refusal = model_refusal(f"{name}_{suffix}")
        if refusal is None:
            built.append(f"`{name}_{suffix}` ({words})")
        elif refusal not in refused:
            refused.append(refusal)
    if not built:  # one reason refuses them all
        return f"none. {refused[0]}", "no"
    return ". ".join([", ".join(built), *refused]), "yes"


def backbone_page(backbone):
    name = backbone.__name__
    header, keys = model_yaml(name)
    variants, _ = _variants(backbone)
    lines = [
        f"# {name}",
        "",
        f"**Paper:** {_module_summary(backbone)}",
        "",
        f"**Variants:** {variants}",
        "",
        f"## Defaults (`properties/model/{name}.yaml`)",
        "",
    ]
    if header:
        lines += [header, ""]
    if keys:
        lines += ["| key | default | meaning |", "| --- | --- | --- |"]
        lines += [f"| `{key}` | {_value(value)} | {comment} |" for key, value, comment in keys]
    else:
        lines.append("No model YAML: RecBole's and the plugin's general defaults apply.")
    lines += [
        "",
        "## The model, its reference and the differences from it",
        "",
        "From the class docstring:",
        "",
        "```{eval-rst}",
        f".. autoclass:: {backbone.__module__}.{name}",
        "   :no-index:",
        "   :no-members:",
        "   :no-show-inheritance:",
        "```",
        "",
        "## Committed results",
        "",
    ]
    rows = results_rows(name)
    if rows:
        lines += [
            "Test metrics, mean ± sample standard deviation over seeds (the linked page has the setting).",
            "",
            "| results page | model | seeds | recall@20 | ndcg@20 |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| [{page}](../results/{page}.md) | `{model}` | {cells['seeds']} | {cells.get('recall@20', '')} "
            f"| {cells.get('ndcg@20', '')} |"
            for page, model, cells in rows
        ]
    else:
        lines.append("None yet.")
    return "\n".join(lines) + "\n"


def write_zoo():
    from recbole_ckd.model import BACKBONES

    _fresh(ZOO)
    index = [
        "# Model zoo",
        "",
        "Every multimodal backbone of the plugin, one page each, generated from the code at build time: "
        "a new backbone in `recbole_ckd/model/backbones/` appears here by itself. Any RecBole general "
        "model (`BPR`, `LightGCN`, ...) runs as well, as a baseline.",
        "",
        "| backbone | paper | CKD student and balancing variants |",
        "| --- | --- | --- |",
    ]
    for backbone in BACKBONES:
        name = backbone.__name__
        (ZOO / f"{name}.md").write_text(backbone_page(backbone), encoding="utf-8")
        _, can = _variants(backbone)
        variants = f"`{name}_CKD`, `{name}_MDrop`, `{name}_OGMGE`" if can == "yes" else "none (ranks without modalities)"
        index.append(f"| [{name}]({name}.md) | {_module_summary(backbone)} | {variants} |")
    index += ["", "```{toctree}", ":hidden:", ""] + [b.__name__ for b in BACKBONES] + ["```", ""]
    (ZOO / "index.md").write_text("\n".join(index), encoding="utf-8")


# ----------------------------------------------------------------------------- Sphinx hooks
GITHUB_RESULTS_LINK = re.compile(r"\]\(\.\./results/([\w.-]+)\.md\)")


def _generate(app):
    write_zoo()
    write_result_pages()


def _point_results_links(app, docname, source):
    if "/" not in docname:  # a page in docs/ itself: its ../results/ links are GitHub's
        source[0] = GITHUB_RESULTS_LINK.sub(r"](results/\1.md)", source[0])


def setup(app):
    app.connect("builder-inited", _generate)
    app.connect("source-read", _point_results_links)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
