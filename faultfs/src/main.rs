//! `wharf-faultfs BACKING MOUNTPOINT`: mounts [`wharf_faultfs::FaultFs`] over the directory
//! BACKING at MOUNTPOINT (as root), prints `mounted` on stdout once it serves, and runs until
//! killed. SIGKILL is a power cut: every write not yet fsynced is lost. Then `umount -l
//! MOUNTPOINT` and mount again to see what survived.

use anyhow::{bail, Context, Result};
use fuser::{Config, MountOption};
use std::io::Write;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, backing, mountpoint] = args.as_slice() else {
        bail!("usage: wharf-faultfs BACKING MOUNTPOINT");
    };
    let fs = wharf_faultfs::FaultFs::new(backing.as_ref())
        .with_context(|| format!("backing directory {backing}"))?;
    let mut config = Config::default();
    config
        .mount_options
        .push(MountOption::FSName("wharf-faultfs".into()));
    let session = fuser::spawn_mount(fs, mountpoint, &config)
        .with_context(|| format!("mounting at {mountpoint} (needs root and /dev/fuse)"))?;
    println!("mounted");
    std::io::stdout().flush()?;
    // Serve until killed; the session unmounts if this thread ever ends.
    loop {
        std::thread::park();
        let _ = &session;
    }
}
