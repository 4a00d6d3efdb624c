"""The FineTuneJob spec as typed models: the single source of truth.

The CRD schema (``finetune_api.crd``), the trainer's config parsing and the API
reference in the README are all generated from these classes. Attribute names are
snake_case in Python and camelCase on the wire (``alias``); every field has a
description (it shows in ``kubectl explain``), a default where one makes sense, and
bounds. Cross-field rules are written once in :mod:`finetune_api.rules` as a CEL
expression for the API server and a Python predicate for everything else.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pydantic.alias_generators import to_camel

from finetune_api.contract import ENV_S3_ACCESS_KEY_ID, ENV_S3_SECRET_ACCESS_KEY

TaskType = Literal[
    "sequence-classification",
    "regression",
    "token-classification",
    "question-answering",
    "seq2seq",
    "causal-lm",
    "preference",
    "orpo",
    "kto",
    "reward-modeling",
]
MethodType = Literal[
    "full",
    "feature-extraction",
    "freeze",
    "lora",
    "qlora",
    "ia3",
    "prompt-tuning",
    "p-tuning",
    "prefix-tuning",
]
# TRL 1.16's DPO loss variants that need no further settings (exo_pair needs label smoothing).
DpoLoss = Literal[
    "sigmoid",
    "ipo",
    "hinge",
    "robust",
    "nca_pair",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sigmoid_norm",
]
LoraInit = Literal["default", "gaussian", "pissa", "olora", "loftq"]
TextFormat = Literal["text", "alpaca", "chatml", "messages"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]
Strategy = Literal["no", "steps", "epoch"]
Scheduler = Literal[
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
]
Optimizer = Literal[
    "auto", "adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "paged_adamw_8bit", "adamw_bnb_8bit"
]
# transformers' attn_implementation names; auto picks the fastest the model, dtype and device support.
Attention = Literal["auto", "sdpa", "flash_attention_2", "flex_attention", "eager"]
DistributedStrategy = Literal["auto", "ddp", "deepspeed", "fsdp"]
Reporter = Literal["tensorboard", "mlflow", "wandb"]

# Bounded strings and lists keep the CRD's CEL cost estimates finite.
Name = Annotated[str, StringConstraints(min_length=1, max_length=253)]
ShortText = Annotated[str, StringConstraints(max_length=1024)]
LongText = Annotated[str, StringConstraints(max_length=4096)]
Uri = Annotated[str, StringConstraints(min_length=6, max_length=2048, pattern=r"^s3://[^/]+(/.*)?$")]
Location = Annotated[str, StringConstraints(min_length=1, max_length=2048)]
Quantity = Annotated[str, StringConstraints(max_length=64, pattern=r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$")]
ColumnName = Annotated[str, StringConstraints(min_length=1, max_length=253)]


class ApiModel(BaseModel):
    """Base for every API object: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_default=True,
    )


class SecretKeyRef(ApiModel):
    """A key in a Secret in the job's namespace."""

    name: Name = Field(description="Name of the Secret in the FineTuneJob's namespace.")
    key: Name = Field(default="token", description="Key inside the Secret.")


class ModelSource(ApiModel):
    """The base model to fine-tune: exactly one of name (hub id), uri (s3://) or path (a volume)."""

    name: Name | None = Field(default=None, description="Hugging Face hub id, e.g. bert-base-uncased.")
    uri: Uri | None = Field(default=None, description="s3://bucket/prefix holding a saved model directory.")
    path: Location | None = Field(default=None, description="Path of a model directory on a mounted volume.")
    revision: Name = Field(default="main", description="Hub revision (branch, tag or commit); hub models only.")
    trust_remote_code: bool = Field(
        default=False, description="Allow model code from the hub repository to run. Leave off unless you trust it."
    )
    token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret holding a hub token, for gated or private models."
    )


class TaskSpec(ApiModel):
    """What the model learns to do, and how the dataset's columns map onto it."""

    type: TaskType = Field(description="The task; decides preprocessing, model head, collator and metrics.")
    multi_label: bool = Field(
        default=False,
        description="sequence-classification only: several labels per example (BCE loss, thresholded sigmoid).",
    )
    labels: list[Name] = Field(
        default_factory=list,
        max_length=1000,
        description=(
            "Label names; ids follow their order (id2label/label2id). Required for sequence- and token-classification."
        ),
    )
    format: TextFormat | None = Field(
        default=None,
        description="causal-lm only: text (plain), alpaca (instruction/input/output), chatml or messages (chat turns).",
    )
    columns: dict[str, ColumnName] = Field(
        default_factory=dict,
        max_length=8,
        description=(
            "Dataset column for each role the task reads, e.g. {text: review, label: sentiment}. "
            "Roles not given use the task's default column names."
        ),
    )
    doc_stride: int = Field(
        default=128,
        ge=0,
        le=4096,
        description="question-answering only: tokens of overlap between windows of a long context.",
    )
    threshold: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="multi-label only: probability above which a label counts as predicted.",
    )


