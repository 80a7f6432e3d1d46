//! The settings of one training run as flags, shared by `train`, `compare` and `sweep`, and
//! their checks: a flag that would change nothing is refused, naming it.

use clap::{Args, ValueEnum};

use super::models::{RunModel, parse_norm};
use super::{DataArgs, DeviceArgs};
use wgnorm::backend::Dtype;
use wgnorm::data::mnist::{CLASSES, Mnist};
use wgnorm::graph::{Init, MNIST_IMAGE, ModelSpec, Norm};
use wgnorm::ops::batchnorm::BatchNormConfig;
use wgnorm::optim::OptimizerConfig;
use wgnorm::train::{LrSchedule, TrainConfig};
use wgnorm::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OptimizerChoice {
    Adam,
    Sgd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum InitChoice {
    /// glorot_uniform weights, zero biases.
    Keras,
    /// nn.Linear's default: U(±1/sqrt(fan_in)) weights and biases.
    Torch,
}

/// The settings of one training run, shared by `train`, `compare` and `sweep`.
#[derive(Args)]
pub struct RunArgs {
    /// Hidden widths of the fully connected head of the MLP or the CNN, comma-separated (e.g.
    /// 256,128) [default: 128].
    #[arg(long, value_delimiter = ',')]
    hidden: Option<Vec<usize>>,
    #[arg(long, default_value_t = 5)]
    epochs: usize,
    /// Samples per step [default: 32].
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long, value_enum, default_value_t = OptimizerChoice::Adam)]
    optimizer: OptimizerChoice,
    /// Learning rate [default: 0.001 for adam, 0.01 for sgd].
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    /// Weight decay: decoupled (AdamW) with adam, L2 with sgd, as torch.optim's AdamW and SGD
    /// [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    weight_decay: Option<f64>,
    /// SGD momentum (with --optimizer sgd only) [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    momentum: Option<f64>,
    /// Dropout probability after each hidden layer of the head of the MLP or the CNN [default:
    /// 0.2].
    #[arg(long, allow_negative_numbers = true)]
    dropout: Option<f32>,
    /// Fraction of the training images held out for validation, from the end; in (0, 1).
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    val_split: f64,
    /// Train on every training image and skip validation (Keras' `validation_split=0`).
    #[arg(long, conflicts_with = "val_split")]
    no_validation: bool,
    #[arg(long, value_enum, default_value_t = InitChoice::Keras)]
    init: InitChoice,
    /// Seeds the initial weights, the shuffling and the dropout masks.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: DeviceArgs,
    #[command(flatten)]
    pub data: DataArgs,
    /// The normalization after each convolution and hidden Linear of --model mlp, cnn or a
    /// resnet (the MLP without --model): bn, ln (LayerNorm), gn<G> or gn:<G> (GroupNorm, G
    /// groups), in (InstanceNorm, after convolutions only) or none [default: the model's own].
    #[arg(long, value_parser = parse_norm)]
    pub norm: Option<Norm>,
    /// Train on the first N training images only (quick trials).
    #[arg(long)]
    train_limit: Option<usize>,
    /// BatchNorm eps (PyTorch 1e-5; Keras 1e-3) [default: 1e-5].
    #[arg(long, allow_negative_numbers = true)]
    bn_eps: Option<f32>,
    /// Weight of the new batch value in BatchNorm's running statistics (PyTorch 0.1; Keras'
    /// momentum=0.99 is 0.01 here) [default: 0.1].
    #[arg(long, allow_negative_numbers = true)]
    bn_momentum: Option<f32>,
    /// Batch variance entering the running variance: unbiased (PyTorch) or biased (Keras)
    /// [default: unbiased].
    #[arg(long, value_enum)]
    bn_running_var: Option<RunningVar>,
    /// Ghost batches (Keras' virtual_batch_size): in training, BatchNorm's statistics over each
    /// run of K samples of a batch instead of the whole batch; evaluation is unchanged. The
    /// batch size (and a kept last batch) must be a multiple of K.
    #[arg(long, value_name = "K")]
    bn_virtual_batch: Option<usize>,
    /// Storage of the hidden activations on the device: f16 halves their memory where the
    /// adapter has shader-f16 (elsewhere, and on the CPU, the run uses f32 with a notice); the
    /// input, logits, gradients, parameters, optimizer state and all arithmetic stay f32.
    #[arg(long, value_parser = super::parse_dtype, default_value = "f32")]
    dtype: Dtype,
    /// Skip each epoch's last batch when it is smaller than --batch-size (PyTorch's drop_last);
    /// by default it is kept, as Keras does.
    #[arg(long)]
    drop_last: bool,
    /// How the learning rate moves, as PyTorch's schedulers move it: step (StepLR, with
    /// --lr-step-every and --lr-gamma), cosine (CosineAnnealingLR to 0 by the last epoch) or
    /// onecycle (OneCycleLR, per batch, peaking at --lr).
    #[arg(long, value_enum, default_value_t = ScheduleChoice::Constant)]
    lr_schedule: ScheduleChoice,
    /// Epochs of linear warm-up to --lr before the schedule (not with onecycle) [default: 0].
    #[arg(long)]
    warmup_epochs: Option<usize>,
    /// With --lr-schedule step: epochs between two decays.
    #[arg(long)]
    lr_step_every: Option<usize>,
    /// With --lr-schedule step: the factor of each decay [default: 0.1].
    #[arg(long)]
    lr_gamma: Option<f64>,
    /// Stop once N epochs pass without a lower validation loss (Keras' EarlyStopping); the
    /// best epoch's model is kept as best.safetensors beside the last one.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    patience: Option<u64>,
    /// Every N steps, the L2 norm of each parameter's gradient and of the gradient reaching
    /// each Linear and convolution layer's input, summed on the device: into metrics.json
    /// (each epoch's `grad_norms`) and grad_norms.png.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    log_grad_norms: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ScheduleChoice {
    Constant,
    Step,
    Cosine,
    Onecycle,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RunningVar {
    Unbiased,
    Biased,
}

