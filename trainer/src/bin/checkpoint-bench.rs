//! `checkpoint-bench`: measures the checkpoint path on a model state of 1 GiB or more against
//! plain baselines on the same machine and disk, in one run, and prints a Markdown table.
//!
//! - stall (snapshot into host memory) vs a plain memcpy of the same bytes;
//! - persist (encode, hash, write, fsync, rename) vs `dd bs=8M conv=fsync` of the same size;
//! - restore (read, CRC-check, decode into tensors) vs a plain sequential read of the same
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
use spotcheck_notices::StopFlags;
use spotcheck_trainer::backend;
use spotcheck_trainer::hyper::Hyperparameters;
use spotcheck_trainer::model::NetConfig;
use spotcheck_trainer::optim::{Optimizer, OptimizerConfig};
use spotcheck_trainer::persist::write_checkpoint;
use spotcheck_trainer::sagemaker::{self, Overrides, RealEnvironment};
use spotcheck_trainer::snapshot::Snapshot;
use spotcheck_trainer::state::{RngState, TrainerState, STATE_VERSION};
use spotcheck_trainer::train::{self, Run};
use spotcheck_trainer::{params, resume, schedule};

type AB = Autodiff<Flex>;
const REPEATS: usize = 3;
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
    // The allocator settings `train` runs with, so the throughput rows measure its loop.
    backend::keep_freed_memory();
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
    let model = params::assign::<AB, _>(model, params::initial_values(&shapes, 1), &device)?;
    let optim = Optimizer::<Flex>::new(OptimizerConfig::from_hyper(&hp), &shapes, &device);
    let state = state_for(cfg, &hp);

    // 1. Stall vs memcpy.
    let mut stalls = Vec::new();
    let mut snap: Option<Snapshot> = None;
    for _ in 0..REPEATS {
        drop(snap.take());
        let t = Instant::now();
        snap = Some(train::snapshot_now(&model, &optim, &state));
        stalls.push(t.elapsed().as_secs_f64());
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

    // 3. Restore vs plain read, both from cold cache.
    let ckpt = dir.join(format!("persist-{}/algo-1/step-000000000001", REPEATS - 1));
    let files = walk(&ckpt)?;
    let mut restores = Vec::new();
    let mut reads = Vec::new();
    let mut fresh_reads = Vec::new();
    for _ in 0..REPEATS {
        drop_cache(&ckpt)?;
        let t = Instant::now();
        let loaded = resume::load(&ckpt, 1).map_err(anyhow::Error::msg)?;
        restores.push(gbps(written, t.elapsed().as_secs_f64()));
        drop(loaded);
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

    let (stall, copy) = (median(stalls), median(copies));
    let (persist, ddr) = (median(persists), median(dds));
    let (restore, read, fresh_read) = (median(restores), median(reads), median(fresh_reads));
    println!("State: {:.2} GiB of tensors ({} bytes on disk per checkpoint); median of {REPEATS} runs.\n", bytes as f64 / (1u64 << 30) as f64, written);
    println!("| measure | spotcheck | baseline | ratio | target | met |");
    println!("|---|---|---|---|---|---|");
    let row = |name: &str, ours: String, base: String, ratio: f64, target: &str, met: bool| {
        println!(
            "| {name} | {ours} | {base} | {ratio:.2} | {target} | {} |",
            if met { "yes" } else { "**no**" }
        );
    };
    row(
        "training stall per checkpoint vs memcpy",
        format!("{:.3} s", stall),
        format!("{:.3} s", copy),
        stall / copy,
        "≤ 1.5×",
        stall <= 1.5 * copy,
    );
    row(
        "persist throughput vs dd conv=fsync",
        format!("{persist:.3} GB/s"),
        format!("{ddr:.3} GB/s"),
        persist / ddr,
        "≥ 0.80",
        persist >= 0.8 * ddr,
    );
    row(
        "restore throughput vs plain read (cold cache)",
        format!("{restore:.3} GB/s"),
        format!("{read:.3} GB/s"),
        restore / read,
        "≥ 0.80",
        restore >= 0.8 * read,
    );
    row(
        "restore throughput vs std::fs::read into fresh buffers (cold cache)",
        format!("{restore:.3} GB/s"),
        format!("{fresh_read:.3} GB/s"),
        restore / fresh_read,
        "(context)",
        restore >= 0.8 * fresh_read,
    );
    let overhead = (1.0 - ck_ips / base_ips) * 100.0;
    row(
        &format!("training images/s, {steps} steps, adaptive checkpoints vs none"),
        format!("{ck_ips:.1}"),
        format!("{base_ips:.1}"),
        ck_ips / base_ips,
        "overhead ≤ 2%",
        overhead <= 2.0,
    );
    println!("\nCheckpointing overhead: {overhead:.2}%; checkpoints during that run: {ck_stats}");
    Ok(())
}