class DataFiles(ApiModel):
    """Dataset files per split: jsonl, json, csv or parquet, each a path or an s3:// URI."""

    train: Location = Field(description="Training file (path or s3:// URI).")
    validation: Location | None = Field(default=None, description="Evaluation file (path or s3:// URI).")
    test: Location | None = Field(default=None, description="Test file (path or s3:// URI).")


class DatasetSpec(ApiModel):
    """Where the training and evaluation data come from: a hub dataset or files."""

    name: Name | None = Field(default=None, description="Hugging Face hub dataset id, e.g. imdb.")
    config: Name | None = Field(default=None, description="Hub dataset configuration name.")
    files: DataFiles | None = Field(default=None, description="Dataset files, instead of a hub dataset.")
    train_split: Name = Field(default="train", description="Split to train on.")
    eval_split: Name | None = Field(
        default=None, description="Split to evaluate on (validation for files). Leave empty to use evalFraction."
    )
    eval_fraction: float | None = Field(
        default=None, gt=0, lt=1, description="Fraction of the train split held out for evaluation."
    )
    test_split: Name | None = Field(
        default=None,
        description=(
            "Hub split evaluated once after training, with the final (best) model; its metrics are reported "
            "with a test_ prefix. With dataset.files, files.test is that split whenever evaluation reads another."
        ),
    )
    max_train_samples: int | None = Field(default=None, ge=1, description="Use at most this many training examples.")
    max_eval_samples: int | None = Field(default=None, ge=1, description="Use at most this many evaluation examples.")


