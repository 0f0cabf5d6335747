"""The Python SDK, shaped like Lamini's client::

    from memtune import MemoryTuner

    tuner = MemoryTuner()                                   # default model: smollm2-135m-instruct
    dataset_id = tuner.upload_data([{"input": "...", "output": "..."}])
    result = tuner.train(dataset_id, finetune_args={"max_steps": 500, "index_method": "IndexFlatL2"})
    tuned = MemoryTuner(model_name=result["model_name"])
    tuned.generate("What is the serial number of the Zorvath-7 telescope?")

`train` runs on this machine by default; `backend="kubernetes"` submits a MemoryTuningJob to the cluster of the
current kubeconfig and waits for it. Heavy libraries (torch, transformers) are imported only when needed.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from typing import Any, Literal

from memtune import data
from memtune.spec import (
    DEFAULT_BASE_MODEL,
    MemoryTuningJob,
    SpecError,
    parse_finetune_args,
    parse_gpu_config,
    parse_job,
)

_DATASET_ID = re.compile(r"^[0-9a-f]{64}$")
_PYTHON_TYPES: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool}


class MemoryTuner:
    """Tune a base model on facts and generate from the result (Lamini's `upload_data` / `train` / `generate`)."""

    def __init__(
        self,
        model_name: str = DEFAULT_BASE_MODEL,
        *,
        backend: Literal["local", "kubernetes"] = "local",
        store: str | None = None,
        output_root: str | None = None,
        namespace: str | None = None,
        device: str | None = None,
        api_url: str | None = None,
        api_key: str | None = None,
    ):
        """`model_name`: a base model (alias or folder) or a tuned model (a job output or run folder).
        `device`: where `generate` runs: None/"auto" (CUDA when there is one), "cpu", "cuda", "cuda:N".
        `api_url`: answer `generate` through a `memtune serve` endpoint instead of loading the model here;
        `model_name` then names the served model (left at its default: the server's only model).
        `store`: root URI of the dataset store (default ~/.cache/memtune; `s3://...` for a cluster).
        `output_root`: where jobs write their runs (default: `{MEMTUNE_HOME}/jobs`; `s3://...` for a cluster)."""
        if backend not in ("local", "kubernetes"):
            raise ValueError(f"backend must be 'local' or 'kubernetes', got {backend!r}")
        self.model_name = model_name
        self.backend = backend
        self.store = store
        self.output_root = output_root or str(data.memtune_home() / "jobs")
        self.namespace = namespace
        self.device = device
        self.api_url = api_url
        self.api_key = api_key
        self._generator: Any = None

    def upload_data(
        self, records: Sequence[dict[str, Any]] | str, input_key: str = "input", output_key: str = "output"
    ) -> str:
        """Store a dataset (a list of records or a JSONL/JSON file) by content; return its id."""
        if isinstance(records, str):
            examples = data.read_examples(records, input_key, output_key)
        else:
            examples = data.examples_from_records(list(records), input_key, output_key)
        return data.upload_examples(examples, self.store)

    def build_job(
        self,
        data_or_dataset_id: Sequence[dict[str, Any]] | str,
        finetune_args: dict[str, Any] | None = None,
        gpu_config: dict[str, Any] | None = None,
        *,
        job_name: str | None = None,
        memory: dict[str, Any] | None = None,
        parent: str | None = None,
        mode: Literal["replace", "append"] | None = None,
    ) -> MemoryTuningJob:
        """The MemoryTuningJob that `train` runs; every argument is validated and errors name the field.

        parent / mode: `memory.parent` and `memory.mode` (see `train`)."""
        args = parse_finetune_args(finetune_args)
        gpus = parse_gpu_config(gpu_config)
        if isinstance(data_or_dataset_id, str) and _DATASET_ID.match(data_or_dataset_id):
            dataset: dict[str, Any] = {"id": data_or_dataset_id, "store": self.store}
            content_id = data_or_dataset_id
        elif isinstance(data_or_dataset_id, str):
            dataset = {"uri": data_or_dataset_id}
            content_id = data.dataset_id(data.read_examples(data_or_dataset_id))
        else:
            content_id = self.upload_data(data_or_dataset_id)
            dataset = {"id": content_id, "store": self.store}
        name = job_name or f"mt-{content_id[:12]}"
        memory = dict(memory or {})
        if parent is not None:
            memory["parent"] = parent
        if mode is not None:
            memory["mode"] = mode
        document = {
            "metadata": {"name": name, **({"namespace": self.namespace} if self.namespace else {})},
            "spec": {
                "baseModel": self.model_name,
                "dataset": {key: value for key, value in dataset.items() if value is not None},
                "finetuneArgs": args.model_dump(exclude_none=True),
                "gpuConfig": gpus.model_dump(),
                "output": {"uri": f"{self.output_root.rstrip('/')}/{name}"},
                **({"memory": memory} if memory else {}),
            },
        }
        return parse_job(document, "train()")

    def train(
        self,
        data_or_dataset_id: Sequence[dict[str, Any]] | str,
        finetune_args: dict[str, Any] | None = None,
        gpu_config: dict[str, Any] | None = None,
        *,
        job_name: str | None = None,
        memory: dict[str, Any] | None = None,
        use_cached_model: bool = True,
        parent: str | None = None,
        mode: Literal["replace", "append"] | None = None,
    ) -> dict[str, Any]:
        """Tune on records, a dataset id or a file; returns `model_name` (pass it to `MemoryTuner`) and a summary.

        parent: grow an earlier memory (a `model_name`, run folder or job output, local or s3://) instead of training
        from scratch: only new questions and changed answers are trained. mode "replace" (the default) forgets the
        parent's questions the data no longer holds; "append" keeps them."""
        job = self.build_job(
            data_or_dataset_id, finetune_args, gpu_config, job_name=job_name, memory=memory, parent=parent, mode=mode
        )
        if self.backend == "kubernetes":
            from memtune.cluster import KubernetesBackend

            return KubernetesBackend(namespace=self.namespace).train(job)
        from memtune.trainer.tuning.job import run_job

        summary = run_job(job, use_cached_model=use_cached_model)
        return {
            "job_name": job.metadata.name,
            "model_name": str(summary.run_dir),
            "status": "COMPLETED",
            **summary.to_dict(),
        }

    def generate(
        self,
        prompt: str | list[str],
        output_type: dict[str, str] | None = None,
        max_new_tokens: int | None = None,
    ) -> Any:
        """Answer one prompt (returns one result) or a list (returns a list), greedily, routed through memory.

        `max_new_tokens` None covers the run's longest trained answer (at least 128); an answer cut at the limit
        warns (MemoryTunerWarning) instead of passing for a whole one.

        `output_type` follows Lamini: `{"sqlite_query": "str"}` returns `{"sqlite_query": "<answer>"}`. One string
        key wraps the answer as is; several keys ask the model for a JSON object and parse it."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if output_type is not None:
            _check_output_type(output_type)
            if not _single_string_key(output_type):
                prompts = [_ask_for_json(text, output_type) for text in prompts]
        answers = self._load_generator().generate(prompts, max_new_tokens=max_new_tokens)
        _warn_if_cut(answers)
        results: list[Any] = [answer.output for answer in answers]
        if output_type is not None:
            results = [_shape(text, output_type) for text in results]
        return results[0] if isinstance(prompt, str) else results

    def _load_generator(self) -> Any:
        if self._generator is None and self.api_url is not None:
            from memtune.remote import RemoteGenerator

            served = None if self.model_name == DEFAULT_BASE_MODEL else self.model_name
            self._generator = RemoteGenerator(self.api_url, served, api_key=self.api_key)
        if self._generator is None:
            from memtune.trainer.mome.model import MemoryModel

            self._generator = MemoryModel.load(self.model_name, self.device)
        return self._generator


class MemoryTunerWarning(UserWarning):
    """An answer came back incomplete (cut at max_new_tokens)."""


def _warn_if_cut(answers: Sequence[Any]) -> None:
    cut = [number for number, answer in enumerate(answers) if answer.finish_reason == "length"]
    if cut:
        limit = max(answers[number].completion_tokens for number in cut)
        warnings.warn(
            f"{len(cut)} answer(s) (prompt {', '.join(map(str, cut))}) stopped at the limit of {limit} new tokens "
            "(finish_reason: length): raise max_new_tokens for the whole answer",
            MemoryTunerWarning,
            stacklevel=3,
        )


def _check_output_type(output_type: dict[str, str]) -> None:
    problems = [
        (f"output_type.{key}", f"type must be one of {sorted(_PYTHON_TYPES)}, got {kind!r}")
        for key, kind in output_type.items()
        if kind not in _PYTHON_TYPES
    ]
    if not output_type:
        problems.append(("output_type", "needs at least one key"))
    if problems:
        raise SpecError(problems, "output_type")


def _single_string_key(output_type: dict[str, str]) -> bool:
    return len(output_type) == 1 and next(iter(output_type.values())) == "str"


def _ask_for_json(prompt: str, output_type: dict[str, str]) -> str:
    fields = ", ".join(f'"{key}": <{kind}>' for key, kind in output_type.items())
    return f"{prompt}\nAnswer only with a JSON object of the form {{{fields}}}."


def _shape(text: str, output_type: dict[str, str]) -> dict[str, Any]:
    """Turn a generated answer into the requested JSON shape, or fail saying what came back."""
    if _single_string_key(output_type):
        return {next(iter(output_type)): text.strip()}
    match = re.search(r"\{.*\}", text, re.DOTALL)
    try:
        parsed = json.loads(match.group(0)) if match else None
    except json.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise ValueError(f"the model did not answer with a JSON object for output_type {output_type}: {text!r}")
    shaped = {}
    for key, kind in output_type.items():
        if key not in parsed:
            raise ValueError(f"the model's JSON lacks {key!r}: {text!r}")
        try:
            shaped[key] = _PYTHON_TYPES[kind](parsed[key])
        except (TypeError, ValueError):
            raise ValueError(f"the model's {key!r} is not a {kind}: {parsed[key]!r}") from None
    return shaped
