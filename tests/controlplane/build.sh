#!/usr/bin/env bash
# Builds the real upstream servers the tests run against -- kube-apiserver, kube-controller-manager,
# etcd and kubo (IPFS), plus kubectl at the same release, and cert-manager's controllers -- from the
# Go module proxy, into a cache outside the clone (the kubelet, its own module at the same release,
# only when asked: build.sh kubelet, with the pod sandbox's process: build.sh pause):
#   ${QKMS_SERVER_CACHE:-~/.cache/qkms/servers}/<module>-<hash of its go.mod+go.sum>/
# Prints that folder of each module on stdout (one per line). A binary already there is not rebuilt.
# Nothing built here is committed; the modules in this folder only pin versions.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cache="${QKMS_SERVER_CACHE:-$HOME/.cache/qkms/servers}"
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
# Kubernetes binaries report the release they were built from (Helm's kubeVersion checks
# and kubectl's version skew read it), as the upstream build sets it.
k8s_release=$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$here/kube/go.mod" | head -n 1)
k8s_minor=$(echo "$k8s_release" | cut -d. -f2)
kube_ldflags="-s"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags="$kube_ldflags -X $pkg.gitVersion=$k8s_release -X $pkg.gitMajor=1"
  kube_ldflags="$kube_ldflags -X $pkg.gitMinor=$k8s_minor -X $pkg.gitTreeState=clean"
done
build() {  # build MODULE_DIR OUTPUT_NAME PACKAGE
  local dir="$here/$1" name="$2" pkg="$3" hash out ldflags="-s"
  case "$1" in kube|kubelet) ldflags="$kube_ldflags" ;; esac
  hash=$(cat "$dir/go.mod" "$dir/go.sum" <(echo "$ldflags") | sha256sum | cut -c1-12)
  out="$cache/$1-$hash"
  if [ ! -x "$out/$name" ]; then
    mkdir -p "$out"
    echo "building $name ($1) into $out" >&2
    if ! (cd "$dir" && go build -trimpath -ldflags="$ldflags" -o "$out/$name.tmp" "$pkg"); then
      echo "building $name failed" >&2
      return 1
    fi
    mv "$out/$name.tmp" "$out/$name"
  fi
  echo "$out"
}
mkdir -p "$cache"
exec 9> "$cache/.build.lock"
flock 9  # one build at a time: parallel test runs wait for it instead of racing it
wanted="${*:-kube etcd kubo}"
for m in $wanted; do
  case "$m" in
    kube) build kube kube-apiserver ./kube-apiserver > /dev/null
          build kube kube-controller-manager ./kube-controller-manager > /dev/null
          build kube kubectl ./kubectl ;;
    etcd) build etcd etcd . ;;
    kubo) build kubo ipfs github.com/ipfs/kubo/cmd/ipfs ;;
    certmanager) build certmanager cert-manager-controller . ;;
    kubelet) build kubelet kubelet . ;;
    pause) build pause pause . ;;
    *) echo "unknown module $m (kube, etcd, kubo, certmanager, kubelet, pause)" >&2; exit 2 ;;
  esac
done
