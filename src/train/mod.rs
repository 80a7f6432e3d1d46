//! The training loop: splits, shuffling, steps, evaluation, and the per-epoch record.
//!
//! Everything an epoch touches lives on the device: the image sets (as bytes), the shuffled
//! index list, parameters, gradients and optimizer state. A step is gather → forward → loss →
//! backward → update; `Backend::steps_per_submission` steps are recorded into one submission.
//! Loss and accuracy are summed on the device; the host reads them only for progress reports (at
//! most `REPORT_INTERVAL` apart, or every `GROUP_REPORT_STEPS` steps on the ranks of a
//! data-parallel group, which must all read at the same steps) and at the end of an epoch.

use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::data::mnist::{Mnist, PIXELS, Split};
use crate::distributed::{
    self, Collective, RankSlice, Timed, all_reduce_gradients, broadcast_running,
    check_replicas_agree, global_batches,
};
use crate::graph::{Compute, HostModel, Sequential, StepKey};
use crate::ops::batchnorm::Mode;
use crate::ops::data::{DeviceImages, IndexList};
use crate::ops::loss::{LossTotals, metric};
use crate::optim::Optimizer;
use crate::{Error, Result};

mod config;
mod early_stop;
mod evaluate;
mod grad_norms;
mod group;
mod lr;
mod passes;
mod recalibrate;
mod resume;
mod schedule;

pub use config::TrainConfig;
pub use early_stop::EarlyStop;
pub use evaluate::{batch_statistics_over, evaluate, evaluate_with_batch_statistics};
pub use grad_norms::{GradNormLayout, GradNormLog, GradNormRecord};
pub use group::{GROUP_REPORT_STEPS, Share};
pub use lr::{LrPlan, LrSchedule};
pub use passes::{EVAL_BATCH, EVAL_TENSOR_BYTES, Pass, Passes, Rows, inference_rows};
pub use recalibrate::{Recalibration, recalibrate};

use schedule::check_batches;
pub use schedule::{batches, epoch_order, split_point};

/// Progress reports read the device's running totals at most this often.
pub const REPORT_INTERVAL: Duration = Duration::from_millis(250);

/// One finished epoch, as reported and as written to `metrics.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// 1-based epoch number.
    pub epoch: usize,
    /// Mean training loss over the epoch.
    pub train_loss: f64,
    /// Training accuracy over the epoch.
    pub train_acc: f64,
    /// Validation loss, if there is a validation set.
    pub val_loss: Option<f64>,
    /// Validation accuracy, if there is a validation set.
    pub val_acc: Option<f64>,
    /// The process's resident memory at the end of the epoch (Linux), for leak checks.
    #[serde(default)]
    pub resident_bytes: Option<u64>,
    /// Device buffers created so far (GPU backend), for leak checks.
    #[serde(default)]
    pub device_buffers: Option<usize>,
    /// Wall time of the epoch, its validation pass included.
    pub seconds: f64,
    /// Wall time of the epoch's training steps alone, up to reading their totals back (what
    /// frameworks that time training without validation report).
    #[serde(default)]
    pub training_seconds: f64,
    /// The learning rate of the epoch's last step.
    #[serde(default)]
    pub lr: f64,
    /// On a rank of a data-parallel group: of `training_seconds`, the seconds spent in the
    /// group's collectives (exchanging gradients and BatchNorm statistics, and waiting for the
    /// other ranks).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange_seconds: Option<f64>,
    /// The gradient norms of the epoch's logged steps (`TrainConfig::log_grad_norms`), named
    /// by `GradNormLayout::names`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub grad_norms: Vec<GradNormRecord>,
}

