//! The `git` command line, as both runtimes use it.

use std::path::Path;
use std::time::Duration;

use tokio::process::Command;

use crate::error::{Error, Result};

/// How long one git command may take (a clone of a large repository).
const GIT_TIMEOUT: Duration = Duration::from_secs(600);

/// Runs `git <args>` (never prompting for credentials) and returns its
/// trimmed stdout; a failure is `Unprocessable` with git's own message.
pub async fn git(args: &[&str], cwd: Option<&Path>) -> Result<String> {
    let mut cmd = Command::new("git");
    cmd.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .kill_on_drop(true);
    if let Some(dir) = cwd {
        cmd.current_dir(dir);
    }
    // The subcommand, past any `-c key=value` options.
    let what = args
        .iter()
        .enumerate()
        .find(|(i, a)| !a.starts_with('-') && (*i == 0 || args[i - 1] != "-c"))
        .map_or("", |(_, a)| *a);
    let out = tokio::time::timeout(GIT_TIMEOUT, cmd.output())
        .await
        .map_err(|_| {
            Error::Unavailable(format!(
                "git {what} took longer than {}s",
                GIT_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| Error::internal(format!("cannot run git: {e}")))?;
    if !out.status.success() {
        return Err(Error::Unprocessable(format!(
            "git {what} failed: {}",
            redact_credentials(String::from_utf8_lossy(&out.stderr).trim())
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The commit at the head of `branch` in `repo` (any URL or path git
/// reads), without cloning. An unknown branch is a 400 naming `gitBranch`.
pub async fn branch_head(repo: &str, branch: &str) -> Result<String> {
    if branch.starts_with('-') || repo.starts_with('-') {
        return Err(Error::field("gitBranch", "not a valid branch name"));
    }
    let reference = format!("refs/heads/{branch}");
    let out = git(&["ls-remote", "--", repo, &reference], None).await?;
    out.lines()
        .find_map(|line| {
            let (sha, name) = line.split_once('\t')?;
            (name == reference).then(|| sha.to_string())
        })
        .ok_or_else(|| {
            Error::field(
                "gitBranch",
                format!("branch '{branch}' is not in the repository"),
            )
        })
}

/// Replaces `user:password@` in URLs with `***@`, so a token in a
/// repository URL never reaches an error or a log.
pub fn redact_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '\'' || c == '"' || c == '/')
            .unwrap_or(tail.len());
        match tail[..end].rfind('@') {
            Some(at) => {
                out.push_str("***");
                out.push_str(&tail[at..end]);
            }
            None => out.push_str(&tail[..end]),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(dir: &Path, args: &[&str]) {
        let ok = std::process::Command::new("git")
            .args(["-c", "user.email=t@example.com", "-c", "user.name=t"])
            .args(args)
            .current_dir(dir)
            .status()
            .unwrap()
            .success();
        assert!(ok, "git {args:?}");
    }

    #[tokio::test]
    async fn branch_head_reads_the_branch_without_cloning() {
        let dir = tempfile::tempdir().unwrap();
        run(dir.path(), &["init", "-q", "-b", "main"]);
        std::fs::write(dir.path().join("f"), "1").unwrap();
        run(dir.path(), &["add", "f"]);
        run(dir.path(), &["commit", "-qm", "one"]);
        run(dir.path(), &["checkout", "-qb", "next"]);
        std::fs::write(dir.path().join("f"), "2").unwrap();
        run(dir.path(), &["commit", "-qam", "two"]);
        let repo = dir.path().to_str().unwrap();
        let rev = |r: &str| {
            let out = std::process::Command::new("git")
                .args(["rev-parse", r])
                .current_dir(dir.path())
                .output()
                .unwrap();
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        assert_eq!(branch_head(repo, "main").await.unwrap(), rev("main"));
        assert_eq!(branch_head(repo, "next").await.unwrap(), rev("next"));
        let err = branch_head(repo, "gone").await.unwrap_err();
        assert!(
            matches!(&err, Error::BadRequest { field: Some(f), .. } if f == "gitBranch"),
            "{}",
            err.message()
        );
        let err = branch_head("/nonexistent/repo", "main").await.unwrap_err();
        assert!(
            err.message().starts_with("git ls-remote failed"),
            "{}",
            err.message()
        );
    }

    #[test]
    fn credentials_in_urls_are_redacted() {
        assert_eq!(
            redact_credentials(
                "fatal: repository 'https://x-access-token:ghp_secret@github.com/a/b.git/' not found"
            ),
            "fatal: repository 'https://***@github.com/a/b.git/' not found"
        );
        assert_eq!(
            redact_credentials("see https://github.com/a/b and ssh://git@host/x"),
            "see https://github.com/a/b and ssh://***@host/x"
        );
    }
}
