//! These run real servers in real sandboxes: they need root and
//! bubblewrap (and skip, saying so, without them).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use sea_orm::sqlx;

use super::redis::{Client, Reply};
use super::*;
use crate::runtime::instances::{Credentials, InstanceLimits, Origin};
use crate::runtime::local::sandbox::SandboxSettings;
use crate::secrets::{SecretString, random_hex};
use crate::settings::SandboxIds;

/// Kills every process of the test's uids when the test ends, passed or
/// failed.
struct Cleanup {
    uids: Vec<u32>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for uid in &self.uids {
            for pid in host::processes_of(*uid) {
                // SAFETY: kill(2) on a process of a test's own uid.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

struct Harness {
    rt: Arc<LocalInstances>,
    uids: Vec<u32>,
    next: std::sync::atomic::AtomicUsize,
    // Dropped in this order: processes first, then the directory.
    _cleanup: Cleanup,
    _dir: tempfile::TempDir,
}

fn usable() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let bwrap = find_program("bwrap").is_some();
    if !(root && bwrap) {
        eprintln!("skipped: data service tests need root and bubblewrap");
    }
    root && bwrap
}

/// One `Sandboxes` for every test of the process (each one's start-up
/// sweeps unused cgroups, which would race with another's new ones), its
/// uid range, and the directory under which each test's data lives.
struct Shared {
    sandboxes: Arc<Sandboxes>,
    ids: SandboxIds,
    root: tempfile::TempDir,
    next_uid: std::sync::atomic::AtomicU32,
}

fn shared() -> &'static Shared {
    static SHARED: std::sync::OnceLock<Shared> = std::sync::OnceLock::new();
    SHARED.get_or_init(|| {
        let base = 2_100_000_000 + rand::random_range(0..40_000u32) * 1000;
        let ids = SandboxIds::parse(&format!("{base}-{}", base + 999)).unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::set_permissions(root.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let sandboxes = Arc::new(Sandboxes::new(SandboxSettings {
            insecure_shared: false,
            ids,
            max_processes: 1024,
            hidden: Vec::new(),
            bwrap: None,
            data_dir: root.path().to_path_buf(),
        }));
        Shared {
            sandboxes,
            ids,
            root,
            next_uid: 0.into(),
        }
    })
}

impl Harness {
    fn new() -> Harness {
        let shared = shared();
        let dir = tempfile::tempdir_in(shared.root.path()).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let config = LocalConfig {
            data_dir: dir.path().join("data"),
            ready_timeout: Duration::from_secs(30),
            sandbox: SandboxSettings {
                insecure_shared: false,
                ids: shared.ids,
                max_processes: 1024,
                hidden: Vec::new(),
                bwrap: None,
                data_dir: dir.path().join("data"),
            },
            git_roots: Vec::new(),
            postgres_bin_dir: None,
            typesense_bin: None,
            tcp_proxy_address: std::net::Ipv4Addr::LOCALHOST.into(),
        };
        let first = shared.next_uid.fetch_add(10, Ordering::SeqCst) + shared.ids.first_uid;
        let uids: Vec<u32> = (first..first + 10).collect();
        Harness {
            rt: Arc::new(LocalInstances::new(&config, shared.sandboxes.clone())),
            uids: uids.clone(),
            next: 0.into(),
            _cleanup: Cleanup { uids },
            _dir: dir,
        }
    }

    fn spec(&self, provider: &str, prefix: &str) -> InstanceSpec {
        let n = self.next.fetch_add(1, Ordering::SeqCst);
        InstanceSpec {
            resource_id: uuid::Uuid::new_v4(),
            organization_id: uuid::Uuid::new_v4(),
            provider: provider.into(),
            name: format!(
                "{prefix}-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..12]
            ),
            uid: Some(self.uids[n]),
            port: Some(free_port()),
            limits: InstanceLimits {
                memory_mb: 256,
                max_connections: 20,
                storage_gb: 1,
                max_memory_mb: None,
            },
            credentials: Credentials {
                admin_user: "sylphx_admin".into(),
                admin_password: SecretString::new(random_hex(16)),
                app_user: "app".into(),
                app_password: SecretString::new(random_hex(16)),
                database: "app".into(),
            },
            origin: Origin::Empty,
            backup_retention_days: 7,
        }
    }

    /// `ensure`, with the progress messages it sent.
    async fn ensure(&self, spec: &InstanceSpec) -> (Endpoint, Vec<String>) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let endpoint = self
            .rt
            .ensure(spec, &tx)
            .await
            .unwrap_or_else(|e| panic!("ensure {}: {}", spec.name, e.message()));
        drop(tx);
        let mut said = Vec::new();
        while let Some(m) = rx.recv().await {
            said.push(m);
        }
        (endpoint, said)
    }

    async fn remove(&self, spec: &InstanceSpec) {
        let started = std::time::Instant::now();
        self.rt.remove(spec).await.unwrap();
        eprintln!("removed {} in {:?}", spec.name, started.elapsed());
        assert!(!self.rt.instance_dir(&spec.name).exists());
        assert!(!super::super::process::port_open(spec.port.unwrap()).await);
        assert_eq!(
            self.rt.status(spec).await.unwrap().state,
            InstanceState::Missing
        );
        self.rt.remove(spec).await.unwrap();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn app_conn(spec: &InstanceSpec) -> sqlx::PgConnection {
    let c = &spec.credentials;
    postgres::connect(
        spec.port.unwrap(),
        &c.app_user,
        c.app_password.expose(),
        &c.database,
    )
    .await
    .unwrap()
}

async fn notes(spec: &InstanceSpec) -> Vec<String> {
    let mut conn = app_conn(spec).await;
    sqlx::query_scalar("SELECT note FROM items ORDER BY id")
        .fetch_all(&mut conn)
        .await
        .unwrap()
}

async fn insert(spec: &InstanceSpec, id: i32, note: &str) {
    let mut conn = app_conn(spec).await;
    sqlx::query("INSERT INTO items (id, note) VALUES ($1, $2)")
        .bind(id)
        .bind(note)
        .execute(&mut conn)
        .await
        .unwrap();
}

/// The postmaster: a `postgres` process of `uid` whose parent is not one.
fn postmaster(uid: u32) -> Option<i32> {
    let comm = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let parent = |pid: i32| -> Option<i32> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        stat[stat.rfind(')')? + 1..]
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    host::processes_of(uid).into_iter().find(|&p| {
        comm(p).trim() == "postgres" && parent(p).is_none_or(|pp| comm(pp).trim() != "postgres")
    })
}

/// Waits (at most a minute) until the instance crashed and is ready again.
async fn wait_recovered(h: &Harness, spec: &InstanceSpec) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut saw_crash = false;
    loop {
        let s = h.rt.status(spec).await.unwrap();
        saw_crash |= s.state == InstanceState::Crashed;
        if s.restarts >= 1 && s.state == InstanceState::Ready {
            return saw_crash;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready again: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_lives_crashes_copies_restores_and_goes() {
    if !usable() {
        return;
    }
    let h = Harness::new();
    h.rt.supports(POSTGRESQL).await.unwrap();
    let pg = h.spec(POSTGRESQL, "pg");
    let (endpoint, said) = h.ensure(&pg).await;
    assert_eq!(endpoint.host, "127.0.0.1");
    assert_eq!(Some(endpoint.port), pg.port);
    assert!(said.iter().any(|m| m.contains("initialising")), "{said:?}");
    assert!(
        said.iter().any(|m| m.contains("first base backup")),
        "{said:?}"
    );

    // The application's user owns its database, is no superuser.
    let mut conn = app_conn(&pg).await;
    sqlx::raw_sql("CREATE TABLE public.items (id int PRIMARY KEY, note text)")
        .execute(&mut conn)
        .await
        .unwrap();
    let superuser: bool =
        sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert!(!superuser);
    drop(conn);
    insert(&pg, 1, "before").await;

    let s = h.rt.scalars(&pg, Duration::from_secs(5)).await.unwrap();
    assert!(s.database_size.unwrap() > 0, "{s:?}");
    assert!(s.transactions.unwrap() > 0, "{s:?}");
    assert!((0.0..=1.0).contains(&s.cache_hit_ratio.unwrap()));
    assert!(s.memory_used_bytes.is_none());

    // Again: nothing to do.
    let (_, said) = h.ensure(&pg).await;
    assert!(
        !said
            .iter()
            .any(|m| m.contains("initialising") || m.contains("starting")),
        "{said:?}"
    );
    assert_eq!(h.rt.status(&pg).await.unwrap().state, InstanceState::Ready);

    // A crash is seen, counted and repaired; the data stays.
    let pid = postmaster(pg.uid.unwrap()).expect("the postmaster");
    // SAFETY: kill(2) on the test instance's postmaster.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    assert!(wait_recovered(&h, &pg).await, "Crashed was never reported");
    assert_eq!(notes(&pg).await, ["before"]);

    // The target of the restore lies between two commits.
    let mut conn = app_conn(&pg).await;
    let target: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT clock_timestamp()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    drop(conn);
    insert(&pg, 2, "after").await;

    let backups = h.rt.backups(&pg).await.unwrap();
    assert!(!backups.is_empty());
    assert!(
        backups.iter().all(|b| b.status == "completed"
            && b.method == "basebackup"
            && b.completed_at.is_some())
    );
    let taken = h.rt.backup(&pg).await.unwrap();
    assert_eq!(taken.status, "completed");
    assert!(taken.name.starts_with(&format!("{}-backup-", pg.name)));
    assert_eq!(h.rt.backups(&pg).await.unwrap().len(), backups.len() + 1);

    let mut copy = h.spec(POSTGRESQL, "copy");
    copy.origin = Origin::Copy {
        source: Box::new(pg.clone()),
    };
    let mut restored = h.spec(POSTGRESQL, "pitr");
    restored.origin = Origin::Restore {
        source: Box::new(pg.clone()),
        target_time: target,
    };
    let (copied, restore) = tokio::join!(h.ensure(&copy), h.ensure(&restored));
    assert_eq!(Some(copied.0.port), copy.port);
    assert!(
        restore.1.iter().any(|m| m.contains("restoring")),
        "{:?}",
        restore.1
    );

    assert_eq!(notes(&copy).await, ["before", "after"]);
    insert(&copy, 3, "only in the copy").await;
    assert_eq!(notes(&pg).await, ["before", "after"]);
    assert_eq!(notes(&restored).await, ["before"]);
    assert!(!h.rt.backups(&copy).await.unwrap().is_empty());
    assert!(!h.rt.backups(&restored).await.unwrap().is_empty());
    // Their own archives, not the source's; files of their own uid.
    use std::os::unix::fs::MetadataExt;
    for spec in [&copy, &restored] {
        let dir = h.rt.instance_dir(&spec.name);
        assert!(!dir.join("restore-wal").exists());
        assert_eq!(
            std::fs::metadata(dir.join("data/PG_VERSION"))
                .unwrap()
                .uid(),
            spec.uid.unwrap()
        );
        let conf = std::fs::read_to_string(dir.join("data/sylphx.conf")).unwrap();
        assert!(conf.contains(&format!("port = {}", spec.port.unwrap())));
    }
    // The old passwords no longer open the copy.
    let c = &pg.credentials;
    assert!(
        postgres::connect(
            copy.port.unwrap(),
            &c.app_user,
            c.app_password.expose(),
            &c.database
        )
        .await
        .is_err()
    );

    for spec in [&copy, &restored, &pg] {
        h.remove(spec).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_needs_its_password_and_reports_figures() {
    if !usable() {
        return;
    }
    let h = Harness::new();
    h.rt.supports(REDIS).await.unwrap();
    let spec = h.spec(REDIS, "redis");
    h.ensure(&spec).await;
    let port = spec.port.unwrap();

    let mut anonymous = Client::connect(port).await.unwrap();
    match anonymous.call(&["GET", "k"]).await.unwrap() {
        Reply::Error(e) => assert!(e.starts_with("NOAUTH"), "{e}"),
        other => panic!("{other:?}"),
    }
    let mut app = Client::connect(port).await.unwrap();
    app.auth(&[spec.credentials.app_password.expose()])
        .await
        .unwrap();
    assert_eq!(
        app.call(&["SET", "k", "v"]).await.unwrap(),
        Reply::Status("OK".into())
    );
    assert_eq!(
        app.call(&["GET", "k"]).await.unwrap(),
        Reply::Bulk(Some(b"v".to_vec()))
    );
    assert!(matches!(
        app.call(&["CONFIG", "GET", "dir"]).await.unwrap(),
        Reply::Error(_)
    ));
    let mut wrong = Client::connect(port).await.unwrap();
    assert!(wrong.auth(&["not the password"]).await.is_err());

    let s = h.rt.scalars(&spec, Duration::from_secs(5)).await.unwrap();
    assert!(s.memory_used_bytes.unwrap() > 0, "{s:?}");
    assert!(s.memory_used_percent.unwrap() > 0.0);
    assert!(s.commands.unwrap() > 0);
    assert!(s.connected_clients.unwrap() >= 1);
    assert!((0.0..=1.0).contains(&s.hit_ratio.unwrap()));
    let conf = h.rt.instance_dir(&spec.name).join("redis.conf");
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(!text.contains(spec.credentials.app_password.expose()));
    assert!(h.rt.backups(&spec).await.is_err());
    assert!(h.rt.supports(VALKEY).await.is_ok() == find_program("valkey-server").is_some());

    // New limits restart it with them; the data stays.
    let mut bigger = spec.clone();
    bigger.limits.max_connections = 30;
    let (_, said) = h.ensure(&bigger).await;
    assert!(said.iter().any(|m| m.contains("new limits")), "{said:?}");
    let text = std::fs::read_to_string(&conf).unwrap();
    assert!(text.contains("maxclients 30"));
    let mut app = Client::connect(port).await.unwrap();
    app.auth(&[spec.credentials.app_password.expose()])
        .await
        .unwrap();
    assert_eq!(
        app.call(&["GET", "k"]).await.unwrap(),
        Reply::Bulk(Some(b"v".to_vec()))
    );
    drop(app);
    let status = h.rt.status(&bigger).await.unwrap();
    assert_eq!((status.state, status.restarts), (InstanceState::Ready, 0));

    // A server that stops stops its instances, and starts none.
    h.rt.stop_all().await;
    assert!(!super::super::process::port_open(port).await);
    assert_eq!(
        h.rt.status(&spec).await.unwrap().state,
        InstanceState::Missing
    );
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    assert!(matches!(
        h.rt.ensure(&spec, &tx).await,
        Err(Error::Unavailable(_))
    ));
    h.remove(&spec).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_serves_its_application_user() {
    if !usable() || mysql::Bins::find().is_err() {
        return;
    }
    let h = Harness::new();
    let spec = h.spec(MYSQL, "mysql");
    h.ensure(&spec).await;
    let dir = h.rt.instance_dir(&spec.name);
    assert!(!dir.join("init.sql").exists());
    // The application's user may make tables in its database.
    let ctx = h.rt.ctx(&spec).unwrap();
    let c = &spec.credentials;
    let env = BTreeMap::from([("MYSQL_PWD".to_string(), c.app_password.expose().to_string())]);
    let out = ctx
        .run(
            "the test client",
            &format!(
                "exec mariadb --no-defaults --protocol=TCP -h 127.0.0.1 -P {} -u {} -N -e 'CREATE TABLE t (id int); INSERT INTO t VALUES (7); SELECT id FROM t' {}",
                spec.port.unwrap(),
                c.app_user,
                c.database
            ),
            &env,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(out.trim(), "7");
    assert!(matches!(
        h.rt.scalars(&spec, Duration::from_secs(1)).await,
        Err(Error::Unavailable(_))
    ));
    h.remove(&spec).await;
}

#[tokio::test]
async fn bad_specs_are_refused_before_anything_runs() {
    let h = Harness::new();
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let mut spec = h.spec(REDIS, "x");
    spec.name = "../etc".into();
    assert!(matches!(
        h.rt.ensure(&spec, &tx).await,
        Err(Error::BadRequest { .. })
    ));
    let mut spec = h.spec(POSTGRESQL, "x");
    spec.credentials.app_user = "app\"; DROP".into();
    assert!(h.rt.ensure(&spec, &tx).await.is_err());
    spec.provider = "oracle".into();
    assert!(h.rt.supports("oracle").await.is_err());
    assert!(!h.rt.resources_dir().exists());
}
