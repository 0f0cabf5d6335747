"""The Python SDK, shaped like Lamini's `Lamini` class (lamini 3.4)::

    from memtune import MemoryTuner as Lamini

    llm = Lamini(model_name="smollm2-135m-instruct")
    job = llm.train(data_or_dataset_id=data, finetune_args={"max_steps": 50, "r_value": 32, "learning_rate": 3e-4})
    llm.check_job_status(job["job_id"])                   # {"job_id": ..., "status": "COMPLETED", "model_name": ...}
    tuned = Lamini(model_name=job["model_name"])               # or llm.generate(..., model_name=job["model_name"])
    tuned.generate("How many moons does Zorvath have?", output_type={"moons": "int"})   # {"moons": 7}

`train` (alias `tune`; `train_and_wait` too) runs on this machine by default and returns when the model is ready
(Lamini's returns at submission; either way `check_job_status` answers). `backend="kubernetes"` submits a
MemoryTuningJob to the cluster of the current kubeconfig (`wait=False` returns at submission). Job calls are
described in `memtune.jobs`; `output_type` in `memtune.output_types`. Heavy libraries (torch, transformers) are
imported only when needed.

`output_type` with several keys: first the answer to the question as asked is read as a JSON object (a memory tuned
on JSON answers gives one); otherwise the base model (the same weights, no experts) is shown the question and that
answer and restates it under constrained decoding, which can only write a JSON object with exactly these keys and
types (`memtune.trainer.mome.constrained`): the memory recalls, the base model only structures, every value is
checked. With `api_url` (answers from a `memtune serve` endpoint) that restating is not available: several keys
need an answer that is already a JSON object, and `max_tokens` gives way to `max_new_tokens`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import ValidationError

from memtune import data, output_types
from memtune.spec import (
    DEFAULT_BASE_MODEL,
    MemoryTuningJob,
    ObjectMeta,
    SpecError,
    is_remote,
    parse_finetune_args,
    parse_gpu_config,
    parse_job,
)

_DATASET_ID = re.compile(r"^[0-9a-f]{64}$")
CONSTRAINED_STRING_CHARS = 200
"""Longest string value constrained decoding may write: a small model can ramble inside a string."""


class MemoryTuner:
    """Tune a base model on facts and generate from the result, the way Lamini's SDK is driven."""

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
        """`model_name`: a base model (alias or folder), a tuned model (a job output or run folder), or the
        `custom_model_name` of a job under `output_root`.
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
        self._generators: dict[str, Any] = {}
        """Loaded engines by model: MemoryModel here, RemoteGenerator with `api_url`."""

    # ----------------------------------------------------------------------------------------------------------
    # Data

    def upload_data(
        self, records: Sequence[dict[str, Any]] | str, input_key: str = "input", output_key: str = "output"
    ) -> str:
        """Store a dataset (a list of records or a JSONL/JSON file) by content; return its id."""
        if isinstance(records, str):
            examples = data.read_examples(records, input_key, output_key)
        else:
            examples = data.examples_from_records(list(records), input_key, output_key)
        return data.upload_examples(examples, self.store)

    def upload_file(self, file_path: str, input_key: str = "input", output_key: str = "output") -> str:
        """Lamini's `upload_file`: store a JSONL or JSON-array file (fields mapped by key); return its dataset id."""
        return self.upload_data(file_path, input_key, output_key)

    # ----------------------------------------------------------------------------------------------------------
    # Training

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
        is_public: bool | None = None,
        custom_model_name: str | None = None,
        *,
        job_name: str | None = None,
        memory: dict[str, Any] | None = None,
        use_cached_model: bool = True,
        wait: bool = True,
        parent: str | None = None,
        mode: Literal["replace", "append"] | None = None,
    ) -> dict[str, Any]:
        """Tune on records, a dataset id or a file; returns Lamini's job dict (`job_id`, `status`, `model_name`, ...)
        plus the run summary (`recall`, `unlearned`, ...).

        `custom_model_name` names the job and so the model: afterwards `MemoryTuner(model_name=that name)` finds it
        under `output_root`. It must be a DNS-1035 label (what a MemoryTuningJob name must be). `is_public=True` is
        refused: a self-hosted run is readable by whoever can read `output_root`, and memtune has no hub to share to.
        When some facts end the run unlearned, a warning names them and says what to change (also in the result).

        parent: grow an earlier memory (a `model_name`, run folder or job output, local or s3://) instead of training
        from scratch: only new questions and changed answers are trained. mode "replace" (the default) forgets the
        parent's questions the data no longer holds; "append" keeps them.
        """
        name = _job_name(job_name, custom_model_name, is_public)
        job = self.build_job(
            data_or_dataset_id, finetune_args, gpu_config, job_name=name, memory=memory, parent=parent, mode=mode
        )
        dataset_id = job.spec.dataset.id or data.dataset_id(data.load_examples(job.spec.dataset))
        if self.backend == "kubernetes":
            from memtune.cluster import KubernetesBackend

            backend = KubernetesBackend(namespace=self.namespace)
            if not wait:
                backend.client.submit(job)
                return {**self.check_job_status(job.metadata.name), "dataset_id": dataset_id}
            result = backend.train(job)
            return {**result, "job_id": job.metadata.name, "dataset_id": dataset_id}
        return self._train_locally(job, dataset_id, use_cached_model)

    def _train_locally(self, job: MemoryTuningJob, dataset_id: str, use_cached_model: bool) -> dict[str, Any]:
        from memtune.jobs import LocalJobs
        from memtune.trainer.tuning.job import run_job

        jobs, name = LocalJobs(self.output_root), job.metadata.name
        jobs.started(name, dataset_id)
        try:
            summary = run_job(job, use_cached_model=use_cached_model)
        except KeyboardInterrupt:
            jobs.finished(name, "CANCELLED")
            raise
        except Exception as error:
            jobs.finished(name, "FAILED", error=str(error))
            raise
        jobs.finished(name, "COMPLETED", recall=summary.recall, unlearned=summary.unlearned, steps=summary.steps)
        if summary.unlearned:
            warnings.warn(summary.unlearned_message(), UserWarning, stacklevel=3)
        return {
            "job_id": name,
            "dataset_id": dataset_id,
            "status": "COMPLETED",
            "model_name": str(summary.run_dir),
            "job_name": name,
            **summary.to_dict(),
        }

    def tune(self, data_or_dataset_id: Sequence[dict[str, Any]] | str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """Lamini's alias of `train`."""
        return self.train(data_or_dataset_id, *args, **kwargs)

    def train_and_wait(
        self, data_or_dataset_id: Sequence[dict[str, Any]] | str, *args: Any, verbose: bool = False, **kwargs: Any
    ) -> dict[str, Any]:
        """Lamini's blocking `train`: returns the final status dict (`model_name` names the tuned model)."""
        kwargs["wait"] = True
        result = self.train(data_or_dataset_id, *args, **kwargs)
        if verbose:
            print(f"Finetuning process completed, model name is: {result['model_name']}")
        return result

    # ----------------------------------------------------------------------------------------------------------
    # Jobs (see memtune.jobs)

    def _cluster(self) -> Any:
        from memtune.cluster import ClusterClient

        return ClusterClient(self.namespace)

    def get_jobs(self) -> list[dict[str, Any]]:
        """Every job of this tuner's backend: local jobs under `output_root`, or the namespace's MemoryTuningJobs."""
        from memtune.jobs import LocalJobs, cluster_status

        if self.backend == "kubernetes":
            return [cluster_status(item["metadata"]["name"], item) for item in self._cluster().list()]
        return LocalJobs(self.output_root).list()

    def check_job_status(self, job_id: str) -> dict[str, Any]:
        """Lamini's status dict of one job (`status`, `model_name` once completed, `error` when it failed)."""
        from memtune.jobs import LocalJobs, cluster_status

        if self.backend == "kubernetes":
            return cluster_status(job_id, self._cluster().get(job_id))
        return LocalJobs(self.output_root).status(job_id)

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        """Stop a job: a cluster job is suspended (resume_job continues it), a local one in another process gets
        SIGTERM. A finished job is left as it is; its status comes back."""
        from memtune.jobs import LocalJobs, cluster_status

        if self.backend == "kubernetes":
            return cluster_status(job_id, self._cluster().set_suspend(job_id, True))
        return LocalJobs(self.output_root).cancel(job_id)

    def resume_job(self, job_id: str) -> dict[str, Any]:
        """Continue a cancelled (suspended) cluster job from its checkpoint; locally, train again to resume."""
        from memtune.jobs import JobError, cluster_status

        if self.backend != "kubernetes":
            raise JobError("a local job resumes by calling train() again with the same inputs (its checkpoint is kept)")
        return cluster_status(job_id, self._cluster().set_suspend(job_id, False))

    # ----------------------------------------------------------------------------------------------------------
    # Generation

    def generate(
        self,
        prompt: str | list[str],
        model_name: str | None = None,
        output_type: dict[str, Any] | None = None,
        max_tokens: int | None = None,
        max_new_tokens: int | None = None,
    ) -> Any:
        """Answer one prompt (one result) or a list (a list), greedily, routed through memory.

        `model_name` overrides the tuner's model for this call. `max_new_tokens` caps the answer's tokens and
        `max_tokens` (Lamini's) the prompt's plus the answer's; unset, the answer may be as long as the run's longest
        trained answer plus a margin (at least 128 tokens). An answer cut at the limit warns (MemoryTunerWarning)
        instead of passing for a whole one.
        `output_type` (Lamini's): `{"key": "str" | "int" | "float" | "bool" | [choices], ...}` returns a dict of
        typed values; a value the answer cannot give raises `OutputTypeError` naming the key.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        for limit, name in ((max_tokens, "max_tokens"), (max_new_tokens, "max_new_tokens")):
            if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
                raise SpecError([(name, f"must be a positive integer, got {limit!r}")], "generate()")
        if max_tokens is not None and self.api_url is not None:
            why = "counts the prompt's tokens, which needs the model here: with api_url give max_new_tokens"
            raise SpecError([("max_tokens", why)], "generate()")
        if output_type is not None:
            output_types.check_output_type(output_type)
        model = self._resolve_model(model_name or self.model_name)
        answers = self._answers(model, prompts, max_tokens, max_new_tokens)
        _warn_if_cut(answers)
        texts = [answer.output for answer in answers]
        results: list[Any] = texts
        if output_type is not None:
            results = self._shape(model, prompts, texts, output_type, max_tokens, max_new_tokens)
        return results[0] if isinstance(prompt, str) else results

    def _shape(
        self,
        model: str,
        prompts: list[str],
        texts: list[str],
        output_type: dict[str, Any],
        max_tokens: int | None,
        max_new_tokens: int | None,
    ) -> list[dict[str, Any]]:
        """Typed dicts: one key from the plain answer; several from a JSON answer, else the plain answer restated as
        JSON by the base model under constrained decoding (the memory recalls, the base model only structures)."""
        if len(output_type) == 1:
            [(key, kind)] = output_type.items()
            return [{key: output_types.parse_value(key, kind, text)} for text in texts]
        shaped: list[dict[str, Any] | None] = []
        for text in texts:
            try:
                shaped.append(output_types.parse_object(text, output_type))
            except output_types.OutputTypeError:
                shaped.append(None)
        again = [i for i, value in enumerate(shaped) if value is None]
        if again:
            schema = output_types.json_schema(output_type, max_string=CONSTRAINED_STRING_CHARS)
            keys = ", ".join(output_type)
            restate = [
                f"{prompts[i]}\nAnswer: {texts[i]}\nRestate this answer as JSON with the keys {keys}." for i in again
            ]
            if self.api_url is not None:
                raise output_types.OutputTypeError(
                    next(iter(output_type)),
                    "the answer is not a JSON object, and restating it as one (constrained decoding on the base model) "
                    "needs the model here, not behind api_url; ask for one key at a time",
                    texts[again[0]],
                )
            constrained = [
                answer.output
                for answer in self._answers(model, restate, max_tokens, max_new_tokens, schema, memory=False)
            ]
            for i, text in zip(again, constrained, strict=True):
                if output_types.find_object(text) is None:  # the grammar admits nothing else: the token limit hit
                    key = next(iter(output_type))
                    raise output_types.OutputTypeError(
                        key, "the JSON object was cut by the token limit before it closed; raise max_new_tokens", text
                    )
                shaped[i] = output_types.parse_object(text, output_type)
        return [value for value in shaped if value is not None]

    def _resolve_model(self, name: str) -> str:
        """A job name under `output_root` (a `custom_model_name`) means that job's output; anything else (and any name
        with `api_url`: the server's name for it) is as given."""
        if self.api_url is not None or _name_problem(name) is not None:
            return name
        job_output = f"{self.output_root.rstrip('/')}/{name}"
        if is_remote(job_output):
            from memtune import storage

            return job_output if storage.latest_committed_run(job_output) else name
        from memtune.trainer.mome.artifacts import committed_runs

        return job_output if committed_runs(job_output) else name

    def _answers(
        self,
        model: str,
        prompts: list[str],
        max_tokens: int | None,
        max_new_tokens: int | None,
        schema: dict[str, Any] | None = None,
        memory: bool = True,
    ) -> list[Any]:
        """The one place the SDK calls the generation engine: greedy answers (MemoryModel's Answer, or RemoteAnswer
        with `api_url`), optionally schema-constrained, and with `memory=False` from the model's base weights alone."""
        engine = self._engine(model)
        if not memory and engine.memory is not None:
            from memtune.trainer.mome.model import MemoryModel

            # The same frozen weights without experts: the tuned model's hooks stay unarmed, so this is the base
            # model bit for bit, without loading it again.
            engine = MemoryModel(engine.base)
        options: dict[str, Any] = {}
        if schema is not None:
            from transformers import LogitsProcessorList

            from memtune.trainer.mome.constrained import SchemaConstraint

            options["logits_processor"] = LogitsProcessorList([SchemaConstraint(engine.tokenizer, schema)])
        if max_tokens is None:
            return engine.generate(prompts, max_new_tokens=max_new_tokens, **options)
        from memtune.trainer.mome.keys import tokenize_prompt

        answers = []
        for text in prompts:  # each prompt leaves its own room under max_tokens
            room = max(1, max_tokens - len(tokenize_prompt(engine.tokenizer, text).ids))
            room = min(room, max_new_tokens) if max_new_tokens is not None else room
            answers.extend(engine.generate([text], max_new_tokens=room, **options))
        return answers

    def _engine(self, model: str) -> Any:
        """The engine for `model`, loaded once: a RemoteGenerator with `api_url`, else a MemoryModel on `device`."""
        engine = self._generators.get(model)
        if engine is None and self.api_url is not None:
            from memtune.remote import RemoteGenerator

            served = None if model == DEFAULT_BASE_MODEL else model
            engine = RemoteGenerator(self.api_url, served, api_key=self.api_key)
        if engine is None:
            from memtune.trainer.mome.model import MemoryModel

            engine = MemoryModel.load(model, self.device)
        self._generators[model] = engine
        return engine


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


def _job_name(job_name: str | None, custom_model_name: str | None, is_public: bool | None) -> str | None:
    """The job's name from Lamini's `custom_model_name` (or memtune's `job_name`); refuse what cannot be honoured."""
    problems = []
    if is_public:
        problems.append(
            ("is_public", "memtune is self-hosted and has no public model hub: a run is readable by whoever can read "
             "output_root; leave is_public unset or False")
        )  # fmt: skip
    if custom_model_name is not None:
        problem = _name_problem(custom_model_name)
        if problem is not None:
            problems.append(("custom_model_name", f"it names the MemoryTuningJob, so it {problem}"))
        elif job_name is not None and job_name != custom_model_name:
            problems.append(("custom_model_name", f"differs from job_name {job_name!r}; give one of them"))
    if problems:
        raise SpecError(problems, "train()")
    return custom_model_name or job_name


def _name_problem(name: object) -> str | None:
    """Why `name` cannot name a MemoryTuningJob (spec.ObjectMeta's rule), or None when it can."""
    try:
        ObjectMeta.model_validate({"name": name})
    except ValidationError as error:
        messages = (item["msg"].removeprefix("Value error, ") for item in error.errors())
        return "; ".join(message[:1].lower() + message[1:] for message in messages)
    return None
