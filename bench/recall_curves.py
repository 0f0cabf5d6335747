"""Time to 99% recall, MoME against plain LoRA: both curves on one plot, and the speed-up.

    .venv/bin/python bench/recall_curves.py --mome bench/results/synthetic-200/summary.json \
        --lora bench/results/synthetic-200/lora.json --out bench/results/synthetic-200

Inputs are what the two benchmarks wrote in the same session: mome_bench.py's summary.json (its run's loss curve
counts the facts whose answer loss is below stopLoss after each step) and lora_baseline.py's curve (teacher-forced
exact answers every couple of minutes). MoME is charged its whole tuning wall time (model load, frozen pass, gate
calibration, training, saving); LoRA only its training updates, so the comparison leans in LoRA's favour.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TARGET = 0.99


def mome_curve(summary: dict) -> tuple[list[tuple[float, float]], float | None, float]:
    """[(training seconds, recall)], training seconds to TARGET (None: not reached), and the time outside training."""
    points = json.loads((Path(summary["run_dir"]) / "loss_curve.json").read_text(encoding="utf-8"))
    facts = summary["facts"]
    curve = [(p["seconds"], p["learned"] / facts) for p in points]
    reached = next((seconds for seconds, recall in curve if recall >= TARGET), None)
    overhead = summary["tuning_seconds"] - (curve[-1][0] if curve else 0.0)
    return curve, reached, overhead


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mome", type=Path, required=True, help="summary.json of bench/mome_bench.py")
    parser.add_argument("--lora", type=Path, required=True, help="output of bench/lora_baseline.py")
    parser.add_argument("--out", type=Path, required=True)
    options = parser.parse_args()
    summary = json.loads(options.mome.read_text(encoding="utf-8"))
    lora = json.loads(options.lora.read_text(encoding="utf-8"))
    curve, mome_train, overhead = mome_curve(summary)
    mome_total = None if mome_train is None else mome_train + overhead
    lora_curve = [(p["seconds"], p["recall"]) for p in lora["curve"]]
    lora_reached = lora["seconds_to_99"]
    lora_capped = lora_curve[-1][0] if lora_curve else 0.0

    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot([s for s, _ in curve], [100 * r for _, r in curve], label="MoME (training time)")
    axis.plot([s for s, _ in lora_curve], [100 * r for _, r in lora_curve], marker="o", label="LoRA (training time)")
    axis.axhline(100 * TARGET, color="grey", linestyle=":", label="99%")
    axis.set(xscale="log", xlabel="seconds of training (2 CPU cores)", ylabel="facts recalled (%)")
    axis.set_title(f"Time to recall {summary['facts']} facts")
    axis.legend()
    figure.tight_layout()
    options.out.mkdir(parents=True, exist_ok=True)
    figure.savefig(options.out / "recall-curves.png", dpi=100)
    plt.close(figure)

    def fmt(seconds: float | None) -> str:
        return "not reached" if seconds is None else f"{seconds:.0f} s"

    if lora_reached is not None and mome_total is not None:
        verdict = f"{lora_reached / mome_total:.1f}x shorter"
    elif mome_total is not None:
        verdict = (
            f"more than {lora_capped / mome_total:.1f}x shorter (LoRA stopped at its {lora['cap_minutes']:g} min cap)"
        )
    else:
        verdict = "MoME did not reach 99%"
    lines = [
        f"# Time to 99% recall: MoME vs LoRA ({summary['facts']} facts)",
        "",
        "| method | training time to 99% | end to end | last recall |",
        "|---|---|---|---|",
        f"| MoME | {fmt(mome_train)} | {fmt(mome_total)} | {curve[-1][1]:.1%} |",
        f"| LoRA (peft, lr {lora['lr']:g}) | {fmt(lora_reached)} | - | {lora_curve[-1][1]:.1%} "
        f"after {lora_capped:.0f} s |",
        "",
        f"MoME reaches 99% recall {verdict} (target: at least 5x). LoRA's recall is checked every "
        f"{lora.get('eval_every', 120):g} s of training, so its time to 99% is known to that resolution; MoME's is "
        "checked after every step.",
        "",
        "![recall curves](recall-curves.png)",
        "",
    ]
    (options.out / "recall-curves.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
