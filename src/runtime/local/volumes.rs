//! Persistent volumes on this machine: `<data-dir>/volumes/<id>/`, owned by
//! the project's sandbox user (mode 0700) and bound read-write into its
//! service's sandboxes.
//!
//! Where the server may mount filesystems (root, `mkfs.ext4` and loop
//! devices present, real sandboxes), each volume is an ext4 image of its
//! size (`<id>.img`, a sparse file) loop-mounted on that directory, so a
//! write past the size fails with ENOSPC. Elsewhere the volume is a plain
//! directory: its usage is measured and reported, not enforced.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use uuid::Uuid;

use crate::error::{Error, Result};
use crate::runtime::{VolumeMount, VolumeState};

/// The most files a usage walk of a plain-directory volume reads.
const WALK_LIMIT: usize = 100_000;

/// The volumes of this machine.
pub struct Volumes {
    dir: PathBuf,
    /// Volumes are size-limited filesystem images (else plain directories).
    images: bool,
    /// The sandboxes' group, which may traverse `volumes/`.
    group: Option<u32>,
    /// Volumes deleted while this process ran: a deploy under way that
    /// still names one must not bring it back.
    deleted: Mutex<HashSet<Uuid>>,
}

fn io_error(what: &Path, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("{}: {e}", what.display()))
}

/// Whether `path` is a mount point (its device differs from its parent's).
fn is_mount(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) {
        (Ok(m), Some(Ok(p))) => m.dev() != p.dev(),
        _ => false,
    }
}

