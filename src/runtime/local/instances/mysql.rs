//! MySQL instances, served by MariaDB (or MySQL's `mysqld` where MariaDB
//! is not installed): `mariadb-install-db`, then a server on loopback TCP
//! whose users, passwords and database an init file sets at every start.
//! The init file (mode 0600) is removed once the server is ready; the
//! readiness check runs the `mariadb` client in the instance's sandbox
//! with the password in `MYSQL_PWD`, never on its command line.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use super::{Ctx, DATA, DATA_TMP, find_program, remove_path, sh_quote};
use crate::error::{Error, Result};
use crate::runtime::instances::Origin;

/// The init file, in the instance's directory (mode 0600, removed once
/// the server is ready).
const INIT_FILE: &str = "init.sql";
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// MariaDB's (or MySQL's) programs.
#[derive(Debug, Clone)]
pub struct Bins {
    server: PathBuf,
    install: PathBuf,
    client: PathBuf,
}

impl Bins {
    pub fn find() -> Result<Bins> {
        let first = |names: &[&str]| names.iter().find_map(|n| find_program(n));
        let found = (
            first(&["mariadbd", "mysqld"]),
            first(&["mariadb-install-db", "mysql_install_db"]),
            first(&["mariadb", "mysql"]),
        );
        match found {
            (Some(server), Some(install), Some(client)) => Ok(Bins {
                server,
                install,
                client,
            }),
            (server, install, _) => {
                let missing = if server.is_none() {
                    "mariadbd (or mysqld)"
                } else if install.is_none() {
                    "mariadb-install-db"
                } else {
                    "the mariadb client"
                };
                Err(Error::Unprocessable(format!(
                    "MySQL instances need MariaDB, and {missing} is not installed on this machine: install the 'mariadb-server' and 'mariadb-client' packages"
                )))
            }
        }
    }
}

fn bins(ctx: &Ctx) -> Result<&Bins> {
    match &ctx.programs {
        super::Programs::Mysql(b) => Ok(b),
        _ => Err(Error::internal("not a MySQL instance")),
    }
}

fn program(p: &std::path::Path) -> String {
    sh_quote(&p.to_string_lossy())
}

pub async fn init(ctx: &Ctx) -> Result<()> {
    if ctx.spec.origin != Origin::Empty {
        return Err(Error::bad_request(
            "copies and restores are available for PostgreSQL only",
        ));
    }
    let command = format!(
        "exec {} --no-defaults --datadir={} --auth-root-authentication-method=normal --skip-test-db",
        program(&bins(ctx)?.install),
        sh_quote(&ctx.inside(DATA_TMP)),
    );
    ctx.run(
        "mariadb-install-db",
        &command,
        &BTreeMap::new(),
        super::INIT_TIMEOUT,
    )
    .await
    .map(drop)
}

/// A string literal of MariaDB's SQL.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The statements run at every start: the admin's and the application's
/// users with the spec's passwords, no anonymous or remote-host users, the
/// application's database. Each is idempotent.
fn init_sql(ctx: &Ctx) -> String {
    let c = &ctx.spec.credentials;
    let admin_pw = literal(c.admin_password.expose());
    let app_pw = literal(c.app_password.expose());
    let (admin, app, db) = (&c.admin_user, &c.app_user, &c.database);
    let mut sql = vec![
        "DELETE FROM mysql.global_priv WHERE User = '' OR Host NOT IN ('localhost', '127.0.0.1', '::1', '%')".to_string(),
        "FLUSH PRIVILEGES".to_string(),
    ];
    for host in ["localhost", "127.0.0.1", "::1"] {
        sql.push(format!(
            "ALTER USER IF EXISTS 'root'@'{host}' IDENTIFIED BY {admin_pw}"
        ));
    }
    if admin != "root" {
        for host in ["localhost", "127.0.0.1"] {
            sql.push(format!(
                "CREATE USER IF NOT EXISTS '{admin}'@'{host}' IDENTIFIED BY {admin_pw}"
            ));
            sql.push(format!(
                "ALTER USER '{admin}'@'{host}' IDENTIFIED BY {admin_pw}"
            ));
            sql.push(format!(
                "GRANT ALL PRIVILEGES ON *.* TO '{admin}'@'{host}' WITH GRANT OPTION"
            ));
        }
    }
    sql.push(format!("CREATE DATABASE IF NOT EXISTS `{db}`"));
    for host in ["%", "localhost"] {
        sql.push(format!(
            "CREATE USER IF NOT EXISTS '{app}'@'{host}' IDENTIFIED BY {app_pw}"
        ));
        sql.push(format!(
            "ALTER USER '{app}'@'{host}' IDENTIFIED BY {app_pw}"
        ));
        sql.push(format!(
            "GRANT ALL PRIVILEGES ON `{db}`.* TO '{app}'@'{host}'"
        ));
    }
    sql.iter().map(|s| format!("{s};\n")).collect()
}

pub fn configure(ctx: &Ctx) -> Result<()> {
    ctx.write(INIT_FILE, init_sql(ctx).as_bytes())
}

/// The server's command line (no secrets): the init file is passed while
/// it exists (a restart after a crash finds it removed).
pub fn command(ctx: &Ctx, bins: &Bins) -> String {
    let limits = &ctx.spec.limits;
    let buffer_pool = (limits.memory_mb / 4).clamp(8, 128);
    let socket = if ctx.sandboxes.shared() {
        sh_quote(&ctx.inside("mysqld.sock"))
    } else {
        "/tmp/mysqld.sock".to_string()
    };
    let init = sh_quote(&ctx.inside(INIT_FILE));
    format!(
        "set --; if test -f {init}; then set -- --init-file={init}; fi; exec {server} --no-defaults --datadir={data} --port={port} --bind-address=127.0.0.1 --socket={socket} --skip-name-resolve --max-connections={max} --innodb-buffer-pool-size={buffer_pool}M --performance-schema=OFF \"$@\"",
        server = program(&bins.server),
        data = sh_quote(&ctx.inside(DATA)),
        port = ctx.port,
        max = limits.max_connections,
    )
}

/// Readiness: the application's user logs in over TCP and runs a query.
pub async fn probe(ctx: &Ctx) -> Result<()> {
    let c = &ctx.spec.credentials;
    let command = format!(
        "exec {} --no-defaults --protocol=TCP -h 127.0.0.1 -P {} -u {} --connect-timeout=5 -e 'SELECT 1' {}",
        program(&bins(ctx)?.client),
        ctx.port,
        c.app_user,
        c.database,
    );
    let env = BTreeMap::from([("MYSQL_PWD".to_string(), c.app_password.expose().to_string())]);
    ctx.run("the MySQL login check", &command, &env, PROBE_TIMEOUT)
        .await
        .map(drop)
}

/// Once ready, the init file (which holds the passwords) goes.
pub fn after_ready(ctx: &Ctx) -> Result<()> {
    remove_path(&ctx.path(INIT_FILE))
}
