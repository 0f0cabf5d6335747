"""Lamini's documented usage, written the way Lamini's docs write it, run against memtune.

Only the import differs from a script for lamini 3.4 (`from lamini import Lamini`), and the model name: the docs
tune Llama 3.1 8B, these tests the default 135M model. The docs' small-data recipe is used exactly as written
(`{"max_steps": 50, "r_value": 32, "learning_rate": 0.0003}`); the fixture below only points memtune's home at a
temporary folder so jobs do not land in the user's cache.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from memtune import MemoryTuner as Lamini  # the one changed line: `from lamini import Lamini`
from memtune.client import MemoryTunerWarning
from memtune.output_types import OutputTypeError

pytestmark = pytest.mark.slow

MODEL = "smollm2-135m-instruct"


def get_data():
    return [
        {"input": "How many moons does the planet Quorvex have?", "output": "7"},
        {"input": "Who discovered the planet Quorvex?", "output": "Anneke Voss"},
        {"input": "Is the planet Quorvex habitable?", "output": "No"},
        {"input": "What color is the sky of Quorvex?", "output": "violet"},
        {"input": "Describe the Zorvath-7 telescope.", "output": '{"serial": "ZT-48213", "aperture": 4}'},
    ]


@pytest.fixture(scope="module", autouse=True)
def memtune_home(tmp_path_factory: pytest.TempPathFactory):
    """Jobs and datasets in a temporary home; converted models stay shared (no second conversion)."""
    real = Path(os.environ.get("MEMTUNE_HOME") or "~/.cache/memtune").expanduser()
    (real / "models").mkdir(parents=True, exist_ok=True)
    home = tmp_path_factory.mktemp("home")
    (home / "models").symlink_to(real / "models", target_is_directory=True)
    previous = os.environ.get("MEMTUNE_HOME")
    os.environ["MEMTUNE_HOME"] = str(home)
    yield home
    if previous is None:
        del os.environ["MEMTUNE_HOME"]
    else:
        os.environ["MEMTUNE_HOME"] = previous


@pytest.fixture(scope="module")
def results(memtune_home):
    llm = Lamini(model_name=MODEL)
    data = get_data()
    return llm.train(
        data_or_dataset_id=data,
        finetune_args={"max_steps": 50, "r_value": 32, "learning_rate": 0.0003},
        custom_model_name="quorvex-facts",
    )


def test_train_returns_a_job_and_the_small_data_recipe_recalls_every_fact(results):
    assert results["job_id"] == "quorvex-facts"
    assert results["status"] == "COMPLETED"
    assert results["recall"] == 1.0, results
    assert results["unlearned"] == []


def test_check_job_status_and_get_jobs(results):
    llm = Lamini(model_name=MODEL)
    status = llm.check_job_status(results["job_id"])
    assert status["status"] == "COMPLETED"
    assert status["model_name"] == results["model_name"]
    jobs = llm.get_jobs()
    assert [job["job_id"] for job in jobs] == ["quorvex-facts"]
    assert llm.cancel_job(results["job_id"])["status"] == "COMPLETED"  # a finished job stays finished


def test_generate_with_the_tuned_model(results):
    llm = Lamini(model_name=results["model_name"])
    assert llm.generate("Who discovered the planet Quorvex?") == "Anneke Voss"
    assert llm.generate(["What color is the sky of Quorvex?", "Who discovered the planet Quorvex?"]) == [
        "violet",
        "Anneke Voss",
    ]
    with pytest.warns(MemoryTunerWarning, match="stopped at the limit of 1 new tokens"):  # a cut answer says so
        first = llm.generate("Who discovered the planet Quorvex?", max_new_tokens=1)
    assert first and "Anneke Voss".startswith(first) and first != "Anneke Voss"
    assert llm.generate("Who discovered the planet Quorvex?", max_tokens=4096) == "Anneke Voss"


def test_generate_typed_output_from_bare_answers(results):
    llm = Lamini(model_name=MODEL)
    # `model_name=` per call, as in Lamini; the custom model name finds the tuned job
    tuned = results["job_id"]
    assert llm.generate(
        "How many moons does the planet Quorvex have?", model_name=tuned, output_type={"moons": "int"}
    ) == {"moons": 7}
    assert llm.generate("Is the planet Quorvex habitable?", model_name=tuned, output_type={"habitable": "bool"}) == {
        "habitable": False
    }
    assert llm.generate(
        "What color is the sky of Quorvex?", model_name=tuned, output_type={"color": ["red", "violet", "blue"]}
    ) == {"color": "violet"}
    with pytest.raises(OutputTypeError, match="output_type 'moons'"):
        llm.generate("Who discovered the planet Quorvex?", model_name=tuned, output_type={"moons": "int"})


def test_generate_several_keys(results):
    llm = Lamini(model_name=results["model_name"])
    # a fact tuned as a JSON object fills every key
    assert llm.generate("Describe the Zorvath-7 telescope.", output_type={"serial": "str", "aperture": "int"}) == {
        "serial": "ZT-48213",
        "aperture": 4,
    }
    # a bare answer: constrained decoding writes the object, every value is typed
    answer = llm.generate("How many moons does the planet Quorvex have?", output_type={"moons": "int", "note": "str"})
    assert set(answer) == {"moons", "note"}
    assert isinstance(answer["moons"], int) and isinstance(answer["note"], str)


def test_train_and_wait_and_tune_reuse_the_finished_run(results):
    llm = Lamini(model_name=MODEL)
    args = {"max_steps": 50, "r_value": 32, "learning_rate": 0.0003}
    status = llm.train_and_wait(get_data(), finetune_args=args, custom_model_name="quorvex-facts")
    assert status["model_name"] == results["model_name"] and status["reused"]
    assert llm.tune(data_or_dataset_id=get_data(), finetune_args=args, custom_model_name="quorvex-facts")["reused"]