/// One training step on a batch already on the device (`x` rows × inputs, consumed; one class
/// index per row in `labels`): forward in training mode with dropout keyed by `seed` and the
/// optimizer's step count, softmax cross-entropy added to `metrics`, backward, the optimizer's
/// update, and the gradients' norms into `grad_norms` where given and the step is one it logs.
/// Recorded, and submitted without waiting every `Backend::steps_per_submission`-th step;
/// `Backend::flush` or any read (a progress report) submits the steps recorded since.
///
/// On a data-parallel rank (`share`), the batch is the rank's slice of the group's global
/// batch: dropout draws by each sample's place in the global batch, the loss gradient is this
/// slice's share of the global batch's mean loss, and the gradients are summed over the group
/// before the update.
#[allow(clippy::too_many_arguments)]
pub fn train_on_batch<B: Compute>(
    backend: &B,
    model: &mut Sequential<B>,
    optimizer: &mut Optimizer<B>,
    seed: u64,
    share: Option<Share<'_>>,
    x: B::Buffer,
    labels: &B::Buffer,
    metrics: &mut B::Buffer,
    grad_norms: Option<&mut GradNormLog<B>>,
) -> Result<()> {
    let rows = backend.len_of(labels);
    let classes = model.spec.classes();
    let key = StepKey {
        first_row: share.map_or(0, |share| share.first_row),
        ..StepKey::new(seed, optimizer.steps)
    };
    // The step's temporaries are released before any submission, so the next one can reuse
    // them (`BufferPool`) and every step binds the same buffers.
    {
        let group = share
            .filter(|share| share.sync_batchnorm)
            .map(|share| share.group);
        let (logits, tape) = model.forward_in_group(backend, Mode::Train, x, rows, key, group)?;
        let mut dlogits = backend.scratch(rows * classes)?;
        match share {
            Some(share) => backend.softmax_cross_entropy_part(
                &logits,
                labels,
                (classes, share.batch_rows),
                &mut dlogits,
                metrics,
            )?,
            None => backend.softmax_cross_entropy(
                &logits,
                labels,
                classes,
                Some(&mut dlogits),
                metrics,
            )?,
        }
        let mut grads = match grad_norms {
            Some(log) => log.backward(backend, model, optimizer.steps, tape, dlogits)?,
            None => model.backward(backend, tape, dlogits)?,
        };
        if let Some(share) = share {
            all_reduce_gradients(backend, &**share.group, &mut grads)?;
        }
        optimizer.step(backend, model.params_mut()?, &grads)?;
    }
    if optimizer
        .steps
        .is_multiple_of(backend.steps_per_submission().max(1))
    {
        backend.flush()?;
    }
    Ok(())
}

/// A model, its optimizer and the data, on one backend.
pub struct Trainer<'b, B: Compute> {
    backend: &'b B,
    /// The run's settings.
    pub config: TrainConfig,
    /// The model being trained.
    pub model: Sequential<B>,
    /// Its optimizer and state.
    pub optimizer: Optimizer<B>,
    train_set: DeviceImages<B>,
    train_rows: usize,
    validation: Option<(IndexList<B>, usize)>,
    test_set: DeviceImages<B>,
    /// The test images this trainer scores (on a rank of a group, its share of them) and how
    /// many.
    test_index: IndexList<B>,
    test_rows: usize,
    /// Epochs finished.
    pub epochs_done: usize,
    /// One record per finished epoch.
    pub history: Vec<EpochRecord>,
    /// The epoch's gradient-norm log, while an epoch that logs them runs.
    grad_norms: Option<GradNormLog<B>>,
    /// The data-parallel group this trainer is one rank of, if any (`join`).
    group: Option<Rc<dyn Collective>>,
    /// The same group, counting the time spent in it.
    exchange_time: Option<Rc<Timed>>,
    /// Whether BatchNorm normalizes by the group's global batch.
    sync_batchnorm: bool,
}

impl<'b, B: Compute> Trainer<'b, B> {
    /// A fresh run: initial weights from the seed, zero optimizer state.
    pub fn new(backend: &'b B, config: TrainConfig, data: &Mnist) -> Result<Self> {
        config.validate()?;
        let host = HostModel::initial(&config.spec, config.init, config.seed);
        let lens: Vec<usize> = config.spec.params().iter().map(|p| p.len()).collect();
        let optimizer = Optimizer::new(backend, config.optimizer, &lens)?;
        Self::with_state(backend, config, data, &host, optimizer, 0, Vec::new())
    }

    /// A run continued from saved weights, optimizer state and history.
    pub fn with_state(
        backend: &'b B,
        config: TrainConfig,
        data: &Mnist,
        host: &HostModel,
        optimizer: Optimizer<B>,
        epochs_done: usize,
        history: Vec<EpochRecord>,
    ) -> Result<Self> {
        config.validate()?;
        if config.spec.inputs() != PIXELS {
            return Err(Error::Shape(format!(
                "the model takes {} inputs, the images have {PIXELS} pixels",
                config.spec.inputs()
            )));
        }
        let train_rows = config.training_images(data.train.len())?;
        let max_rows = config.spec.max_rows(backend.max_binding_bytes())?;
        if config.batch_size > max_rows {
            return Err(Error::Limit(format!(
                "a batch of {} needs a tensor of {} bytes ({} values per sample), more than the \
                 adapter's max_storage_buffer_binding_size of {} bytes; use --batch-size {max_rows} \
                 or less",
                config.batch_size,
                4 * config.batch_size * config.spec.largest_activation_per_sample(),
                config.spec.largest_activation_per_sample(),
                backend.max_binding_bytes().unwrap_or(0),
            )));
        }
        let split_at = split_point(data.train.len(), config.val_split);
        check_batches(&config, train_rows)?;
        let upload = |split: &Split| backend.upload_images(&split.images, PIXELS, &split.labels);
        let validation = if split_at < data.train.len() {
            let index: Vec<u32> = (split_at as u32..data.train.len() as u32).collect();
            Some((backend.upload_indices(&index)?, index.len()))
        } else {
            None
        };
        let test_index: Vec<u32> = (0..data.test.len() as u32).collect();
        let mut model = Sequential::upload(backend, &config.spec, host)?;
        model.activations = config.activations;
        Ok(Self {
            backend,
            model,
            optimizer,
            train_set: upload(&data.train)?,
            train_rows,
            validation,
            test_set: upload(&data.test)?,
            test_index: backend.upload_indices(&test_index)?,
            test_rows: test_index.len(),
            config,
            epochs_done,
            history,
            grad_norms: None,
            group: None,
            exchange_time: None,
            sync_batchnorm: false,
        })
    }

