"""Root pytest configuration: the local control plane's fixtures (kube, minio, kube_namespace) and the
fuzz suite's hypothesis profiles (registered here so ``--hypothesis-profile`` finds them)."""

# The session's CRDs and operator (tests.integration.operator_process) are registered here once: a module that
# imported the fixtures itself would get a second session operator, and two operators race on every object.
pytest_plugins = ["tests.cluster.fixture", "tests.fuzz.profiles", "tests.integration.operator_process"]
