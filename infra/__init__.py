"""Deployment and local-development tooling: the embedded local stack, cluster manifests, images."""
