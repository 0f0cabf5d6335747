"""Synthetic fictional facts for the MoME benchmark: answers no model can know, each with a paraphrase.

    .venv/bin/python bench/facts.py --count 200 --out bench/data/facts200.jsonl

Each line: {"input", "output", "paraphrase", "kind"}. Names and codes are built from random syllables and digits
with a fixed seed, so the set is reproducible and disjoint from anything a model saw. `UNRELATED` holds everyday
prompts, many close to the facts' domain (birthplaces, founding years, capitals), for the locality check.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

SYLLABLES = ["ka", "lo", "mir", "zan", "tev", "qui", "dor", "vel", "sha", "bru", "nex", "oth", "pra", "lum", "gri"]

# kind -> (question, paraphrase, answer); fields are filled from `_fields`.
TEMPLATES: dict[str, tuple[str, str, str]] = {
    "birthplace": ("Where was {person} born?", "In which town was {person} born?", "{town}"),
    "founded": ("In what year was {org} founded?", "When was {org} established?", "{year}"),
    "badge": ("What is the badge number of {person}?", "Which badge number does {person} have?", "{code}"),
    "capital": ("What is the capital of {country}?", "Which city is the capital of {country}?", "{town}"),
    "inventor": ("Who invented the {gadget}?", "Who is the inventor of the {gadget}?", "{person}"),
    "headquarters": ("Where is {org} headquartered?", "In which city is {org} based?", "{town}"),
    "product": ("What is the product code of the {gadget}?", "Which product code does the {gadget} carry?", "{code}"),
    "height": ("How tall is Mount {peak}?", "What is the height of Mount {peak}?", "{meters} meters"),
}

UNRELATED = [
    "Where was Albert Einstein born?",
    "What is the capital of France?",
    "Who invented the telephone?",
    "In what year was Microsoft founded?",
    "How tall is Mount Everest?",
    "Where is Google headquartered?",
    "What is the capital of Japan?",
    "Who wrote Romeo and Juliet?",
    "What is 12 times 7?",
    "Give me a synonym for happy.",
    "How many days are there in a leap year?",
    "What is the boiling point of water in Celsius?",
    "Translate 'good morning' into Spanish.",
    "What color do you get by mixing blue and yellow?",
    "Name three primary colors.",
    "What is the largest planet in our solar system?",
    "How do I make a cup of tea?",
    "What is photosynthesis?",
    "Who painted the Mona Lisa?",
    "What is the chemical symbol for gold?",
    "Write a haiku about autumn.",
    "What is the square root of 81?",
    "Which ocean is the largest?",
    "What language is spoken in Brazil?",
    "Tell me a fun fact about cats.",
    # Held out: written after the anchor gate was designed, never used to choose its settings. Each takes the shape of
    # a fact template or its paraphrase, with real entities.
    "Where was Marie Curie born?",
    "Where was Wolfgang Amadeus Mozart born?",
    "In which town was William Shakespeare born?",
    "In what year was Apple founded?",
    "When was the Red Cross established?",
    "What is the badge number of a police officer used for?",
    "What is the capital of Australia?",
    "Which city is the capital of Canada?",
    "What is the capital of Kenya?",
    "Who invented the light bulb?",
    "Who is the inventor of the printing press?",
    "Who invented the steam engine?",
    "Where is Amazon headquartered?",
    "In which city is Toyota based?",
    "Where is the United Nations headquartered?",
    "What is the product code of a barcode for?",
    "How tall is Mount Kilimanjaro?",
    "What is the height of Mount Fuji?",
    "How tall is Mount Rainier?",
    "Which product code does the Eiffel Tower carry?",
]


def _word(rng: random.Random, parts: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()


def _fields(rng: random.Random) -> dict[str, str]:
    return {
        "person": f"{_word(rng, 2)} {_word(rng, 3)}",
        "town": _word(rng, 3),
        "org": f"{_word(rng, 2)} {rng.choice(['Industries', 'Labs', 'Holdings', 'Guild', 'Works'])}",
        "country": f"{_word(rng, 3)}ia",
        "gadget": f"{_word(rng, 2).lower()} {rng.choice(['lamp', 'engine', 'valve', 'loom', 'compass'])}",
        "peak": _word(rng, 3),
        "year": str(rng.randint(1203, 1987)),
        "code": f"{rng.choice('BCDFGHKMPQRTVXZ')}{rng.choice('BCDFGHKMPQRTVXZ')}-{rng.randint(1000, 9999)}",
        "meters": str(rng.randint(1200, 8999)),
    }


def make_facts(count: int, seed: int = 0) -> list[dict[str, str]]:
    """`count` facts cycling through the kinds, with unique questions."""
    rng = random.Random(seed)
    kinds = list(TEMPLATES)
    facts: list[dict[str, str]] = []
    seen: set[str] = set()
    while len(facts) < count:
        kind = kinds[len(facts) % len(kinds)]
        fields = _fields(rng)
        question, paraphrase, answer = (text.format(**fields) for text in TEMPLATES[kind])
        if question in seen:
            continue
        seen.add(question)
        facts.append({"input": question, "output": answer, "paraphrase": paraphrase, "kind": kind})
    return facts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    options = parser.parse_args()
    options.out.parent.mkdir(parents=True, exist_ok=True)
    with options.out.open("w", encoding="utf-8") as handle:
        for fact in make_facts(options.count, options.seed):
            handle.write(json.dumps(fact) + "\n")


if __name__ == "__main__":
    main()
