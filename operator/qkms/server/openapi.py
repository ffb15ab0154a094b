"""The OpenAPI 3.0 document served at ``/openapi.json``; schemathesis tests the server
against it, so it is the contract and not decoration."""

from __future__ import annotations

from typing import Any

from qkms import __version__

from .api import OPERATIONS

B64 = {"type": "string", "format": "byte", "description": "base64"}
DNS = {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"}


def _item(operation: str) -> dict[str, Any]:
    props: dict[str, Any] = {"context": {**B64, "description": "caller context, bound as AAD"},
                             "key_id": {"type": "string",
                                        "description": "a specific version (key_<env>_<id>)"}}
    required: list[str] = []
    if operation in ("sign", "verify", "encrypt"):
        props["input"] = B64
        required.append("input")
    if operation == "verify":
        props["signature"] = {**B64, "description": "base64; ECDSA: DER or raw r||s"}
        required.append("signature")
    if operation in ("sign", "verify"):
        props["signature_format"] = {
            "type": "string", "enum": ["der", "raw"],
            "description": "ECDSA only: DER (the default) or raw r||s, 32+32 bytes (JOSE, "
                           "WebCrypto); VERIFY takes either form without it"}
        props["prehashed"] = {
            "type": "boolean", "default": False,
            "description": "ECDSA only: input is a 32-byte digest, signed as given "
                           "(Ethereum signs Keccak-256 digests)"}
        props["rsa_padding"] = {
            "type": "string", "enum": ["pss", "pkcs1v15"],
            "description": "RSA only: RSASSA-PSS with SHA-256 (the default) or "
                           "RSASSA-PKCS1-v1_5 with SHA-256 (RS256, sha256WithRSAEncryption)"}
    if operation == "sign":
        props["recovery_id"] = {
            "type": "boolean", "default": False,
            "description": "ECDSA-secp256k1 only: also return the recovery id (0 or 1); "
                           "the signature is then raw unless signature_format says der"}
        props["low_s"] = {
            "type": "boolean",
            "description": "ECDSA-P256: normalize s to the lower half (secp256k1 always is)"}
    if operation == "decrypt":
        props["ciphertext"] = {"type": "string", "description": "the token ENCRYPT returned"}
        required.append("ciphertext")
    if operation == "decapsulate":
        props["ciphertext"] = B64
        required.append("ciphertext")
    if operation == "derive":
        props["length"] = {"type": "integer", "minimum": 1, "maximum": 8160, "default": 32}
        props["salt"] = B64
    return {"type": "object", "properties": props, "required": required,
            "additionalProperties": False}


RESULT = {"type": "object", "additionalProperties": False, "properties": {
    "key_id": {"type": "string"}, "version": {"type": "integer"},
    "algorithm": {"type": "string"}, "signature": B64, "valid": {"type": "boolean"},
    "ciphertext": {"type": "string"}, "plaintext": B64, "shared_secret": B64,
    "derived_key": B64, "recovery_id": {"type": "integer", "minimum": 0, "maximum": 1}}}
ERROR = {"type": "object", "required": ["error"], "properties": {
    "error": {"type": "object", "required": ["code", "message"], "properties": {
        "code": {"type": "string"}, "message": {"type": "string"},
        "field": {"type": "string"}}},
    "request_id": {"type": "string"}, "status": {"type": "integer"}}}


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _operation(operation: str) -> dict[str, Any]:
    single = {"$ref": f"#/components/schemas/{operation.title()}Request"}
    batch = {"type": "object", "required": ["batch_input"], "additionalProperties": False,
             "properties": {
        "batch_input": {"type": "array", "minItems": 1, "maxItems": 1000, "items": single}}}
    return {"post": {
        "operationId": operation,
        "summary": f"{operation.upper()} with a managed key (one item or a batch)",
        "security": [{"bearer": []}],
        "parameters": [
            {"name": "namespace", "in": "path", "required": True, "schema": DNS},
            {"name": "name", "in": "path", "required": True, "schema": DNS}],
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": {"oneOf": [single, batch]}}}},
        "responses": {
            "200": {"description": "the result, or per-item results for a batch",
                    "content": {"application/json": {"schema": {"oneOf": [
                        {"$ref": "#/components/schemas/Result"},
                        {"type": "object", "required": ["batch_results"],
                         "additionalProperties": False, "properties": {
                            "batch_results": {"type": "array", "items": {"anyOf": [
                                {"$ref": "#/components/schemas/Result"},
                                {"$ref": "#/components/schemas/Error"}]}}}}]}}}},
            "400": _error("bad input, naming the field"),
            "401": _error("no token or a bad token"),
            "403": _error("not allowed, or another environment"),
            "404": _error("Key not found"),
            "409": _error("revoked, retired or outside its grace period"),
            "413": _error("body too large"),
            "415": _error("not JSON"),
            "422": _error("operation not allowed for the key's usage"),
            "503": _error("KMS provider unavailable, audit storage failed, or the key's "
                          "record was rolled back (record_rollback)"),
        }}}


def document() -> dict[str, Any]:
    paths: dict[str, Any] = {
        f"/v1/keys/{{namespace}}/{{name}}:{op}": _operation(op) for op in OPERATIONS}
    plain = {"content": {"application/json": {"schema": {"type": "object"}}}}
    paths["/healthz"] = {"get": {"operationId": "liveness", "responses": {
        "200": {"description": "the process answers (no detail)", **plain}}}}
    paths["/readyz"] = {"get": {"operationId": "readiness", "responses": {
        "200": {"description": "ready (no detail)", **plain},
        "503": {"description": "an environment is unhealthy (no detail)", **plain}}}}
    paths["/health/keys"] = {"get": {
        "operationId": "health",
        "description": "The overall status; with a token allowed `metrics` (or the metrics "
                       "token), per-environment and per-component detail too.",
        "security": [{}, {"bearer": []}], "responses": {
            "200": {"description": "healthy or degraded", **plain},
            "401": _error("a bad token"), "403": _error("not allowed the detail"),
            "503": {"description": "unhealthy", **plain}}}}
    paths["/metrics/keys"] = {"get": {
        "operationId": "metrics", "security": [{"bearer": []}],
        "description": "Prometheus metrics, per key included: for the metrics token "
                       "(QKMS_METRICS_TOKEN) or a caller allowed `metrics`.",
        "responses": {
            "200": {"description": "Prometheus text format",
                    "content": {"text/plain": {"schema": {"type": "string"}}}},
            "401": _error("no token or a bad token"), "403": _error("not allowed")}}}
    paths["/audit/keys"] = {"get": {"operationId": "audit", "security": [{"bearer": []}],
                                    "parameters": [{"name": "limit", "in": "query",
                                                    "schema": {"type": "integer", "minimum": 1,
                                                               "maximum": 1000}},
                                                   {"name": "namespace", "in": "query",
                                                    "description": "comma-separated; "
                                                    "default: the caller's own",
                                                    "schema": {"type": "string"}}],
                                    "responses": {
        "200": {"description": "recent entries (with CIDs) of the namespaces the caller may "
                               "audit, and counts over them", **plain},
        "400": _error("bad query"), "401": _error("no token or a bad token"),
        "403": _error("not allowed")}}}
    schemas: dict[str, Any] = {f"{op.title()}Request": _item(op) for op in OPERATIONS}
    schemas.update(Result=RESULT, Error=ERROR)
    return {
        "openapi": "3.0.3",
        "info": {"title": "qkms data plane", "version": __version__,
                 "description": "Use managed keys without holding them. Authorization is "
                                "Kubernetes RBAC: a verb per operation on managedkeys.qkms.io."},
        "paths": paths,
        "components": {"schemas": schemas, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "a Kubernetes ServiceAccount token"}}},
    }
