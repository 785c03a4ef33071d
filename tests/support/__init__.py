"""Shared test support code (real Kubernetes control plane for integration tests)."""