class LoraOptions(ApiModel):
    """Low-rank adapter settings (peft LoraConfig)."""

    r: int = Field(default=8, ge=1, le=1024, description="Rank of the update matrices.")
    alpha: int = Field(default=16, ge=1, le=4096, description="Scaling numerator: updates are scaled by alpha / r.")
    dropout: float = Field(default=0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[Name] | None = Field(
        default=None,
        max_length=64,
        description=(
            "Module names to adapt, or [all-linear] for every linear layer but the output layer. "
            "Empty: the attention projections of the model's architecture."
        ),
    )
    bias: Literal["none", "all", "lora_only"] = Field(default="none", description="Which biases to train.")
    use_dora: bool = Field(
        default=False,
        description="DoRA: split each adapted weight into magnitude and direction and train both (peft use_dora).",
    )
    use_rslora: bool = Field(
        default=False, description="rsLoRA: scale updates by alpha / sqrt(r) instead of alpha / r (peft use_rslora)."
    )
    init_lora_weights: LoraInit = Field(
        default="default",
        description=(
            "Adapter initialisation: default (B = 0), gaussian, pissa (principal singular vectors; lora only), "
            "olora (QR decomposition) or loftq (qlora only: compensates the 4-bit quantisation error). "
            "pissa and olora move part of the base weights into the adapter; the saved adapter is converted back "
            "to apply to the original base."
        ),
    )
    modules_to_save: list[Name] = Field(
        default_factory=list,
        max_length=16,
        description="Extra modules trained in full and saved with the adapter, e.g. embed_tokens (the task head "
        "always is).",
    )


class Ia3Options(ApiModel):
    """IA3 settings (peft IA3Config): learned vectors rescale keys, values and feed-forward activations."""

    target_modules: list[Name] | None = Field(
        default=None,
        max_length=64,
        description="Modules whose activations are rescaled. Empty: peft's defaults for the architecture.",
    )
    feedforward_modules: list[Name] | None = Field(
        default=None,
        max_length=64,
        description="The targetModules that are feed-forward layers (their input is rescaled, not their output). "
        "Empty: peft's defaults for the architecture.",
    )


class FreezeOptions(ApiModel):
    """Partial fine-tuning: the last layers and the task head train, the rest stays frozen."""

    trainable_layers: int = Field(
        default=2, ge=1, le=1024, description="How many of the last transformer layers train (of each stack)."
    )


class QuantizationOptions(ApiModel):
    """How the frozen base is quantised for QLoRA (bitsandbytes)."""

    bits: Literal[4] = Field(default=4, description="Weight bits of the frozen base; QLoRA is 4-bit.")
    quant_type: Literal["nf4", "fp4"] = Field(default="nf4", description="4-bit data type; nf4 as in the QLoRA paper.")
    double_quant: bool = Field(
        default=True, description="Quantise the quantisation constants too (saves ~0.4 bit/param)."
    )
    compute_dtype: Literal["bfloat16", "float16", "float32"] = Field(
        default="bfloat16", description="Dtype the 4-bit weights are dequantised to for matmuls."
    )


class PromptTuningOptions(ApiModel):
    """Soft-prompt settings (peft PromptTuningConfig)."""

    num_virtual_tokens: int = Field(default=20, ge=1, le=512, description="Number of trained virtual tokens.")
    init_text: ShortText | None = Field(
        default=None, description="Initialise the virtual tokens from this text's embeddings; random when empty."
    )


class PTuningOptions(ApiModel):
    """P-tuning settings (peft PromptEncoderConfig): virtual tokens produced by a small trained encoder."""

    num_virtual_tokens: int = Field(default=20, ge=1, le=512, description="Number of virtual tokens.")
    encoder_type: Literal["mlp", "lstm"] = Field(default="mlp", description="Network that produces the tokens.")
    encoder_hidden_size: int | None = Field(
        default=None, ge=1, le=65536, description="Hidden size of that network (default: the model's hidden size)."
    )


class PrefixTuningOptions(ApiModel):
    """Prefix tuning settings (peft PrefixTuningConfig): trained keys and values prepended in every layer."""

    num_virtual_tokens: int = Field(default=20, ge=1, le=512, description="Prefix length, in positions.")
    projection: bool = Field(
        default=False, description="Produce the prefix through a two-layer MLP (more parameters, steadier training)."
    )
    encoder_hidden_size: int | None = Field(
        default=None, ge=1, le=65536, description="projection only: the MLP's hidden size (default: the model's)."
    )


class MethodSpec(ApiModel):
    """Which parameters train: all, the head, an adapter, or a soft prompt."""

    type: MethodType = Field(
        default="lora",
        description=(
            "full | feature-extraction | freeze | lora | qlora | ia3 | prompt-tuning | p-tuning | prefix-tuning; "
            "the support matrix lists the pairs with each task."
        ),
    )
    lora: LoraOptions | None = Field(default=None, description="lora and qlora only: adapter settings.")
    quantization: QuantizationOptions | None = Field(default=None, description="qlora only: 4-bit settings.")
    prompt_tuning: PromptTuningOptions | None = Field(default=None, description="prompt-tuning only.")
    ia3: Ia3Options | None = Field(default=None, description="ia3 only.")
    p_tuning: PTuningOptions | None = Field(default=None, description="p-tuning only.")
    prefix_tuning: PrefixTuningOptions | None = Field(default=None, description="prefix-tuning only.")
    freeze: FreezeOptions | None = Field(default=None, description="freeze only.")


class DpoOptions(ApiModel):
    """Direct preference optimisation settings (TRL DPOConfig)."""

    beta: float = Field(default=0.1, gt=0, le=10, description="Strength of the KL penalty towards the reference.")
    loss_type: DpoLoss = Field(
        default="sigmoid",
        description=(
            "Preference loss (TRL DPOConfig loss_type): sigmoid (DPO), ipo, hinge (SLiC), robust, nca_pair, "
            "bco_pair, sppo_hard, aot, aot_unpaired, apo_zero, apo_down, discopop, sigmoid_norm."
        ),
    )
    max_prompt_length: int | None = Field(
        default=None, ge=1, le=131072, description="Truncate prompts to this many tokens (default: half maxSeqLength)."
    )


class OrpoOptions(ApiModel):
    """Odds-ratio preference optimisation settings (TRL's experimental ORPOConfig; no reference model)."""

    beta: float = Field(
        default=0.1, gt=0, le=10, description="Weight of the odds-ratio term beside the chosen responses' NLL loss."
    )


class KtoOptions(ApiModel):
    """Kahneman-Tversky optimisation settings (TRL KTOConfig): unpaired desirable and undesirable rows."""

    beta: float = Field(default=0.1, gt=0, le=10, description="Strength of the KL penalty towards the reference.")
    loss_type: Literal["kto", "apo_zero_unpaired"] = Field(default="kto", description="KTO loss variant.")
    desirable_weight: float = Field(
        default=1.0, gt=0, le=100, description="Weight of the desirable rows' loss (raise it when they are fewer)."
    )
    undesirable_weight: float = Field(
        default=1.0, gt=0, le=100, description="Weight of the undesirable rows' loss (raise it when they are fewer)."
    )


class TrainingSpec(ApiModel):
    """Hyper-parameters and the training loop's schedule."""

    epochs: float = Field(default=3.0, gt=0, le=1000, description="Passes over the training data.")
    max_steps: int | None = Field(
        default=None, ge=1, description="Stop after this many optimiser steps (overrides epochs)."
    )
    batch_size_per_device: int = Field(default=16, ge=1, le=4096, description="Examples per device per step.")
    eval_batch_size_per_device: int | None = Field(
        default=None, ge=1, le=4096, description="Examples per device per eval step (default: batchSizePerDevice)."
    )
    gradient_accumulation_steps: int = Field(default=1, ge=1, le=4096, description="Micro-batches per optimiser step.")
    learning_rate: float = Field(default=2e-5, gt=0, le=1, description="Peak learning rate.")
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1, description="Fraction of the steps spent warming up.")
    lr_scheduler: Scheduler = Field(default="linear", description="Learning-rate schedule after warmup.")
    weight_decay: float = Field(default=0.0, ge=0, le=1, description="AdamW weight decay.")
    max_grad_norm: float = Field(default=1.0, ge=0, le=1000, description="Gradient clipping norm; 0 turns it off.")
    optimizer: Optimizer = Field(
        default="auto",
        description=(
            "Optimiser. auto: fused AdamW (adamw_torch_fused) on GPUs, adamw_torch on CPU; "
            "paged_adamw_8bit suits qlora on small GPUs."
        ),
    )
    max_seq_length: int = Field(default=256, ge=8, le=131072, description="Tokens per example after truncation.")
    precision: Precision = Field(
        default="auto", description="auto: bf16 where the GPU has it, fp16 on other GPUs, fp32 on CPU."
    )
    gradient_checkpointing: bool = Field(default=False, description="Recompute activations to save memory.")
    sizing: Literal["fixed", "auto"] = Field(
        default="fixed",
        description=(
            "auto: the trainer picks, from the GPU-memory estimate for the GPU it runs on, the largest "
            "batchSizePerDevice that fits (keeping batchSizePerDevice x gradientAccumulationSteps), "
            "gradientCheckpointing only when needed, and, with distributed.strategy auto, DeepSpeed ZeRO when data "
            "parallelism does not fit; the chosen values are on status.memoryEstimate.resolved and in the run's "
            "resolved spec. fixed: run the settings as written."
        ),
    )
    group_by_length: bool = Field(
        default=False, description="Batch examples of similar length together to cut padding."
    )
    seed: int = Field(default=42, ge=0, le=2**32 - 1, description="Random seed for data order and initialisation.")
    logging_steps: int = Field(default=10, ge=1, description="Log (and report progress) every this many steps.")
    eval_strategy: Strategy = Field(default="epoch", description="When to evaluate: no | steps | epoch.")
    eval_steps: int | None = Field(
        default=None, ge=1, description="Evaluate every this many steps (evalStrategy steps)."
    )
    save_strategy: Strategy = Field(default="epoch", description="When to checkpoint: no | steps | epoch.")
    save_steps: int | None = Field(
        default=None, ge=1, description="Checkpoint every this many steps (saveStrategy steps)."
    )
    save_total_limit: int | None = Field(
        default=2, ge=1, le=1000, description="Checkpoints to keep (the best one is always kept)."
    )
    load_best_model_at_end: bool = Field(
        default=True, description="Finish with the best checkpoint by metricForBestModel, not the last."
    )
    metric_for_best_model: Name | None = Field(
        default=None, description="Metric that picks the best checkpoint; default per task (accuracy, f1, ...)."
    )
    early_stopping_patience: int | None = Field(
        default=None, ge=1, le=1000, description="Stop after this many evaluations without improvement."
    )
    packing: bool = Field(default=False, description="causal-lm only: pack several examples into one sequence.")
    attention: Attention = Field(
        default="auto",
        description=(
            "Attention kernel (transformers' attn_implementation). auto: flash_attention_2 on a GPU in bf16/fp16 "
            "where the flash-attn package and the model support it, else sdpa where the model supports it, else "
            "eager. flash_attention_2 needs a GPU and bf16 or fp16, flex_attention a GPU. The choice is recorded "
            "in status.runtime."
        ),
    )
    padding_free: bool = Field(
        default=False,
        description=(
            "Lay each batch's examples end to end in one row (no padding; position ids restart per example; no "
            "attention across examples). causal-lm (any attention) and token-classification (attention "
            "flash_attention_2) only; with packing, causal-lm batches are padding-free already."
        ),
    )
    liger_kernels: bool = Field(
        default=False,
        description=(
            "GPU only: Liger's Triton kernels (RMSNorm, RoPE, SwiGLU, fused linear cross-entropy) on the "
            "architectures liger-kernel supports (Llama, Mistral, Qwen, Gemma, ...). causal-lm SFT keeps TRL's own "
            "chunked LM head instead of Liger's fused cross-entropy."
        ),
    )
    compile: bool = Field(
        default=False, description="GPU only: compile the model with torch.compile (slower start, faster steps)."
    )
    dpo: DpoOptions | None = Field(default=None, description="preference only: DPO settings.")
    orpo: OrpoOptions | None = Field(default=None, description="orpo only: ORPO settings.")
    kto: KtoOptions | None = Field(default=None, description="kto only: KTO settings.")
    report_to: list[Reporter] = Field(default_factory=list, max_length=3, description="Experiment trackers to log to.")


