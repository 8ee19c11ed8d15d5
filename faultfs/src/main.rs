//! `wharf-faultfs BACKING MOUNTPOINT`: mounts [`wharf_faultfs::FaultFs`], stored in the
//! directory BACKING (empty, or left by an earlier mount), at MOUNTPOINT (as root), prints
//! `mounted` on stdout once it serves, and runs until killed. SIGKILL is a power cut: every
//! write not yet fsynced, and every name whose directory was not fsynced since it changed, is
//! lost. Then `umount -l MOUNTPOINT` and mount again on the same BACKING to see what survived.
//!
//! `WHARF_FAULTFS_SEED` (a number) fixes which unsynced writes drain early (default: from the
//! clock, printed on stderr); `WHARF_FAULTFS_WRITE_BACK` (N) gives each write one chance in N
//! to drain a prefix of its file's unsynced writes (default 256; 0: never).

use anyhow::{bail, Context, Result};
use fuser::{Config, MountOption};
use std::io::Write;
use wharf_faultfs::disk::{Disk, Options};

fn env_number(name: &str) -> Result<Option<u64>> {
    match std::env::var(name) {
        Ok(v) => Ok(Some(
            v.parse()
                .with_context(|| format!("{name}={v}"))
                .context("not a number")?,
        )),
        Err(_) => Ok(None),
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, backing, mountpoint] = args.as_slice() else {
        bail!("usage: wharf-faultfs BACKING MOUNTPOINT");
    };
    let seed = match env_number("WHARF_FAULTFS_SEED")? {
        Some(seed) => seed,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    };
    let options = Options {
        write_back_one_in: env_number("WHARF_FAULTFS_WRITE_BACK")?
            .unwrap_or(Options::default().write_back_one_in),
        seed,
    };
    eprintln!(
        "wharf-faultfs: seed {seed}, write-back 1 in {}",
        options.write_back_one_in
    );
    let disk = Disk::open(backing.as_ref(), options)
        .with_context(|| format!("backing directory {backing}"))?;
    let mut config = Config::default();
    config
        .mount_options
        .push(MountOption::FSName("wharf-faultfs".into()));
    let session = fuser::spawn_mount(wharf_faultfs::FaultFs::new(disk), mountpoint, &config)
        .with_context(|| format!("mounting at {mountpoint} (needs root and /dev/fuse)"))?;
    println!("mounted");
    std::io::stdout().flush()?;
    // Serve until killed; the session unmounts if this thread ever ends.
    loop {
        std::thread::park();
        let _ = &session;
    }
}
