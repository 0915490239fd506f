"""Engines that really serve: the engine agent, the model-server stand-in, the gateway
and the load generator (issue 12). Each module defines its own click command; cli.py
registers them. docs/engines.md is the contract between them and the operator.
"""
