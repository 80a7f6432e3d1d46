//! `wgnorm bench --suite distributed`: what the exchanges of data-parallel training cost here,
//! between ranks on threads of this process or the processes of mpirun. Every rank runs the
//! same calls; rank 0 times them and prints.

use std::time::Instant;

use super::args::BenchArgs;
use crate::cli::data_parallel::{on_threads, under_mpirun};
use wgnorm::distributed::Collective;
use wgnorm::graph::{ModelSpec, Preset};
use wgnorm::ops::batchnorm::stat;
use wgnorm::{Error, Result};

/// One exchange to time: an all-reduce or an all-gather of `len` f32 values.
struct Exchange {
    what: String,
    len: usize,
    gather: bool,
}

/// A synchronized BatchNorm layer's gather (its statistics planes, 64 channels) and the
/// gradient all-reduce of each preset that data-parallel runs train.
fn exchanges() -> Result<Vec<Exchange>> {
    let mut list = vec![Exchange {
        what: "all-gather, a BatchNorm layer's statistics (64 channels)".to_string(),
        len: stat::PLANES * 64,
        gather: true,
    }];
    for name in ["mlp-bn", "cnn-bn", "resnet20"] {
        let preset = Preset::named(name)
            .ok_or_else(|| Error::InvalidArgument(format!("no preset {name}")))?;
        list.push(Exchange {
            what: format!("all-reduce, {name}'s gradients"),
            len: ModelSpec::reference(preset).param_count() as usize,
            gather: false,
        });
    }
    Ok(list)
}

/// Median seconds per call of each exchange on `group`. Every exchange first runs `warmup`
/// times untimed, all of them before any is timed: the engines copy their buffers, and the
/// allocator serves buffers of a size it has freed before without fresh pages, as it does from
/// a training run's second step on.
fn measure(group: &dyn Collective, list: &[Exchange], args: &BenchArgs) -> Result<Vec<f64>> {
    let once = |exchange: &Exchange, values: &mut Vec<f32>| -> Result<f64> {
        group.barrier()?;
        let started = Instant::now();
        match exchange.gather {
            true => drop(group.all_gather(values)?),
            false => group.all_reduce_sum(values)?,
        }
        Ok(started.elapsed().as_secs_f64())
    };
    let mut buffers: Vec<Vec<f32>> = list.iter().map(|e| vec![1.0; e.len]).collect();
    for (exchange, values) in list.iter().zip(&mut buffers) {
        for _ in 0..args.warmup {
            once(exchange, values)?;
        }
    }
    let mut medians = Vec::new();
    for (exchange, values) in list.iter().zip(&mut buffers) {
        // Zero stays zero: the sums never grow out of range, however many repetitions.
        values.fill(0.0);
        let mut seconds = (0..args.reps)
            .map(|_| once(exchange, values))
            .collect::<Result<Vec<f64>>>()?;
        seconds.sort_by(f64::total_cmp);
        medians.push(seconds[seconds.len() / 2]);
    }
    Ok(medians)
}

fn print(list: &[Exchange], medians: &[f64], world: usize, ranks: &str, reps: usize) {
    println!("exchanges between {world} ranks ({ranks}), median of {reps}:");
    for (exchange, &seconds) in list.iter().zip(medians) {
        let bytes = 4.0 * exchange.len as f64;
        // A ring all-reduce moves 2(p−1)/p of the buffer through each link: the "bus"
        // bandwidth, comparable across world sizes.
        let bus = match exchange.gather {
            true => String::new(),
            false => {
                let moved = 2.0 * (world as f64 - 1.0) / world as f64 * bytes;
                format!(", {:.2} GB/s bus bandwidth", moved / seconds / 1e9)
            }
        };
        println!(
            "  {:<62} {:>9} values {:>10.1} µs{bus}",
            exchange.what,
            exchange.len,
            seconds * 1e6
        );
    }
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.reps == 0 {
        return Err(Error::InvalidArgument(
            "--reps must be at least 1".to_string(),
        ));
    }
    let list = exchanges()?;
    if under_mpirun() {
        if args.ranks.is_some() {
            return Err(Error::InvalidArgument(
                "--ranks has no effect under mpirun, whose processes are the ranks".to_string(),
            ));
        }
        return run_mpi(args, &list);
    }
    let world = args.ranks.unwrap_or(2);
    if !(2..=MAX_RANKS).contains(&world) {
        return Err(Error::InvalidArgument(format!(
            "--ranks {world}: the distributed suite runs 2 to {MAX_RANKS} ranks"
        )));
    }
    let medians = on_threads(world, |rank| measure(&rank, &list, args))?;
    print(
        &list,
        &medians[0],
        world,
        "threads of one process",
        args.reps,
    );
    Ok(())
}

/// The most ranks on threads: each all-reduce gathers every rank's copy of the buffer.
const MAX_RANKS: usize = 16;

#[cfg(feature = "mpi")]
fn run_mpi(args: &BenchArgs, list: &[Exchange]) -> Result<()> {
    let rank = wgnorm::distributed::MpiRank::init()?;
    let medians = measure(&rank, list, args)?;
    if rank.rank() == 0 {
        print(list, &medians, rank.world(), "MPI processes", args.reps);
    }
    Ok(())
}

#[cfg(not(feature = "mpi"))]
fn run_mpi(_args: &BenchArgs, _list: &[Exchange]) -> Result<()> {
    Err(Error::InvalidArgument(
        "this wgnorm was built without MPI; build it with `cargo build --release --features mpi` \
         to measure the exchanges between mpirun's processes"
            .to_string(),
    ))
}
