"""The plugin's view of the cluster: the user's kubeconfig (``--kubeconfig``, ``--context``), nothing else.

Every call goes out with the user's identity; the one Secret the plugin may read (the job's S3
credentials, for ``predict``) is read only after a SelfSubjectAccessReview says it may.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from finetune_api.contract import API_GROUP, API_VERSION, JOB_LABEL, PLURAL


class CommandError(Exception):
    """A failure to report to the user as ``error: ...`` with exit code 1."""


@dataclass
class Cluster:
    """API clients for one kubeconfig context, and the namespace its commands act in."""

    kubeconfig: str | None = None
    context: str | None = None
    namespace_flag: str | None = None
    _api: Any = field(default=None, init=False, repr=False)

    @property
    def api(self) -> Any:
        """The kubernetes ApiClient for the kubeconfig and context (the in-cluster config inside a pod)."""
        if self._api is None:
            from kubernetes import config
            from kubernetes.config.config_exception import ConfigException

            try:
                self._api = config.new_client_from_config(config_file=self.kubeconfig, context=self.context)
            except (ConfigException, OSError) as err:
                try:
                    config.load_incluster_config()
                    from kubernetes import client

                    self._api = client.ApiClient()
                except ConfigException:
                    raise CommandError(f"cannot load the kubeconfig: {err}") from None
        return self._api

    @property
    def namespace(self) -> str:
        """-n, else the context's namespace, else default (as kubectl)."""
        if self.namespace_flag:
            return self.namespace_flag
        from kubernetes import config
        from kubernetes.config.config_exception import ConfigException

        try:
            contexts, current = config.list_kube_config_contexts(config_file=self.kubeconfig)
        except (ConfigException, OSError):
            return "default"
        chosen = next((c for c in contexts if c["name"] == self.context), current) if self.context else current
        return str((chosen or {}).get("context", {}).get("namespace") or "default")

    def custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self.api)

    def core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api)

    def call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run one API call; an API error becomes a CommandError naming what was asked."""
        from kubernetes.client.exceptions import ApiException

        try:
            return fn(*args, **kwargs)
        except ApiException as err:
            if err.status == 404:
                raise CommandError(f"{what}: not found") from None
            if err.status == 403:
                raise CommandError(f"{what}: forbidden for your kubeconfig's user") from None
            raise CommandError(f"{what}: {err.status} {err.reason}") from None
        except OSError as err:
            raise CommandError(f"{what}: cannot reach the API server ({err})") from None

    # -- FineTuneJobs --

    def job(self, name: str, namespace: str | None = None) -> dict[str, Any]:
        """One FineTuneJob."""
        ns = namespace or self.namespace
        return dict(
            self.call(
                f'finetunejob "{name}" in namespace "{ns}"',
                self.custom().get_namespaced_custom_object,
                API_GROUP,
                API_VERSION,
                ns,
                PLURAL,
                name,
            )
        )

    def jobs(self, all_namespaces: bool) -> list[dict[str, Any]]:
        """The FineTuneJobs of the namespace (or of every namespace)."""
        api = self.custom()
        if all_namespaces:
            found = self.call("list finetunejobs", api.list_cluster_custom_object, API_GROUP, API_VERSION, PLURAL)
        else:
            found = self.call(
                f'list finetunejobs in namespace "{self.namespace}"',
                api.list_namespaced_custom_object,
                API_GROUP,
                API_VERSION,
                self.namespace,
                PLURAL,
            )
        return list(found.get("items", []))

    def patch_job(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch a FineTuneJob's spec."""
        return dict(
            self.call(
                f'finetunejob "{name}"',
                self.custom().patch_namespaced_custom_object,
                API_GROUP,
                API_VERSION,
                self.namespace,
                PLURAL,
                name,
                body,
            )
        )

    def delete_job(self, name: str) -> None:
        """Delete a FineTuneJob (its children follow through their owner references)."""
        self.call(
            f'finetunejob "{name}"',
            self.custom().delete_namespaced_custom_object,
            API_GROUP,
            API_VERSION,
            self.namespace,
            PLURAL,
            name,
        )

    # -- what belongs to a job --

    def events(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        """Events about the job, oldest first (plain dicts in camelCase)."""
        meta = job["metadata"]
        found = self.call(
            "list events",
            self.core().list_namespaced_event,
            meta["namespace"],
            field_selector=f"involvedObject.uid={meta['uid']}",
        )
        events = [self.api.sanitize_for_serialization(e) for e in found.items]
        return sorted(events, key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")

    def pods(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        """The job's trainer pods (plain dicts in camelCase)."""
        meta = job["metadata"]
        found = self.call(
            "list pods",
            self.core().list_namespaced_pod,
            meta["namespace"],
            label_selector=f"{JOB_LABEL}={meta['name']}",
        )
        return [self.api.sanitize_for_serialization(p) for p in found.items]

    def pod_log(self, namespace: str, pod: str, *, follow: bool) -> Any:
        """A pod's trainer log: the text, or (follow) a stream of byte chunks."""
        from finetune_api.contract import TRAINER_CONTAINER

        core = self.core()
        if follow:
            return self.call(
                f'logs of pod "{pod}"',
                core.read_namespaced_pod_log,
                pod,
                namespace,
                container=TRAINER_CONTAINER,
                follow=True,
                _preload_content=False,
            ).stream()
        # The raw response, decoded here: the client's own deserialisation of this text endpoint
        # gives the repr of the bytes ("b'...'"), not the log.
        response = self.call(
            f'logs of pod "{pod}"',
            core.read_namespaced_pod_log,
            pod,
            namespace,
            container=TRAINER_CONTAINER,
            _preload_content=False,
        )
        return bytes(response.data).decode("utf-8", errors="replace")

    # -- the one Secret predict may read --

    def may_read_secret(self, namespace: str, name: str) -> bool:
        """Whether the kubeconfig's user may get this Secret (a SelfSubjectAccessReview)."""
        from kubernetes import client

        review = client.V1SelfSubjectAccessReview(
            spec=client.V1SelfSubjectAccessReviewSpec(
                resource_attributes=client.V1ResourceAttributes(
                    namespace=namespace, verb="get", resource="secrets", name=name
                )
            )
        )
        answer = self.call(
            "SelfSubjectAccessReview", client.AuthorizationV1Api(self.api).create_self_subject_access_review, review
        )
        return bool(answer.status.allowed)

    def secret_data(self, namespace: str, name: str) -> dict[str, str]:
        """A Secret's values, decoded."""
        import base64

        secret = self.call(
            f'secret "{name}" in namespace "{namespace}"', self.core().read_namespaced_secret, name, namespace
        )
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}
