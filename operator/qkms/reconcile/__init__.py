"""Reconciliation shared by the Kopf operator and standalone mode.

``decisions`` holds every choice as a pure function; ``reconciler`` orders the
service calls; ``registry`` keeps one service per environment.
"""
