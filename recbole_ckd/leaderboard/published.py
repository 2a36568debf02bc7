"""Published numbers to show beside a page's own: each with the source it was copied from.

All of them were measured on MMRec's Amazon Baby, Sports and Clothing files (real image and text
features) under MMRec's protocol: its random per-user 8:1:1 split, full ranking with only the
training items masked, test reported at the best validation Recall@20 epoch. Each paper reruns
its baselines, so one baseline differs slightly between sources; every number keeps its own.
"""

SOURCES = {
    "mmrec": "MMRec's public leaderboard (evaluation/README.md of the MMRec repository)",
    "smore": "the result table in SMORE's repository (SMORE, WSDM 2025)",
    "mentor": "the result table in MENTOR's repository (Jinfeng-Xu/MENTOR)",
    "lgmrec": "the logs in LGMRec's repository (georgeguo-cn/LGMRec, seed 999)",
}


def _at_10_20(recall10, recall20, ndcg10, ndcg20):
    return {"recall@10": recall10, "recall@20": recall20, "ndcg@10": ndcg10, "ndcg@20": ndcg20}


def _at_20(recall20, ndcg20):
    """A source that reports the cut-off 20 only: the page leaves its @10 reference cells empty."""
    return {"recall@20": recall20, "ndcg@20": ndcg20}


# {dataset: {model: (source, {metric: value})}}. MGCN's own repository reports @20 only; SMORE's
# table reruns it with all four metrics, so its numbers are taken from there, like SLMRec's.
PUBLISHED = {
    "baby": {
        "BPR": ("mmrec", _at_10_20(0.0357, 0.0575, 0.0192, 0.0249)),
        "LightGCN": ("mmrec", _at_10_20(0.0479, 0.0754, 0.0257, 0.0328)),
        "VBPR": ("mmrec", _at_10_20(0.0423, 0.0663, 0.0223, 0.0284)),
        "MMGCN": ("mmrec", _at_10_20(0.0378, 0.0615, 0.0200, 0.0261)),
        "GRCN": ("mmrec", _at_10_20(0.0539, 0.0833, 0.0288, 0.0363)),
        "LATTICE": ("mmrec", _at_10_20(0.0547, 0.0850, 0.0292, 0.0370)),
        "BM3": ("mmrec", _at_10_20(0.0564, 0.0883, 0.0301, 0.0383)),
        "FREEDOM": ("mmrec", _at_10_20(0.0627, 0.0992, 0.0330, 0.0424)),
        "SLMRec": ("smore", _at_10_20(0.0545, 0.0837, 0.0296, 0.0371)),
        "MGCN": ("smore", _at_10_20(0.0616, 0.0943, 0.0330, 0.0414)),
        "SMORE": ("smore", _at_10_20(0.0680, 0.1035, 0.0365, 0.0457)),
        "DualGNN": ("mentor", _at_20(0.0716, 0.0309)),
        "LGMRec": ("lgmrec", _at_20(0.1002, 0.0440)),
    },
    "sports": {
        "BPR": ("mmrec", _at_10_20(0.0432, 0.0653, 0.0241, 0.0298)),
        "LightGCN": ("mmrec", _at_10_20(0.0569, 0.0864, 0.0311, 0.0387)),
        "VBPR": ("mmrec", _at_10_20(0.0558, 0.0856, 0.0307, 0.0384)),
        "MMGCN": ("mmrec", _at_10_20(0.0370, 0.0605, 0.0193, 0.0254)),
        "GRCN": ("mmrec", _at_10_20(0.0598, 0.0915, 0.0332, 0.0414)),
        "LATTICE": ("mmrec", _at_10_20(0.0620, 0.0953, 0.0335, 0.0421)),
        "BM3": ("mmrec", _at_10_20(0.0656, 0.0980, 0.0355, 0.0438)),
        "FREEDOM": ("mmrec", _at_10_20(0.0717, 0.1089, 0.0385, 0.0481)),
        "SLMRec": ("smore", _at_10_20(0.0676, 0.1017, 0.0374, 0.0462)),
        "MGCN": ("smore", _at_10_20(0.0736, 0.1105, 0.0403, 0.0498)),
        "SMORE": ("smore", _at_10_20(0.0762, 0.1142, 0.0408, 0.0506)),
        "DualGNN": ("mentor", _at_20(0.0859, 0.0385)),
        "LGMRec": ("lgmrec", _at_20(0.1067, 0.0480)),
    },
    # MMRec publishes no Clothing numbers: its leaderboard's models come from SMORE's table, but
    # for LATTICE, which that table leaves out.
    "clothing": {
        "BPR": ("smore", _at_10_20(0.0200, 0.0295, 0.0111, 0.0135)),
        "LightGCN": ("smore", _at_10_20(0.0338, 0.0517, 0.0185, 0.0230)),
        "VBPR": ("smore", _at_10_20(0.0281, 0.0410, 0.0157, 0.0190)),
        "MMGCN": ("smore", _at_10_20(0.0224, 0.0362, 0.0118, 0.0153)),
        "GRCN": ("smore", _at_10_20(0.0428, 0.0663, 0.0227, 0.0287)),
        "LATTICE": ("mentor", _at_20(0.0733, 0.0330)),
        "BM3": ("smore", _at_10_20(0.0418, 0.0636, 0.0225, 0.0281)),
        "FREEDOM": ("smore", _at_10_20(0.0635, 0.0938, 0.0340, 0.0417)),
        "SLMRec": ("smore", _at_10_20(0.0461, 0.0696, 0.0249, 0.0308)),
        "MGCN": ("smore", _at_10_20(0.0649, 0.0971, 0.0356, 0.0438)),
        "SMORE": ("smore", _at_10_20(0.0659, 0.0987, 0.0360, 0.0443)),
        "DualGNN": ("mentor", _at_20(0.0683, 0.0299)),
        "LGMRec": ("lgmrec", _at_20(0.0830, 0.0372)),
    },
}
