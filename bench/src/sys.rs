//! What the benchmark reads off the machine: a process's memory and threads, the disk's
//! `fdatasync` rate, and a description of the machine for the report.

use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

/// A field of `/proc/{pid}/status` in its unit (kB for memory).
fn status_field(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Resident memory of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    status_field(pid, "VmRSS:")
}

/// Resident memory of `pid` by kind, in KiB: (anonymous, file-backed, shared memory).
pub fn rss_parts_kib(pid: u32) -> Result<(u64, u64, u64)> {
    Ok((
        status_field(pid, "RssAnon:")?,
        status_field(pid, "RssFile:")?,
        status_field(pid, "RssShmem:")?,
    ))
}

/// OS threads of `pid`.
pub fn threads(pid: u32) -> Result<u64> {
    status_field(pid, "Threads:")
}

/// Durable 256-byte writes per second into a file in `dir`, each followed by `fdatasync`,
/// for `run_for`: the ceiling of any relay that syncs before each Ack, on this disk.
pub fn fdatasync_rate(dir: &Path, run_for: Duration) -> Result<f64> {
    let path = dir.join("fdatasync-probe");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)?;
    let block = [0x5au8; 256];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < run_for {
        // Appending, as a WAL does: every sync has new data and new size to persist.
        file.seek(SeekFrom::End(0))?;
        file.write_all(&block)?;
        file.sync_data()?;
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(rate)
}

/// CPU model, cores, memory and kernel, for the report.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split(':').nth(1))
        .map_or("unknown CPU".to_owned(), |m| m.trim().to_owned());
    // The machine's processors, not this process's share (it runs pinned to one of them).
    let cores = match cpuinfo
        .lines()
        .filter(|l| l.starts_with("processor"))
        .count()
    {
        0 => std::thread::available_parallelism().map_or(0, usize::from),
        n => n,
    };
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
        })
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{model}, {cores} cores, {:.0} GiB RAM, Linux {}",
        mem_kib as f64 / 1024.0 / 1024.0,
        kernel.trim()
    )
}

/// Pins this whole process (every thread) to `cpu`, with `taskset` from util-linux.
pub fn pin_self(cpu: usize) -> Result<()> {
    let status = std::process::Command::new("taskset")
        .args([
            "-a",
            "-p",
            "-c",
            &cpu.to_string(),
            &std::process::id().to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running taskset (util-linux)")?;
    anyhow::ensure!(status.success(), "taskset failed: {status}");
    Ok(())
}
