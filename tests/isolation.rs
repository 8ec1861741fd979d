//! Tenant isolation on the local runtime, against the `sylphx` binary run
//! as root (as CI runs it): each project's code in a sandbox of its own
//! uid, sources only from the allowed roots, deletes that leave nothing
//! running, and no tenant process outliving the server.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::apps::{GATE, Gate, finished, repo, repo_with};
use common::binary::{ServeProcess, create_token, free_port, get, post};
use common::procs;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

/// Probes everything a hostile tenant would try, prints what it got, and
/// (with `serve`) answers the same over HTTP.
const HOSTILE: &str = r#"
import glob, os, sys, http.server
def probe():
    out = []
    for p in os.environ.get("PROBE_PATHS", "").split(":"):
        try:
            with open(p, "rb") as f:
                out.append("read %s: %s" % (p, f.read(4096).decode("latin-1")))
        except Exception as e:
            out.append("cannot read %s: %s" % (p, type(e).__name__))
    for d in os.environ.get("PROBE_DIRS", "").split(":"):
        try:
            out.append("listed %s: %s" % (d, " ".join(os.listdir(d))))
        except Exception as e:
            out.append("cannot list %s: %s" % (d, type(e).__name__))
        try:
            open(os.path.join(d, "pwned"), "w").write("x")
            out.append("wrote into %s" % d)
        except Exception as e:
            out.append("cannot write into %s: %s" % (d, type(e).__name__))
    for f in glob.glob("/proc/*/environ"):
        try:
            out.append(open(f, "rb").read().decode("latin-1").replace("\0", " "))
        except Exception as e:
            out.append("cannot read %s: %s" % (f, type(e).__name__))
    try:
        os.kill(int(os.environ["VICTIM_PID"]), 9)
        out.append("killed the victim")
    except Exception as e:
        out.append("kill failed: %s" % type(e).__name__)
    out.append("uid %d, pids seen: %s" % (os.getuid(), " ".join(p for p in os.listdir("/proc") if p.isdigit())))
    out.append("probe-done")
    return "\n".join(out)

class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = probe().encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass

if sys.argv[1:2] == ["serve"]:
    http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
else:
    print(probe(), flush=True)
"#;

/// A `serve` on a data directory of its own, with its app router.
struct Server {
    work: tempfile::TempDir,
    port: u16,
    apps: String,
    envs: Vec<(String, String)>,
    process: Option<ServeProcess>,
}

impl Server {
    async fn start(extra_env: &[(&str, &str)]) -> Server {
        let mut s = Server::new(extra_env);
        s.restart().await;
        s
    }

    /// A server not started yet.
    fn new(extra_env: &[(&str, &str)]) -> Server {
        let work = tempfile::tempdir().unwrap();
        let data = work.path().join("data");
        let mut envs = vec![
            (
                "SYLPHX_DATA_DIR".to_string(),
                data.to_str().unwrap().to_string(),
            ),
            ("SYLPHX_SANDBOX_IDS".to_string(), common::sandbox_ids()),
        ];
        envs.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        Server {
            work,
            port: free_port(),
            apps: format!("127.0.0.1:{}", free_port()),
            envs,
            process: None,
        }
    }

    fn envs(&self) -> Vec<(&str, &str)> {
        self.envs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }

    fn data(&self) -> PathBuf {
        self.work.path().join("data")
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1", self.port)
    }

    async fn restart(&mut self) {
        let extra = ["--apps-listen", self.apps.as_str()];
        let p = ServeProcess::start(self.port, &extra, &self.envs(), self.work.path()).await;
        self.process = Some(p);
    }

    fn token(&self, org: &str) -> String {
        create_token(org, &self.envs())
    }

    fn stop(&mut self) -> ServeProcess {
        self.process.take().expect("serve runs")
    }

