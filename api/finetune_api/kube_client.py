"""How the operator and the trainer reach the API server: one way of loading the client configuration.

The kubernetes client is imported only when called, so the rest of the API package stays light.
"""

from __future__ import annotations

import os
from typing import Any


def load_kube_config(configuration: Any = None) -> None:
    """The in-cluster service account when in a pod, else the file KUBECONFIG names (else ~/.kube/config).

    ``configuration`` (a ``kubernetes.client.Configuration``) is filled instead of the client's
    default one when given. The file is named explicitly because the client reads KUBECONFIG only
    once, when it is first imported.
    """
    from kubernetes import config

    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration)