class Toleration(ApiModel):
    """A pod toleration, as in the core API."""

    key: Name | None = Field(default=None, description="Taint key; empty with operator Exists matches all.")
    operator: Literal["Exists", "Equal"] = Field(default="Equal", description="Exists or Equal.")
    value: ShortText | None = Field(default=None, description="Taint value for operator Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all."
    )
    toleration_seconds: int | None = Field(default=None, description="NoExecute only: how long to stay bound.")


class ResourcesSpec(ApiModel):
    """How many pods and GPUs, and where they may run."""

    nodes: int = Field(default=1, ge=1, le=1024, description="Pods, one per node; each runs gpusPerNode processes.")
    gpus_per_node: int = Field(
        default=1, ge=0, le=64, description="GPUs (and trainer processes) per pod; 0 runs on CPU."
    )
    cpu: Quantity = Field(default="8", description="CPU request and limit per pod.")
    memory: Quantity = Field(default="64Gi", description="Memory request and limit per pod.")
    shm_size: Quantity = Field(default="16Gi", description="Size of the memory-backed /dev/shm per pod.")
    image: ShortText | None = Field(default=None, description="Trainer image; default from the operator's Helm values.")
    node_selector: dict[str, ShortText] = Field(
        default_factory=dict, max_length=32, description="Node labels the pods require."
    )
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32, description="Pod tolerations.")
    priority_class_name: Name | None = Field(default=None, description="PriorityClass of the pods.")
    pod_annotations: dict[str, ShortText] = Field(
        default_factory=dict, max_length=64, description="Extra annotations on the trainer pods."
    )
    pod_labels: dict[str, ShortText] = Field(
        default_factory=dict,
        max_length=32,
        description="Extra labels on the trainer pods (the operator's own labels take precedence).",
    )
    gpu_memory: Quantity | None = Field(
        default=None,
        description=(
            "Memory of one GPU (e.g. 80Gi) for the fit estimate where the GPU itself cannot be asked: "
            "validate and CPU runs (a GPU run uses its device's memory)."
        ),
    )
    volume_claim_name: Name | None = Field(
        default=None, description="PersistentVolumeClaim for the model cache and outputs (default: an emptyDir)."
    )