impl RunArgs {
    /// The run's configuration for the preset `model`, with --hidden and --dropout in its head
    /// (refused for a ResNet, whose head has no hidden layers).
    pub fn config(&self, model: RunModel) -> Result<TrainConfig> {
        let (hidden, dropout) = self.head(model)?;
        let config = self.batchnorm_config()?;
        let spec = (model.base).spec_with_norm(
            model.norm,
            MNIST_IMAGE,
            &hidden,
            CLASSES,
            dropout,
            config,
        )?;
        self.config_for(spec)
    }

    /// The hidden widths and the dropout of `model`'s head: --hidden and --dropout, checked, or
    /// none for a ResNet, which refuses both.
    fn head(&self, model: RunModel) -> Result<(Vec<usize>, f32)> {
        if !model.base.has_hidden_layers() {
            for (flag, given) in [
                ("--hidden", self.hidden.is_some()),
                ("--dropout", self.dropout.is_some()),
            ] {
                if given {
                    return Err(Error::InvalidArgument(format!(
                        "{flag} has no effect on {}, which ends in global average pooling and \
                         one Linear (no hidden layers, no dropout)",
                        model.name()
                    )));
                }
            }
            return Ok((Vec::new(), 0.0));
        }
        let hidden = self.hidden.clone().unwrap_or_else(|| vec![128]);
        let dropout = self.dropout.unwrap_or(0.2);
        if !(0.0..1.0).contains(&dropout) {
            return Err(Error::InvalidArgument(format!(
                "--dropout must be in [0, 1), got {dropout}"
            )));
        }
        if hidden.contains(&0) {
            return Err(Error::InvalidArgument(format!(
                "--hidden widths must be positive, got {hidden:?}"
            )));
        }
        Ok((hidden, dropout))
    }

    /// The run's configuration for the stack `arch` (the `--arch` grammar), which fixes the
    /// widths and dropout itself.
    pub fn config_for_arch(&self, arch: &str) -> Result<TrainConfig> {
        for (flag, given) in [
            ("--hidden", self.hidden.is_some()),
            ("--dropout", self.dropout.is_some()),
            ("--norm", self.norm.is_some()),
        ] {
            if given {
                return Err(Error::InvalidArgument(format!(
                    "{flag} has no effect with --arch, which gives every layer (write the \
                     widths, dropout and normalization layers into --arch)"
                )));
            }
        }
        let spec = ModelSpec::from_arch(arch, MNIST_IMAGE, self.batchnorm_config()?)?;
        if spec.classes() != CLASSES {
            return Err(Error::InvalidArgument(format!(
                "--arch ends in {} outputs; the dataset has {CLASSES} classes (end with fc{CLASSES})",
                spec.classes()
            )));
        }
        if !spec.has_batchnorm() {
            self.refuse_unused_batchnorm_flags(&[], "--arch")?;
        }
        self.config_for(spec)
    }

