//! `checkpoint-bench`: measures the checkpoint path on a model state of 1 GiB or more against
//! plain baselines on the same machine and disk, in one run, and prints a Markdown table.
//!
//! - stall (the hand-over, plus what it adds to the next optimizer update while the persister
//!   copies the tensors) vs a plain memcpy of the same bytes; for context, the copy at
//!   hand-over that a GPU run pays;
//! - persist (encode, hash, write, fsync, rename) vs `dd bs=8M conv=fsync` of the same size;
//! - restore (read, CRC-check, assign into the model and optimizer) vs a plain sequential read of the same
//!   files, both from cold page cache (`posix_fadvise(DONTNEED)` on each file first);
//! - training steps/s with checkpoints at the adaptive interval vs none.
//!
//! Usage: `cargo run --release -p spotcheck-trainer --bin checkpoint-bench -- DIR [--steps N]`
//! (DIR on the disk to measure; it is filled with a few GiB and cleaned up).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::backend::{Autodiff, Flex};
use burn::tensor::Tensor;
use spotcheck_notices::StopFlags;
use spotcheck_trainer::backend;
use spotcheck_trainer::hyper::Hyperparameters;
use spotcheck_trainer::model::{Net, NetConfig};
use spotcheck_trainer::optim::{self, Optimizer, OptimizerConfig};
use spotcheck_trainer::persist::write_checkpoint;
use spotcheck_trainer::sagemaker::{self, Overrides, RealEnvironment};
use spotcheck_trainer::snapshot::Snapshot;
use spotcheck_trainer::state::{RngState, TrainerState, STATE_VERSION};
use spotcheck_trainer::train::{self, Run};
use spotcheck_trainer::{hostmem, params, resume, schedule};

/// The allocator `train` runs with, so every row measures its memory behaviour.
#[global_allocator]
static ALLOCATOR: hostmem::HugePages = hostmem::HugePages;

type AB = Autodiff<Flex>;
const REPEATS: usize = 5;
/// Dense layers big enough that weights + AdamW's two moments exceed 1 GiB.
const HIDDEN: usize = 8192;
const CLASSES: usize = 11_000;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn gbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

fn drop_cache(path: &Path) -> Result<()> {
    for entry in walk(path)? {
        let f = File::open(&entry)?;
        f.sync_all()?;
        // SAFETY: plain advisory call on an open descriptor.
        let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        if rc != 0 {
            bail!("posix_fadvise failed on {}", entry.display());
        }
    }
    Ok(())
}

fn walk(path: &Path) -> Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    for e in std::fs::read_dir(path)? {
        out.extend(walk(&e?.path())?);
    }
    out.sort();
    Ok(out)
}

fn plain_read(files: &[PathBuf]) -> Result<u64> {
    let mut buf = vec![0u8; 8 << 20];
    let mut total = 0;
    for f in files {
        let mut file = File::open(f)?;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            total += n as u64;
        }
    }
    Ok(total)
}

fn dd(path: &Path, bytes: u64) -> Result<f64> {
    let count = bytes.div_ceil(8 << 20);
    let t = Instant::now();
    let out = std::process::Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", path.display()))
        .args(["bs=8M", &format!("count={count}"), "conv=fsync"])
        .output()
        .context("running dd")?;
    let secs = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("dd failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::remove_file(path)?;
    Ok(gbps(count * (8 << 20), secs))
}

fn state_for(cfg: NetConfig, hp: &Hyperparameters) -> TrainerState {
    let sched = schedule::Schedule {
        kind: hp.lr_schedule,
        peak: hp.learning_rate,
        warmup: 0,
        total: 1,
        step_every: 1,
        gamma: 1.0,
    };
    TrainerState {
        version: STATE_VERSION,
        step: 1,
        epoch: 0,
        position: 0,
        total_steps: 1,
        rng: RngState {
            algorithm: "chacha8".into(),
            seed: 1,
            stream: 1,
        },
        schedule: sched,
        next_learning_rate: 0.0,
        optimizer: OptimizerConfig::from_hyper(hp),
        model: cfg,
        restarts: 0,
        train_seconds: 0.0,
        last_loss: None,
        hyperparameters_sha256: String::new(),
        compute: None,
    }
}

fn train_throughput(
    dir: &Path,
    steps: u64,
    extra: &[(&str, &str)],
) -> Result<(f64, serde_json::Value)> {
    let mut map: BTreeMap<String, serde_json::Value> = [
        ("dataset", "synthetic"),
        ("num_classes", "11000"),
        ("image_size", "8"),
        ("synthetic_samples", "4096"),
        ("model_depth", "0"),
        ("model_hidden", "8192"),
        ("batch_size", "32"),
        ("epochs", "1000"),
        ("backend", "cpu"),
        ("log_every_steps", "1000000"),
        ("lr_schedule", "constant"),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
    .collect();
    map.insert(
        "max_steps".into(),
        serde_json::Value::String(steps.to_string()),
    );
    let hp = Hyperparameters::from_map(&map)?;
    let o = Overrides {
        data: Some(dir.join("none")),
        checkpoint_dir: Some(dir.join("ck")),
        model_dir: Some(dir.join("model")),
        ..Default::default()
    };
    let paths = sagemaker::resolve(&o, &RealEnvironment, "train", "test");
    let run = Run {
        hp,
        hp_text: serde_json::to_string(&map)?,
        paths,
        flags: StopFlags::default(),
        checkpoint_s3_uri: None,
        compute: backend::Compute::on("cpu", "cpu", backend::rayon_threads()),
    };
    train::run::<AB>(&run, Default::default())?;
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("model/metrics.json"))?)?;
    let ips = metrics["images_per_second_this_attempt"]
        .as_f64()
        .context("metrics")?;
    std::fs::remove_dir_all(dir)?;
    Ok((ips, metrics["checkpoints_this_attempt"].clone()))
}