class DeepSpeedOptions(ApiModel):
    """DeepSpeed ZeRO settings; the config file is generated from these."""

    stage: int = Field(default=2, ge=1, le=3, description="ZeRO stage: 1 optimizer, 2 +gradients, 3 +parameters.")
    offload_optimizer: bool = Field(default=False, description="Keep optimizer state in CPU memory.")
    offload_params: bool = Field(default=False, description="stage 3 only: keep parameters in CPU memory.")


class FsdpOptions(ApiModel):
    """Fully sharded data parallel settings."""

    sharding_strategy: Literal["full_shard", "shard_grad_op", "hybrid_shard", "no_shard"] = Field(
        default="full_shard", description="What FSDP shards across ranks."
    )
    offload_params: bool = Field(default=False, description="Keep parameters in CPU memory.")


class DistributedSpec(ApiModel):
    """How the processes share the work."""

    strategy: DistributedStrategy = Field(
        default="auto", description="auto (ddp for several processes), ddp, deepspeed or fsdp."
    )
    deepspeed: DeepSpeedOptions | None = Field(default=None, description="deepspeed only.")
    fsdp: FsdpOptions | None = Field(default=None, description="fsdp only.")


class S3CredentialsRef(ApiModel):
    """Secret with the S3 access key pair."""

    name: Name = Field(description="Secret name in the FineTuneJob's namespace.")
    access_key_id_key: Name = Field(default=ENV_S3_ACCESS_KEY_ID, description="Key of the access key id.")
    secret_access_key_key: Name = Field(default=ENV_S3_SECRET_ACCESS_KEY, description="Key of the secret key.")


