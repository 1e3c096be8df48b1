"""Plots (PNG) and Markdown tables for evaluation reports."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_confusion(cm: list[list[int]], labels: list[str], path: Path, title: str) -> None:
    cm_arr = np.asarray(cm, dtype=float)
    norm = cm_arr / np.maximum(cm_arr.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1 + 0.6 * len(labels), 0.8 + 0.55 * len(labels)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            if cm_arr[i, j]:
                ax.text(
                    j,
                    i,
                    int(cm_arr[i, j]),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_similarity(matrix: np.ndarray, labels: list[str], path: Path, title: str) -> None:
    fig, ax = plt.subplots(figsize=(1.5 + 0.6 * len(labels), 1 + 0.55 * len(labels)))
    im = ax.imshow(matrix, cmap="viridis", vmin=min(0.0, float(matrix.min())), vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(
                j,
                i,
                f"{matrix[i, j]:.2f}",
                ha="center",
                va="center",
                fontsize=6,
                color="white" if matrix[i, j] < 0.6 else "black",
            )
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_grouped_bars(table: dict[str, dict[str, float]], path: Path, title: str, ylabel: str) -> None:
    """table: series name -> {category: value} (a category a series lacks gets no bar)."""
    series = list(table)
    cats = list(dict.fromkeys(c for t in table.values() for c in t))
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(1.5 + 1.1 * len(cats), 4))
    for k, name in enumerate(series):
        ax.bar(
            np.arange(len(cats)) + k * width - 0.4 + width / 2,
            [table[name].get(c, np.nan) for c in cats],
            width,
            label=name,
        )
    ax.set_xticks(range(len(cats)), cats, rotation=30, ha="right", fontsize=8)
    values = [v for t in table.values() for v in t.values()]
    low = min(values)
    # zoom in when every value is high, or the differences that matter are invisible
    ax.set_ylim((max(0.0, low - 0.02), 1.002) if low > 0.8 else (0, 1.02))
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="lower left")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_reliability(curves: dict[str, dict], path: Path, title: str = "reliability diagram") -> None:
    """curves: name -> `expected_calibration_error` result. Top: accuracy vs confidence per bin (marker
    area ~ images in the bin, so near-empty bins do not mislead); bottom: how many images per bin."""
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 5.6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
    for k, (name, c) in enumerate(curves.items()):
        bins = c["bins"]
        conf = [b["confidence"] for b in bins]
        ax.plot(conf, [b["accuracy"] for b in bins], lw=0.8, alpha=0.6, color=f"C{k}")
        ax.scatter(
            conf,
            [b["accuracy"] for b in bins],
            s=[8 + 120 * np.sqrt(b["n"] / max(1, max(x["n"] for x in bins))) for b in bins],
            color=f"C{k}",
            label=f"{name}: ECE {c['ece']:.4f}",
            alpha=0.8,
        )
        centres = [(b["lo"] + b["hi"]) / 2 for b in bins]
        hist.bar(
            np.array(centres) + (k - 0.5) * 0.025,
            [b["n"] for b in bins],
            width=0.025,
            color=f"C{k}",
            alpha=0.8,
        )
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    hist.set_yscale("log")
    hist.set_xlabel("confidence (top-1 probability)")
    hist.set_ylabel("images")
    hist.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_pr_curve(curve: dict, chosen: dict | None, path: Path, title: str = "copy verdict") -> None:
    """Precision-recall over thresholds; `chosen` (threshold, precision, recall) is marked."""
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.plot(curve["recall"], curve["precision"], lw=1.5)
    if chosen:
        ax.scatter([chosen["recall"]], [chosen["precision"]], color="red", zorder=3)
        ax.annotate(
            f"threshold {chosen['threshold']:.3f}\nP {chosen['precision']:.3f} R {chosen['recall']:.3f}",
            (chosen["recall"], chosen["precision"]),
            textcoords="offset points",
            xytext=(-110, -30),
            fontsize=8,
        )
    ax.set_xlabel("recall (edited copies called copies)")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1.01)
    ax.set_ylim(max(0.0, min(curve["precision"]) - 0.02), 1.01)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def fmt(v) -> str:
        if v is None:
            return "—"
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def compare_reports(reports: dict[str, Path], out: Path) -> dict:
    """Side-by-side robustness of several evaluated models: JSON + Markdown + PNG in `out`."""
    import json

    out.mkdir(parents=True, exist_ok=True)
    metrics = {name: json.loads((Path(d) / "metrics.json").read_text()) for name, d in reports.items()}
    table = {name: m["robustness"] for name, m in metrics.items()}
    rows = []
    for corruption in next(iter(table.values())):
        row = {"corruption": corruption}
        for name in table:
            row[f"{name} acc"] = table[name][corruption]["accuracy"]
            row[f"{name} F1"] = table[name][corruption]["macro_f1"]
        rows.append(row)
    summary = {
        name: {
            "macro_f1": m["clean"]["macro_f1"],
            "accuracy": m["clean"]["accuracy"],
            "precision_at_10": m["retrieval"]["precision_at_10_collection"],
            "unknown_auroc": m.get("unknown", {}).get(
                "auroc", m.get("unknown", {}).get("auroc_max_probability")
            ),
            "known_flagged_unknown": m.get("unknown", {}).get("known_flagged_rate"),
            "ece": m.get("calibration", {}).get("ece_after"),
            "duplicate_top1_rate": m.get("duplicates", {}).get("top1_rate"),
        }
        for name, m in metrics.items()
    }
    result = {"robustness": table, "summary": summary}
    (out / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    md = [
        "# Model comparison",
        "",
        markdown_table(
            [{"model": k, **v} for k, v in summary.items()],
            [
                "model",
                "macro_f1",
                "accuracy",
                "precision_at_10",
                "unknown_auroc",
                "known_flagged_unknown",
                "ece",
                "duplicate_top1_rate",
            ],
        ),
        "",
        "## Robustness (accuracy and macro-F1 per corruption)",
        "",
        markdown_table(rows, list(rows[0])),
        "",
        "![robustness](robustness.png)",
    ]
    (out / "comparison.md").write_text("\n".join(md) + "\n")
    plot_grouped_bars(
        {name: {c: v["macro_f1"] for c, v in t.items()} for name, t in table.items()},
        out / "robustness.png",
        "macro-F1 under corruption",
        "macro-F1",
    )
    return result
