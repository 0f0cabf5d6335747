"""The SDK against a live server: `MemoryTuner(api_url=...)` sends `generate` (with `output_type`) to it."""

from __future__ import annotations

import pytest

from memtune import MemoryTuner
from memtune.client import MemoryTunerWarning
from memtune.output_types import OutputTypeError
from memtune.remote import RemoteError

pytestmark = pytest.mark.slow


def test_generate_through_the_server(live, facts) -> None:
    tuner = MemoryTuner(api_url=live.url)  # the default model name: the server's only model
    assert tuner.generate(facts[0]["input"]) == facts[0]["output"]
    assert tuner.generate([f["input"] for f in facts], max_new_tokens=16) == [f["output"] for f in facts]
    assert tuner.generate(facts[3]["input"], output_type={"capital": "str"}) == {"capital": facts[3]["output"]}
    with pytest.raises(OutputTypeError, match=r"restating it as one .* needs the model here"):  # a bare answer
        tuner.generate(facts[3]["input"], output_type={"capital": "str", "year": "int"})
    with pytest.warns(MemoryTunerWarning, match="stopped at the limit of 2 new tokens"):
        cut = tuner.generate(facts[4]["input"], max_new_tokens=2)  # a two-word answer
    assert facts[4]["output"].startswith(cut) and cut != facts[4]["output"]


def test_named_model_and_refusals(live, facts) -> None:
    assert MemoryTuner("facts", api_url=f"{live.url}/v1").generate(facts[1]["input"]) == facts[1]["output"]
    with pytest.raises(RemoteError, match="does not exist; this server serves 'facts'") as unknown:
        MemoryTuner("other", api_url=live.url).generate(facts[1]["input"])
    assert unknown.value.status == 404
    with pytest.raises(RemoteError, match="limit"):
        MemoryTuner(api_url=live.url).generate(facts[1]["input"], max_new_tokens=100_000)


def test_bad_api_url() -> None:
    with pytest.raises(ValueError, match="http"):
        MemoryTuner(api_url="file:///etc").generate("hi")
    with pytest.raises(RemoteError, match=r"127\.0\.0\.1:9"):
        MemoryTuner(api_url="http://127.0.0.1:9").generate("hi")  # discard port: nothing listens