class S3Location(ApiModel):
    """An S3 (or S3-compatible) bucket and prefix."""

    bucket: Annotated[
        str, StringConstraints(min_length=3, max_length=63, pattern=r"^[a-z0-9][a-z0-9.\-]*[a-z0-9]$")
    ] = Field(description="Bucket name.")
    prefix: ShortText = Field(default="", description="Key prefix; the job writes under <prefix><namespace>/<name>/.")
    endpoint: ShortText | None = Field(default=None, description="Endpoint URL for S3-compatible stores (MinIO).")
    region: Name = Field(default="us-east-1", description="Bucket region.")
    path_style: bool = Field(default=False, description="Use path-style addressing (most MinIO setups).")
    credentials_secret_ref: S3CredentialsRef | None = Field(
        default=None, description="Secret with the key pair; empty uses the pod's ambient credentials (IRSA)."
    )


class OutputSpec(ApiModel):
    """Where checkpoints and the final model go."""

    s3: S3Location | None = Field(default=None, description="Upload checkpoints and artifacts here.")
    upload_checkpoints: bool = Field(default=True, description="Upload every checkpoint, not only the final model.")
    save_merged_model: bool = Field(
        default=False, description="lora/qlora: also save the base with the adapter merged."
    )


class RunPolicy(ApiModel):
    """Lifecycle of the Kubernetes Job."""

    suspend: bool = Field(default=False, description="Pause the job (pods deleted); resuming continues from S3.")
    backoff_limit: int = Field(default=3, ge=0, le=100, description="Pod restarts before Failed; each resumes.")
    active_deadline_seconds: int | None = Field(default=None, ge=1, description="Fail the job after this long.")
    ttl_seconds_after_finished: int | None = Field(
        default=None, ge=0, description="Delete the finished Job (not the FineTuneJob) after this long."
    )
    queue_name: Name | None = Field(default=None, description="Kueue LocalQueue; sets kueue.x-k8s.io/queue-name.")
    termination_grace_period_seconds: int = Field(
        default=300,
        ge=1,
        le=86400,
        description="Seconds a trainer pod has after SIGTERM (eviction, preemption, suspend, pod deletion) to "
        "save and upload a checkpoint at its current step before it is killed; the restart resumes from it. "
        "Allow for the checkpoint's size over the S3 link.",
    )


class FineTuneJobSpec(ApiModel):
    """One fine-tune: model, data, task, method, training, resources and outputs."""

    model: ModelSource = Field(description="The base model.")
    task: TaskSpec = Field(description="What the model learns.")
    dataset: DatasetSpec = Field(description="Training and evaluation data.")
    method: MethodSpec = Field(default_factory=MethodSpec, description="Which parameters train.")
    training: TrainingSpec = Field(default_factory=TrainingSpec, description="Hyper-parameters.")
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec, description="Pods and GPUs.")
    distributed: DistributedSpec = Field(default_factory=DistributedSpec, description="Multi-process strategy.")
    output: OutputSpec = Field(default_factory=OutputSpec, description="Checkpoints and artifacts.")
    run_policy: RunPolicy = Field(default_factory=RunPolicy, description="Job lifecycle.")


def wire(spec: ApiModel, *, only_set: bool = False) -> dict[str, Any]:
    """The object as it appears in YAML: camelCase, unset optional fields left out.

    ``only_set`` also leaves out fields that were never given (defaults included): the body of a
    merge patch that touches only what its writer owns.
    """
    return spec.model_dump(by_alias=True, exclude_none=True, exclude_unset=only_set, mode="json")
