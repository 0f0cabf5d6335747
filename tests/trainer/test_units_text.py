"""Matching units in every script: what the gate compares between a prompt and a trained question."""

from __future__ import annotations

import pytest

from memtune.trainer.mome.units import normalise, unit_set, units_of


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Où est né Lumdor-Pragridor ?", {"où", "est", "né", "lumdor", "pragridor"}),
        ("Кто основал компанию Вельмора?", {"кто", "основал", "компанию", "вельмора"}),
        ("¿Quién fundó la empresa Zanmir?", {"quién", "fundó", "la", "empresa", "zanmir"}),
        ("من أسس شركة فيرمورا؟", {"من", "أسس", "شركة", "فيرمورا"}),
        ("नमस्ते दुनिया", {"नमस्ते", "दुनिया"}),  # the virama and vowel signs stay inside their word
        ("维尔莫拉", {"维尔", "尔莫", "莫拉"}),  # no spaces: overlapping bigrams
        ("ヴェルモラ硝子", {"ヴェ", "ェル", "ルモ", "モラ", "ラ硝", "硝子"}),
        ("สวัสดี", {"สว", "วั", "ัส", "สด", "ดี"}),
    ],
)
def test_units_of_every_script(text: str, expected: set[str]) -> None:
    assert unit_set(text) == expected


def test_a_polite_prefix_keeps_every_unit_of_an_unspaced_question() -> None:
    question, prompt = "维尔莫拉玻璃厂是谁创立的？", "请问维尔莫拉玻璃厂是谁创立的？"
    assert unit_set(question) <= unit_set(prompt)
    assert not unit_set("维尔莫拉钢铁厂是谁创立的？") >= unit_set(question)  # a sibling works lacks 玻璃 / 璃厂


def test_numbers_are_hard_units_in_any_script_and_keep_their_separators() -> None:
    units = {unit.text: unit.hard for unit in units_of("Release ٣.2 of X, 1,000 units")}
    assert units == {"release": False, "3.2": True, "of": False, "x": False, "1,000": True, "units": False}
    assert units_of("code ＺＸ-９")[-1].text == "9" and normalise("ＺＯＲＶＡＴＨ") == "zorvath"
    assert units_of("Hello, world")[1].start == 7  # spans index the original text


def test_mixed_scripts_split_where_the_script_changes() -> None:
    assert unit_set("维尔ABC公司") == {"维尔", "abc", "公司"}
