"""Commands for a cluster or a running qkms: ``operator``, ``crds``, ``pqc status``,
``demo`` and ``call`` (a key operation through the data plane, as a workload does)."""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime
from typing import Any

import yaml

from qkms import logs
from qkms.errors import InvalidInputError, QkmsError

from .common import (
    command,
    print_json,
    read_input,
    settings_from,
    write_output,
)


@command("operator")
async def operator(args: argparse.Namespace) -> None:
    from kubernetes import config

    try:  # as the operator will log in: fail now, not in a retry loop, if it cannot
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, yaml.YAMLError) as exc:
            raise QkmsError(f"no Kubernetes cluster to run in ({_no_cluster(exc)}); set "
                            "KUBECONFIG, or run `qkms serve` for standalone mode without a "
                            "cluster") from None
    logs.configure(json_lines=True)
    if args.worker_fd is not None:  # a data-plane worker the operator started
        from qkms.k8s.dataplane import run_worker

        return await run_worker(args.worker_fd)
    from qkms.k8s.main import run_operator

    await run_operator(standalone=args.standalone, namespaces=args.namespace or [],
                       liveness=args.liveness)


@command("crds")
async def crds(args: argparse.Namespace) -> None:
    from qkms.k8s.crds import render_crds, write_crds

    if args.write:
        for path in write_crds(args.write):
            print(f"wrote {path}", file=sys.stderr)
    else:
        sys.stdout.write(render_crds())


@command("pqc status")
async def pqc_status(args: argparse.Namespace) -> None:
    from datetime import UTC

    from qkms.reconcile.pqc_report import pqc_status as report

    if args.manifests:
        from qkms.standalone import load_manifests

        if not args.manifests.is_dir():
            raise InvalidInputError("--manifests", f"{args.manifests} is not a folder")
        found = load_manifests(args.manifests)
        keys, namespaces, policies = found.keys, found.namespaces, found.policies
    else:
        keys, namespaces, policies = await _cluster_keys()
    rows = report(keys, namespaces, policies, datetime.now(UTC))
    print_json([r for r in rows if r.quantum_vulnerable or args.all])


async def _cluster_keys() -> tuple[Any, Any, Any]:
    """ManagedKeys, their namespaces' labels and the KeyPolicies, from the cluster."""
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config import ConfigException
    from urllib3.exceptions import HTTPError

    from qkms.k8s.kube_api import Kube
    from qkms.model.managed_key import parse_managed_key

    try:
        kube = Kube()
    except (ConfigException, yaml.YAMLError) as exc:
        raise QkmsError(f"no Kubernetes cluster configured ({_no_cluster(exc)}): give "
                        "--manifests DIR to read a folder") from None
    try:
        keys = [parse_managed_key(b) for b in await kube.managed_keys()]
        listed = {k.namespace for k in keys if k.namespace}  # the API lists them namespaced
        namespaces = {n: await kube.namespace_labels(n) for n in listed}
        return keys, namespaces, await kube.key_policies()
    except ApiException as exc:
        raise QkmsError(f"the Kubernetes API answered {exc.status} {exc.reason} (are the qkms "
                        f"CRDs installed? `kubectl apply -f crds/`)") from None
    except (HTTPError, OSError) as exc:
        raise QkmsError(f"cannot reach the Kubernetes API at {kube.api.configuration.host}: "
                        f"{type(exc).__name__}") from None


def _no_cluster(exc: Exception) -> str:
    """Why no cluster could be configured, naming the file that was looked for.  A file
    that is not YAML is named with the line only: a kubeconfig may hold tokens."""
    given = os.environ.get("KUBECONFIG", "")  # the Kubernetes client's own variable
    paths = [p for p in given.split(os.pathsep) if p]
    if not paths and not os.path.isfile(os.path.expanduser("~/.kube/config")):
        return "no KUBECONFIG, ~/.kube/config or in-cluster account"
    missing = [p for p in paths if not os.path.isfile(os.path.expanduser(p))]
    if paths and len(missing) == len(paths):
        return (f"KUBECONFIG names {', '.join(missing)}, which "
                f"{'does' if len(missing) == 1 else 'do'} not exist")
    where = f"KUBECONFIG={given}" if paths else "~/.kube/config"
    if isinstance(exc, yaml.YAMLError):
        mark = getattr(exc, "problem_mark", None)
        return f"{where} is not valid YAML" + (f" (line {mark.line + 1})" if mark else "")
    return f"{where}: {exc}"


@command("demo")
async def demo(args: argparse.Namespace) -> None:
    from qkms.demo import run_demo

    await run_demo(settings_from(args))


@command("call")
async def call(args: argparse.Namespace) -> None:
    """A key operation through the data plane, as a workload does (qkms.client)."""
    from qkms.client import QkmsClient, default_ca_file, default_token_file
    from qkms.config import ClientConfig

    token = ClientConfig.from_env().token
    token_file = args.token_file or (None if token else default_token_file())
    ca_file = args.ca_file or default_ca_file()
    op = args.operation.lower()
    data: Any = b""
    if op in ("sign", "verify", "encrypt"):
        data = read_input(args.input, "raw")
    elif op == "decrypt":
        data = read_input(args.input, "raw").strip().decode()
    elif op == "decapsulate":
        data = read_input(args.input, args.encoding)
    signature = read_input(args.signature, args.encoding, "--signature") \
        if op == "verify" else None
    import aiohttp

    if "/" not in args.key:
        raise InvalidInputError("key", f"{args.key!r} is not NAMESPACE/NAME")
    for flag, path in (("--token-file", args.token_file), ("--ca-file", args.ca_file)):
        if path is not None and not path.is_file():
            raise InvalidInputError(flag, f"{path} is not a file")
    try:
        async with QkmsClient(args.url, token=token, token_file=token_file,
                              ca_file=ca_file) as client:
            result = await client.use_key(args.key, op, data, signature=signature,
                                          context=args.context, length=args.length)
    except aiohttp.InvalidURL:
        raise InvalidInputError("--url", f"{args.url!r} is not a URL") from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        reason = str(exc) if isinstance(exc, aiohttp.ClientError) and str(exc) else "timed out"
        raise QkmsError(f"cannot reach the qkms server at {args.url}: {reason} (is `qkms "
                        f"serve` running? --url or QKMS_URL names it)") from None
    if isinstance(result, bool):
        print("valid" if result else "invalid")
        if not result:
            raise SystemExit(1)
        return
    for field in ("signature", "plaintext", "shared_secret", "derived_key"):
        if getattr(result, field) is not None:
            write_output(getattr(result, field), args.out, args.encoding)
    if isinstance(result.ciphertext, str):
        write_output(result.ciphertext + "\n", args.out, "raw")
    elif result.ciphertext is not None:
        write_output(result.ciphertext, args.ciphertext_out or "-", args.encoding)
    print(f"{op} with {result.key_id} (version {result.version})", file=sys.stderr)
