"""The official `kubernetes` Python client on the suite's cluster: a second client next to
kubectl.

kubectl prints what it is given; this client deserializes every answer into its own typed
(pydantic) models, with strict types and required fields, the way Python controllers
read the API. A response shape the embedded server gets wrong (a string where a number
belongs, a timestamp that does not parse, a Status without its reason) fails here even
where kubectl is lenient. Custom objects come back as dicts: their metadata, their
conditions, their Scale and every error's Status are read through the typed models too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Final, TypeVar

from kubernetes import client, config, watch

from . import harness

GROUP: Final = "capguard.dev"
VERSION: Final = "v1alpha1"
T = TypeVar("T")
PLURALS: Final = {"InferenceEngine": "inferenceengines", "ModelCapacity": "modelcapacities",
                  "CircuitBreaker": "circuitbreakers"}


def connect(kubeconfig: Path) -> client.ApiClient:
    """A client for exactly this kubeconfig's current context (never `KUBECONFIG`)."""
    return config.new_client_from_config(config_file=str(kubeconfig))


@dataclasses.dataclass(frozen=True)
class Custom:
    """capguard's objects in one namespace, through `CustomObjectsApi`."""

    api: client.ApiClient
    namespace: str

    @property
    def objects(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api)

    def create(self, body: harness.Body) -> harness.Body:
        return _body(self.objects.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURALS[body["kind"]], body))

    def get(self, plural: str, name: str) -> harness.Body:
        return _body(self.objects.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, name))

    def list(self, plural: str, **options: Any) -> harness.Body:
        return _body(self.objects.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, **options))

    def patch(self, plural: str, name: str, patch: Mapping[str, Any]) -> harness.Body:
        """A merge patch (the client's default content type for a dict)."""
        return _body(self.objects.patch_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, name, dict(patch)))

    def delete(self, plural: str, name: str, **options: Any) -> harness.Body:
        return _body(self.objects.delete_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural, name, **options))

    def scale(self, plural: str, name: str, *, replicas: int | None = None) -> client.V1Scale:
        """The /scale subresource as autoscaling/v1 Scale; patched when `replicas` is given."""
        if replicas is None:
            answer = self.objects.get_namespaced_custom_object_scale(
                GROUP, VERSION, self.namespace, plural, name)
        else:
            answer = self.objects.patch_namespaced_custom_object_scale(
                GROUP, VERSION, self.namespace, plural, name, {"spec": {"replicas": replicas}})
        return _present(client.V1Scale.from_dict(_body(answer)))

    def patch_status(self, plural: str, name: str, status: Mapping[str, Any]) -> harness.Body:
        return _body(self.objects.patch_namespaced_custom_object_status(
            GROUP, VERSION, self.namespace, plural, name, {"status": dict(status)}))

    def watch(self, plural: str, *, resource_version: str,
              timeout: int) -> Iterator[tuple[str, harness.Body]]:
        """(type, object) of each change after `resource_version`, for at most `timeout` s."""
        stream = watch.Watch().stream(
            self.objects.list_namespaced_custom_object, GROUP, VERSION, self.namespace,
            plural, resource_version=resource_version, timeout_seconds=timeout)
        for event in stream:
            yield event["type"], event["object"]

    def wait(self, plural: str, name: str, *, match: Callable[[harness.Body], bool],
             timeout: int, what: str) -> harness.Body:
        """The object once `match` holds: as it is now, else at the change that makes it."""
        return _body(first(
            self.objects.list_namespaced_custom_object, GROUP, VERSION, self.namespace, plural,
            field_selector=f"metadata.name={name}", match=match, timeout=timeout, what=what))


def first(list_call: Callable[..., Any], *args: Any, match: Callable[[Any], bool],
          timeout: int, what: str, **options: Any) -> Any:
    """The first object a watch of `list_call` shows that `match`es. A watch without a
    resourceVersion starts with every current object (ADDED), then each change."""
    watcher = watch.Watch()
    for event in watcher.stream(list_call, *args, timeout_seconds=timeout, **options):
        if match(event["object"]):
            watcher.stop()
            return event["object"]
    raise AssertionError(f"timed out after {timeout}s watching for {what}")


def metadata(body: Mapping[str, Any]) -> client.V1ObjectMeta:
    """A custom object's metadata, as typed as a built-in's."""
    return _present(client.V1ObjectMeta.from_dict(body["metadata"]))


def conditions(body: Mapping[str, Any]) -> dict[str, client.V1Condition]:
    """status.conditions as metav1.Condition: every required field present and typed."""
    found = (body.get("status") or {}).get("conditions") or []
    typed = [_present(client.V1Condition.from_dict(raw)) for raw in found]
    return {condition.type: condition for condition in typed}


def status_of(error: client.ApiException) -> client.V1Status:
    """The Status a refused request carries, as the client's model reads it."""
    assert error.body, f"a {error.status} without a body"
    return _present(client.V1Status.from_json(error.body))


def _body(answer: object) -> harness.Body:
    assert isinstance(answer, dict), f"the client read {type(answer).__name__}, not an object"
    return answer


def _present(model: T | None) -> T:
    assert model is not None, "the client read nothing"
    return model
