//! `wgnorm train` on several devices: `--devices` runs one rank per device on threads of this
//! process, `mpirun` one rank per process. Rank 0 prints and writes; the others train beside it.

use std::path::Path;
use std::rc::Rc;

use indicatif::{MultiProgress, ProgressDrawTarget};

use super::Device;
use super::run_args::refuse_unreachable_train_limit;
use super::train::{RunPlace, TrainArgs, check_out, run_on_device};
use wgnorm::cpu::CpuBackend;
use wgnorm::data::mnist::Mnist;
use wgnorm::distributed::{self, Collective, LocalGroup, LocalRank};
use wgnorm::gpu::{GpuBackend, device};
use wgnorm::graph::Compute;
use wgnorm::train::{TrainConfig, Trainer};
use wgnorm::{Error, Result};

/// How many ranks `mpirun` (OpenMPI's or MPICH's) started, read from the environment it gives
/// each process; `None` outside mpirun.
pub fn mpirun_world() -> Option<(usize, usize)> {
    let read = |names: [&str; 2]| {
        names
            .iter()
            .find_map(|name| std::env::var(name).ok()?.parse::<usize>().ok())
    };
    let world = read(["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"])?;
    let rank = read(["OMPI_COMM_WORLD_RANK", "PMI_RANK"]).unwrap_or(0);
    Some((rank, world))
}

/// One device of `--devices`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RankDevice {
    Cpu,
    /// The adapter of this number in `wgnorm devices`.
    Adapter(usize),
}

impl RankDevice {
    fn parse(text: &str) -> Result<Self> {
        match text.trim() {
            "cpu" => Ok(RankDevice::Cpu),
            number => number.parse().map(RankDevice::Adapter).map_err(|_| {
                Error::InvalidArgument(format!(
                    "--devices: '{text}' is neither cpu nor an adapter's number in `wgnorm \
                     devices`"
                ))
            }),
        }
    }

    fn open(self) -> Result<Device> {
        match self {
            RankDevice::Cpu => Ok(Device::Cpu(CpuBackend)),
            RankDevice::Adapter(number) => {
                let adapters = device::adapters(&device::instance());
                let count = adapters.len();
                let adapter = adapters.into_iter().nth(number).ok_or_else(|| {
                    Error::NoAdapter(format!(
                        "--devices: there is no adapter {number}; `wgnorm devices` lists {count}"
                    ))
                })?;
                Ok(Device::Gpu(GpuBackend::open(adapter)?))
            }
        }
    }
}

/// The devices `--devices` names (`None` for one device), from the flags and whether mpirun
/// started this process; a combination that cannot run, or a flag that would change nothing,
/// is refused by name.
pub fn devices_of(
    args: &TrainArgs,
    config: &TrainConfig,
    under_mpirun: bool,
) -> Result<Option<Vec<RankDevice>>> {
    let devices = match (&args.devices, under_mpirun) {
        (Some(_), true) => {
            return Err(Error::InvalidArgument(
                "--devices trains on several devices from one process; under mpirun each \
                 process trains on the device --device names, so drop --devices"
                    .to_string(),
            ));
        }
        (Some(names), false) => {
            let devices = (names.iter())
                .map(|name| RankDevice::parse(name))
                .collect::<Result<Vec<_>>>()?;
            if devices.len() < 2 {
                return Err(Error::InvalidArgument(
                    "--devices needs two devices or more; for one, use --device".to_string(),
                ));
            }
            Some(devices)
        }
        (None, _) => None,
    };
    if args.no_sync_bn {
        if devices.is_none() && !under_mpirun {
            return Err(Error::InvalidArgument(
                "--no-sync-bn has no effect on one device; it goes with --devices or mpirun"
                    .to_string(),
            ));
        }
        if !config.spec.has_batchnorm() {
            return Err(Error::InvalidArgument(
                "--no-sync-bn has no effect: the model has no BatchNorm".to_string(),
            ));
        }
    }
    Ok(devices)
}

/// Whether mpirun started this process as one of several.
pub fn under_mpirun() -> bool {
    mpirun_world().is_some_and(|(_, world)| world > 1)
}

/// A run's part in a data-parallel group.
pub struct GroupRun {
    pub group: Rc<dyn Collective>,
    /// BatchNorm normalizes by the global batch (not `--no-sync-bn`).
    pub sync_bn: bool,
    /// What the ranks run on, in words.
    ranks: String,
}

impl GroupRun {
    /// Rank 0, which prints and writes.
    pub fn is_lead(&self) -> bool {
        self.group.rank() == 0
    }

    /// The run's data-parallel line: ranks, global batch and BatchNorm statistics.
    pub fn describe<B: Compute>(&self, trainer: &Trainer<B>) -> String {
        let statistics = match (trainer.config.spec.has_batchnorm(), self.sync_bn) {
            (false, _) => "",
            (true, true) => ", BatchNorm statistics over the global batch (synchronized)",
            (true, false) => ", BatchNorm statistics over each rank's slice (--no-sync-bn)",
        };
        format!(
            "data-parallel: {} ranks ({}), global batch {} ({} per rank){statistics}",
            trainer.world(),
            self.ranks,
            trainer.global_batch(),
            trainer.config.batch_size
        )
    }
}

