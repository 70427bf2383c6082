"""Pure `build_*()` functions: custom resource specs in, Kubernetes manifests (dicts) out."""
