"""Where encrypted records persist (files now, Kubernetes Secrets in a cluster)."""
