//! CPU, memory and process limits of a sandbox through cgroups (v1 or v2),
//! where the machine lets this process create them: one cgroup per
//! sandbox under `<this process's cgroup>/sylphx`. Where it does not, the
//! runtime says so once at start and runs without them.

use std::ffi::CString;
use std::fs;
use std::path::{Path, PathBuf};

/// Limits of one sandbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    /// Thousandths of a CPU.
    pub cpu_millis: Option<u64>,
    pub max_processes: Option<u64>,
}

#[derive(Debug, Clone)]
enum Hierarchy {
    /// One directory per controller (`memory`, `cpu`, `pids`).
    V1 {
        memory: PathBuf,
        cpu: PathBuf,
        pids: PathBuf,
    },
    /// The unified hierarchy.
    V2 { base: PathBuf },
}

/// Where sandbox cgroups are made.
#[derive(Debug, Clone)]
pub struct Cgroups {
    hierarchy: Hierarchy,
}

/// This process's cgroup path in a v1 controller, or in v2 (`""`).
fn own_path(controller: &str) -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|l| {
        let mut parts = l.splitn(3, ':');
        let (_, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        ctrls
            .split(',')
            .any(|c| c == controller)
            .then(|| path.to_string())
    })
}

fn v1_base(controller: &str) -> Option<PathBuf> {
    // `cpu` is often mounted together with `cpuacct`.
    let mount = ["", ",cpuacct", ",cpuset"]
        .iter()
        .map(|extra| Path::new("/sys/fs/cgroup").join(format!("{controller}{extra}")))
        .find(|p| p.join("cgroup.procs").exists())?;
    let own = own_path(controller)?;
    Some(mount.join(own.trim_start_matches('/')).join("sylphx"))
}

fn write(path: &Path, value: &str) -> std::io::Result<()> {
    fs::write(path, value)
}

impl Cgroups {
    /// Finds a writable hierarchy and prepares `sylphx` in it; `Err` says
    /// why limits cannot be applied here.
    pub fn detect() -> Result<Cgroups, String> {
        let unified = Path::new("/sys/fs/cgroup/cgroup.controllers");
        let hierarchy = if unified.exists() {
            let own = own_path("").ok_or("no cgroup v2 path in /proc/self/cgroup")?;
            let parent = Path::new("/sys/fs/cgroup").join(own.trim_start_matches('/'));
            let base = parent.join("sylphx");
            fs::create_dir_all(&base).map_err(|e| format!("{}: {e}", base.display()))?;
            for dir in [&parent, &base] {
                write(&dir.join("cgroup.subtree_control"), "+memory +cpu +pids").map_err(|e| {
                    format!(
                        "cannot delegate memory, cpu and pids under {}: {e}",
                        dir.display()
                    )
                })?;
            }
            Hierarchy::V2 { base }
        } else {
            let base = |c: &str| v1_base(c).ok_or(format!("no cgroup v1 '{c}' controller"));
            let (memory, cpu, pids) = (base("memory")?, base("cpu")?, base("pids")?);
            for dir in [&memory, &cpu, &pids] {
                fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
            Hierarchy::V1 { memory, cpu, pids }
        };
        let cgroups = Cgroups { hierarchy };
        // Prove it: make, limit and remove one.
        let probe = cgroups.create(
            &format!("probe-{}", std::process::id()),
            &Limits {
                memory_bytes: Some(64 << 20),
                cpu_millis: Some(100),
                max_processes: Some(16),
            },
        )?;
        drop(probe);
        cgroups.sweep();
        Ok(cgroups)
    }

    /// Removes empty sandbox cgroups left by an earlier run.
    fn sweep(&self) {
        for base in self.bases() {
            for entry in fs::read_dir(base).into_iter().flatten().flatten() {
                if entry.path().is_dir() {
                    let _ = fs::remove_dir(entry.path());
                }
            }
        }
    }

    fn bases(&self) -> Vec<&Path> {
        match &self.hierarchy {
            Hierarchy::V1 { memory, cpu, pids } => vec![memory, cpu, pids],
            Hierarchy::V2 { base } => vec![base],
        }
    }

    /// Makes the cgroup `name` with `limits`.
    pub fn create(&self, name: &str, limits: &Limits) -> Result<Cgroup, String> {
        let dirs: Vec<PathBuf> = self.bases().iter().map(|b| b.join(name)).collect();
        for d in &dirs {
            fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        let group = Cgroup {
            dirs,
            v2: matches!(self.hierarchy, Hierarchy::V2 { .. }),
        };
        group.limit(limits)?;
        Ok(group)
    }
}

/// One sandbox's cgroup (a directory per v1 controller); removed on drop
/// once its processes are gone.
#[derive(Debug)]
pub struct Cgroup {
    dirs: Vec<PathBuf>,
    v2: bool,
}

const CPU_PERIOD_US: u64 = 100_000;

impl Cgroup {
    fn limit(&self, limits: &Limits) -> Result<(), String> {
        let set = |dir: &Path, file: &str, value: String| {
            write(&dir.join(file), &value).map_err(|e| format!("{file}: {e}"))
        };
        let quota = limits
            .cpu_millis
            .map(|m| (m * CPU_PERIOD_US / 1000).max(1000));
        if self.v2 {
            let dir = &self.dirs[0];
            if let Some(bytes) = limits.memory_bytes {
                set(dir, "memory.max", bytes.to_string())?;
                // Swap would let a sandbox pass its limit.
                let _ = set(dir, "memory.swap.max", "0".into());
            }
            if let Some(q) = quota {
                set(dir, "cpu.max", format!("{q} {CPU_PERIOD_US}"))?;
            }
            if let Some(n) = limits.max_processes {
                set(dir, "pids.max", n.to_string())?;
            }
        } else {
            let (memory, cpu, pids) = (&self.dirs[0], &self.dirs[1], &self.dirs[2]);
            if let Some(bytes) = limits.memory_bytes {
                set(memory, "memory.limit_in_bytes", bytes.to_string())?;
                let _ = set(memory, "memory.memsw.limit_in_bytes", bytes.to_string());
            }
            if let Some(q) = quota {
                set(cpu, "cpu.cfs_period_us", CPU_PERIOD_US.to_string())?;
                set(cpu, "cpu.cfs_quota_us", q.to_string())?;
            }
            if let Some(n) = limits.max_processes {
                set(pids, "pids.max", n.to_string())?;
            }
        }
        Ok(())
    }

    /// The `cgroup.procs` files a new process writes `0` into to join.
    pub fn procs_files(&self) -> Vec<CString> {
        self.dirs
            .iter()
            .filter_map(|d| {
                CString::new(d.join("cgroup.procs").into_os_string().into_encoded_bytes()).ok()
            })
            .collect()
    }

    /// How many times the kernel killed a process here for lack of memory.
    pub fn oom_kills(&self) -> u64 {
        let (file, dir) = if self.v2 {
            ("memory.events", &self.dirs[0])
        } else {
            ("memory.oom_control", &self.dirs[0])
        };
        fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|t| {
                t.lines()
                    .find_map(|l| l.strip_prefix("oom_kill "))
                    .and_then(|n| n.trim().parse().ok())
            })
            .unwrap_or(0)
    }
}

impl Cgroup {
    /// Removes the cgroup; fails while a process is still inside.
    pub fn remove(&self) -> std::io::Result<()> {
        for d in &self.dirs {
            match fs::remove_dir(d) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        // Best effort: what is still busy is swept at the next start.
        let _ = self.remove();
    }
}
