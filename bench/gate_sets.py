"""Data sets for the gate benchmark: trained facts, their paraphrases, and *untrained neighbours* of them.

    .venv/bin/python bench/gate_sets.py --set catalogue --out /tmp/catalogue.jsonl
    .venv/bin/python bench/gate_sets.py --set multilingual --out /tmp/multilingual.jsonl

A neighbour is a question close to a trained one whose right answer is NOT a trained answer: the untrained attribute
of a trained entity, a trained attribute of an untrained sibling entity (another vault number of the same archive,
another release of the same software, a colleague sharing a first or last name), the same in other scripts. A
memory that answers one with a trained answer is inventing company data.

Each line: {"kind": "fact" | "neighbour", "input", "output"?, "paraphrase"?, "family", "lang"}. Facts carry their
answer and one paraphrase; neighbours carry no answer (the base model's answer, or any non-trained answer, is right).
Names, numbers and codes come from random syllables and digits under a fixed seed: nothing a model saw.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from collections.abc import Callable
from pathlib import Path

SYLLABLES = ["ka", "lo", "mir", "zan", "tev", "qui", "dor", "vel", "sha", "bru", "nex", "oth", "pra", "lum", "gri"]
Rng = random.Random


def _name(rng: Rng, parts: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(parts)).capitalize()


def _digits(rng: Rng, count: int) -> str:
    return str(rng.randint(10 ** (count - 1), 10**count - 1))


# attribute -> (question, paraphrase, answer maker); {e} is the entity.
PERSON: dict[str, tuple[str, str, Callable[[Rng], str]]] = {
    "employee_id": (
        "What is the employee ID of {e}?",
        "Which employee ID does {e} have?",
        lambda r: f"E-{_digits(r, 5)}",
    ),
    "office": ("Which office is {e} in?", "In which office does {e} work?", lambda r: f"Room {_digits(r, 3)}"),
    "extension": ("What is the phone extension of {e}?", "What's {e}'s phone extension?", lambda r: _digits(r, 4)),
    "manager": ("Who is the manager of {e}?", "Who does {e} report to?", lambda r: f"{_name(r, 2)} {_name(r, 3)}"),
    "start_year": (
        "In what year did {e} join the company?",
        "When did {e} join the company?",
        lambda r: str(r.randint(1995, 2024)),
    ),
}
PRODUCT: dict[str, tuple[str, str, Callable[[Rng], str]]] = {
    "code": (
        "What is the product code of the {e}?",
        "Which product code does the {e} carry?",
        lambda r: f"{r.choice('BCDFGHKMPQRTVXZ')}{r.choice('BCDFGHKMPQRTVXZ')}-{_digits(r, 4)}",
    ),
    "price": ("What is the price of the {e}?", "How much does the {e} cost?", lambda r: f"{r.randint(12, 980)} euros"),
    "weight": ("How much does the {e} weigh?", "What is the weight of the {e}?", lambda r: f"{r.randint(2, 90)} kg"),
    "warehouse": (
        "Which warehouse stocks the {e}?",
        "In which warehouse is the {e} kept?",
        lambda r: f"Warehouse {_name(r, 2)}",
    ),
}
VAULT = (
    "What is the access code of vault {n} in the {a} archive?",
    "Which access code opens vault {n} of the {a} archive?",
)
RELEASE = ("What is the codename of release {n} of {a}?", "Which codename did {a} release {n} get?")


def catalogue(seed: int = 0) -> list[dict[str, str]]:
    """200 facts (people, products, numbered vaults, software releases) and about 200 neighbours."""
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []

    def fact(family: str, question: str, paraphrase: str, answer: str) -> None:
        rows.append({"kind": "fact", "family": family, "input": question, "paraphrase": paraphrase, "output": answer})

    def neighbour(family: str, question: str) -> None:
        rows.append({"kind": "neighbour", "family": family, "input": question})

    # 40 people from 10 first and 10 last names: colleagues share a first or a last name.
    firsts, lasts = [_name(rng, 2) for _ in range(10)], [_name(rng, 3) for _ in range(10)]
    pairs = list(itertools.product(firsts, lasts))
    rng.shuffle(pairs)
    people, strangers = pairs[:40], pairs[40:60]
    attributes = list(PERSON)
    for first, last in people:
        person = f"{first} {last}"
        trained = rng.sample(attributes, 3)
        for attribute in attributes:
            question, paraphrase, answer = PERSON[attribute]
            if attribute in trained:
                fact("person", question.format(e=person), paraphrase.format(e=person), answer(rng))
            elif len([r for r in rows if r.get("family") == "person-untrained-attribute"]) < 60:
                neighbour("person-untrained-attribute", question.format(e=person))
    # Untrained people who share a name with trained ones, asked a trained attribute.
    for first, last in strangers:
        neighbour("person-namesake", PERSON[rng.choice(attributes)][0].format(e=f"{first} {last}"))
    # 20 products, 2 of 4 attributes trained; the other 2 are neighbours.
    kinds = ["lamp", "valve", "loom", "compass", "kettle"]
    for _ in range(20):
        product = f"{_name(rng, 2)} {rng.choice(kinds)}"
        trained = rng.sample(list(PRODUCT), 2)
        for attribute, (question, paraphrase, answer) in PRODUCT.items():
            if attribute in trained:
                fact("product", question.format(e=product), paraphrase.format(e=product), answer(rng))
            else:
                neighbour("product-untrained-attribute", question.format(e=product))
    # Numbered siblings: 10 archives x 2 trained vaults, 10 programs x 2 trained releases; 2 untrained of each.
    for template, family, number in (
        (VAULT, "vault", lambda: str(rng.randint(1, 40))),
        (RELEASE, "release", lambda: f"{rng.randint(1, 9)}.{rng.randint(0, 9)}"),
    ):
        for _ in range(10):
            owner = _name(rng, 3)
            numbers: list[str] = []
            while len(numbers) < 4:
                if (n := number()) not in numbers:
                    numbers.append(n)
            for n in numbers[:2]:
                answer = f"{_name(rng, 2)}-{_digits(rng, 3)}" if family == "vault" else _name(rng, 3)
                fact(family, template[0].format(n=n, a=owner), template[1].format(n=n, a=owner), answer)
            for n in numbers[2:]:
                neighbour(f"{family}-sibling-number", template[0].format(n=n, a=owner))
    for row in rows:
        row["lang"] = "en"
    return rows


# Multilingual: per language, entity names in its script, a founder question (name answer) and a founding-year
# question (number answer), each with a paraphrase a native speaker would type.
_ZH_SYL = ["维", "尔", "莫", "拉", "卡", "索", "泰", "宁", "安", "格", "里", "达", "贝", "诺"]
_ZH_KIND = ["玻璃厂", "钢铁厂", "书店", "银行", "茶庄"]
_ZH_PEOPLE = ["李", "王", "张", "刘", "陈", "杨", "赵", "黄"]
_ZH_GIVEN = ["明华", "志强", "秀英", "建国", "丽娟", "海燕", "文杰", "晓东"]
_JA_SYL = ["ヴェ", "ル", "モ", "ラ", "カ", "ソ", "タ", "ニ", "ア", "グ", "リ", "ダ", "ベ", "ノ"]
_JA_KIND = ["硝子", "製鉄", "書店", "銀行", "茶舗"]
_JA_PEOPLE = ["佐藤", "鈴木", "高橋", "田中", "渡辺", "伊藤", "山本", "中村"]
_JA_GIVEN = ["一郎", "花子", "健太", "美咲", "大輔", "由美", "翔太", "陽子"]
_RU_SYL = ["ве", "ль", "мо", "ра", "ка", "со", "те", "ни", "ан", "гри", "да", "бе", "но"]
_RU_PEOPLE = ["Иван Петров", "Анна Смирнова", "Олег Волков", "Мария Козлова", "Павел Орлов", "Елена Морозова"]
_AR_SYL = ["فير", "مو", "را", "كا", "سو", "تي", "نا", "غري", "دا", "بي", "نو"]
_AR_PEOPLE = ["أحمد منصور", "ليلى حداد", "خالد ناصر", "سارة يوسف", "عمر فاروق", "نور سليم"]
_ES_PEOPLE = ["Lucía Ortega", "Mateo Iglesias", "Carmen Roldán", "Diego Salvat", "Elena Quiroga", "Hugo Benavent"]

# lang -> (entity maker, founder q, founder paraphrase, year q, year paraphrase, founder answer maker)
LANGS: dict[str, tuple[Callable[[Rng], str], str, str, str, str, Callable[[Rng], str]]] = {
    "zh": (
        lambda r: "".join(r.sample(_ZH_SYL, 4)) + r.choice(_ZH_KIND),
        "{e}是谁创立的？",
        "请问{e}是谁创立的？",
        "{e}是哪一年成立的？",
        "请问{e}成立于哪一年？",
        lambda r: r.choice(_ZH_PEOPLE) + r.choice(_ZH_GIVEN),
    ),
    "ja": (
        lambda r: "".join(r.sample(_JA_SYL, 4)) + r.choice(_JA_KIND),
        "{e}を創業したのは誰ですか？",
        "{e}の創業者は誰ですか？",
        "{e}は何年に設立されましたか？",
        "{e}の設立年はいつですか？",
        lambda r: r.choice(_JA_PEOPLE) + r.choice(_JA_GIVEN),
    ),
    "ru": (
        lambda r: "".join(r.sample(_RU_SYL, 3)).capitalize() + r.choice(["трест", "банк", "завод"]),
        "Кто основал компанию {e}?",
        "Кто является основателем компании {e}?",
        "В каком году была основана компания {e}?",
        "Когда была основана компания {e}?",
        lambda r: r.choice(_RU_PEOPLE),
    ),
    "ar": (
        lambda r: "".join(r.sample(_AR_SYL, 3)),
        "من أسس شركة {e}؟",
        "من هو مؤسس شركة {e}؟",
        "في أي عام تأسست شركة {e}؟",
        "متى تأسست شركة {e}؟",
        lambda r: r.choice(_AR_PEOPLE),
    ),
    "es": (
        lambda r: _name(r, 3),
        "¿Quién fundó la empresa {e}?",
        "¿Quién es el fundador de la empresa {e}?",
        "¿En qué año se fundó la empresa {e}?",
        "¿Cuándo se fundó la empresa {e}?",
        lambda r: r.choice(_ES_PEOPLE),
    ),
}


def _swap_suffix(name: str, suffixes: list[str], rng: Rng) -> str:
    """The same name with another of `suffixes` (a glass works -> a steel works of the same name)."""
    suffix = next(x for x in suffixes if name.endswith(x))
    return name[: -len(suffix)] + rng.choice([x for x in suffixes if x != suffix])


SIBLING: dict[str, Callable[[str, Rng], str]] = {
    "zh": lambda name, r: _swap_suffix(name, _ZH_KIND, r),
    "ja": lambda name, r: _swap_suffix(name, _JA_KIND, r),
    "ru": lambda name, r: _swap_suffix(name, ["трест", "банк", "завод"], r),
    "ar": lambda name, r: name + r.choice(["ن", "ر", "س"]),
    "es": lambda name, r: name + r.choice(["ra", "no", "ta"]),
}


def multilingual(seed: int = 0, per_language: int = 20) -> list[dict[str, str]]:
    """Per language: `per_language` facts (half founders, half founding years) about distinct companies, and as many
    neighbours (the untrained question about a trained company, or the trained question about an untrained one)."""
    rng = random.Random(seed)
    rows: list[dict[str, str]] = []
    for lang, (entity, founder_q, founder_p, year_q, year_p, founder) in LANGS.items():
        names: list[str] = []
        while len(names) < per_language * 3 // 2:
            if (name := entity(rng)) not in names:
                names.append(name)
        trained, untrained = names[:per_language], names[per_language:]
        for i, name in enumerate(trained):
            asks_founder = i % 2 == 0
            question, paraphrase = (founder_q, founder_p) if asks_founder else (year_q, year_p)
            answer = founder(rng) if asks_founder else str(rng.randint(1850, 2015))
            rows.append(
                {
                    "kind": "fact",
                    "family": f"{lang}-fact",
                    "input": question.format(e=name),
                    "paraphrase": paraphrase.format(e=name),
                    "output": answer,
                }
            )
            other = year_q if asks_founder else founder_q
            rows.append({"kind": "neighbour", "family": f"{lang}-untrained-attribute", "input": other.format(e=name)})
        for i, name in enumerate(untrained):
            question = founder_q if i % 2 == 0 else year_q
            if i % 2:  # a sibling: a trained company's name with its last part changed
                name = SIBLING[lang](trained[i], rng)
            rows.append({"kind": "neighbour", "family": f"{lang}-sibling-entity", "input": question.format(e=name)})
        for row in rows:
            row.setdefault("lang", lang)
    return rows


SETS = {"catalogue": catalogue, "multilingual": multilingual}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=sorted(SETS), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    options = parser.parse_args()
    options.out.parent.mkdir(parents=True, exist_ok=True)
    with options.out.open("w", encoding="utf-8") as handle:
        for row in SETS[options.set](options.seed):
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
