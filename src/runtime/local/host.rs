//! What the host's `/proc` says about processes and sockets: the members of
//! a sandbox's PID namespace, the processes of a uid, and who listens on a
//! loopback port. Reading another user's namespace links needs root, which
//! the isolated sandboxes run as anyway.

use std::fs;
use std::path::PathBuf;

fn pids() -> impl Iterator<Item = i32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
}

/// The parent pid from `/proc/<pid>/stat` (the field after the command
/// name, which may itself hold spaces and parentheses).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

fn pid_namespace(pid: i32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/ns/pid")).ok()
}

/// The processes of the PID namespace whose init is the child of `outer`
/// (bubblewrap's first process): `(init, others)`. Empty when the sandbox
/// is gone.
pub fn sandbox_members(outer: u32) -> Option<(i32, Vec<i32>)> {
    let outer = i32::try_from(outer).ok()?;
    let init = pids().find(|&p| parent_of(p) == Some(outer))?;
    let ns = pid_namespace(init)?;
    // The outer process lives in the host's namespace, so it differs.
    let others = pids()
        .filter(|&p| p != init && pid_namespace(p).as_ref() == Some(&ns))
        .collect();
    Some((init, others))
}

/// The real uid of a process.
pub fn uid_of(pid: i32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Every process whose real uid is `uid`.
pub fn processes_of(uid: u32) -> Vec<i32> {
    pids().filter(|&p| uid_of(p) == Some(uid)).collect()
}

/// One listening socket of `/proc/net/tcp{,6}`: its address (hex, as the
/// kernel writes it) and owner.
struct Listener {
    address: String,
    uid: u32,
}

fn listeners(port: u16) -> Vec<Listener> {
    let want = format!("{port:04X}");
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid …
            let (Some(local), Some(state), Some(uid)) = (f.get(1), f.get(3), f.get(7)) else {
                continue;
            };
            let Some((address, p)) = local.split_once(':') else {
                continue;
            };
            if *state == "0A"
                && p == want
                && let Ok(uid) = uid.parse()
            {
                out.push(Listener {
                    address: address.to_string(),
                    uid,
                });
            }
        }
    }
    out
}

/// The owner of the socket that answers connections to `127.0.0.1:port`:
/// one bound to 127.0.0.1 itself, else to any IPv4 address, else to any
/// IPv6 address (dual stack).
pub fn loopback_listener_uid(port: u16) -> Option<u32> {
    const LOOPBACK: &str = "0100007F";
    const ANY4: &str = "00000000";
    const ANY6: &str = "00000000000000000000000000000000";
    let all = listeners(port);
    [LOOPBACK, ANY4, ANY6]
        .iter()
        .find_map(|a| all.iter().find(|l| l.address == *a))
        .map(|l| l.uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_is_found_with_its_owner() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        assert_eq!(loopback_listener_uid(port), Some(me));
        drop(l);
        assert_eq!(loopback_listener_uid(port), None);
    }

    #[test]
    fn our_own_process_is_listed_under_our_uid() {
        let me = std::process::id() as i32;
        let uid = uid_of(me).unwrap();
        assert!(processes_of(uid).contains(&me));
        assert_eq!(parent_of(me), Some(unsafe { libc::getppid() }));
    }
}
