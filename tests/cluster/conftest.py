"""The end-to-end scenarios against a real cluster, when one is given.

Set ``QKMS_TEST_KUBECONFIG`` to the kubeconfig of a disposable cluster (for example
``kind create cluster --kubeconfig /tmp/kind.yaml``, where Docker is available) and
run ``python -m pytest -m cluster``. The fixture applies ``crds/`` and Kopf's peering
CRD, offers the same helpers as the kmock harness, and deletes the namespaces the
tests made. Without a cluster these tests are skipped with that reason: no cluster
exists on the CI machines, and that is the only reason they skip.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import config
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient

from tests.support.kube import KubeError

ROOT = Path(__file__).resolve().parents[2]


class ClusterAPI:
    """The kmock harness's helpers (create, get, patch, list, delete) on a real cluster."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.client = DynamicClient(config.new_client_from_config(str(kubeconfig)))
        self.namespaces: list[str] = []

    def _resource(self, name: str) -> Any:
        if "/" in name:
            api_version, _, plural = name.rpartition("/")
            return self.client.resources.get(api_version=api_version, name=plural)
        found = self.client.resources.search(name=name) or \
            self.client.resources.search(short_names=[name]) or \
            self.client.resources.search(kind=name)
        return next(r for r in found if "/" not in r.name)

    async def _call(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.to_thread(func, *args, **kwargs)
        except ApiException as exc:
            raise KubeError(exc.status, exc.body) from None

    async def create(self, resource: str, body: dict, namespace: str | None = None) -> dict:
        if resource == "namespaces":
            self.namespaces.append(body["metadata"]["name"])
        answer = await self._call(self._resource(resource).create, body=body,
                                  namespace=namespace)
        return answer.to_dict()

    async def get(self, resource: str, name: str, namespace: str | None = None) -> dict | None:
        try:
            answer = await self._call(self._resource(resource).get, name=name,
                                      namespace=namespace)
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return answer.to_dict()

    async def patch(self, resource: str, name: str, patch: Any,
                    namespace: str | None = None) -> dict:
        kind = "json-patch" if isinstance(patch, list) else "merge-patch"
        answer = await self._call(self._resource(resource).patch, name=name, body=patch,
                                  namespace=namespace,
                                  content_type=f"application/{kind}+json")
        return answer.to_dict()

    async def delete(self, resource: str, name: str, namespace: str | None = None) -> dict:
        answer = await self._call(self._resource(resource).delete, name=name,
                                  namespace=namespace)
        return answer.to_dict()

    async def list(self, resource: str, namespace: str | None = None, *, labels: str = "",
                   fields: str = "") -> list[dict]:
        answer = await self._call(self._resource(resource).get, namespace=namespace,
                                  label_selector=labels or None,
                                  field_selector=fields or None)
        return [item.to_dict() for item in answer.items]

    async def apply_file(self, path: Path) -> None:
        for doc in yaml.safe_load_all(path.read_text()):
            try:
                await self.create(doc["kind"] if doc["kind"] != "CustomResourceDefinition"
                                  else "apiextensions.k8s.io/v1/customresourcedefinitions",
                                  doc)
            except KubeError as exc:
                if exc.status != 409:
                    raise


@pytest.fixture
async def kube() -> AsyncIterator[ClusterAPI]:
    path = os.environ.get("QKMS_TEST_KUBECONFIG")
    if not path:
        pytest.skip("no cluster: set QKMS_TEST_KUBECONFIG to a disposable cluster's kubeconfig")
    api = ClusterAPI(Path(path))
    for crd in [*sorted((ROOT / "crds").glob("*.yaml")),
                ROOT / "manifests" / "01-kopf-peering-crd.yaml"]:
        await api.apply_file(crd)
    await asyncio.sleep(2)  # let the API server serve the new resources
    try:
        yield api
    finally:
        for namespace in reversed(api.namespaces):
            try:
                await api.delete("namespaces", namespace)
            except KubeError:
                pass
