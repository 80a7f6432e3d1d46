//! The two suites of `wgnorm bench`: the BatchNorm kernels on each shape and pass, and training
//! steps (and optionally epochs) of each model and batch size, on every device asked for.

use super::*;

pub(super) fn kernels(
    args: &BenchArgs,
    gpu: Option<&GpuBackend>,
    cpu: Option<&CpuBackend>,
    report: &mut Report,
) -> Result<()> {
    println!();
    println!(
        "Ceilings (bytes read + written per second over {COPY_BYTES} B buffers, fastest of \
         --reps): a buffer copy, and a streaming kernel y = a·x + b (vec4 loads, {} vectors per \
         thread on the GPU)",
        bench::STREAM_VECTORS_PER_THREAD
    );
    let gpu_bytes = gpu.map_or(COPY_BYTES, |g| {
        COPY_BYTES.min(g.limits().max_buffer_size as usize / 2)
    });
    let ceilings = per_device(
        gpu,
        cpu,
        |g| ceiling(g, gpu_bytes, args.reps),
        |c| ceiling(c, COPY_BYTES, args.reps),
    )?;
    for &(device, ceiling) in &ceilings {
        println!(
            "  {device}  copy {:8.2} GB/s   stream {:8.2} GB/s",
            ceiling.copy_bytes_per_second / 1e9,
            ceiling.stream_bytes_per_second / 1e9
        );
        report.ceilings.push(CeilingRow { device, ceiling });
    }
    println!();
    println!(
        "BatchNorm training step (median of {} after {} warm-up; GB/s from device time where \
         measured, else wall; %copy and %stream = GB/s over the ceilings above)",
        args.reps, args.warmup
    );
    for pass in BatchNormPass::ALL {
        println!("  {:8} {}", pass.name(), pass.byte_model());
        report.byte_models.push((pass, pass.byte_model()));
    }
    println!(
        "{:>14} {:>8} {:>4} {:>10} {:>21} {:>10} {:>8} {:>6} {:>7} {:>8}",
        "shape",
        "pass",
        "dev",
        "wall ms",
        "(min – max)",
        "device ms",
        "GB/s",
        "%copy",
        "%stream",
        "gpu/cpu"
    );
    for shape in &args.shapes() {
        for pass in BatchNormPass::ALL {
            let bytes = pass.tensor_passes() * shape.shape.numel() * 4;
            let (warmup, reps) = (args.warmup, args.reps);
            let rows = per_device(
                gpu,
                cpu,
                |g| bench::time_batchnorm(g, shape.shape, pass, warmup, reps),
                |c| bench::time_batchnorm(c, shape.shape, pass, warmup, reps),
            )?;
            for &(device, timing) in &rows {
                let seconds = timing.device.map_or(timing.wall.median, |d| d.median);
                let rate = bytes as f64 / seconds;
                let (copy, stream) = ceilings
                    .iter()
                    .find(|(d, _)| *d == device)
                    .map_or((f64::NAN, f64::NAN), |(_, c)| {
                        (c.copy_bytes_per_second, c.stream_bytes_per_second)
                    });
                let ratio = gpu_over_cpu(&rows, device, |t| t.wall.median);
                println!(
                    "{:>14} {:>8} {:>4} {:>10} {:>21} {:>10} {:>8.2} {:>5.0}% {:>6.0}% {:>8}",
                    shape.label,
                    pass.name(),
                    device,
                    ms(timing.wall.median),
                    format!("({} – {})", ms(timing.wall.min), ms(timing.wall.max)),
                    timing.device.map_or("-".to_string(), |d| ms(d.median)),
                    rate / 1e9,
                    100.0 * rate / copy,
                    100.0 * rate / stream,
                    ratio.map_or(String::new(), |r| format!("{r:.2}")),
                );
                report.kernels.push(KernelRow {
                    shape: shape.label.clone(),
                    pass,
                    device,
                    timing,
                    bytes,
                    bytes_per_second: rate,
                    of_copy: rate / copy,
                    of_stream: rate / stream,
                    gpu_over_cpu: ratio,
                });
            }
        }
    }
    Ok(())
}

