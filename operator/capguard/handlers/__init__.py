"""The operator's Kopf side, thin: the watch feed into the index (`registration`), the
one reconcile loop (`reconcile`) that calls the core and writes back, the simulated
engine driver (`driver`), and the status builders (`status`).

Importing registers nothing: `registration.build` makes a fresh Kopf registry.
"""