/// Trains on `devices`, one rank each on a thread of its own; rank 0 prints and writes.
/// Returns whether this process wrote the run (always: rank 0 is here).
pub fn run_devices(
    args: &TrainArgs,
    config: TrainConfig,
    out: &Path,
    devices: &[RankDevice],
) -> Result<bool> {
    check_out(args, out)?;
    let data = args.run.data.load()?;
    refuse_unreachable_train_limit(&config, &data)?;
    let label = (args.devices.iter().flatten())
        .map(|name| name.trim())
        .collect::<Vec<_>>()
        .join(",");
    on_threads(devices.len(), |rank| {
        let run = GroupRun {
            sync_bn: !args.no_sync_bn,
            ranks: label.clone(),
            group: Rc::new(rank),
        };
        let device = devices[run.group.rank()].open();
        train_rank(&run, device, config.clone(), &data, out, args.resume)
    })?;
    Ok(true)
}

/// `body` on each of `world` ranks of a `LocalGroup`, one thread each, and what each returned,
/// in rank order. Where ranks failed, the error of the rank that failed first, rather than the
/// others' "rank r failed" or "left the group".
pub fn on_threads<T: Send>(
    world: usize,
    body: impl Fn(LocalRank) -> Result<T> + Sync,
) -> Result<Vec<T>> {
    let ranks = LocalGroup::new(world)?;
    let results: Vec<Result<T>> = std::thread::scope(|scope| {
        let body = &body;
        let threads: Vec<_> = (ranks.into_iter())
            .map(|rank| {
                std::thread::Builder::new()
                    .name(format!("rank {}", rank.rank()))
                    .spawn_scoped(scope, move || body(rank))
            })
            .collect();
        (threads.into_iter())
            .map(|thread| match thread {
                Ok(thread) => thread.join().unwrap_or_else(|_| {
                    Err(Error::Distributed("a rank's thread panicked".to_string()))
                }),
                Err(e) => Err(Error::Distributed(format!(
                    "could not start a rank's thread: {e}"
                ))),
            })
            .collect()
    });
    let mut values = Vec::new();
    let mut errors = Vec::new();
    for result in results {
        match result {
            Ok(value) => values.push(value),
            Err(error) => errors.push(error),
        }
    }
    match errors
        .into_iter()
        .min_by_key(|error| matches!(error, Error::Distributed(_)))
    {
        Some(error) => Err(error),
        None => Ok(values),
    }
}

/// Trains as one rank of the processes mpirun started. MPI starts first, so that every check
/// after it (the flags, the data, the device) fails on every rank alike; a rank that fails
/// alone later ends the job (`MPI_Abort`). Returns whether this process wrote the run (rank 0).
#[cfg(feature = "mpi")]
pub fn run_mpi(args: &TrainArgs, out: &Path) -> Result<bool> {
    let group: Rc<dyn Collective> = Rc::new(distributed::MpiRank::init()?);
    let prepared = super::train::settle(args, true).and_then(|(config, _)| {
        check_out(args, out)?;
        let data = args.run.data.load()?;
        refuse_unreachable_train_limit(&config, &data)?;
        Ok((config, data))
    });
    let (config, data) = distributed::agree(&*group, prepared)?;
    let run = GroupRun {
        ranks: format!("{} MPI processes", group.world()),
        group,
        sync_bn: !args.no_sync_bn,
    };
    let outcome = train_rank(
        &run,
        args.run.device.open(),
        config,
        &data,
        out,
        args.resume,
    );
    if let Err(error) = &outcome
        && distributed::stopped_alone(error)
    {
        run.group.abort(&error.to_string());
    }
    outcome.map(|()| run.is_lead())
}

/// Refuses to train under mpirun without MPI, which would train separate copies.
#[cfg(not(feature = "mpi"))]
pub fn run_mpi(_args: &TrainArgs, _out: &Path) -> Result<bool> {
    let world = mpirun_world().map_or(0, |(_, world)| world);
    Err(Error::InvalidArgument(format!(
        "mpirun started {world} processes, but this wgnorm was built without MPI and would train \
         {world} separate copies; build it with `cargo build --release --features mpi`"
    )))
}

/// One rank's run on `device`, once every rank has opened its own.
fn train_rank(
    run: &GroupRun,
    device: Result<Device>,
    config: TrainConfig,
    data: &Mnist,
    out: &Path,
    resume: bool,
) -> Result<()> {
    let device = distributed::agree(&*run.group, device)?;
    let multi = match run.is_lead() {
        true => MultiProgress::new(),
        false => MultiProgress::with_draw_target(ProgressDrawTarget::hidden()),
    };
    let name = device.name();
    let place = RunPlace {
        adapter: &name,
        out,
        resume,
        group: Some(run),
    };
    run_on_device(&device, &place, config, data, &multi).map(|_| ())
}
