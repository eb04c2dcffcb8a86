"""ImageClassifier: a network plus everything needed to train it and to use it alone later.

The module owns its input contract: ``forward`` takes uint8 images and normalises them with
mean/std buffers kept in the state_dict, and the class names and input size are
hyper-parameters, and so is the test-time augmentation. A checkpoint alone is therefore enough
to predict, evaluate, serve or export, with the accuracy its test reported.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MaxMetric

from datamodules.sources import CIFAR10_CLASSES
from lightning_modules.inference.model import check_tta, inference_layout, net_logits, normalize_uint8, tta_logits
from lightning_modules.metrics import StageScores
from lightning_modules.nets import build_net

# The tutorial's optimiser. A plain dict (not an optimiser class) so checkpoints stay weights_only-loadable.
DEFAULT_OPTIMIZER: dict[str, Any] = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.01}}
STAGES = ("train", "val", "test")


def describe_net(net: nn.Module) -> dict[str, Any]:
    """A plain-data description (class path, constructor arguments) of a network instance.

    Our networks keep each constructor argument as an attribute of the same name, which is what
    lets a checkpoint record how to rebuild them without pickling the object.
    """
    cls = type(net)
    init_args = {}
    for name, param in inspect.signature(cls.__init__).parameters.items():
        if name != "self" and param.kind not in (param.VAR_POSITIONAL, param.VAR_KEYWORD) and hasattr(net, name):
            value = getattr(net, name)
            if isinstance(value, (bool, int, float, str, type(None), list, tuple)):
                init_args[name] = value
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


class ImageClassifier(L.LightningModule):
    """Classifies uint8 images ``(N, 3, H, W)`` with the injected network.

    Args:
        net: the network; it receives normalised float images and returns logits.
        class_names: one name per output, in label order (linked from the DataModule by the CLI).
        image_size: input height and width in pixels (linked from the DataModule).
        mean: per-channel mean subtracted after scaling pixels to [0, 1].
        std: per-channel std divided by after that. mean 0 / std 1 is the tutorial's scaling only.
        label_smoothing: CrossEntropyLoss label smoothing (0: off).
        optimizer: ``{"class_path": ..., "init_args": {...}}`` of a torch optimiser; set by
            ``--optimizer`` in the CLI. None: SGD with lr 0.01, the tutorial's choice.
        lr_scheduler: the same for a learning-rate scheduler (``--lr_scheduler``); None: constant lr.
        lr_scheduler_interval: step the scheduler every "epoch" or every "step" (batch).
        tta: test-time augmentation in validation and test (never in training), and by default in
            predict, serve and export, which read it from the checkpoint: "mirror" averages the
            logits of each image and its mirror image; "mirror_translate" also averages those of
            both shifted by one pixel up-left and down-right (edges repeated).
        bias_lr_scale: learning-rate multiplier for the per-channel parameters (those with one
            dimension: biases and normalisation scales), which shift and scale features rather than
            mix them. Airbench trains its BatchNorm and whitening biases 64x faster than the weights.
        decoupled_weight_decay: read the optimiser's ``weight_decay`` as the fraction every weight
            shrinks by per step at the peak learning rate, the same in every parameter group (it
            still follows the schedule), instead of plain SGD's ``lr * weight_decay``, which would
            make a group with a 64x learning rate decay 64x faster.
        channels_last: keep the network's weights and activations in channels-last memory layout,
            which convolution kernels on recent GPUs and on CPUs run faster.
        compile: compile the network with ``torch.compile`` when training starts (the first steps
            are slow while it compiles; worth it for long runs on a GPU).
    """

    def __init__(
        self,
        net: nn.Module,
        class_names: Sequence[str] = CIFAR10_CLASSES,
        image_size: int = 32,
        mean: tuple[float, float, float] = (0.0, 0.0, 0.0),
        std: tuple[float, float, float] = (1.0, 1.0, 1.0),
        label_smoothing: float = 0.0,
        optimizer: dict | None = None,
        lr_scheduler: dict | None = None,
        lr_scheduler_interval: Literal["epoch", "step"] = "epoch",
        tta: Literal["none", "mirror", "mirror_translate"] = "none",
        bias_lr_scale: float = 1.0,
        decoupled_weight_decay: bool = False,
        channels_last: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"--model.label_smoothing {label_smoothing}: use a value from 0 to 1 (0.1 is usual)")
        if bias_lr_scale < 0:
            raise ValueError(f"--model.bias_lr_scale must be >= 0, got {bias_lr_scale}")
        if len(mean) != 3 or len(std) != 3 or any(s <= 0 for s in std):
            raise ValueError(f"mean and std need 3 values each and std > 0; got mean={mean}, std={std}")
        check_tta(tta, "--model.tta")
        if isinstance(net, dict):
            # load_from_checkpoint of a model that was built in Python passes the saved description.
            net = build_net(net)
        with warnings.catch_warnings():
            # Lightning warns about the nn.Module argument; it is replaced by a plain description below.
            warnings.filterwarnings("ignore", message="Attribute 'net' is an instance of `nn.Module`")
            self.save_hyperparameters()
        if isinstance(self.hparams.get("net"), nn.Module) or not isinstance(self.hparams["class_names"], list):
            # Built in Python rather than by the CLI: record the net as plain data, never as a pickled
            # object, so checkpoints load with weights_only=True. Saving again replaces what was saved.
            plain = {**self.hparams, "class_names": [str(c) for c in class_names]}
            if isinstance(plain["net"], nn.Module):
                plain["net"] = describe_net(net)
            self.save_hyperparameters(plain)
        self.net = net
        self.class_names = list(self.hparams["class_names"])
        self.num_classes = len(self.class_names)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.criterion = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        # One metric per stage, loss included: accumulated on the device (a step never waits for it),
        # weighted by batch size and summed across processes, so under DDP with shards of unequal
        # size it still equals the single-process figure. Logged once per epoch.
        self.train_metrics = StageScores(self.num_classes)
        self.val_metrics = StageScores(self.num_classes)
        self.test_metrics = StageScores(self.num_classes)
        self.val_acc_best = MaxMetric()
        # The name the test stage's metrics are logged under: evaluate.py sets the split it scores.
        self.test_name = "test"
        # Lets Lightning print input/output sizes and TensorBoard draw the graph.
        self.example_input_array = torch.zeros(1, 3, image_size, image_size, dtype=torch.uint8)

    def forward(self, images: Tensor) -> Tensor:
        channels_last = self.hparams.channels_last or inference_layout(images)
        return net_logits(self.net, images, self.mean, self.std, channels_last, self._input_dtype())

    # True half precision (--trainer.precision bf16-true or 16-true): Lightning casts the whole module
    # to the half type before training or testing, after loading a checkpoint. As airbench does,
    # BatchNorm stays float32 (its statistics need the range and its few parameters cost nothing),
    # and so do the normalisation constants and the metric sums: ``_apply`` keeps their float32
    # values through any dtype cast, checkpointed values included. Validation and test score with
    # the network widened to float32 (exact), so fit reports what predict, serve and export
    # deliver; training goes back to the half type after each validation.
    def _float32_parts(self) -> list[tuple[nn.Module, str]]:
        """(module, name) of every tensor that keeps float32: BatchNorm's, and mean and std."""
        parts = [(self, "mean"), (self, "std")]
        for module in self.net.modules() if "net" in self._modules else ():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                named = [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]
                parts += [(module, name) for name, t in named if t.is_floating_point()]
        return parts

    def _apply(self, fn, recurse=True):
        kept = [(m, n, getattr(m, n).data) for m, n in self._float32_parts() if getattr(m, n).dtype == torch.float32]
        result = super()._apply(fn, recurse)
        for module, name, exact in kept:
            now = getattr(module, name)
            if now.dtype in (torch.bfloat16, torch.float16):  # a half cast reached it: keep the exact value
                if name in module._parameters:
                    now.data = exact.to(now.device)
                else:
                    module._buffers[name] = exact.to(now.device)
        return result

    def _input_dtype(self) -> torch.dtype:
        """The dtype of the network's first weights: float32, or the half type Lightning cast them to."""
        name = self.__dict__.get("_first_weight_name")
        if name is None:
            name = next((n for n, _ in self._weights()), "")
            self.__dict__["_first_weight_name"] = name
        return self.net.get_parameter(name).dtype if name else torch.float32

    def _weights(self) -> list[tuple[str, Tensor]]:
        """The network's floating-point parameters outside BatchNorm, by name."""
        norms = {n for n, m in self.net.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
        named = self.net.named_parameters()
        return [(n, p) for n, p in named if p.is_floating_point() and n.rpartition(".")[0] not in norms]

    def _cast_weights(self, dtype: torch.dtype) -> None:
        for _, tensor in self._weights():
            tensor.data = tensor.data.to(dtype)  # in place: the optimiser keeps the same parameters
        for module in self.net.modules():  # other floating buffers outside BatchNorm follow the weights
            if not isinstance(module, nn.modules.batchnorm._BatchNorm):
                for name, buffer in module.named_buffers(recurse=False):
                    if buffer.is_floating_point():
                        module._buffers[name] = buffer.to(dtype)

    def _score_in_float32(self) -> None:
        self._half_dtype = self._input_dtype()
        if self._half_dtype != torch.float32:
            self.val_acc_best.set_dtype(torch.float32)
            self._cast_weights(torch.float32)

    def _back_to_half(self) -> None:
        half = getattr(self, "_half_dtype", torch.float32)
        if half != torch.float32 and self.trainer.state.fn == "fit":
            self._cast_weights(half)

    def on_validation_start(self) -> None:
        self._score_in_float32()

    def on_test_start(self) -> None:
        self._score_in_float32()

    def setup(self, stage: str) -> None:
        if self.hparams.channels_last:
            self.net.to(memory_format=torch.channels_last)
        if self.hparams.compile and stage == "fit":
            # In place: the state_dict keys stay "net.*", so checkpoints load into an uncompiled net.
            self.net.compile()

    def shared_step(self, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, predicted labels, true labels) for one batch; the same for every stage."""
        images, targets = batch
        logits = self(images) if self.training else tta_logits(self, images, self.hparams.tta)
        if logits.shape[-1] != self.num_classes:
            raise ValueError(
                f"the network outputs {logits.shape[-1]} classes but there are {self.num_classes} class names; "
                "set the network's num_classes to match the data"
            )
        loss = self.criterion(logits, targets)
        return loss, logits.argmax(dim=-1), targets

    def _metrics(self, stage: str) -> StageScores:
        return getattr(self, f"{stage}_metrics")

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss, preds, targets = self.shared_step(batch)
        # No self.log here: a value logged per step is read back to the host for the logger and the
        # progress bar, which makes the host wait for the device. train/loss is the epoch's mean.
        self.train_metrics.update(preds, targets, loss)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._eval_step("val", batch)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self._eval_step("test", batch)

    def _eval_step(self, stage: str, batch: tuple[Tensor, Tensor]) -> dict[str, Tensor]:
        # Scored in float32 even when training is mixed precision: predict, serve and export run in
        # float32, so this is the accuracy they deliver (a bf16 validation was 0.14 points off it).
        with torch.autocast(self.device.type, enabled=False):
            loss, preds, targets = self.shared_step(batch)
        self._metrics(stage).update(preds, targets, loss)
        # For callbacks (figures, report): they build what they need from these, batch by batch.
        return {"images": batch[0], "preds": preds, "targets": targets}

    def _log_epoch_metrics(self, stage: str) -> dict[str, Tensor]:
        metrics = self._metrics(stage)
        values = metrics.compute()  # synced across processes by StageScores itself
        metrics.reset()
        per_class = values.pop("acc_per_class")
        prefix = self.test_name if stage == "test" else stage
        logged = {f"{prefix}/{name}": value for name, value in values.items()}
        logged.update({f"{prefix}/acc_per_class/{c}": per_class[i] for i, c in enumerate(self.class_names)})
        for name, value in logged.items():
            # Already synced by torchmetrics, so identical on every process; sync_dist only tells
            # Lightning so (a no-op in one process).
            self.log(name, value, prog_bar=name in ("train/loss", "val/acc", "val/loss"), sync_dist=True)
        return logged

    # Each stage's sums start from zero with its epoch: an interrupted validation or a run ended by
    # max_steps mid-epoch would otherwise leave counts that the next one adds to.
    def on_train_epoch_start(self) -> None:
        self.train_metrics.reset()

    def on_validation_epoch_start(self) -> None:
        self.val_metrics.reset()

    def on_test_epoch_start(self) -> None:
        self.test_metrics.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            # The pre-training sanity check runs a couple of batches: not a real score.
            self.val_metrics.reset()
        else:
            logged = self._log_epoch_metrics("val")
            self.val_acc_best.update(logged["val/acc"])
            self.log("val/acc_best", self.val_acc_best.compute(), sync_dist=True)
        # Before the checkpoint callbacks' on_validation_end, so every checkpoint holds the half weights.
        self._back_to_half()

    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    def on_before_optimizer_step(self, optimizer) -> None:
        # Networks whose training changes with the epoch (AirbenchNet freezes its whitening bias).
        hook = getattr(self.net, "before_optimizer_step", None)
        if hook is not None:
            hook(self.current_epoch)

    def on_fit_start(self) -> None:
        # Networks with a data-dependent first layer (AirbenchNet's whitening) are initialised from
        # the training images of a fresh run; a resumed run keeps the weights it saved.
        init = getattr(self.net, "init_whitening", None)
        data = getattr(self.trainer, "datamodule", None)
        split = getattr(data, "train_split", None)
        if init is None or self.trainer.ckpt_path is not None:
            return
        if split is None:
            raise ValueError(
                f"{type(self.net).__name__} initialises from training images; train it with the DataModule"
            )
        sample = split.images[:5000].to(self.device)
        init(normalize_uint8(sample, self.mean, self.std))

    def parameter_groups(self, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        """Trainable parameters in two groups: weights, and per-channel parameters (``bias_lr_scale``).

        One group when the scale is 1, so that runs and checkpoints from before the option look the same.
        """
        trainable = [p for p in self.parameters() if p.requires_grad]
        split = self.hparams.bias_lr_scale != 1.0
        groups = [
            {"params": [p for p in trainable if p.ndim > 1 or not split], "lr": lr},
            {"params": [p for p in trainable if p.ndim <= 1 and split], "lr": lr * self.hparams.bias_lr_scale},
        ]
        groups = [g for g in groups if g["params"]]
        if self.hparams.decoupled_weight_decay:
            # torch's SGD shrinks weights by lr * weight_decay per step; dividing by the group's lr
            # leaves the same shrink for every group, still scaled by the schedule's factor.
            for group in groups:
                group["weight_decay"] = weight_decay / group["lr"] if group["lr"] > 0 else 0.0
        return groups

    def configure_optimizers(self) -> Any:
        # Imported here: prediction and export never need the CLI machinery.
        from lightning.pytorch.cli import instantiate_class

        spec = copy.deepcopy(self.hparams.optimizer or DEFAULT_OPTIMIZER)
        defaults = _init_defaults(spec["class_path"])
        init_args = spec.setdefault("init_args", {})
        lr = init_args.get("lr", defaults.get("lr"))
        weight_decay = init_args.get("weight_decay", defaults.get("weight_decay", 0.0))
        if not isinstance(lr, (int, float)):
            raise ValueError(f"set the learning rate with --optimizer.lr (the {spec['class_path']} default is {lr})")
        optimizer = instantiate_class(self.parameter_groups(float(lr), float(weight_decay or 0.0)), spec)
        if not self.hparams.lr_scheduler:
            return optimizer
        interval = self.hparams.lr_scheduler_interval
        spec = copy.deepcopy(self.hparams.lr_scheduler)
        init_args = spec.setdefault("init_args", {})
        if "total_steps" in _init_defaults(spec["class_path"]) and init_args.get("total_steps") is None:
            # Schedules defined over the whole run (WarmupDecay, OneCycleLR) get its length from the Trainer.
            if interval == "step":
                init_args["total_steps"] = int(self.trainer.estimated_stepping_batches)
            else:
                init_args["total_steps"] = self.trainer.max_epochs
        scheduler = instantiate_class(optimizer, spec)
        config = {"scheduler": scheduler, "interval": interval}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            # Lightning's ReduceLROnPlateau (--lr_scheduler ReduceLROnPlateau) carries the metric to follow
            # (--lr_scheduler.monitor); torch's own has none: the validation loss.
            config["monitor"] = getattr(scheduler, "monitor", None) or "val/loss"
        return {"optimizer": optimizer, "lr_scheduler": config}


def _init_defaults(class_path: str) -> dict[str, Any]:
    """Constructor arguments of an optimiser or scheduler class and their defaults (None when required)."""
    module, _, name = class_path.rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    return {
        k: (None if p.default is inspect.Parameter.empty else p.default)
        for k, p in inspect.signature(cls).parameters.items()
    }
