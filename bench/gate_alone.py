"""The gate alone, without tuning: which trained question it opens for each prompt of a gate set, in seconds.

    .venv/bin/python bench/gate_alone.py --set catalogue
    .venv/bin/python bench/gate_alone.py --set multilingual

The trained questions' evidence comes from one base-model pass (as a job computes it); prompts are judged by their
units, as at generation. No keys are computed: each prompt's candidates are the 8 trained questions that best fit its
units (the index's role in a real run), all at distance 0, so only the entity and relation checks decide. Counts:
trained questions that open on themselves, paraphrases that open on their own question, neighbours (bench/gate_sets.py)
the gate opens at all. bench/gate_bench.py measures the same sets end to end, answers included.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from gate_sets import SETS

from memtune.trainer.mome.anchors import Anchors, evidence, text_evidence
from memtune.trainer.mome.base import load_base_model
from memtune.trainer.mome.gate import Decision, Gate
from memtune.trainer.mome.router import CANDIDATES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=sorted(SETS), required=True)
    parser.add_argument("--share", type=float, default=0.6, help="memory.anchorShare")
    options = parser.parse_args()
    rows = SETS[options.set]()
    facts = [r for r in rows if r["kind"] == "fact"]
    neighbours = [r for r in rows if r["kind"] == "neighbour"]
    questions = [f["input"] for f in facts]
    gate = Gate(Anchors(text_evidence(load_base_model("smollm2-135m-instruct"), questions), options.share), 1.0, 1.0)

    def decide(text: str) -> Decision:
        prompt = evidence(text)
        order = sorted(range(len(questions)), key=lambda slot: -gate.fit(prompt, slot))[:CANDIDATES]
        return gate.decide(order, [0.0] * len(order), prompt)

    trained = sum(decide(q).slot == i for i, q in enumerate(questions))
    missed = [(f["paraphrase"], d.reason) for i, f in enumerate(facts) if (d := decide(f["paraphrase"])).slot != i]
    opened: Counter[str] = Counter()
    for row in neighbours:
        decision = decide(row["input"])
        if decision.slot >= 0:
            opened[row["family"]] += 1
            print(f"neighbour opened: {row['input']!r} -> {questions[decision.slot]!r}")
    for text, reason in missed:
        print(f"paraphrase gated ({reason}): {text!r}")
    print(
        f"{options.set}: trained {trained}/{len(facts)} open on their own question; paraphrases "
        f"{len(facts) - len(missed)}/{len(facts)}; neighbours opened {sum(opened.values())}/{len(neighbours)} "
        f"{dict(opened)}"
    )


if __name__ == "__main__":
    main()
