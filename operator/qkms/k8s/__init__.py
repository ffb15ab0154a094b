"""Kubernetes: the CRDs, the Kopf handlers (thin), projection into Secrets/ConfigMaps, Events."""