    /// The run's configuration for `spec`. A `--val-split` of 0 is refused rather than read
    /// as "no validation", which `--no-validation` says explicitly.
    fn config_for(&self, spec: ModelSpec) -> Result<TrainConfig> {
        let val_split = if self.no_validation {
            if self.patience.is_some() {
                return Err(Error::InvalidArgument(
                    "--patience has no effect with --no-validation: early stopping watches the \
                     validation loss"
                        .to_string(),
                ));
            }
            0.0
        } else if self.val_split > 0.0 && self.val_split < 1.0 {
            self.val_split
        } else {
            return Err(Error::InvalidArgument(format!(
                "--val-split must be in (0, 1), got {}; pass --no-validation to train on every \
                 training image",
                self.val_split
            )));
        };
        let optimizer = match self.optimizer {
            OptimizerChoice::Adam if self.momentum.is_some() => {
                return Err(Error::InvalidArgument(
                    "--momentum is SGD's: Adam would ignore it (use --optimizer sgd, or drop \
                     --momentum)"
                        .to_string(),
                ));
            }
            OptimizerChoice::Adam => OptimizerConfig::adam(self.lr.unwrap_or(1e-3)),
            OptimizerChoice::Sgd => {
                OptimizerConfig::sgd(self.lr.unwrap_or(1e-2), self.momentum.unwrap_or(0.0))
            }
        };
        let lr_schedule = self.lr_schedule()?;
        let optimizer = optimizer.with_weight_decay(self.weight_decay.unwrap_or(0.0));
        // The optimizer's settings that can be wrong are --lr, --momentum and --weight-decay,
        // named alike.
        optimizer.validate().map_err(|e| match e {
            Error::InvalidArgument(message) => Error::InvalidArgument(format!("--{message}")),
            other => other,
        })?;
        Ok(TrainConfig {
            spec,
            init: match self.init {
                InitChoice::Keras => Init::Keras,
                InitChoice::Torch => Init::Torch,
            },
            optimizer,
            epochs: self.epochs,
            batch_size: self.batch_size.unwrap_or(32),
            val_split,
            seed: self.seed,
            train_limit: self.train_limit,
            activations: self.dtype,
            drop_last: self.drop_last,
            lr_schedule,
            warmup_epochs: self.warmup_epochs.unwrap_or(0),
            patience: self.patience.map(|p| p as usize),
            log_grad_norms: self.log_grad_norms,
        })
    }
}

impl RunArgs {
    /// The schedule --lr-schedule names, with the step schedule's flags, which no other takes.
    fn lr_schedule(&self) -> Result<LrSchedule> {
        let step = self.lr_schedule == ScheduleChoice::Step;
        if !step
            && let Some(flag) = [
                ("--lr-step-every", self.lr_step_every.is_some()),
                ("--lr-gamma", self.lr_gamma.is_some()),
            ]
            .iter()
            .find(|(_, given)| *given)
            .map(|(flag, _)| flag)
        {
            return Err(Error::InvalidArgument(format!(
                "{flag} has no effect without --lr-schedule step"
            )));
        }
        if self.lr_schedule == ScheduleChoice::Onecycle && self.warmup_epochs.is_some() {
            return Err(Error::InvalidArgument(
                "--warmup-epochs has no effect with --lr-schedule onecycle, which warms up by \
                 itself"
                    .to_string(),
            ));
        }
        Ok(match self.lr_schedule {
            ScheduleChoice::Constant => LrSchedule::Constant,
            ScheduleChoice::Cosine => LrSchedule::Cosine,
            ScheduleChoice::Onecycle => LrSchedule::OneCycle,
            ScheduleChoice::Step => LrSchedule::Step {
                every: self.lr_step_every.ok_or_else(|| {
                    Error::InvalidArgument(
                        "--lr-schedule step needs --lr-step-every N (epochs between two decays)"
                            .to_string(),
                    )
                })?,
                gamma: self.lr_gamma.unwrap_or(0.1),
            },
        })
    }

    /// BatchNorm's settings: PyTorch's, with any --bn-* flag applied.
    fn batchnorm_config(&self) -> Result<BatchNormConfig> {
        let default = BatchNormConfig::default();
        let config = BatchNormConfig::new(
            self.bn_eps.unwrap_or(default.eps()),
            self.bn_momentum.unwrap_or(default.momentum()),
            self.bn_running_var
                .map_or(default.unbiased_running_var(), |v| {
                    v == RunningVar::Unbiased
                }),
        )?;
        match self.bn_virtual_batch {
            Some(samples) => config.with_virtual_batch(samples).map_err(|_| {
                Error::InvalidArgument(
                    "--bn-virtual-batch must be at least 1 sample, got 0".to_string(),
                )
            }),
            None => Ok(config),
        }
    }

    /// Refuses --bn-* flags when none of `models` (given by `models_flag`) has a BatchNorm
    /// layer: they would change nothing.
    pub fn refuse_unused_batchnorm_flags(
        &self,
        models: &[RunModel],
        models_flag: &str,
    ) -> Result<()> {
        if models.iter().any(|model| model.norm == Norm::Batch) {
            return Ok(());
        }
        let given = [
            ("--bn-eps", self.bn_eps.is_some()),
            ("--bn-momentum", self.bn_momentum.is_some()),
            ("--bn-running-var", self.bn_running_var.is_some()),
            ("--bn-virtual-batch", self.bn_virtual_batch.is_some()),
        ];
        match given.iter().find(|(_, set)| *set) {
            Some((flag, _)) => Err(Error::InvalidArgument(format!(
                "{flag} has no effect: no model of this run has a BatchNorm layer (put bn in \
                 {models_flag}, or drop {flag})"
            ))),
            None => Ok(()),
        }
    }
}

/// Refuses a --train-limit larger than the training set that `data` and --val-split leave: it
/// would train on fewer images than asked.
pub fn refuse_unreachable_train_limit(config: &TrainConfig, data: &Mnist) -> Result<()> {
    if config.train_limit.is_none() {
        return Ok(());
    }
    match config.training_images(data.train.len()) {
        Err(Error::InvalidArgument(message)) => {
            Err(Error::InvalidArgument(format!("--train-limit: {message}")))
        }
        other => other.map(|_| ()),
    }
}