/// The two ceilings of one device over `bytes`-sized buffers.
fn ceiling<B: bench::Clock>(backend: &B, bytes: usize, reps: usize) -> Result<Ceiling> {
    Ok(Ceiling {
        bytes,
        copy_bytes_per_second: bench::copy_bandwidth(backend, bytes, reps)?,
        stream_bytes_per_second: bench::stream_bandwidth(backend, bytes, reps)?,
    })
}

pub(super) fn train(
    args: &BenchArgs,
    gpu: Option<&GpuBackend>,
    cpu: Option<&CpuBackend>,
    report: &mut Report,
) -> Result<()> {
    println!();
    println!(
        "Training step of each model on MNIST (Adam; gather, forward, loss, backward, update): median of {} samples of {STEPS_PER_SAMPLE} steps, wall time",
        args.reps
    );
    println!(
        "{:>5} {:>6} {:>4} {:>9} {:>21} {:>10} {:>8} {:>8}",
        "model", "batch", "dev", "ms/step", "(min – max)", "samples/s", "GFLOP/s", "gpu/cpu"
    );
    let (warmup, reps) = (args.warmup, args.reps);
    for choice in args.models() {
        let (model, spec) = (choice.name(), ModelSpec::reference(choice.preset()));
        for &batch in &args.batch_sizes() {
            let rows = per_device(
                gpu,
                cpu,
                |g| bench::time_steps(g, &spec, batch, warmup, reps),
                |c| bench::time_steps(c, &spec, batch, warmup, reps),
            )?;
            for &(device, step_timing) in &rows {
                let timing = step_timing.seconds;
                let row = StepRow {
                    model,
                    batch,
                    device,
                    seconds_per_step: timing,
                    objects: step_timing.objects,
                    samples_per_second: batch as f64 / timing.median,
                    flops_per_second: bench::step_flops(&spec, batch) / timing.median,
                    gpu_over_cpu: gpu_over_cpu(&rows, device, |t| t.seconds.median),
                };
                println!(
                    "{:>5} {:>6} {:>4} {:>9} {:>21} {:>10.0} {:>8.2} {:>8}",
                    model,
                    batch,
                    device,
                    ms(timing.median),
                    format!("({} – {})", ms(timing.min), ms(timing.max)),
                    row.samples_per_second,
                    row.flops_per_second / 1e9,
                    row.gpu_over_cpu
                        .map_or(String::new(), |r| format!("{r:.2}")),
                );
                report.train_steps.push(row);
            }
        }
    }
    if let Some(gpu) = gpu {
        step_kernels(args, gpu, report)?;
    }
    step_products(args, gpu, cpu, report)?;
    println!();
    let first = args.models()[0];
    let (model, spec) = (first.name(), ModelSpec::reference(first.preset()));
    let request = AdapterRequest::from_flag_or_env(args.adapter.clone());
    let first_steps = per_device(
        gpu,
        cpu,
        |_| bench::time_to_first_step(|| GpuBackend::new(&request), &spec, 32),
        |_| bench::time_to_first_step(|| Ok(CpuBackend), &spec, 32),
    )?;
    for (device, seconds) in first_steps {
        println!(
            "time to the first {model} step at batch 32, {device}: {} ms (from opening the backend to \
             the finished step: upload, pipeline creation on a GPU, the step)",
            ms(seconds)
        );
        report.first_step_seconds.push(OnceRow {
            model,
            device,
            result: seconds,
        });
    }
    if args.no_epoch {
        return Ok(());
    }
    let data = args.data.load()?;
    for choice in args.models() {
        let model = choice.name();
        let config = TrainConfig {
            spec: ModelSpec::reference(choice.preset()),
            ..TrainConfig::reference(true, 32)
        };
        let epochs = per_device(
            gpu,
            cpu,
            |g| bench::time_epoch(g, config.clone(), &data),
            |c| bench::time_epoch(c, config.clone(), &data),
        )?;
        for (device, timing) in epochs {
            println!(
                "one epoch of the reference experiment ({model}, batch 32, {} steps + \
                 validation), {device}: {:.2} s, validation accuracy {:.2}%",
                timing.steps,
                timing.seconds,
                100.0 * timing.val_acc.unwrap_or(f64::NAN)
            );
            report.reference_epoch.push(OnceRow {
                model,
                device,
                result: timing,
            });
        }
    }
    Ok(())
}

