//! Sources on the local runtime: a git clone per deployment, kept for
//! rollback, and the Procfile that names its processes.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};
use crate::runtime::git::git;

/// One Procfile entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub name: String,
    pub command: String,
}

/// A parsed Procfile: process types in file order, and the release command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Procfile {
    pub processes: Vec<Process>,
    pub release: Option<String>,
}

impl Procfile {
    pub fn parse(text: &str) -> Result<Procfile> {
        let mut out = Procfile::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, command) = line.split_once(':').ok_or_else(|| {
                Error::Unprocessable(format!("Procfile line {}: expected `name: command`", i + 1))
            })?;
            let (name, command) = (name.trim().to_ascii_lowercase(), command.trim().to_string());
            if command.is_empty() || crate::domain::validate::dns_label("Procfile", &name).is_err()
            {
                return Err(Error::Unprocessable(format!(
                    "Procfile line {}: '{name}' is not a valid process name or has no command",
                    i + 1
                )));
            }
            if name == "release" {
                out.release = Some(command);
            } else {
                out.processes.push(Process { name, command });
            }
        }
        Ok(out)
    }

    /// Reads `<dir>/Procfile`: a regular file of the release (never a
    /// link out of it, which would make the server read a host file), at
    /// most 64 KiB.
    pub async fn read(dir: &Path) -> Result<Procfile> {
        use tokio::io::AsyncReadExt;
        const MAX: u64 = 64 * 1024;
        // Opened without following a link and checked through the open
        // file: a tenant that swaps the file for a link meanwhile (it owns
        // the release) gets an error, never a host file read as root.
        let file = tokio::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(dir.join("Procfile"))
            .await
            .map_err(|e| {
                Error::Unprocessable(if e.raw_os_error() == Some(libc::ELOOP) {
                    "the Procfile must be a regular file (not a link)".into()
                } else {
                    "the repository has no Procfile: the local runtime runs the processes it names"
                        .into()
                })
            })?;
        let meta = file.metadata().await.map_err(Error::internal)?;
        if !meta.is_file() {
            return Err(Error::Unprocessable(
                "the Procfile must be a regular file (not a link)".into(),
            ));
        }
        let mut bytes = Vec::new();
        file.take(MAX + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(Error::internal)?;
        if bytes.len() as u64 > MAX {
            return Err(Error::Unprocessable(format!(
                "the Procfile is larger than {} KiB",
                MAX / 1024
            )));
        }
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::Unprocessable("the Procfile is not UTF-8 text".into()))?;
        Procfile::parse(&text)
    }

    pub fn command(&self, name: &str) -> Option<&str> {
        self.processes
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.command.as_str())
    }
}

/// Where local repositories may be cloned from.
#[derive(Debug, Clone)]
pub struct SourceRoots {
    /// Allowed directories (`local_git_roots`).
    pub roots: Vec<PathBuf>,
    /// Never allowed, whatever the roots say: the data directory.
    pub forbidden: PathBuf,
}