    /// The backend it runs on.
    pub fn backend(&self) -> &'b B {
        self.backend
    }

    /// Training images used per epoch.
    pub fn train_rows(&self) -> usize {
        self.train_rows
    }

    /// Steps in one epoch.
    pub fn steps_per_epoch(&self) -> usize {
        self.epoch_plan().len()
    }

    /// The ranks training together: 1 without a group.
    pub fn world(&self) -> usize {
        self.group.as_ref().map_or(1, |group| group.world())
    }

    /// Rows of one step's batch over every rank.
    pub fn global_batch(&self) -> usize {
        self.config.batch_size * self.world()
    }

    /// Each step's (first row, rows) of the epoch's order, over every rank.
    fn epoch_plan(&self) -> Vec<(usize, usize)> {
        let plan = batches(self.train_rows, self.global_batch(), self.config.drop_last);
        global_batches(plan, self.world())
    }

    /// One training step on rows `first..first + rows` of `index`, adding its loss and
    /// accuracy to `metrics`.
    /// With a group, `first` and `rows` span the global batch, of which this rank trains on
    /// its slice.
    pub fn train_step(
        &mut self,
        index: &IndexList<B>,
        first: usize,
        rows: usize,
        metrics: &mut B::Buffer,
    ) -> Result<()> {
        let backend = self.backend;
        let group = self.group.clone();
        let (first, share) = match &group {
            Some(group) => {
                let slice = RankSlice::of(rows, group.rank(), group.world())?;
                let share = Share {
                    group,
                    sync_batchnorm: self.sync_batchnorm,
                    first_row: slice.offset,
                    batch_rows: rows,
                };
                ((first + slice.offset, slice.rows), Some(share))
            }
            None => ((first, rows), None),
        };
        let (first, rows) = first;
        let mut x = backend.scratch(rows * PIXELS)?;
        let mut labels = backend.scratch(rows)?;
        backend.gather(&self.train_set, index, first, &mut x, &mut labels)?;
        train_on_batch(
            backend,
            &mut self.model,
            &mut self.optimizer,
            self.config.seed,
            share,
            x,
            &labels,
            metrics,
            self.grad_norms.as_mut(),
        )
    }

    /// Trains one epoch and validates. `report(steps done, totals)` is called after every
    /// step, with the running totals when they were read from the device; an error it returns
    /// (an interrupt) stops the epoch.
    ///
    /// On a rank of a group, an error of this rank's alone (an interrupt, a lost device) also
    /// stops the other ranks at their next collective, with a line naming this rank.
    pub fn train_epoch(
        &mut self,
        report: &mut dyn FnMut(usize, Option<LossTotals>) -> Result<()>,
    ) -> Result<EpochRecord> {
        let record = self.run_epoch(report);
        if let (Err(error), Some(group)) = (&record, &self.group)
            && distributed::stopped_alone(error)
        {
            group.abort(&error.to_string());
        }
        record
    }

    fn run_epoch(
        &mut self,
        report: &mut dyn FnMut(usize, Option<LossTotals>) -> Result<()>,
    ) -> Result<EpochRecord> {
        let started = Instant::now();
        let epoch = self.epochs_done;
        let order = epoch_order(self.config.seed, epoch, self.train_rows);
        let index = self.backend.upload_indices(&order)?;
        let mut metrics = self.backend.filled(metric::LEN, 0.0)?;
        let plan = self.epoch_plan();
        let rates = self.config.lr_plan(plan.len());
        self.grad_norms = match self.config.log_grad_norms {
            Some(every) => Some(GradNormLog::new(
                self.backend,
                &self.config.spec,
                every,
                self.optimizer.steps,
                plan.len(),
            )?),
            None => None,
        };
        let mut lr = self.optimizer.config.lr();
        let mut last_read = Instant::now();
        let exchange_time = self.exchange_time.clone();
        exchange_time.as_deref().map(Timed::take_seconds);
        for (step, &(first, rows)) in plan.iter().enumerate() {
            lr = rates.lr(epoch, step);
            self.optimizer.config = self.optimizer.config.with_lr(lr);
            self.train_step(&index, first, rows, &mut metrics)?;
            let read_now = match self.group {
                Some(_) => (step + 1).is_multiple_of(GROUP_REPORT_STEPS),
                None => last_read.elapsed() >= REPORT_INTERVAL,
            };
            let totals = if read_now {
                last_read = Instant::now();
                Some(self.read_totals(&metrics, epoch)?)
            } else {
                None
            };
            report(step + 1, totals)?;
        }
        let train = self.read_totals(&metrics, epoch)?;
        if let Some(group) = &self.group {
            if !self.sync_batchnorm {
                broadcast_running(self.backend, &**group, &mut self.model)?;
            }
            check_replicas_agree(self.backend, &**group, &mut self.model)?;
        }
        let grad_norms = match self.grad_norms.take() {
            Some(log) => log.read(self.backend)?,
            None => Vec::new(),
        };
        let training_seconds = started.elapsed().as_secs_f64();
        let exchange_seconds = exchange_time.as_deref().map(Timed::take_seconds);
        let validation = match &self.validation {
            Some((index, rows)) => {
                let own = evaluate(self.backend, &mut self.model, &self.train_set, index, *rows);
                Some(self.over_group(own)?)
            }
            None => None,
        };
        if let Some(v) = validation.filter(|v| !v.loss_sum.is_finite()) {
            return Err(Error::Diverged(format!(
                "the validation loss became {} in epoch {}; try a lower --lr",
                v.loss_sum,
                epoch + 1
            )));
        }
        let record = EpochRecord {
            epoch: epoch + 1,
            train_loss: train.mean_loss(),
            train_acc: train.accuracy(),
            val_loss: validation.map(|v| v.mean_loss()),
            val_acc: validation.map(|v| v.accuracy()),
            seconds: started.elapsed().as_secs_f64(),
            training_seconds,
            exchange_seconds,
            lr,
            resident_bytes: crate::host_memory::resident(),
            device_buffers: self.backend.device_buffers(),
            grad_norms,
        };
        self.epochs_done += 1;
        self.history.push(record.clone());
        Ok(record)
    }

    /// The epoch's running totals; a step whose loss was not finite (flagged on the device)
    /// stops the run, naming it. Nothing is saved for this epoch, so the last checkpoint stays.
    fn read_totals(&self, metrics: &B::Buffer, epoch: usize) -> Result<LossTotals> {
        let own = LossTotals::from_metrics(&self.backend.download(metrics)?);
        let totals = self.over_group(own)?;
        if let Some(step) = totals.first_non_finite_step {
            let kept = match epoch {
                0 => "no epoch had finished, so nothing was saved".to_string(),
                done => format!("the checkpoint of epoch {done} is kept as it was"),
            };
            return Err(Error::Diverged(format!(
                "the training loss was not finite at step {step} of epoch {}; the run stopped \
                 and {kept}; try a lower --lr",
                epoch + 1
            )));
        }
        Ok(totals)
    }

    /// With BatchNorm, loss and accuracy on the test set in batches of the training batch size,
    /// each normalized by its own statistics (`evaluate_with_batch_statistics`); `None`
    /// without BatchNorm.
    /// On a rank of a group, every rank must call it: each scores its share of the test set.
    pub fn test_with_batch_statistics(&mut self) -> Result<Option<LossTotals>> {
        let batch = self.config.batch_size;
        // Decided on the whole test set, the same on every rank: each rank's share holds at
        // least this many images.
        if !self.model.spec.has_batchnorm() || batch > self.test_set.rows / self.world() {
            return Ok(None);
        }
        let own = evaluate_with_batch_statistics(
            self.backend,
            &mut self.model,
            &self.test_set,
            &self.test_index,
            self.test_rows,
            batch,
        );
        self.over_group(own).map(Some)
    }

    /// Loss and accuracy on the test set, with BatchNorm and dropout in inference mode. On a
    /// rank of a group, every rank must call it: each scores its share of the test set.
    pub fn test(&mut self) -> Result<LossTotals> {
        let own = evaluate(
            self.backend,
            &mut self.model,
            &self.test_set,
            &self.test_index,
            self.test_rows,
        );
        self.over_group(own)
    }
}
