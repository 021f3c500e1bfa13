"""Fixtures: the real helm binary (fetched once per machine) and the chart rendered per CI file."""

from __future__ import annotations

import pytest

from tests.helm.chart import CHART, Helm, Rendered, fetch_helm

CI_NAMES = sorted(path.name.removesuffix("-values.yaml") for path in CHART.glob("ci/*-values.yaml"))


@pytest.fixture(scope="session")
def helm() -> Helm:
    return Helm(fetch_helm())


@pytest.fixture(scope="session")
def ci_rendered(helm: Helm) -> dict[str, Rendered]:
    """Every ``ci/<name>-values.yaml`` rendered once for the whole session."""
    return {name: helm.template([CHART / "ci" / f"{name}-values.yaml"]) for name in CI_NAMES}