    /// Creates `slug` from `src` with `vars` (secret when the key ends in
    /// SECRET), deploys production and waits for the outcome.
    async fn deploy_new(
        &self,
        token: &str,
        slug: &str,
        src: &Path,
        vars: &[(&str, &str)],
    ) -> Value {
        let (status, body) = post(
            &self.base(),
            "/projects",
            token,
            json!({"name": slug, "slug": slug, "gitRepository": src.to_str().unwrap()}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        self.set_vars(token, slug, "production", vars).await;
        self.deploy(token, slug, "production").await
    }

    async fn set_vars(&self, token: &str, slug: &str, env: &str, vars: &[(&str, &str)]) {
        if vars.is_empty() {
            return;
        }
        let vars: Vec<Value> = vars
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v, "secret": k.ends_with("SECRET")}))
            .collect();
        let (status, body) = post(
            &self.base(),
            &format!("/projects/{slug}/env-vars"),
            token,
            json!({"envType": env, "vars": vars}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{body}");
    }

    async fn deploy(&self, token: &str, slug: &str, env: &str) -> Value {
        let (status, body) = post(
            &self.base(),
            &format!("/projects/{slug}/deploy"),
            token,
            json!({"envType": env}),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
        finished(
            &self.base(),
            token,
            slug,
            body["deploymentId"].as_str().unwrap(),
        )
        .await
    }

    /// What the app router answers for `host`.
    async fn served(&self, host: &str) -> (StatusCode, String) {
        let r = Client::new()
            .get(format!("http://{}/", self.apps))
            .header("Host", host)
            .send()
            .await
            .unwrap();
        (r.status(), r.text().await.unwrap())
    }

    /// Polls until the router answers 404 for `host`.
    async fn wait_unrouted(&self, host: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while self.served(host).await.0 != StatusCode::NOT_FOUND {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{host} is still routed"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Polls until `path` is gone (a teardown job removes it).
async fn wait_removed(path: &Path) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while procs::exists(path) {
        assert!(tokio::time::Instant::now() < deadline, "{path:?} is left");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

/// The app process (not bubblewrap) among the processes with `marker`.
async fn app_pid(marker: &str) -> i32 {
    let pids = procs::wait_for(marker, 1).await;
    *pids
        .iter()
        .find(|&&p| {
            std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c.starts_with(b"python3"))
        })
        .unwrap_or_else(|| panic!("no app among {pids:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_tenant_reaches_nothing_of_others() {
    let server = Server::start(&[]).await;
    let data = server.data();
    let (victim_token, hostile_token) = (server.token("victim-org"), server.token("hostile-org"));

    // The victim: an app with a secret env var, from a source the hostile
    // tenant must not read either.
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let victim_secret = format!("victim-secret-{tag}");
    let source_mark = format!("victim-source-{tag}");
    let victim_src = repo_with(
        &format!("web: exec python3 app.py victim-{tag}\n"),
        &[("notes.txt", &source_mark)],
    );
    let victim = server
        .deploy_new(
            &victim_token,
            "victim",
            victim_src.path(),
            &[("VICTIM_SECRET", &victim_secret), ("GREETING", "victim-ok")],
        )
        .await;
    assert_eq!(victim["status"], "success", "{victim}");
    let victim_pid = app_pid(&format!("victim-{tag}")).await;
    let (_, project) = get(&server.base(), "/projects/victim", &victim_token).await;
    let victim_release = data
        .join("releases")
        .join(project["id"].as_str().unwrap())
        .join(victim["id"].as_str().unwrap());
    assert!(
        victim_release.join("notes.txt").exists(),
        "{victim_release:?}"
    );

    // The hostile tenant's release command and app try everything.
    let probe_paths = [
        data.join("master.key"),
        data.join("admin-token"),
        data.join("session.key"),
        data.join("sylphx.db"),
        victim_release.join("notes.txt"),
        PathBuf::from(format!("/proc/{victim_pid}/environ")),
    ];
    let probe_paths: Vec<&str> = probe_paths.iter().map(|p| p.to_str().unwrap()).collect();
    let probe_dirs = [data.to_str().unwrap(), victim_release.to_str().unwrap()];
    let visible = format!("visible-{tag}");
    let hostile_src = repo_with(
        &format!(
            "release: python3 hostile.py hostile-{tag}\nweb: exec python3 hostile.py serve hostile-{tag}\n"
        ),
        &[("hostile.py", HOSTILE)],
    );
    let victim_pid_s = victim_pid.to_string();
    let hostile = server
        .deploy_new(
            &hostile_token,
            "hostile",
            hostile_src.path(),
            &[
                ("PROBE_PATHS", &probe_paths.join(":")),
                ("PROBE_DIRS", &probe_dirs.join(":")),
                ("VICTIM_PID", &victim_pid_s),
                ("MARKER", &visible),
            ],
        )
        .await;
    assert_eq!(hostile["status"], "success", "{hostile}");
    let (status, logs) = get(
        &server.base(),
        "/projects/hostile/logs?tail=1000",
        &hostile_token,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let logs = logs.as_str().unwrap().to_string();
    let (status, answer) = server.served("hostile.localhost").await;
    assert_eq!(status, StatusCode::OK);

    let secrets = [
        ("the master key", read(&data.join("master.key"))),
        ("the admin token", read(&data.join("admin-token"))),
        ("the session key", read(&data.join("session.key"))),
        ("the victim's token", victim_token.clone()),
        ("the victim's secret env var", victim_secret.clone()),
        ("the victim's source", source_mark.clone()),
        ("the store", "SQLite format 3".to_string()),
    ];
    for (what, text) in [("release logs", &logs), ("app answer", &answer)] {
        // The probe ran, and it could read its own environment…
        assert!(text.contains("probe-done"), "{what}: {text}");
        assert!(text.contains(&visible), "{what}: {text}");
        // …but nothing of anyone else's.
        for (name, secret) in &secrets {
            assert!(!text.contains(secret.as_str()), "{what} show {name}");
        }
        assert!(text.contains("kill failed"), "{what}: {text}");
        assert!(!text.contains("wrote into"), "{what}: {text}");
    }
    for dir in probe_dirs {
        assert!(!Path::new(dir).join("pwned").exists(), "{dir} was written");
    }

    // The victim is untouched and still serves.
    assert!(procs::alive(victim_pid), "the victim was killed");
    assert_eq!(
        server.served("victim.localhost").await,
        (StatusCode::OK, "victim-ok".to_string())
    );

    // The host sees each app under its project's own unprivileged uid.
    let hostile_pid = app_pid(&format!("hostile-{tag}")).await;
    let (victim_uid, hostile_uid) = (
        procs::uid(victim_pid).unwrap(),
        procs::uid(hostile_pid).unwrap(),
    );
    assert_ne!(victim_uid, 0);
    assert_ne!(hostile_uid, 0);
    assert_ne!(victim_uid, hostile_uid);
    // Its release belongs to it alone.
    let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&victim_release).unwrap());
    assert_eq!(owner, victim_uid);
    // The secret reaches the victim's own process, and no root process.
    assert!(
        procs::environ(victim_pid)
            .iter()
            .any(|e| e == &format!("VICTIM_SECRET={victim_secret}"))
    );
    assert_eq!(
        procs::root_processes_carrying(&victim_secret),
        Vec::<i32>::new()
    );
    assert_eq!(
        procs::with_marker(&victim_secret),
        Vec::<i32>::new(),
        "in a command line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_outside_the_roots_and_other_projects_releases_are_refused() {
    let server = Server::start(&[]).await;
    let (token, other) = (server.token("acme"), server.token("other-org"));
    let src = repo("web: exec python3 app.py\n");
    let good = server.deploy_new(&token, "good", src.path(), &[]).await;
    assert_eq!(good["status"], "success", "{good}");
    assert_eq!(good["error"], Value::Null);

    // Outside the roots, existing or not, through a link, or the data
    // directory (which lies under an allowed root here): one same answer.
    let link_dir = tempfile::tempdir().unwrap();
    let link = link_dir.path().join("etc");
    std::os::unix::fs::symlink("/etc", &link).unwrap();
    let missing = format!("/nonexistent-{}", uuid::Uuid::new_v4().simple());
    let data = server.data();
    let refused = [
        "/etc".to_string(),
        missing,
        format!("file://{}", link.display()),
        data.to_str().unwrap().to_string(),
        data.join("releases").to_str().unwrap().to_string(),
        "relative/path".to_string(),
    ];
    let mut errors = Vec::new();
    for (i, repo) in refused.iter().enumerate() {
        let slug = format!("bad-{i}");
        let (status, body) = post(
            &server.base(),
            "/projects",
            &other,
            json!({"name": slug, "slug": slug, "gitRepository": repo}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "accepted at create: {body}");
        let d = server.deploy(&other, &slug, "production").await;
        assert_eq!(d["status"], "failed", "{repo}: {d}");
        errors.push(d["error"].as_str().unwrap().to_string());
    }
    assert!(errors[0].contains("allowed roots"), "{}", errors[0]);
    assert!(
        errors.iter().all(|e| e == &errors[0]),
        "the answer tells which paths exist: {errors:#?}"
    );

    // Another organisation's release, by id, is not a release of its own;
    // neither is an id that names nothing.
    let mut answers = Vec::new();
    for (slug, id) in [
        ("thief", good["id"].as_str().unwrap().to_string()),
        ("guess", uuid::Uuid::now_v7().to_string()),
    ] {
        let (status, body) = post(
            &server.base(),
            "/projects",
            &other,
            json!({"name": slug, "slug": slug, "dockerImage": format!("local:{id}@0123456789ab")}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let d = server.deploy(&other, slug, "production").await;
        assert_eq!(d["status"], "failed", "{d}");
        let error = d["error"].as_str().unwrap().replace(&id, "<id>");
        assert!(
            error.contains("is not a release of this project"),
            "{error}"
        );
        answers.push(error);
        assert_eq!(
            server.served(&format!("{slug}.localhost")).await.0,
            StatusCode::NOT_FOUND
        );
    }
    assert_eq!(answers[0], answers[1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_stop_and_remove_everything_for_good() {
    let mut server = Server::start(&[]).await;
    let token = server.token("acme");
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let src = repo(&format!("web: exec python3 app.py del-{tag}\n"));
    let first = server
        .deploy_new(&token, "shop", src.path(), &[("GREETING", "prod")])
        .await;
    assert_eq!(first["status"], "success", "{first}");
    let (status, staging) = post(
        &server.base(),
        "/projects/shop/environments",
        &token,
        json!({"name": "staging"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{staging}");
    server
        .set_vars(&token, "shop", "staging", &[("GREETING", "stage")])
        .await;
    let staged = server.deploy(&token, "shop", "staging").await;
    assert_eq!(staged["status"], "success", "{staged}");
    assert_eq!(server.served("staging.shop.localhost").await.1, "stage");
    let by_greeting = |g: &str| {
        procs::with_marker(&format!("del-{tag}"))
            .into_iter()
            .filter(|&p| {
                procs::environ(p)
                    .iter()
                    .any(|e| e == &format!("GREETING={g}"))
            })
            .collect::<Vec<_>>()
    };
    let (prod_pids, stage_pids) = (by_greeting("prod"), by_greeting("stage"));
    assert!(!prod_pids.is_empty() && !stage_pids.is_empty());
    let (_, project) = get(&server.base(), "/projects/shop", &token).await;
    let releases = server
        .data()
        .join("releases")
        .join(project["id"].as_str().unwrap());
    let stage_release = releases.join(staged["id"].as_str().unwrap());
    assert!(stage_release.exists());
    let uid = procs::uid(prod_pids[0]).unwrap();

    // Deleting the staging environment stops it, unroutes it and removes
    // its releases; production keeps serving.
    let gql = Client::new()
        .post(server.base().replace("/api/v1", "/graphql"))
        .bearer_auth(&token)
        .json(&json!({"query": "mutation($p: String!, $id: ID!) { deleteEnvironment(projectId: $p, id: $id) { id deleted } }",
                      "variables": {"p": "shop", "id": staging["id"]}}))
        .send()
        .await
        .unwrap();
    let body: Value = gql.json().await.unwrap();
    assert_eq!(body["data"]["deleteEnvironment"]["deleted"], true, "{body}");
    server.wait_unrouted("staging.shop.localhost").await;
    procs::wait_gone(&stage_pids).await;
    wait_removed(&stage_release).await;
    assert!(releases.join(first["id"].as_str().unwrap()).exists());
    assert_eq!(
        server.served("shop.localhost").await,
        (StatusCode::OK, "prod".into())
    );
    // Production cannot be deleted on its own.
    let body: Value = Client::new()
        .post(server.base().replace("/api/v1", "/graphql"))
        .bearer_auth(&token)
        .json(&json!({"query": "mutation($id: ID!) { deleteEnvironment(projectId: \"shop\", id: $id) { id } }",
                      "variables": {"id": project["environments"][0]["id"]}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        body["errors"][0]["extensions"]["code"], "BAD_REQUEST",
        "{body}"
    );

    // Deleting the project stops everything it ran and removes its releases.
    let r = Client::new()
        .delete(format!("{}/projects/shop", server.base()))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    server.wait_unrouted("shop.localhost").await;
    procs::wait_gone(&prod_pids).await;
    wait_removed(&releases).await;
    assert_eq!(procs::with_marker(&format!("del-{tag}")), Vec::<i32>::new());
    let store = sea_orm::Database::connect(format!(
        "sqlite://{}?mode=ro",
        server.data().join("sylphx.db").display()
    ))
    .await
    .unwrap();
    let project_id: uuid::Uuid = project["id"].as_str().unwrap().parse().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while <entity::sandbox_users::Entity as sea_orm::EntityTrait>::find_by_id(uid as i64)
        .one(&store)
        .await
        .unwrap()
        .is_some_and(|u| u.owner_id == project_id)
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "uid {uid} is still taken"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Its uid is free again: the next project gets it.
    let next_src = repo(&format!("web: exec python3 app.py next-{tag}\n"));
    let next = server
        .deploy_new(&token, "next", next_src.path(), &[])
        .await;
    assert_eq!(next["status"], "success", "{next}");
    assert_eq!(procs::uid(app_pid(&format!("next-{tag}")).await), Some(uid));

    // A restart brings nothing of the deleted project back.
    server.stop().terminate();
    server.restart().await;
    assert_eq!(server.served("next.localhost").await.0, StatusCode::OK);
    assert_eq!(
        server.served("shop.localhost").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(procs::with_marker(&format!("del-{tag}")), Vec::<i32>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tenant_process_outlives_the_server_and_releases_come_back() {
    let mut server = Server::start(&[]).await;
    let token = server.token("acme");
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let mut sources = Vec::new();
    const APPS: [(&str, &str); 2] = [("one", "first"), ("two", "second")];
    async fn all_served(server: &Server) {
        for (slug, greeting) in APPS {
            assert_eq!(
                server.served(&format!("{slug}.localhost")).await,
                (StatusCode::OK, greeting.to_string())
            );
        }
    }
    for (slug, greeting) in APPS {
        // A process tree, not one process: the shell stays and forks.
        let src = repo(&format!(
            "web: sleep 600 & python3 app.py life-{tag}; wait\n"
        ));
        let d = server
            .deploy_new(&token, slug, src.path(), &[("GREETING", greeting)])
            .await;
        assert_eq!(d["status"], "success", "{d}");
        sources.push(src);
    }
    let marker = format!("life-{tag}");

    // SIGTERM: every tenant process is gone by the time serve has exited.
    let tenants = procs::wait_for(&marker, 2).await;
    let sleepers: Vec<i32> = tenants
        .iter()
        .filter_map(|&p| procs::uid(p))
        .flat_map(|uid| {
            procs::with_marker("sleep 600")
                .into_iter()
                .filter(move |&p| procs::uid(p) == Some(uid))
        })
        .collect();
    assert!(!sleepers.is_empty());
    let status = server.stop().terminate();
    assert!(status.success(), "serve exited with {status}");
    procs::wait_gone(&tenants).await;
    procs::wait_gone(&sleepers).await;

    // The last releases come back with the server.
    server.restart().await;
    all_served(&server).await;

    // SIGKILL: no shutdown hook runs, and still nothing is left.
    let tenants = procs::wait_for(&marker, 2).await;
    server.stop().kill9();
    procs::wait_gone(&tenants).await;
    server.restart().await;
    all_served(&server).await;
}

/// Forks until refused, reports how many it got, exits.
const BOMB: &str = r#"
import os, time
n = 0
for _ in range(2000):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(60)
        os._exit(0)
    n += 1
print("forked", n, flush=True)
"#;

/// Asks for much more memory than its service may have, then serves.
const HOG: &str = r#"
import os
hog = bytearray(400 * 1024 * 1024)
for i in range(0, len(hog), 4096):
    hog[i] = 1
exec(open("app.py").read())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cannot_exhaust_processes_or_memory() {
    let server = Server::start(&[
        ("SYLPHX_SANDBOX_MAX_PROCESSES", "64"),
        ("SYLPHX_READY_TIMEOUT_SECS", "10"),
    ])
    .await;
    let token = server.token("acme");
    let bomb_src = repo_with(
        "release: python3 bomb.py\nweb: exec python3 app.py\n",
        &[("bomb.py", BOMB)],
    );
    let bombed = server
        .deploy_new(&token, "bomb", bomb_src.path(), &[])
        .await;
    assert_eq!(bombed["status"], "success", "{bombed}");
    let (_, logs) = get(&server.base(), "/projects/bomb/logs?tail=1000", &token).await;
    let logs = logs.as_str().unwrap();
    let forked: usize = logs
        .lines()
        .find_map(|l| l.split("forked ").nth(1))
        .unwrap_or_else(|| panic!("{logs}"))
        .trim()
        .parse()
        .unwrap();
    assert!(forked < 64, "forked {forked} processes past the limit");

    // A service limited to 64 MiB that wants 400 is killed for it, says
    // so, and never serves; another project deploys meanwhile.
    let hog_src = repo_with("web: exec python3 hog.py\n", &[("hog.py", HOG)]);
    let (status, body) = post(
        &server.base(),
        "/projects",
        &token,
        json!({"name": "hog", "slug": "hog", "gitRepository": hog_src.path().to_str().unwrap()}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = post(
        &server.base(),
        "/projects/hog/services",
        &token,
        json!({"name": "web", "port": 8080, "resources": {"memory": "64Mi"}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let hog = server.deploy(&token, "hog", "production").await;
    assert_eq!(hog["status"], "failed", "{hog}");
    let (_, logs) = get(&server.base(), "/projects/hog/logs?tail=1000", &token).await;
    assert!(logs.as_str().unwrap().contains("out of memory"), "{logs}");

    // A deploy that never ends its release command holds up no one else's.
    let gate = Gate::start().await;
    let slow_src = repo_with(
        "release: python3 gate.py\nweb: exec python3 app.py\n",
        &[("gate.py", GATE)],
    );
    let (status, _) = post(
        &server.base(),
        "/projects",
        &token,
        json!({"name": "slow", "slug": "slow", "gitRepository": slow_src.path().to_str().unwrap()}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let gate_port = gate.port.to_string();
    server
        .set_vars(&token, "slow", "production", &[("GATE_PORT", &gate_port)])
        .await;
    let (status, slow) = post(&server.base(), "/projects/slow/deploy", &token, json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{slow}");
    gate.wait_arrivals(1).await;
    let other = repo("web: exec python3 app.py\n");
    let fine = server
        .deploy_new(&token, "fine", other.path(), &[("GREETING", "fine")])
        .await;
    assert_eq!(fine["status"], "success", "{fine}");
    assert_eq!(
        server.served("fine.localhost").await,
        (StatusCode::OK, "fine".into())
    );
    gate.open();
    let slow = finished(
        &server.base(),
        &token,
        "slow",
        slow["deploymentId"].as_str().unwrap(),
    )
    .await;
    assert_eq!(slow["status"], "success", "{slow}");
}

/// On a machine that cannot make sandboxes (here: a bubblewrap that always
/// fails, as it does without user namespaces), tenant code does not run,
/// and the deployment says why; `--insecure-shared-sandbox` runs it anyway,
/// as the server's own user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_sandboxes_tenant_code_runs_only_when_sharing_is_asked_for() {
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let src = repo(&format!("web: exec python3 app.py nosandbox-{tag}\n"));
    let server = Server::start(&[("SYLPHX_BWRAP", "/bin/false")]).await;
    let token = server.token("acme");
    let d = server.deploy_new(&token, "app", src.path(), &[]).await;
    assert_eq!(d["status"], "failed", "{d}");
    let error = d["error"].as_str().unwrap();
    assert!(
        error.contains("cannot make sandboxes") && error.contains("--insecure-shared-sandbox"),
        "{error}"
    );
    assert_eq!(
        procs::with_marker(&format!("nosandbox-{tag}")),
        Vec::<i32>::new()
    );
    assert_eq!(
        server.served("app.localhost").await.0,
        StatusCode::NOT_FOUND
    );
    let stderr = server.process.as_ref().unwrap().stderr();
    assert!(stderr.contains("cannot run tenant code"), "{stderr}");

    // A data directory under a directory other users may not search (a
    // home directory, say): the sandboxes could not reach their releases,
    // and the error says which directory and what to do.
    let mut closed = Server::new(&[]);
    std::fs::set_permissions(closed.work.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    closed.restart().await;
    let token = closed.token("acme");
    let d = closed.deploy_new(&token, "app", src.path(), &[]).await;
    assert_eq!(d["status"], "failed", "{d}");
    let error = d["error"].as_str().unwrap();
    assert!(
        error.contains("cannot reach the data directory")
            && error.contains(&closed.work.path().display().to_string()),
        "{error}"
    );
    drop(closed);

    let mut shared = Server::start(&[
        ("SYLPHX_BWRAP", "/bin/false"),
        ("SYLPHX_INSECURE_SHARED_SANDBOX", "true"),
    ])
    .await;
    let token = shared.token("acme");
    let d = shared
        .deploy_new(&token, "app", src.path(), &[("GREETING", "shared")])
        .await;
    assert_eq!(d["status"], "success", "{d}");
    assert_eq!(
        shared.served("app.localhost").await,
        (StatusCode::OK, "shared".into())
    );
    let pid = app_pid(&format!("nosandbox-{tag}")).await;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    assert_eq!(procs::uid(pid), Some(me));
    let (_, project) = get(&shared.base(), "/projects/app", &token).await;
    let release = shared
        .data()
        .join("releases")
        .join(project["id"].as_str().unwrap())
        .join(d["id"].as_str().unwrap());
    assert_eq!(
        std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(&release).unwrap()),
        me
    );
    let stderr = shared.process.as_ref().unwrap().stderr();
    assert!(
        stderr.contains("without isolation between projects"),
        "{stderr}"
    );
    shared.stop().kill9();
    procs::wait_gone(&[pid]).await;
}

/// With the store on a PostgreSQL that took no password, `serve` says at
/// start that tenants on this machine could reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_warns_when_the_store_takes_no_password() {
    let Some((url, name)) = common::fresh_postgres().await else {
        eprintln!("skipped: SYLPHX_TEST_DATABASE_URL is not set");
        return;
    };
    let mut server = Server::start(&[("SYLPHX_DATABASE_URL", &url)]).await;
    let stderr = server.process.as_ref().unwrap().stderr();
    assert!(
        stderr.contains("accepted a connection without a password"),
        "{stderr}"
    );
    drop(server.stop());
    common::drop_postgres(&name).await;
}
