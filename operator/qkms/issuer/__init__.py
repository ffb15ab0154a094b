"""qkms as a cert-manager issuer: the pure parts (DER, CSR checks, policy, TBS building).

The Kopf handlers live in ``qkms.k8s.issuers``; signing goes through
``KeyManagementService.use_key(..., "SIGN")``, so the CA key never leaves its provider.
"""
