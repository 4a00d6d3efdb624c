"""Root pytest configuration: the local control plane's fixtures (kube, minio, kube_namespace) and the
fuzz suite's hypothesis profiles (registered here so ``--hypothesis-profile`` finds them)."""

pytest_plugins = ["tests.cluster.fixture", "tests.fuzz.profiles"]