/// Device time of each kernel of a GPU step at batch 32, where the adapter has timestamps.
fn step_kernels(args: &BenchArgs, gpu: &GpuBackend, report: &mut Report) -> Result<()> {
    const BATCH: usize = 32;
    for choice in args.models() {
        let (model, spec) = (choice.name(), ModelSpec::reference(choice.preset()));
        let Some(kernels) = bench::profile_step(gpu, &spec, BATCH, args.warmup, args.reps)? else {
            return Ok(());
        };
        let total: f64 = kernels.iter().map(|k| k.seconds).sum();
        println!();
        println!(
            "Device time per kernel of a {model} step at batch {BATCH} on the GPU (mean of {} \
             profiled steps): {} ms in all",
            args.reps,
            ms(total)
        );
        println!(
            "{:>30} {:>10} {:>10} {:>6}",
            "kernel", "dispatches", "device ms", "share"
        );
        for kernel in &kernels {
            println!(
                "{:>30} {:>10.0} {:>10} {:>5.0}%",
                kernel.kernel,
                kernel.dispatches,
                ms(kernel.seconds),
                100.0 * kernel.share
            );
        }
        report.step_kernels.push(StepKernelsRow {
            model,
            batch: BATCH,
            kernels,
        });
    }
    Ok(())
}

/// Each matrix product of the first model's step at batch 32 alone, on every device: time and FLOP rate,
/// each GPU product first checked against the CPU backend.
fn step_products(
    args: &BenchArgs,
    gpu: Option<&GpuBackend>,
    cpu: Option<&CpuBackend>,
    report: &mut Report,
) -> Result<()> {
    const BATCH: usize = 32;
    let first = args.models()[0];
    let (model, spec) = (first.name(), ModelSpec::reference(first.preset()));
    println!();
    println!(
        "Matrix products of a {model} step at batch {BATCH}, each alone (median of {}; GFLOP/s \
         from device time where measured, else wall; GPU results checked against the CPU \
         backend first)",
        args.reps
    );
    println!(
        "{:>6} {:>12} {:>13} {:>4} {:>28} {:>9} {:>10} {:>8}",
        "layer", "product", "m×k×n", "dev", "kernel", "wall ms", "device ms", "GFLOP/s"
    );
    let (warmup, reps) = (args.warmup, args.reps);
    for product in bench::step_products(&spec, BATCH) {
        let rows = per_device(
            gpu,
            cpu,
            |g| bench::time_product(g, product, warmup, reps),
            |c| bench::time_product(c, product, warmup, reps),
        )?;
        for (device, timing) in rows {
            let kernel = gpu.filter(|_| device == "gpu").map(|g| {
                let name = g.matmul_kernel(product.a, product.b).qualified_name();
                match g.matmul_splits(product.a, product.b).0 {
                    1 => name,
                    splits => format!("{name} ×{splits} + reduce"),
                }
            });
            let seconds = timing.device.map_or(timing.wall.median, |d| d.median);
            let row = ProductRow {
                model,
                batch: BATCH,
                product,
                shape: product.label(),
                device,
                kernel,
                timing,
                flops: product.flops(),
                flops_per_second: product.flops() / seconds,
            };
            println!(
                "{:>6} {:>12} {:>13} {:>4} {:>28} {:>9} {:>10} {:>8.2}",
                product.layer,
                format!("{:?}", product.product),
                row.shape,
                device,
                row.kernel.as_deref().unwrap_or("-"),
                ms(timing.wall.median),
                timing.device.map_or("-".to_string(), |d| ms(d.median)),
                row.flops_per_second / 1e9,
            );
            report.matmul_products.push(row);
        }
    }
    Ok(())
}