/// `path` without `.` and `..` components, without touching the filesystem.
fn lexically_normal(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

impl SourceRoots {
    fn allows(&self, path: &Path) -> bool {
        let forbidden = [self.forbidden.clone(), lexically_normal(&self.forbidden)]
            .into_iter()
            .chain(self.forbidden.canonicalize().ok())
            .collect::<Vec<_>>();
        let inside_roots = self.roots.iter().any(|r| {
            let real = r.canonicalize().unwrap_or_else(|_| lexically_normal(r));
            path.starts_with(&real) && path != real
        });
        inside_roots && !forbidden.iter().any(|f| path.starts_with(f))
    }

    /// The local repository `gitRepository` names: an absolute path or
    /// `file://` URL under one of the roots and outside the data
    /// directory, symlinks resolved. The error is the same whether the
    /// path exists or not, so it tells nothing about the host.
    pub fn repository(&self, repo: &str) -> Result<PathBuf> {
        let refuse = || {
            let roots: Vec<String> = self.roots.iter().map(|r| r.display().to_string()).collect();
            Error::Unprocessable(format!(
                "gitRepository must name a local git repository (an absolute path or file:// URL) under one of the allowed roots ({}), outside the server's data directory",
                roots.join(", ")
            ))
        };
        let raw = repo.strip_prefix("file://").unwrap_or(repo);
        let path = Path::new(raw);
        if !path.is_absolute() {
            return Err(refuse());
        }
        // Checked before and after resolving links: a path outside the
        // roots is refused without looking at the filesystem.
        let lexical = lexically_normal(path);
        if !self.allows(&lexical) {
            return Err(refuse());
        }
        let real = lexical.canonicalize().map_err(|_| refuse())?;
        if !self.allows(&real) || !real.is_dir() {
            return Err(refuse());
        }
        Ok(real)
    }
}

/// Clones `branch` of `repo` into `dest` (replacing a partial earlier
/// attempt) and checks out `commit` if given. Returns the full commit.
///
/// The server clones as itself: over git's own protocol (`--no-local`, so
/// only git objects are copied, never hard links or files the repository
/// points at), trusting that one repository despite its owner.
pub async fn checkout(
    repo: &Path,
    branch: &str,
    commit: Option<&str>,
    dest: &Path,
) -> Result<String> {
    if dest.exists() {
        tokio::fs::remove_dir_all(dest)
            .await
            .map_err(|e| Error::internal(format!("cannot clear {}: {e}", dest.display())))?;
    }
    if branch.starts_with('-') || commit.is_some_and(|c| c.starts_with('-')) {
        return Err(Error::field("gitBranch", "not a valid branch name"));
    }
    let (src, dst) = (repo.to_string_lossy(), dest.to_string_lossy());
    let safe = format!("safe.directory={src}");
    git(
        &[
            "-c",
            &safe,
            "-c",
            "protocol.file.allow=always",
            "clone",
            "--quiet",
            "--no-local",
            "--no-hardlinks",
            "--branch",
            branch,
            "--",
            &src,
            &dst,
        ],
        None,
    )
    .await?;
    if let Some(c) = commit {
        git(&["checkout", "--quiet", c], Some(dest)).await?;
    }
    git(&["rev-parse", "HEAD"], Some(dest)).await
}

/// Gives `dir` and everything in it to `uid` (links themselves, never
/// what they point at).
pub fn chown_tree(dir: &Path, uid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(uid), Some(uid))?;
    if std::fs::symlink_metadata(dir)?.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            chown_tree(&entry?.path(), uid)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_procfile_that_links_elsewhere_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("Procfile")).unwrap();
        let err = Procfile::read(dir.path()).await.unwrap_err();
        assert!(err.message().contains("not a link"), "{}", err.message());
        std::fs::remove_file(dir.path().join("Procfile")).unwrap();
        std::fs::create_dir(dir.path().join("Procfile")).unwrap();
        assert!(Procfile::read(dir.path()).await.is_err());
        std::fs::remove_dir(dir.path().join("Procfile")).unwrap();
        std::fs::write(dir.path().join("Procfile"), "web: x\n".repeat(20_000)).unwrap();
        let err = Procfile::read(dir.path()).await.unwrap_err();
        assert!(err.message().contains("larger than"), "{}", err.message());
        std::fs::write(dir.path().join("Procfile"), "web: ./serve\n").unwrap();
        assert_eq!(
            Procfile::read(dir.path()).await.unwrap().command("web"),
            Some("./serve")
        );
    }

    #[test]
    fn procfile() {
        let p = Procfile::parse(
            "# app\nweb: python3 -m http.server $PORT\nworker: ./work\nrelease: ./migrate\n",
        )
        .unwrap();
        assert_eq!(p.processes.len(), 2);
        assert_eq!(p.command("web"), Some("python3 -m http.server $PORT"));
        assert_eq!(p.release.as_deref(), Some("./migrate"));
        assert!(Procfile::parse("web python").is_err());
        assert!(Procfile::parse("Bad_Name: x").is_err());
    }
}
