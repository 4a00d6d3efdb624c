"""Root pytest configuration: the local control plane's fixtures (kube, minio, kube_namespace)."""

pytest_plugins = ["tests.cluster.fixture"]
