"""The agreement between the operator and the trainer: every name, path and exit code both sides use.

The operator writes these names into the objects it creates (labels, env, mounted files,
podFailurePolicy); the trainer reads them back. Both import them from here, so a name is
spelled once. Standard library only: the operator image has no torch.

The status schema half of the contract is :mod:`finetune_api.status` (typed models; the
operator owns phase and conditions, the trainer progress, metrics, parameters and artifacts).
"""

from __future__ import annotations

from dataclasses import dataclass

# ---- the resource ----

API_GROUP = "finetune.dev"
API_VERSION = "v1alpha1"
API_GROUP_VERSION = f"{API_GROUP}/{API_VERSION}"
KIND = "FineTuneJob"
PLURAL = "finetunejobs"
SINGULAR = "finetunejob"
SHORT_NAME = "ftj"
STATUS_SUBRESOURCE = f"{PLURAL}/status"

# ---- labels and annotations ----

JOB_LABEL = f"{API_GROUP}/job"  # on every child and pod: the FineTuneJob's name
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
COMPONENT_LABEL = "app.kubernetes.io/component"
TRAINER_APP = "finetune-trainer"  # NAME_LABEL of the children
OPERATOR_APP = "finetune-operator"  # MANAGED_BY_LABEL of the children; NAME_LABEL of the operator's objects
KUEUE_QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
# Set by the Job controller on each pod of an Indexed Job; the pod's node rank.
COMPLETION_INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"

# ---- the trainer pod: container, mounts, files ----

TRAINER_CONTAINER = "trainer"
LAUNCH_MODULE = "finetune_trainer.launch"  # the container command: torchrun keeping the trainer's exit code
TRAINER_MODULE = "finetune_trainer"  # what each torchrun process runs: python -m finetune_trainer run
CONFIG_DIR = "/etc/finetune"  # the job's ConfigMap, read-only
JOB_CONFIG_FILE = "job.yaml"  # in CONFIG_DIR: the FineTuneJob with every default filled (the trainer's --config)
DEEPSPEED_CONFIG_FILE = "deepspeed.json"  # in CONFIG_DIR, for people reading the ConfigMap
WORKSPACE = "/workspace"  # emptyDir or the job's PVC
OUTPUT_DIR = f"{WORKSPACE}/output"  # the trainer's --output-dir
HF_HOME_DIR = f"{WORKSPACE}/cache/huggingface"
# Files the trainer writes in its output dir and uploads under the job's final/ prefix.
RESOLVED_SPEC_FILE = "spec.resolved.yaml"  # the spec with the defaults the run chose written in
METRICS_FILE = "metrics.json"
# The test split's predictions, one JSON object per row (classification, token classification, QA).
PREDICTIONS_FILE = "predictions.jsonl"
# Generative tasks: the final model's answers to a few held-out prompts (also in the model card).
SAMPLES_FILE = "samples.jsonl"

# ---- environment: set by the operator, read by the trainer ----

ENV_JOB_NAME = "FTJ_NAME"  # the FineTuneJob's name: status reports, the S3 job prefix
ENV_JOB_NAMESPACE = "FTJ_NAMESPACE"  # its namespace
ENV_WORLD_SIZE = "FTJ_WORLD_SIZE"  # processes the operator planned (nodes x GPUs); the trainer checks torchrun's
ENV_NODE_RANK = "PET_NODE_RANK"  # torchrun's --node-rank, from COMPLETION_INDEX_ANNOTATION
ENV_COMPLETION_INDEX = "JOB_COMPLETION_INDEX"  # set by the Job controller in every container of an Indexed Job
ENV_HF_HOME = "HF_HOME"
ENV_HF_TOKEN = "HF_TOKEN"  # from spec.model.tokenSecretRef
ENV_S3_ENDPOINT = "AWS_ENDPOINT_URL_S3"  # spec.output.s3.endpoint, else the operator's default
ENV_S3_ENDPOINT_ANY_SERVICE = "AWS_ENDPOINT_URL"  # boto3's generic fallback, honoured by the trainer too
ENV_S3_REGION = "AWS_DEFAULT_REGION"  # spec.output.s3.region
ENV_S3_REGION_ALT = "AWS_REGION"
ENV_S3_ACCESS_KEY_ID = "AWS_ACCESS_KEY_ID"  # from spec.output.s3.credentialsSecretRef
ENV_S3_SECRET_ACCESS_KEY = "AWS_SECRET_ACCESS_KEY"

# Trainer settings with defaults; not set by the operator (a cluster admin or a test may).
ENV_STATUS_INTERVAL = "FTJ_STATUS_INTERVAL"  # seconds between status patches (default 10)
ENV_S3_RETRY_SECONDS = "FTJ_S3_RETRY_SECONDS"  # how long S3 transfers retry (default 300)
ENV_LOAD_RETRY_SECONDS = "FTJ_LOAD_RETRY_SECONDS"  # how long hub model/dataset loads retry (default 300)
ENV_S3_CACHE_DIR = "FTJ_S3_CACHE_DIR"  # where s3:// inputs are cached
ENV_S3_UPLOAD_QUEUE = "FTJ_S3_UPLOAD_QUEUE"  # checkpoints waiting behind the uploading one (default 1)
ENV_S3_PART_TIMEOUT = "FTJ_S3_PART_TIMEOUT"  # seconds rank 0 waits for every node's part of a checkpoint

# ---- exit codes: what the trainer tells the Job controller ----

# Kubernetes' default terminationMessagePath: a failing trainer process (or the launcher) writes
# "<kind> error: <reason>" there before it exits, so the reason is in the pod's
# containerStatuses[].state.terminated.message (the kubelet keeps 4096 bytes).
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
TERMINATION_MESSAGE_LIMIT = 4096


@dataclass(frozen=True)
class ExitCode:
    """One exit code of the trainer container and what the Job does about it."""

    code: int
    name: str
    meaning: str
    permanent: bool  # True: the podFailurePolicy fails the job at once; False: counted against backoffLimit


EXIT_OK = 0
EXIT_FAILED = 1  # an unexpected error (a bug, an out-of-memory kill reported by Python)
EXIT_CONFIG = 3
EXIT_DATA = 4
EXIT_RETRYABLE = 75  # EX_TEMPFAIL of sysexits.h

EXIT_CODES: tuple[ExitCode, ...] = (
    ExitCode(EXIT_OK, "Succeeded", "the run finished and its outputs are saved", permanent=False),
    ExitCode(EXIT_FAILED, "Error", "an unexpected error; the Job retries it within backoffLimit", permanent=False),
    ExitCode(EXIT_CONFIG, "InvalidSpec", "the spec is invalid or unsupported; fix the spec", permanent=True),
    ExitCode(EXIT_DATA, "InvalidData", "the dataset is missing, malformed or does not fit the task", permanent=True),
    ExitCode(
        EXIT_RETRYABLE,
        "TemporaryFailure",
        "a transient failure (network, timeout, S3 5xx, throttling) outlasted the in-process retries; "
        "the Job runs the pod again within backoffLimit, resuming from the last checkpoint",
        permanent=False,
    ),
)
PERMANENT_EXIT_CODES: tuple[int, ...] = tuple(c.code for c in EXIT_CODES if c.permanent)
# Codes the podFailurePolicy counts against backoffLimit explicitly (with the reason in the Restarted event).
RETRYABLE_EXIT_CODES: tuple[int, ...] = (EXIT_RETRYABLE,)


def exit_code(code: int) -> ExitCode | None:
    """The declared meaning of an exit code, or None for one the trainer never uses on purpose."""
    return next((c for c in EXIT_CODES if c.code == code), None)
