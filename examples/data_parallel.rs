//! Data-parallel training through the library: several ranks, one thread and one device each,
//! train one MNIST classifier with synchronized BatchNorm. Each rank takes its slice of every
//! global batch (`RankSlice`); the gradients and BatchNorm's statistics are exchanged through a
//! `Collective`, here a `LocalGroup` in this process (an MPI program would pass an `MpiRank`
//! of its own communicator, with the `mpi` feature).
//!
//!     cargo run --release --example data_parallel -- [MNIST_DIR] [--ranks N] [--device cpu|gpu]
//!
//! MNIST_DIR defaults to data/mnist, which must hold the four MNIST files (`wgnorm train`
//! downloads them there). MNIST is by Yann LeCun, Corinna Cortes and Christopher
//! J. C. Burges (CC BY-SA 3.0).

use std::rc::Rc;

use wgnorm::cpu::CpuBackend;
use wgnorm::data::mnist::{self, Mnist, PIXELS};
use wgnorm::distributed::{Collective, LocalGroup, RankSlice};
use wgnorm::gpu::{AdapterRequest, GpuBackend};
use wgnorm::graph::{Compute, Init, ModelSpec};
use wgnorm::model::Classifier;
use wgnorm::optim::OptimizerConfig;
use wgnorm::train::Share;

/// Rows of each global batch, over all ranks.
const GLOBAL_BATCH: usize = 64;
/// Training images: 156 steps of 64.
const TRAIN_IMAGES: usize = 10_000;

fn pixels(split: &mnist::Split, rows: std::ops::Range<usize>) -> Vec<f32> {
    (split.images[rows.start * PIXELS..rows.end * PIXELS].iter())
        .map(|&p| f32::from(p) / 255.0)
        .collect()
}

fn labels(split: &mnist::Split, rows: std::ops::Range<usize>) -> Vec<u32> {
    split.labels[rows].iter().map(|&l| u32::from(l)).collect()
}

/// One rank's run: join the group, train on its slices, score the test set.
fn train_rank<B: Compute>(
    backend: &B,
    group: Rc<dyn Collective>,
    data: &Mnist,
) -> anyhow::Result<f64> {
    let spec = ModelSpec::mlp(PIXELS, &[128], 10, true, 0.2)?;
    let optimizer = OptimizerConfig::adam(1e-3);
    // Every rank draws its own initial weights (here from its rank); `join` replaces them with
    // rank 0's.
    let seed = group.rank() as u64;
    let mut model = Classifier::new(backend, &spec, optimizer, Init::Keras, seed)?;
    model.join(backend, &*group)?;
    for step in 0..TRAIN_IMAGES / GLOBAL_BATCH {
        let slice = RankSlice::of(GLOBAL_BATCH, group.rank(), group.world())?;
        let first = step * GLOBAL_BATCH + slice.offset;
        let rows = first..first + slice.rows;
        let share = Share {
            group: &group,
            sync_batchnorm: true,
            first_row: slice.offset,
            batch_rows: GLOBAL_BATCH,
        };
        model.train_slice(
            backend,
            share,
            &pixels(&data.train, rows.clone()),
            &labels(&data.train, rows),
        )?;
    }
    let test = 0..data.test.len();
    let totals = model.evaluate(
        backend,
        &pixels(&data.test, test.clone()),
        &labels(&data.test, test),
    )?;
    Ok(totals.accuracy())
}

fn main() -> anyhow::Result<()> {
    let mut dir = std::path::PathBuf::from("data/mnist");
    let (mut ranks, mut gpu) = (2, false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--ranks" => ranks = args.next().unwrap_or_default().parse()?,
            "--device" => gpu = args.next().as_deref() == Some("gpu"),
            _ => dir = arg.into(),
        }
    }
    let data = mnist::load(&dir)?;
    let accuracies: Vec<anyhow::Result<f64>> = std::thread::scope(|scope| {
        let threads: Vec<_> = (LocalGroup::new(ranks)?.into_iter())
            .map(|rank| {
                let data = &data;
                scope.spawn(move || {
                    let group: Rc<dyn Collective> = Rc::new(rank);
                    match gpu {
                        true => {
                            train_rank(&GpuBackend::new(&AdapterRequest::default())?, group, data)
                        }
                        false => train_rank(&CpuBackend, group, data),
                    }
                })
            })
            .collect();
        anyhow::Ok(
            threads
                .into_iter()
                .map(|t| t.join().expect("a rank panicked"))
                .collect(),
        )
    })?;
    let accuracies = accuracies.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    // The replicas hold one model: every rank scores the test set alike.
    for (rank, accuracy) in accuracies.iter().enumerate() {
        println!("rank {rank}: test accuracy {accuracy:.4}");
    }
    anyhow::ensure!(
        accuracies.iter().all(|&a| a == accuracies[0]),
        "the replicas drifted apart"
    );
    anyhow::ensure!(accuracies[0] > 0.85, "the model did not learn");
    Ok(())
}
