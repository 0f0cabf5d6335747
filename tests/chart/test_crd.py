"""The chart ships exactly the generated CRD, and Helm sees it as a CRD (installed before the templates)."""

from __future__ import annotations

import helm_python as helm
import kubernetes_validate
import yaml

from .render import CHART, ROOT

CRD_FILE = "memorytuningjobs.memtune.dev.yaml"
MM_FILE = "memorymodels.memtune.dev.yaml"
REFRESH = "cp crds/memorytuningjobs.memtune.dev.yaml charts/memtune/crds/"


def test_chart_crd_is_the_generated_one() -> None:
    generated = (ROOT / "crds" / CRD_FILE).read_bytes()
    shipped = (CHART / "crds" / CRD_FILE).read_bytes()
    assert shipped == generated, f"the chart's CRD is stale; refresh it with: {REFRESH}"


def test_docs_give_the_refresh_command() -> None:
    assert REFRESH in (ROOT / "docs" / "cluster.md").read_text(encoding="utf-8")


def test_helm_loads_it_from_crds_and_not_as_a_template() -> None:
    with helm.Chart.load(CHART) as chart:
        crds = chart.crds
        templates = [template["name"] for template in chart.templates]
    # memorymodels.memtune.dev.yaml: the serving resource's CRD, checked in tests/serving/test_resource.py
    assert sorted(crd["filename"] for crd in crds) == [f"memtune/crds/{name}" for name in sorted([CRD_FILE, MM_FILE])]
    assert not any("crd" in name.lower() for name in templates)


def test_crd_is_a_valid_custom_resource_definition() -> None:
    crd = yaml.safe_load((CHART / "crds" / CRD_FILE).read_text(encoding="utf-8"))
    kubernetes_validate.validate(crd, kubernetes_validate.latest_version(), strict=True)
    assert crd["metadata"]["name"] == f"{crd['spec']['names']['plural']}.{crd['spec']['group']}"
    assert "status" in crd["spec"]["versions"][0]["subresources"]
