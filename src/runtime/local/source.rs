//! Sources on the local runtime: a git clone per deployment, kept for
//! rollback, and the Procfile that names its processes.

use std::path::{Path, PathBuf};

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

    /// Reads `<dir>/Procfile`.
    pub async fn read(dir: &Path) -> Result<Procfile> {
        match tokio::fs::read_to_string(dir.join("Procfile")).await {
            Ok(text) => Procfile::parse(&text),
            Err(_) => Err(Error::Unprocessable(
                "the repository has no Procfile: the local runtime runs the processes it names"
                    .into(),
            )),
        }
    }

    pub fn command(&self, name: &str) -> Option<&str> {
        self.processes
            .iter()
            .find(|p| p.name == name)
            .map(|p| p.command.as_str())
    }
}

/// A local path for `gitRepository`: a path or a `file://` URL.
pub fn local_repository(repo: &str) -> Result<PathBuf> {
    let path = PathBuf::from(repo.strip_prefix("file://").unwrap_or(repo));
    if path.is_absolute() && path.exists() {
        Ok(path)
    } else {
        Err(Error::Unprocessable(format!(
            "the local runtime builds from a local git repository (an absolute path or file:// URL); '{repo}' is not one"
        )))
    }
}

/// Clones `branch` of `repo` into `dest` (replacing a partial earlier attempt)
/// and checks out `commit` if given. Returns the full commit.
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
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| Error::internal(format!("cannot create {}: {e}", parent.display())))?;
    }
    let (src, dst) = (repo.to_string_lossy(), dest.to_string_lossy());
    git(
        &["clone", "--quiet", "--branch", branch, "--", &src, &dst],
        None,
    )
    .await?;
    if let Some(c) = commit {
        git(&["checkout", "--quiet", c], Some(dest)).await?;
    }
    git(&["rev-parse", "HEAD"], Some(dest)).await
}

#[cfg(test)]
mod tests {
    use super::*;

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
