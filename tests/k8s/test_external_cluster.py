"""The ``QKMS_TEST_KUBECONFIG`` path (kind or any disposable cluster) works: here pointed at
a control plane of the test's own, through nothing but its admin kubeconfig."""

from __future__ import annotations

from tests.support.external_cluster import ExternalCluster
from tests.support.fixtures import install_base, private_control_plane


async def test_a_cluster_given_by_kubeconfig_serves_the_session_fixtures(tmp_path):
    async with private_control_plane(tmp_path / "cluster", base=False) as owned:
        cluster = ExternalCluster(owned.kubeconfig, tmp_path / "external")
        await cluster.start()
        await install_base(cluster)  # CRDs, namespace, ServiceAccount and RBAC, as for tests
        assert await cluster.client.get("customresourcedefinitions", "managedkeys.qkms.io")
        operator = await cluster.service_account_kubeconfig("qkms-system", "qkms",
                                                            tmp_path / "operator.kubeconfig")
        # The operator's own token, from the cluster's TokenRequest API, has its RBAC.
        run = cluster.kubectl("auth", "can-i", "patch", "managedkeys", "--all-namespaces",
                              kubeconfig=operator)
        assert run.stdout.strip() == "yes", run.stderr
        assert cluster.pki.sa_key_path is None
        await cluster.stop()
