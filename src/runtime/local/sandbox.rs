//! Sandboxes: everything the local runtime runs on a tenant's behalf
//! (release commands, replicas) runs under bubblewrap as the project's own
//! unprivileged uid, in PID, mount, IPC, UTS and user namespaces of its
//! own, seeing the system directories read-only, its release directory at
//! `/app`, a private `/tmp`, and nothing else of the host's filesystem.
//!
//! bubblewrap is started as the project's uid (the uid the host sees on
//! every process of the sandbox), with one supplementary group, the
//! sandboxes' shared group, that may only traverse the data directory and
//! `releases/` to reach the project's own release directory (mode 0700,
//! owned by the project). Its first process is the namespace's init: when
//! it dies, the kernel kills everything in the sandbox, and it dies with
//! this server (`--die-with-parent`), even after a SIGKILL.
//!
//! `--insecure-shared-sandbox` runs tenant code directly as the server's
//! own user instead, for single-user machines where namespaces cannot be
//! made.

use std::collections::BTreeMap;
use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::sync::OnceCell;

use super::cgroups::{Cgroup, Cgroups, Limits};
use super::host;
use crate::error::{Error, Result};
use crate::settings::SandboxIds;

/// Where a tenant's release directory appears inside its sandbox.
pub const APP_DIR: &str = "/app";

/// `PATH` inside a sandbox (a project's env vars may replace it).
const PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Host directories every sandbox sees, read-only.
const SYSTEM_DIRS: [&str; 9] = [
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt",
];

/// Size of a sandbox's private `/tmp` (also counted against its memory).
const TMP_BYTES: u64 = 256 << 20;

/// How sandboxes are made on this machine.
#[derive(Debug, Clone)]
pub struct SandboxSettings {
    /// Run tenant code as the server's own user, without namespaces.
    pub insecure_shared: bool,
    /// The shared group and the uids projects get.
    pub ids: SandboxIds,
    /// Processes (threads included) one project's uid may have at once.
    pub max_processes: u64,
    /// The server's own files: never visible in a sandbox, whatever their
    /// place (data directory, config file, store file).
    pub hidden: Vec<PathBuf>,
    /// bubblewrap; looked up on `PATH` when `None`.
    pub bwrap: Option<PathBuf>,
    /// The data directory, which bubblewrap must traverse (as the
    /// project's user) to reach a release.
    pub data_dir: PathBuf,
}

/// What a sandbox runs.
pub struct Spec<'a> {
    /// The project's uid (gid alike); ignored in shared mode.
    pub uid: u32,
    /// The release directory, seen as [`APP_DIR`].
    pub dir: &'a Path,
    /// A shell command line (`sh -c`).
    pub command: &'a str,
    /// Environment on top of `PATH`, `HOME` and `LANG`.
    pub env: &'a BTreeMap<String, String>,
    pub limits: Limits,
    /// Host directories bound read-write at a path inside (persistent
    /// volumes), after the release directory so that they may lie in it.
    pub mounts: &'a [(PathBuf, String)],
}

/// What the start-up check found.
struct Ready {
    /// `None` in shared mode.
    bwrap: Option<PathBuf>,
    /// bubblewrap's arguments up to the release directory: namespaces and
    /// the read-only view of the system.
    base_args: Vec<OsString>,
    cgroups: Option<Cgroups>,
}

/// Makes sandboxes; checks once, on first use, that it can.
pub struct Sandboxes {
    settings: SandboxSettings,
    ready: OnceCell<std::result::Result<Ready, String>>,
}