fn run(program: &str, args: &[&std::ffi::OsStr]) -> Result<()> {
    let out = std::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| Error::internal(format!("cannot run {program}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::internal(format!(
            "{program} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

impl Volumes {
    /// Volumes under `data_dir`; images when this process may make them
    /// (`sandboxed`: tenants run as users of their own).
    pub fn new(data_dir: &Path, sandboxed: bool, group: u32) -> Volumes {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let images = sandboxed
            && root
            && find_program("mkfs.ext4").is_some()
            && find_program("mount").is_some()
            && Path::new("/dev/loop-control").exists();
        Volumes {
            dir: data_dir.join("volumes"),
            images,
            group: sandboxed.then_some(group),
            deleted: Mutex::default(),
        }
    }

    /// Whether sizes are enforced (filesystem images).
    pub fn enforced(&self) -> bool {
        self.images
    }

    fn path(&self, id: Uuid) -> PathBuf {
        self.dir.join(id.to_string())
    }

    fn image(&self, id: Uuid) -> PathBuf {
        self.dir.join(format!("{id}.img"))
    }

    fn prepare_dir(&self) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&self.dir).map_err(|e| io_error(&self.dir, e))?;
        let mode = match self.group {
            Some(g) => {
                std::os::unix::fs::chown(&self.dir, None, Some(g))
                    .map_err(|e| io_error(&self.dir, e))?;
                0o710
            }
            None => 0o700,
        };
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(mode))
            .map_err(|e| io_error(&self.dir, e))
    }

    /// Makes the volume's storage if it is not there (idempotent).
    pub fn create(&self, v: &VolumeMount) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if self.is_deleted(v.volume_id) {
            return Err(Error::not_found("volume", v.volume_id));
        }
        self.prepare_dir()?;
        let dir = self.path(v.volume_id);
        match std::fs::create_dir(&dir) {
            Ok(()) => std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| io_error(&dir, e))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_error(&dir, e)),
        }
        if !self.images {
            return Ok(());
        }
        let image = self.image(v.volume_id);
        if image.exists() {
            return Ok(());
        }
        // Made under a temporary name, so that a crash never leaves a
        // half-made image under the real one.
        let partial = self.dir.join(format!("{}.img.partial", v.volume_id));
        let made = (|| {
            use std::os::unix::fs::OpenOptionsExt;
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&partial)
                .map_err(|e| io_error(&partial, e))?;
            file.set_len(u64::from(v.size_gb) << 30)
                .map_err(|e| io_error(&partial, e))?;
            drop(file);
            // No blocks reserved for root (the tenant gets the whole
            // size); lazy initialisation keeps the sparse file small.
            run(
                "mkfs.ext4",
                &[
                    "-q".as_ref(),
                    "-F".as_ref(),
                    "-m".as_ref(),
                    "0".as_ref(),
                    "-E".as_ref(),
                    "lazy_itable_init=1,lazy_journal_init=1".as_ref(),
                    partial.as_os_str(),
                ],
            )?;
            std::fs::rename(&partial, &image).map_err(|e| io_error(&image, e))
        })();
        if made.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        made
    }

    /// Makes (if needed) and mounts the volume, owned by `owner` with mode
    /// 0700; the host path to bind into the sandbox.
    pub fn attach(&self, v: &VolumeMount, owner: u32) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        self.create(v)?;
        let dir = self.path(v.volume_id);
        if self.images && !is_mount(&dir) {
            run(
                "mount",
                &[
                    "-t".as_ref(),
                    "ext4".as_ref(),
                    "-o".as_ref(),
                    "loop,nosuid,nodev".as_ref(),
                    self.image(v.volume_id).as_os_str(),
                    dir.as_os_str(),
                ],
            )?;
            // A fresh filesystem's lost+found is root's; the tenant has
            // no use for it.
            let _ = std::fs::remove_dir(dir.join("lost+found"));
        }
        std::os::unix::fs::chown(&dir, Some(owner), Some(owner)).map_err(|e| io_error(&dir, e))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io_error(&dir, e))?;
        Ok(dir)
    }

    /// Unmounts a volume's filesystem, if mounted.
    pub fn detach(&self, id: Uuid) {
        let dir = self.path(id);
        if !is_mount(&dir) {
            return;
        }
        if let Err(e) = run("umount", &[dir.as_os_str()]) {
            // Still in use somewhere (a sandbox that has not quite gone):
            // detached now, released when the last user lets go.
            tracing::warn!(volume.id = %id, error = e.message(), "unmounting a volume lazily");
            let _ = run("umount", &["-l".as_ref(), dir.as_os_str()]);
        }
    }

    /// Unmounts every volume (the server stops; the next start mounts
    /// them again as their releases come back).
    pub fn detach_all(&self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in entries.flatten() {
            if let Some(id) = e.file_name().to_str().and_then(|n| Uuid::parse_str(n).ok()) {
                self.detach(id);
            }
        }
    }

    fn is_deleted(&self, id: Uuid) -> bool {
        self.deleted.lock().expect("volumes").contains(&id)
    }

    /// Marks a volume deleted: from now on nothing attaches it.
    pub fn forget(&self, id: Uuid) {
        self.deleted.lock().expect("volumes").insert(id);
    }

    /// Removes a volume's data for good (after [`Volumes::forget`] and
    /// once no replica mounts it). Idempotent.
    pub fn remove(&self, id: Uuid) -> Result<()> {
        self.detach(id);
        let dir = self.path(id);
        if is_mount(&dir) {
            return Err(Error::internal(format!(
                "{} is still mounted",
                dir.display()
            )));
        }
        for result in [
            std::fs::remove_dir_all(&dir),
            std::fs::remove_file(self.image(id)),
            std::fs::remove_file(self.dir.join(format!("{id}.img.partial"))),
        ] {
            match result {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io_error(&dir, e));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Usage and what to say about it (`bound` is the caller's to tell).
    pub fn state(&self, id: Uuid) -> VolumeState {
        let dir = self.path(id);
        if self.images {
            let used = is_mount(&dir).then(|| statvfs_used(&dir)).flatten();
            return VolumeState {
                bound: false,
                used_bytes: used,
                message: None,
            };
        }
        let (used, complete) = walk_usage(&dir);
        VolumeState {
            bound: false,
            used_bytes: dir.exists().then_some(used),
            message: Some(if complete {
                "the size is not enforced on this machine (the server cannot mount filesystem images here): usage is measured".into()
            } else {
                format!(
                    "the size is not enforced on this machine (the server cannot mount filesystem images here): usage of the first {WALK_LIMIT} files"
                )
            }),
        }
    }
}

/// Bytes in use on the filesystem mounted at `dir`.
fn statvfs_used(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs writes into a zeroed struct we own.
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and struct.
    if unsafe { libc::statvfs(path.as_ptr(), &mut s) } != 0 {
        return None;
    }
    Some((s.f_blocks - s.f_bfree) as u64 * s.f_frsize as u64)
}

/// Bytes allocated under `dir` (at most [`WALK_LIMIT`] entries), and
/// whether the walk saw everything.
fn walk_usage(dir: &Path) -> (u64, bool) {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0u64;
    let mut seen = 0usize;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            seen += 1;
            if seen > WALK_LIMIT {
                return (total, false);
            }
            let Ok(m) = e.metadata() else { continue };
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    (total, true)
}