fn main() -> Result<()> {
    // The allocator settings `train` runs with.
    hostmem::keep_freed_memory();
    let mut args = std::env::args().skip(1);
    let dir = PathBuf::from(
        args.next()
            .context("usage: checkpoint-bench DIR [--steps N]")?,
    );
    let steps: u64 = match (args.next().as_deref(), args.next()) {
        (Some("--steps"), Some(n)) => n.parse()?,
        _ => 60,
    };
    std::fs::create_dir_all(&dir)?;
    let dir = dir.join(format!("bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let hp = Hyperparameters::default();
    let device = Default::default();
    let cfg = NetConfig {
        channels: 1,
        height: 8,
        width: 8,
        depth: 0,
        base_width: 1,
        hidden: HIDDEN,
        classes: CLASSES,
    };
    eprintln!(
        "building a model of {} parameters…",
        64 * HIDDEN + HIDDEN + HIDDEN * CLASSES + CLASSES
    );
    let model = cfg.init::<AB>(&device);
    let shapes = params::shapes::<AB, _>(&model);
    let mut model = params::assign::<AB, _>(model, params::initial_values(&shapes, 1), &device)?;
    let optim_cfg = OptimizerConfig::from_hyper(&hp);
    let mut optim = Optimizer::<Flex>::new(optim_cfg, &shapes, &device);
    let state = state_for(cfg, &hp);

    // 1. What the loop loses per checkpoint vs a memcpy of the same bytes into fresh memory.
    //    The hand-over itself, plus what the next optimizer update costs beyond a plain one
    //    while the persister copies the handed-over tensors (copy-on-write: the update writes
    //    new buffers instead of updating in place).
    let update = |model: Net<AB>, optim: &mut Optimizer<Flex>| {
        let x = Tensor::<AB, 4>::ones([1, 1, 8, 8], &device);
        let mut grads = model.forward(x).sum().backward();
        let t = Instant::now();
        let model = optim::step(model, &mut grads, optim, 1e-4);
        (model, t.elapsed().as_secs_f64())
    };
    let mut plain = Vec::new();
    for _ in 0..REPEATS {
        let (m, secs) = update(model, &mut optim);
        model = m;
        plain.push(secs);
    }
    let plain_update = median(plain);
    let mut handovers = Vec::new();
    let mut stalls = Vec::new();
    let mut snap: Option<Snapshot> = None;
    for _ in 0..REPEATS {
        drop(snap.take());
        let t = Instant::now();
        let handed = train::snapshot_now(&model, &optim, &state, false);
        let handover = t.elapsed().as_secs_f64();
        let persister = std::thread::spawn(move || handed.materialise());
        let (m, secs) = update(model, &mut optim);
        model = m;
        snap = Some(persister.join().expect("materialise"));
        handovers.push(handover);
        stalls.push(handover + (secs - plain_update).max(0.0));
    }
    let mut eager = Vec::new();
    for _ in 0..REPEATS {
        drop(snap.take());
        let t = Instant::now();
        snap = Some(train::snapshot_now(&model, &optim, &state, true).materialise());
        eager.push(t.elapsed().as_secs_f64());
    }
    let snap = snap.context("snapshot")?;
    let bytes = snap.tensor_bytes() as u64;
    if bytes < 1 << 30 {
        bail!("state is only {bytes} bytes; the benchmark wants at least 1 GiB");
    }
    let source = vec![1u8; bytes as usize];
    let mut copies = Vec::new();
    for _ in 0..REPEATS {
        let t = Instant::now();
        let copy = source.clone();
        copies.push(t.elapsed().as_secs_f64());
        std::hint::black_box(&copy);
    }
    drop(source);

    // 2. Persist vs dd, alternating so both see the same disk state.
    let mut persists = Vec::new();
    let mut dds = Vec::new();
    let mut written = 0;
    for i in 0..REPEATS {
        let root = dir.join(format!("persist-{i}"));
        let t = Instant::now();
        let (_, w) = write_checkpoint(&root, "algo-1", &snap, None).map_err(anyhow::Error::msg)?;
        persists.push(gbps(w, t.elapsed().as_secs_f64()));
        written = w;
        dds.push(dd(&dir.join("dd.bin"), w)?);
        if i + 1 < REPEATS {
            std::fs::remove_dir_all(&root)?;
        }
    }
    drop(snap);

    // 3. Restore (read, CRC-check, assign into the model and optimizer) vs plain read, both
    //    from cold cache.
    let ckpt = dir.join(format!("persist-{}/algo-1/step-000000000001", REPEATS - 1));
    let files = walk(&ckpt)?;
    let mut restores = Vec::new();
    let mut reads = Vec::new();
    let mut fresh_reads = Vec::new();
    for _ in 0..REPEATS {
        drop_cache(&ckpt)?;
        let t = Instant::now();
        let (m, o, _) = resume::load(&ckpt, 1).map_err(anyhow::Error::msg)?;
        model = params::assign::<AB, _>(model, m, &device)?;
        optim = Optimizer::<Flex>::restore(optim_cfg, 1, &shapes, o, &device)?;
        restores.push(gbps(written, t.elapsed().as_secs_f64()));
        drop_cache(&ckpt)?;
        let t = Instant::now();
        let n = plain_read(&files)?;
        reads.push(gbps(n, t.elapsed().as_secs_f64()));
        // The same read into freshly allocated buffers (as any restore must own its memory).
        drop_cache(&ckpt)?;
        let t = Instant::now();
        let bufs: Vec<Vec<u8>> = files.iter().map(std::fs::read).collect::<Result<_, _>>()?;
        fresh_reads.push(gbps(
            bufs.iter().map(|b| b.len() as u64).sum(),
            t.elapsed().as_secs_f64(),
        ));
        drop(bufs);
    }
    std::fs::remove_dir_all(dir.join(format!("persist-{}", REPEATS - 1)))?;
    drop((model, optim));

    // 4. Training throughput with and without checkpoints.
    eprintln!("training {steps} steps without checkpoints…");
    let (base_ips, _) =
        train_throughput(&dir.join("t0"), steps, &[("checkpoint_adaptive", "false")])?;
    eprintln!("training {steps} steps with adaptive checkpoints…");
    let (ck_ips, ck_stats) = train_throughput(
        &dir.join("t1"),
        steps,
        &[
            ("checkpoint_adaptive", "true"),
            ("interruptions_per_hour", "4"),
        ],
    )?;
    std::fs::remove_dir_all(&dir).ok();

    println!(
        "State: {:.2} GiB of tensors ({written} bytes on disk per checkpoint); median of \
         {REPEATS} runs, then each run's ratio in run order. Plain optimizer update: {plain_update:.3} s; \
         hand-over alone: {:.4} s.\n",
        bytes as f64 / (1u64 << 30) as f64,
        median(handovers),
    );
    println!("| measure | spotcheck | baseline | ratio | runs | target | met |");
    println!("|---|---|---|---|---|---|---|");
    // Lower is better for times, higher for throughputs: `ratio` is ours over the baseline.
    let row =
        |name: &str, ours: &[f64], base: &[f64], unit: &str, target: &str, met: fn(f64) -> bool| {
            let (o, b) = (median(ours.to_vec()), median(base.to_vec()));
            let runs: Vec<String> = ours
                .iter()
                .zip(base)
                .map(|(o, b)| format!("{:.2}", o / b))
                .collect();
            let ratio = o / b;
            println!(
                "| {name} | {o:.3} {unit} | {b:.3} {unit} | {ratio:.2} | {} | {target} | {} |",
                runs.join(" "),
                if met(ratio) { "yes" } else { "**no**" }
            );
        };
    row(
        "training stall per checkpoint (hand-over + extra update time) vs memcpy",
        &stalls,
        &copies,
        "s",
        "≤ 1.5×",
        |r| r <= 1.5,
    );
    row(
        "copy at hand-over (the GPU path's stall) vs memcpy",
        &eager,
        &copies,
        "s",
        "(context)",
        |r| r <= 1.5,
    );
    row(
        "persist throughput vs dd conv=fsync",
        &persists,
        &dds,
        "GB/s",
        "≥ 0.80",
        |r| r >= 0.8,
    );
    row(
        "restore throughput incl. assign vs plain read (cold cache)",
        &restores,
        &reads,
        "GB/s",
        "≥ 0.80",
        |r| r >= 0.8,
    );
    row(
        "restore throughput incl. assign vs std::fs::read into fresh buffers (cold cache)",
        &restores,
        &fresh_reads,
        "GB/s",
        "(context)",
        |r| r >= 0.8,
    );
    let overhead = (1.0 - ck_ips / base_ips) * 100.0;
    println!(
        "| training images/s, {steps} steps, adaptive checkpoints vs none | {ck_ips:.1} | {base_ips:.1} | {:.2} | (one run) | overhead ≤ 2% | {} |",
        ck_ips / base_ips,
        if overhead <= 2.0 { "yes" } else { "**no**" }
    );
    println!("\nCheckpointing overhead: {overhead:.2}%; checkpoints during that run: {ck_stats}");
    Ok(())
}