/// A running sandbox. Dropping it kills everything in it.
pub struct Sandboxed {
    pub child: Child,
    /// The first process (bubblewrap, or `sh` in shared mode).
    pid: u32,
    isolated: bool,
    cgroup: Option<Cgroup>,
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/bin".into(), "/bin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Whether `path` can be reached by a sandbox's uid through the host's
/// permissions (others may search every parent, or the shared group may):
/// only such paths need a mask inside the sandbox, and only such paths can
/// be masked by bubblewrap running as that uid.
fn reachable(path: &Path, group: u32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let searchable = |p: &Path| {
        std::fs::metadata(p)
            .map(|m| m.mode() & 0o001 != 0 || (m.gid() == group && m.mode() & 0o010 != 0))
            .unwrap_or(false)
    };
    path.exists() && path.ancestors().skip(1).all(searchable)
}

/// The first directory above `dir` that other users may not search (the
/// data directory itself is opened to the sandboxes' group).
fn closed_ancestor(dir: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let real = dir.canonicalize().ok()?;
    real.ancestors()
        .skip(1)
        .find(|a| std::fs::metadata(a).is_ok_and(|m| m.mode() & 0o001 == 0))
        .map(Path::to_path_buf)
}

fn os(s: impl Into<OsString>) -> OsString {
    s.into()
}

/// bubblewrap running `sh -c command` with `base_args`, the release `dir`
/// bound at [`APP_DIR`]; its options come from the returned memory file
/// (which the new process must inherit), so that the sandbox's init shows
/// no host path.
fn bwrap_command(
    bwrap: &Path,
    base_args: &[OsString],
    extra_args: &[OsString],
    dir: &Path,
    mounts: &[(PathBuf, String)],
    command: &str,
) -> io::Result<(std::process::Command, std::fs::File)> {
    let mut args = base_args.to_vec();
    args.extend_from_slice(extra_args);
    args.extend([os("--bind"), dir.into(), os(APP_DIR)]);
    for (host, inside) in mounts {
        args.extend([os("--bind"), host.into(), os(inside)]);
    }
    args.extend(["--chdir", APP_DIR].map(os));
    let file = args_memfd(&args)?;
    let mut cmd = std::process::Command::new(bwrap);
    cmd.arg("--args")
        .arg(file.as_raw_fd().to_string())
        .args(["--", "/bin/sh", "-c"])
        .arg(command);
    Ok((cmd, file))
}

/// A sealed-off memory file holding `args` NUL-separated, read from its
/// start (bubblewrap's `--args`).
fn args_memfd(args: &[OsString]) -> io::Result<std::fs::File> {
    use std::io::{Seek, Write};
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: memfd_create with a static name; the fd is owned at once.
    let fd = unsafe { libc::memfd_create(c"sandbox-args".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor nothing else owns.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut bytes = Vec::new();
    for a in args {
        bytes.extend_from_slice(a.as_bytes());
        bytes.push(0);
    }
    file.write_all(&bytes)?;
    file.rewind()?;
    Ok(file)
}

impl Sandboxes {
    pub fn new(settings: SandboxSettings) -> Sandboxes {
        Sandboxes {
            settings,
            ready: OnceCell::new(),
        }
    }

    /// Whether tenant code runs as the server's own user.
    pub fn shared(&self) -> bool {
        self.settings.insecure_shared
    }

    /// The uid the host sees on a sandbox made for `uid`.
    pub fn effective_uid(&self, uid: u32) -> u32 {
        if self.shared() {
            // SAFETY: geteuid has no preconditions.
            unsafe { libc::geteuid() }
        } else {
            uid
        }
    }

    /// The sandboxes' shared group (traverses the data directory only).
    pub fn group(&self) -> u32 {
        self.settings.ids.group
    }

    /// Checks (once) that sandboxes can be made here; the error says why
    /// not, and what to do, in words for the deployment's `error`.
    pub async fn check(&self) -> Result<()> {
        match self.ready().await {
            Ok(_) => Ok(()),
            Err(why) => Err(Error::Unprocessable(why)),
        }
    }

    async fn ready(&self) -> std::result::Result<&Ready, String> {
        self.ready
            .get_or_init(|| async {
                let settings = self.settings.clone();
                tokio::task::spawn_blocking(move || prepare(&settings))
                    .await
                    .unwrap_or_else(|e| Err(format!("sandbox check failed: {e}")))
            })
            .await
            .as_ref()
            .map_err(Clone::clone)
    }

    /// Starts `spec` in a new sandbox.
    pub async fn spawn(&self, spec: &Spec<'_>, stdout: Stdio, stderr: Stdio) -> Result<Sandboxed> {
        self.spawn_with_files(spec, &[], stdout, stderr).await
    }

    /// Like [`Sandboxes::spawn`], showing host files read-only in place of
    /// system files inside the sandbox (`(host file, path inside)`): an
    /// `/etc/passwd` that names the sandbox's uid, for programs that look
    /// their user up (PostgreSQL's). Ignored in shared mode.
    pub async fn spawn_with_files(
        &self,
        spec: &Spec<'_>,
        files: &[(&Path, &str)],
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<Sandboxed> {
        let ready = self.ready().await.map_err(Error::Unprocessable)?;
        let cgroup = match &ready.cgroups {
            Some(c) => Some(
                c.create(
                    &format!("{}-{}", spec.uid, uuid::Uuid::new_v4().simple()),
                    &spec.limits,
                )
                .map_err(|e| Error::internal(format!("sandbox cgroup: {e}")))?,
            ),
            None => None,
        };
        let (mut cmd, args_file, home) = match &ready.bwrap {
            Some(bwrap) => {
                let extra: Vec<OsString> = files
                    .iter()
                    .flat_map(|(host, inside)| [os("--ro-bind"), host.into(), os(*inside)])
                    .collect();
                let (cmd, file) = bwrap_command(
                    bwrap,
                    &ready.base_args,
                    &extra,
                    spec.dir,
                    spec.mounts,
                    spec.command,
                )
                .map_err(|e| Error::internal(format!("sandbox arguments: {e}")))?;
                (Command::from(cmd), Some(file), Path::new(APP_DIR))
            }
            None => {
                let mut cmd = Command::new("/bin/sh");
                cmd.arg("-c")
                    .arg(spec.command)
                    .current_dir(spec.dir)
                    .process_group(0);
                (cmd, None, spec.dir)
            }
        };
        cmd.env_clear()
            .env("PATH", PATH)
            .env("HOME", home)
            .env("LANG", "C.UTF-8")
            .envs(spec.env)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        let join = JoinSteps {
            inherit: args_file.as_ref().map(|f| f.as_raw_fd()),
            cgroup_procs: cgroup.as_ref().map(Cgroup::procs_files).unwrap_or_default(),
            user: ready
                .bwrap
                .is_some()
                .then_some((spec.uid, self.settings.ids.group)),
            max_processes: self.settings.max_processes,
            parent: std::process::id(),
        };
        // SAFETY: the closure only makes async-signal-safe system calls on
        // memory prepared before the fork.
        unsafe {
            cmd.pre_exec(move || join.run());
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::internal(format!("cannot start a sandbox: {e}")))?;
        drop(args_file);
        Ok(Sandboxed {
            pid: child.id().unwrap_or_default(),
            child,
            isolated: ready.bwrap.is_some(),
            cgroup,
        })
    }
}

/// What a new sandbox process does between fork and exec, as root: join
/// its cgroup, take the process limit, become the project's user (with the
/// shared group only) and ask to die with this server.
struct JoinSteps {
    /// A descriptor the new process keeps across exec (bubblewrap's
    /// arguments).
    inherit: Option<RawFd>,
    cgroup_procs: Vec<CString>,
    /// (uid, shared group); `None` in shared mode.
    user: Option<(u32, u32)>,
    max_processes: u64,
    parent: u32,
}

impl JoinSteps {
    fn run(&self) -> io::Result<()> {
        let check = |r: libc::c_int| {
            if r == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        };
        // SAFETY: plain system calls on valid, pre-allocated arguments.
        unsafe {
            // Nothing this server holds open reaches tenant code, whoever
            // opened it without close-on-exec.
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            if let Some(fd) = self.inherit
                && libc::fcntl(fd, libc::F_SETFD, 0) != 0
            {
                return Err(io::Error::last_os_error());
            }
            for file in &self.cgroup_procs {
                let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                libc::close(fd);
                if written != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some((uid, group)) = self.user {
                let limit = libc::rlimit {
                    rlim_cur: self.max_processes,
                    rlim_max: self.max_processes,
                };
                check(libc::setrlimit(libc::RLIMIT_NPROC, &limit))?;
                check(libc::setgroups(1, &group))?;
                check(libc::setgid(uid))?;
                check(libc::setuid(uid))?;
                if libc::getuid() != uid || libc::geteuid() != uid {
                    return Err(io::Error::other("could not become the sandbox's user"));
                }
            }
            // After the uid change, which clears it.
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
            if libc::getppid() as u32 != self.parent {
                return Err(io::Error::other("the server is gone"));
            }
        }
        Ok(())
    }
}

/// Checks what the mode needs and builds bubblewrap's fixed arguments.
fn prepare(settings: &SandboxSettings) -> std::result::Result<Ready, String> {
    let cgroups = match Cgroups::detect() {
        Ok(c) => Some(c),
        Err(why) => {
            tracing::warn!(reason = %why, "cpu and memory limits of sandboxes are not enforced: cgroups cannot be created here");
            None
        }
    };
    if settings.insecure_shared {
        return Ok(Ready {
            bwrap: None,
            base_args: Vec::new(),
            cgroups,
        });
    }
    const HOW: &str = "or start the server with --insecure-shared-sandbox on a single-user machine (no isolation between projects)";
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(format!(
            "the local runtime runs each project as a user of its own and needs root for that: start the server as root, {HOW}"
        ));
    }
    let bwrap = settings
        .bwrap
        .clone()
        .or_else(|| find_in_path("bwrap"))
        .ok_or_else(|| {
            format!("bubblewrap (bwrap) is not installed: install the 'bubblewrap' package, {HOW}")
        })?;
    if let Some(closed) = closed_ancestor(&settings.data_dir) {
        return Err(format!(
            "the sandboxes cannot reach the data directory: {closed} may not be searched by other users; give the server a data directory they can reach (for example --data-dir /var/lib/sylphx) or allow the search (chmod o+x {closed})",
            closed = closed.display()
        ));
    }
    let group = settings.ids.group;
    let mut args: Vec<OsString> = [
        "--unshare-user",
        "--disable-userns",
        "--unshare-pid",
        "--unshare-ipc",
        "--unshare-uts",
        "--unshare-cgroup-try",
        "--die-with-parent",
        "--new-session",
        "--hostname",
        "sandbox",
    ]
    .into_iter()
    .map(os)
    .collect();
    for dir in SYSTEM_DIRS {
        let path = Path::new(dir);
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_symlink() => {
                if let Ok(target) = std::fs::read_link(path) {
                    args.extend([os("--symlink"), target.into(), os(dir)]);
                }
            }
            Ok(m) if m.is_dir() => args.extend([os("--ro-bind"), os(dir), os(dir)]),
            _ => {}
        }
    }
    for hidden in &settings.hidden {
        let Ok(path) = hidden.canonicalize() else {
            continue;
        };
        let under_view = SYSTEM_DIRS.iter().any(|d| path.starts_with(d));
        if under_view && reachable(&path, group) {
            if path.is_dir() {
                args.extend([os("--tmpfs"), path.into()]);
            } else {
                args.extend([os("--ro-bind"), os("/dev/null"), path.into()]);
            }
        }
    }
    args.extend(
        [
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--size",
            &TMP_BYTES.to_string(),
            "--tmpfs",
            "/tmp",
            "--dir",
            "/var",
            "--symlink",
            "../tmp",
            "/var/tmp",
        ]
        .into_iter()
        .map(os),
    );
    let ready = Ready {
        bwrap: Some(bwrap),
        base_args: args,
        cgroups,
    };
    probe(&ready, settings)?;
    Ok(ready)
}

/// Runs one sandbox as the last uid of the range and checks from inside
/// that it is that user, in a PID namespace of its own.
fn probe(ready: &Ready, settings: &SandboxSettings) -> std::result::Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let Some(bwrap) = &ready.bwrap else {
        return Ok(());
    };
    let uid = settings.ids.last;
    let dir = std::env::temp_dir().join(format!(
        "sylphx-sandbox-check-{}",
        uuid::Uuid::new_v4().simple()
    ));
    let result = std::fs::create_dir(&dir)
        .and_then(|()| std::os::unix::fs::chown(&dir, Some(uid), Some(uid)))
        .and_then(|()| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)))
        .map_err(|e| format!("sandbox check: {e}"))
        .and_then(|()| probe_in(bwrap, ready, settings, &dir));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn probe_in(
    bwrap: &Path,
    ready: &Ready,
    settings: &SandboxSettings,
    dir: &Path,
) -> std::result::Result<(), String> {
    let uid = settings.ids.last;
    let (mut cmd, file) = bwrap_command(
        bwrap,
        &ready.base_args,
        &[],
        dir,
        &[],
        &format!("test \"$(id -u)\" = {uid} && test \"$$\" -lt 10 && touch {APP_DIR}/ok"),
    )
    .map_err(|e| format!("sandbox check: {e}"))?;
    let join = JoinSteps {
        inherit: Some(file.as_raw_fd()),
        cgroup_procs: Vec::new(),
        user: Some((uid, settings.ids.group)),
        max_processes: settings.max_processes,
        parent: std::process::id(),
    };
    cmd.env_clear().env("PATH", PATH).stdin(Stdio::null());
    // SAFETY: as in `Sandboxes::spawn`.
    unsafe {
        cmd.pre_exec(move || join.run());
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run bubblewrap: {e}"))?;
    if out.status.success() && dir.join("ok").exists() {
        Ok(())
    } else {
        Err(format!(
            "this machine cannot make sandboxes for tenant code (bubblewrap: {}): allow user namespaces (sysctl kernel.unprivileged_userns_clone=1, or the AppArmor profile for bwrap), or start the server with --insecure-shared-sandbox on a single-user machine (no isolation between projects)",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Sandboxed {
    /// Waits until the sandbox's command exits (everything else in the
    /// sandbox dies with it).
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.child.wait().await
    }

    /// Whether the kernel killed something here for lack of memory.
    pub fn out_of_memory(&self) -> bool {
        self.cgroup.as_ref().is_some_and(|c| c.oom_kills() > 0)
    }

    /// Sends `signal` to every process of the sandbox.
    fn signal(&self, signal: libc::c_int) {
        let pid = self.pid;
        // SAFETY: kill(2) on processes of this sandbox; a pid that ended
        // meanwhile just fails.
        unsafe {
            if self.isolated {
                if let Some((init, others)) = host::sandbox_members(pid) {
                    for p in others {
                        libc::kill(p, signal);
                    }
                    if signal == libc::SIGKILL {
                        libc::kill(init, signal);
                    }
                }
            } else {
                libc::kill(-(pid as i32), signal);
            }
        }
    }

    /// SIGTERM to every process of the sandbox, then SIGKILL after `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        self.signal(libc::SIGTERM);
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            self.signal(libc::SIGKILL);
            let _ = self.child.kill().await;
        }
        self.settle().await;
    }

    /// Once the command ended: waits (briefly) for the rest of the sandbox
    /// to be gone, so its cgroup can be removed.
    pub async fn settle(&mut self) {
        if !self.isolated {
            // SAFETY: our child's process group.
            unsafe {
                libc::kill(-(self.pid as i32), libc::SIGKILL);
            }
        }
        if let Some(cgroup) = self.cgroup.take() {
            for _ in 0..50 {
                if cgroup.remove().is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
