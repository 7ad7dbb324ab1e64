"""The embedded local stack (S3 server, MLflow server, Ray head on loopback); see ``stack.py``."""
