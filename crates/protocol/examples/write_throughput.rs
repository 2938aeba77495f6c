//! Measures checkpoint write throughput against a `dd conv=fsync`-style baseline on the same
//! disk: the same bytes written in 8 MiB `write` calls, then one fsync, no hashing.
//!
//! `cargo run --release -p spotcheck-protocol --example write_throughput -- DIR [MIB] [ROUNDS]`
//! (defaults: 1024 MiB, 3 rounds, alternating baseline and writer). DIR must be on the disk
//! under test; it is filled and emptied again.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use sha2::Digest as _;
use spotcheck_protocol::CheckpointWriter;

const MIB: usize = 1 << 20;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: write_throughput DIR [MIB] [ROUNDS]")?;
    let mib: usize = args.next().map_or(Ok(1024), |s| s.parse())?;
    let rounds: u64 = args.next().map_or(Ok(3), |s| s.parse())?;
    let dir = Path::new(&dir);
    fs::create_dir_all(dir)?;

    // A 64 MiB pattern repeated: incompressible enough, and cheap to produce.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let pattern: Vec<u8> = (0..64 * MIB)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let total = mib * MIB;
    let emit = |w: &mut dyn Write, piece: usize| -> std::io::Result<()> {
        let mut left = total;
        while left > 0 {
            let n = left.min(piece);
            w.write_all(&pattern[(total - left) % pattern.len()..][..n])?;
            left -= n;
        }
        Ok(())
    };
    let gbps = |secs: f64| total as f64 / secs / 1e9;

    // The in-memory ceilings: the writer cannot beat its SHA-256 stage.
    let sample = &pattern[..];
    let start = Instant::now();
    let sha = sha2::Sha256::digest(sample);
    let sha_gbps = sample.len() as f64 / start.elapsed().as_secs_f64() / 1e9;
    let start = Instant::now();
    let mut crc = crc64fast_nvme::Digest::new();
    crc.write(sample);
    let crc_gbps = sample.len() as f64 / start.elapsed().as_secs_f64() / 1e9;
    println!(
        "in memory: SHA-256 {sha_gbps:.2} GB/s, CRC-64/NVME {crc_gbps:.2} GB/s ({:02x}{:016x})",
        sha[0],
        crc.sum64()
    );

    let (mut base_best, mut ours_best) = (f64::MAX, f64::MAX);
    for round in 0..rounds {
        let path = dir.join("baseline.bin");
        let start = Instant::now();
        let mut file = File::create(&path)?;
        emit(&mut file, 8 * MIB)?;
        file.sync_all()?;
        let base = start.elapsed().as_secs_f64();
        fs::remove_file(&path)?;

        let start = Instant::now();
        let mut pending = CheckpointWriter::begin(dir, "bench", round)?;
        // The caller writes in 1 MiB pieces, as a safetensors serialiser might.
        pending.write_file("model.safetensors", |w| emit(w, MIB))?;
        let committed = pending.commit(0, None)?;
        let ours = start.elapsed().as_secs_f64();
        fs::remove_dir_all(&committed.dir)?;

        println!(
            "round {round}: baseline {:.2} GB/s, checkpoint writer {:.2} GB/s ({:.0}%)",
            gbps(base),
            gbps(ours),
            100.0 * base / ours
        );
        base_best = base_best.min(base);
        ours_best = ours_best.min(ours);
    }
    println!(
        "best of {rounds}: baseline {:.2} GB/s, checkpoint writer {:.2} GB/s ({:.0}% of baseline)",
        gbps(base_best),
        gbps(ours_best),
        100.0 * base_best / ours_best
    );
    fs::remove_dir_all(dir.join("bench"))?;
    Ok(())
}
