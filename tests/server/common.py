"""Names shared by the data-plane tests."""

TOKENS = {"checkout": "tok-checkout", "reader": "tok-reader", "billing": "tok-billing",
          "prod": "tok-prod", "expired": "tok-expired", "auditor": "tok-auditor",
          "monitor": "tok-monitor"}
ALL_VERBS = ["sign", "verify", "encrypt", "decrypt", "encapsulate", "decapsulate", "derive"]
