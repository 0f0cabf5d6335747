"""Fixtures: `cluster` is an emulated API server with the MemoryTuningJob CRD (and Kubeflow's PyTorchJob) on
127.0.0.1; `operator` runs memtune.operator's kopf handlers in the test's event loop, as `kopf run` would.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import kmock
import pytest_asyncio
import yaml

from .mtj_cluster import (
    CRDS,
    KUBECONFIG,
    NAMESPACE,
    Cluster,
    OperatorProcess,
    VersionedEmulator,
    declare_resources,
    install_crd,
)
from .mtj_schemas import PYTORCHJOB_CRD, TRAINJOB_CRD


@pytest_asyncio.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with VersionedEmulator() as emulator, kmock.Server(emulator) as server:
        declare_resources(emulator)
        install_crd(emulator, yaml.safe_load(PYTORCHJOB_CRD.read_text()))  # Kubeflow is installed
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": str(server.url).rstrip("/")}}],
            "users": [{"name": "test", "user": {"token": "test-token"}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "test", "namespace": NAMESPACE}}],
            "current-context": "kmock",
        }
        KUBECONFIG.write_text(yaml.safe_dump(kubeconfig))
        yield Cluster(emulator, str(server.url))
        assert not emulator.invalid, emulator.invalid


@pytest_asyncio.fixture
async def operator(cluster: Cluster) -> AsyncIterator[OperatorProcess]:
    process = OperatorProcess(cluster)
    await process.start()
    yield process
    await process.stop()


@pytest_asyncio.fixture
async def operator_with_trainer(cluster: Cluster) -> AsyncIterator[OperatorProcess]:
    """The operator on a cluster with Kubeflow Trainer v2 (TrainJob) installed beside Kubeflow v1."""
    install_crd(cluster.emulator, yaml.safe_load(TRAINJOB_CRD.read_text()))
    process = OperatorProcess(cluster)
    await process.start()
    yield process
    await process.stop()


@pytest_asyncio.fixture
async def operator_without_kubeflow(cluster: Cluster) -> AsyncIterator[OperatorProcess]:
    """The operator on a cluster where Kubeflow's PyTorchJob CRD is not installed."""
    del cluster.emulator.objects[CRDS, None, "pytorchjobs.kubeflow.org"]
    process = OperatorProcess(cluster)
    await process.start()
    yield process
    await process.stop()
