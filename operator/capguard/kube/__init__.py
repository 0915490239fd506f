"""Talking to the Kubernetes API: a small client on Kopf's credentials (patches with
resourceVersion preconditions), Events with a dedupe window, and Lease leader election.

Import the modules: ``from capguard.kube import client`` then ``client.Api``.
"""
