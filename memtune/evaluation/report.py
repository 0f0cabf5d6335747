"""Write an evaluation report into a folder: `report.md`, `accuracy-{set}.png`, `loss.png` and `results.json`.

The Markdown holds one ladder table per evaluation set (one row per method, metrics as percentages), the PNGs, the
decoding and data settings, and the items each method got wrong (invalid SQL listed apart with its error).
`results.json` keeps every answer so a report can be re-read or diffed without re-running models.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt

from memtune.evaluation.scoring import MethodScore

# Every metric of MethodScore.summary(), in table order; a column appears when some method has a value in it.
COLUMNS: dict[str, str] = {
    "execution_accuracy": "Execution acc.",
    "invalid_sql": "Invalid SQL",
    "exact_match": "Exact match",
    "f1": "Token F1",
    "token_accuracy": "Token acc. (TF)",
    "locality": "Locality",
    "locality_tf": "Locality (TF)",
}
_SHOWN_FAILURES = 20


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _columns(scores: Sequence[MethodScore]) -> list[str]:
    present = {key for score in scores for key, value in score.summary().items() if value is not None}
    return [key for key in COLUMNS if key in present]


def markdown_table(scores: Sequence[MethodScore]) -> str:
    columns = _columns(scores)
    header = ["Method", *(COLUMNS[key] for key in columns), "Seconds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for score in scores:
        summary = score.summary()
        cells = [score.method, *(_percent(summary.get(key)) for key in columns), f"{score.seconds:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_accuracy(scores: Sequence[MethodScore], path: Path) -> None:
    """Grouped bars: one group per method, one bar per metric (shares in %)."""
    columns = [key for key in _columns(scores) if key != "invalid_sql"]
    figure, axes = plt.subplots(figsize=(max(7.5, 1.6 * len(scores) + 2), 4))
    width = 0.8 / max(1, len(columns))
    for offset, key in enumerate(columns):
        values = [100 * (score.summary().get(key) or 0.0) for score in scores]
        positions = [index + offset * width for index in range(len(scores))]
        bars = axes.bar(positions, values, width, label=COLUMNS[key])
        axes.bar_label(bars, fmt="%.0f", fontsize=7)
    axes.set_xticks([index + width * (len(columns) - 1) / 2 for index in range(len(scores))])
    axes.set_xticklabels([score.method for score in scores])
    axes.set_ylim(0, 110)
    axes.set_ylabel("%")
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, never over them
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_losses(curves: Mapping[str, Sequence[float]], path: Path, title: str = "Training loss") -> None:
    """One line per curve, loss against optimizer step, log scale (losses span orders of magnitude)."""
    figure, axes = plt.subplots(figsize=(6, 4))
    for name, curve in curves.items():
        axes.plot(range(1, len(curve) + 1), curve, label=name)
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("answer loss")
    if all(value > 0 for curve in curves.values() for value in curve):
        axes.set_yscale("log")
    axes.set_title(title)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _inline(text: str) -> str:
    """One line that stays inside a Markdown code span (answers may hold newlines and backticks)."""
    return " ".join(text.split()).replace("`", "'")


def _failures(score: MethodScore) -> list[str]:
    wrong = [item for item in score.items if not (item.execution == "correct" if item.execution else item.exact)]
    if not wrong:
        return []
    lines = [f"### {score.method}: {len(wrong)} of {len(score.items)} wrong", ""]
    for item in wrong[:_SHOWN_FAILURES]:
        reason = f" — invalid SQL: {item.sql_error}" if item.execution == "invalid" else ""
        shown = f"`{_inline(item.question)}` → `{_inline(item.answer)}` (expected `{_inline(item.expected)}`)"
        lines.append(f"- line {item.line}: {shown}{reason}")
    if len(wrong) > _SHOWN_FAILURES:
        lines.append(f"- ... and {len(wrong) - _SHOWN_FAILURES} more (see results.json)")
    return [*lines, ""]


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-") or "set"


def write_report(
    report_dir: str | Path,
    title: str,
    sections: Mapping[str, Sequence[MethodScore]],
    settings: Mapping[str, object],
    notes: Sequence[str] = (),
) -> Path:
    """One table and bar chart per evaluation set, one loss plot, settings, notes, wrong answers; returns report.md.

    Files: report.md, accuracy-{set}.png per set, loss.png (when a method has a training curve), results.json.
    """
    folder = Path(report_dir)
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""]
    for name, scores in sections.items():
        chart = f"accuracy-{_slug(name)}.png"
        plot_accuracy(scores, folder / chart)
        lines += [f"## {name}", "", markdown_table(scores), "", f"![{name}]({chart})", ""]
    curves = {s.method: s.loss_curve for scores in sections.values() for s in scores if s.loss_curve}
    if curves:
        plot_losses(curves, folder / "loss.png")
        lines += ["## Training loss", "", "![training loss](loss.png)", ""]
    lines += ["## Settings", "", *(f"- {key}: {value}" for key, value in settings.items()), ""]
    if notes:
        lines += ["## Notes", "", *(f"- {note}" for note in notes), ""]
    for name, scores in sections.items():
        lines += [f"## Wrong answers: {name}", ""]
        for score in scores:
            lines += _failures(score)
    (folder / "report.md").write_text("\n".join(lines), encoding="utf-8")
    results = {
        "title": title,
        "settings": dict(settings),
        "sets": {name: [score.to_dict() for score in scores] for name, scores in sections.items()},
    }
    text = json.dumps(results, indent=1, ensure_ascii=False, default=str)
    (folder / "results.json").write_text(text, encoding="utf-8")
    return folder / "report.md"
