//! Persistent volumes (endpoints 45–48) on the local runtime: a deployed
//! app keeps its files across redeploys, cannot write past the size, cannot
//! see another project's volume, and loses the data when the volume is
//! deleted; bad input, other organisations and read tokens change nothing.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::apps::{deploy, git};
use common::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sylphx::auth::Role;

/// Serves its volume at `/data`: `/write?v=…` stores a file, `/read` reads
/// it back, `/fill` asks for 2 GiB of real disk, `/peek?p=…` tells whether
/// a path exists in its sandbox.
const VOLUME_APP: &str = r#"
import errno, os, http.server, urllib.parse
FILE = "/data/note.txt"
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        url = urllib.parse.urlparse(self.path)
        q = urllib.parse.parse_qs(url.query)
        try:
            if url.path == "/write":
                with open(FILE, "w") as f:
                    f.write(q["v"][0])
                body = "written"
            elif url.path == "/read":
                with open(FILE) as f:
                    body = f.read()
            elif url.path == "/fill":
                fd = os.open("/data/big", os.O_WRONLY | os.O_CREAT, 0o600)
                try:
                    os.posix_fallocate(fd, 0, 2 << 30)
                    body = "filled"
                finally:
                    os.close(fd)
                    os.unlink("/data/big")
            elif url.path == "/peek":
                body = "visible" if os.path.exists(q["p"][0]) else "hidden"
            else:
                body = "?"
        except OSError as e:
            body = "ENOSPC" if e.errno == errno.ENOSPC else "error: " + (e.strerror or "")
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
"#;

fn volume_repo() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.py"), VOLUME_APP).unwrap();
    std::fs::write(dir.path().join("Procfile"), "web: exec python3 app.py\n").unwrap();
    git(dir.path(), &["init", "-q", "-b", "main"]);
    git(dir.path(), &["add", "-A"]);
    git(dir.path(), &["commit", "-qm", "app"]);
    dir
}

/// Unmounts whatever the server left mounted under its data directory
/// (a test server is not shut down), even when the test fails; declared
/// after the server, so that it runs first.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let Ok(table) = std::fs::read_to_string("/proc/self/mountinfo") else {
            return;
        };
        let root = self.0.canonicalize().unwrap_or_else(|_| self.0.clone());
        for line in table.lines() {
            if let Some(point) = line.split(' ').nth(4)
                && Path::new(point).starts_with(&root)
            {
                let _ = std::process::Command::new("umount")
                    .args(["-l", point])
                    .status();
            }
        }
    }
}

/// Whether this machine can give volumes a hard size (see the README).
fn sizes_enforced() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    root && Path::new("/dev/loop-control").exists()
        && ["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"]
            .iter()
            .any(|p| Path::new(p).exists())
}

async fn app_get(s: &TestServer, host: &str, path: &str) -> String {
    let resp = s
        .client()
        .get(format!("http://{}{path}", s.apps))
        .header("Host", host)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{path}");
    resp.text().await.unwrap()
}

/// Polls `check` until it holds, for at most 60 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create_deployed(s: &TestServer, slug: &str, src: &Path) {
    let (status, body) = s
        .post(
            "/projects",
            &s.admin_token,
            json!({"name": slug, "slug": slug, "gitRepository": src.to_str().unwrap()}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let d = deploy(s, slug).await;
    assert_eq!(d["status"], "success", "{d}");
}

async fn data_survives_redeploys_and_goes_with_the_volume(backend: Backend) {
    let s = TestServer::start(backend).await;
    let _unmount = Unmount(s.dir.path().to_path_buf());
    let t = s.admin_token.clone();
    let src = volume_repo();
    create_deployed(&s, "keeper", src.path()).await;

    // Created for the service that serves HTTP; pending until a deploy
    // mounts it.
    let (status, vol) = s
        .post(
            "/projects/keeper/volumes",
            &t,
            json!({"name": "uploads", "mountPath": "/data", "sizeGb": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{vol}");
    assert_eq!(vol["name"], "uploads");
    assert_eq!(vol["mountPath"], "/data");
    assert_eq!(vol["sizeGb"], 1);
    assert_eq!(vol["status"], "pending");
    assert_eq!(vol["service"], "web");
    let id = vol["id"].as_str().unwrap().to_string();
    let host_dir = s.dir.path().join("volumes").join(&id);
    assert!(host_dir.is_dir());

    assert_eq!(deploy(&s, "keeper").await["status"], "success");
    let (status, got) = s.get(&format!("/projects/keeper/volumes/{id}"), &t).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(got["status"], "bound");
    assert_eq!(
        app_get(&s, "keeper.localhost", "/write?v=kept").await,
        "written"
    );

    // A redeploy starts new replicas from a new release: the file is there.
    assert_eq!(deploy(&s, "keeper").await["status"], "success");
    assert_eq!(app_get(&s, "keeper.localhost", "/read").await, "kept");

    // The size holds (or, where it cannot, the volume says so).
    let (_, got) = s.get(&format!("/projects/keeper/volumes/{id}"), &t).await;
    if sizes_enforced() {
        assert_eq!(app_get(&s, "keeper.localhost", "/fill").await, "ENOSPC");
        assert!(got["usedBytes"].as_i64().unwrap() > 0, "{got}");
        assert!(got["message"].is_null(), "{got}");
    } else {
        assert!(
            got["message"].as_str().unwrap().contains("not enforced"),
            "{got}"
        );
    }

    // Another project's app sees neither the volume's directory on the
    // host nor its data at its own mount.
    let other_src = volume_repo();
    create_deployed(&s, "snoop", other_src.path()).await;
    let (status, _) = s
        .post(
            "/projects/snoop/volumes",
            &t,
            json!({"name": "uploads", "mountPath": "/data", "sizeGb": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(deploy(&s, "snoop").await["status"], "success");
    let peek = format!("/peek?p={}", host_dir.join("note.txt").display());
    assert_eq!(app_get(&s, "snoop.localhost", &peek).await, "hidden");
    let peek = format!("/peek?p={}", s.dir.path().join("volumes").display());
    assert_eq!(app_get(&s, "snoop.localhost", &peek).await, "hidden");
    assert!(
        app_get(&s, "snoop.localhost", "/read")
            .await
            .starts_with("error"),
        "a fresh volume is empty"
    );

    // Deleting it removes the data, and the app goes on without it.
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("/projects/keeper/volumes/{id}"),
            &t,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = s.get(&format!("/projects/keeper/volumes/{id}"), &t).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    eventually("the volume's data is removed", || {
        let (dir, img) = (host_dir.clone(), host_dir.with_extension("img"));
        async move { !dir.exists() && !img.exists() }
    })
    .await;
    eventually("the app restarts without the volume", || async {
        app_get(&s, "keeper.localhost", "/read")
            .await
            .starts_with("error")
    })
    .await;
    assert_eq!(deploy(&s, "keeper").await["status"], "success");
    assert!(
        app_get(&s, "keeper.localhost", "/read")
            .await
            .starts_with("error")
    );

    // Deleting a project removes its volumes' data too.
    let (_, list) = s.get("/projects/snoop/volumes", &t).await;
    let snoop_dir = s
        .dir
        .path()
        .join("volumes")
        .join(list[0]["id"].as_str().unwrap());
    assert!(snoop_dir.is_dir());
    let (status, _) = s.call(Method::DELETE, "/projects/snoop", &t, None).await;
    assert_eq!(status, StatusCode::OK);
    eventually("a deleted project's volume is removed", || {
        let dir = snoop_dir.clone();
        async move { !dir.exists() }
    })
    .await;
}

fn field(body: &Value) -> &str {
    body["details"]["field"].as_str().unwrap_or_default()
}

async fn bad_input_other_organisations_and_limits(backend: Backend) {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "max_volume_size_gb = 2\nmax_volume_gb_per_organization = 3\n",
    )
    .unwrap();
    let s = TestServer::start_with_config(backend, Some(config.path().to_path_buf())).await;
    let _unmount = Unmount(s.dir.path().to_path_buf());
    let t = s.admin_token.clone();
    s.project(&t, "shop").await;
    let path = "/projects/shop/volumes";

    // No service yet: nothing to mount it in.
    let (status, body) = s
        .post(
            path,
            &t,
            json!({"name": "a", "mountPath": "/data", "sizeGb": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().starts_with("service"));
    let (status, _) = s
        .post(
            "/projects/shop/services",
            &t,
            json!({"name": "web", "port": 8080}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    for (body, named) in [
        (json!({"name": "a", "sizeGb": 1}), "mountPath"),
        (json!({"mountPath": "/data", "sizeGb": 1}), "name"),
        (json!({"name": "a", "mountPath": "/data"}), "sizeGb"),
        (
            json!({"name": "a", "mountPath": "data", "sizeGb": 1}),
            "mountPath",
        ),
        (
            json!({"name": "a", "mountPath": "/", "sizeGb": 1}),
            "mountPath",
        ),
        (
            json!({"name": "a", "mountPath": "/a/../etc", "sizeGb": 1}),
            "mountPath",
        ),
        (
            json!({"name": "a", "mountPath": "/data/./x", "sizeGb": 1}),
            "mountPath",
        ),
        (
            json!({"name": "a", "mountPath": "/proc/x", "sizeGb": 1}),
            "mountPath",
        ),
        (
            json!({"name": "a", "mountPath": "/etc", "sizeGb": 1}),
            "mountPath",
        ),
        (
            json!({"name": "a", "mountPath": "/usr/lib/x", "sizeGb": 1}),
            "mountPath",
        ),
        (
            json!({"name": "a", "mountPath": "/lib64", "sizeGb": 1}),
            "mountPath",
        ),
        (
            json!({"name": "a", "mountPath": "/tmp/x", "sizeGb": 1}),
            "mountPath",
        ),
        (
            json!({"name": "a", "mountPath": "/app", "sizeGb": 1}),
            "mountPath",
        ),
        (
            json!({"name": "a", "mountPath": "/data", "sizeGb": 0}),
            "sizeGb",
        ),
        (
            json!({"name": "a", "mountPath": "/data", "sizeGb": -5}),
            "sizeGb",
        ),
        (
            json!({"name": "a", "mountPath": "/data", "sizeGb": 1.5}),
            "sizeGb",
        ),
        (
            json!({"name": "a", "mountPath": "/data", "sizeGb": "ten"}),
            "sizeGb",
        ),
        (
            json!({"name": "a", "mountPath": "/data", "sizeGb": 16385}),
            "sizeGb",
        ),
        (
            json!({"name": "Not A Label", "mountPath": "/data", "sizeGb": 1}),
            "name",
        ),
    ] {
        let (status, answer) = s.post(path, &t, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {answer}");
        assert_eq!(field(&answer), named, "{body} → {answer}");
    }
    let (status, body) = s
        .post(
            path,
            &t,
            json!({"name": "a", "mountPath": "/data", "sizeGb": 1, "service": "nope"}),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // Past this server's max_volume_size_gb (2 here): a limit, 403.
    let (status, body) = s
        .post(
            path,
            &t,
            json!({"name": "a", "mountPath": "/data", "sizeGb": 3}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("max_volume_size_gb")
    );
    let (_, list) = s.get(path, &t).await;
    assert_eq!(list, json!([]), "bad input changed nothing");

    let (status, a) = s
        .post(
            path,
            &t,
            json!({"name": "a", "mountPath": "/app/uploads", "sizeGb": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{a}");
    let a_id = a["id"].as_str().unwrap().to_string();
    let (status, body) = s
        .post(
            path,
            &t,
            json!({"name": "a", "mountPath": "/other", "sizeGb": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(body["error"].as_str().unwrap().contains("name"), "{body}");
    for clash in ["/app/uploads", "/app/uploads/x"] {
        let (status, body) = s
            .post(
                path,
                &t,
                json!({"name": "b", "mountPath": clash, "sizeGb": 1}),
            )
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{clash}: {body}");
        assert!(body["error"].as_str().unwrap().starts_with("mountPath"));
    }

    // The organisation's budget: 1 + 2 GB fit, one more does not.
    let (status, body) = s
        .post(
            path,
            &t,
            json!({"name": "b", "mountPath": "/b", "sizeGb": 2}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = s
        .post(
            path,
            &t,
            json!({"name": "c", "mountPath": "/c", "sizeGb": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("max_volume_gb_per_organization"),
        "{body}"
    );

    // A read token reads, and changes nothing.
    let reader = s.token("default", Role::Read).await;
    let (status, list) = s.get(path, &reader).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 2);
    let (status, _) = s
        .post(
            path,
            &reader,
            json!({"name": "r", "mountPath": "/r", "sizeGb": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s
        .call(Method::DELETE, &format!("{path}/{a_id}"), &reader, None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Another organisation reaches nothing, by project or by volume id.
    let intruder = s.token("intruder", Role::Admin).await;
    s.project(&intruder, "mine").await;
    let (status, _) = s.get(path, &intruder).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s.get(&format!("{path}/{a_id}"), &intruder).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s
        .call(Method::DELETE, &format!("{path}/{a_id}"), &intruder, None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s
        .post(
            path,
            &intruder,
            json!({"name": "x", "mountPath": "/x", "sizeGb": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = s
        .get(&format!("/projects/mine/volumes/{a_id}"), &intruder)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not a volume of its project");
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("/projects/mine/volumes/{a_id}"),
            &intruder,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Its own budget is its own.
    let (status, _) = s
        .post(
            "/projects/mine/services",
            &intruder,
            json!({"name": "web", "port": 8080}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) = s
        .post(
            "/projects/mine/volumes",
            &intruder,
            json!({"name": "x", "mountPath": "/x", "sizeGb": 2}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let (status, got) = s.get(&format!("{path}/{a_id}"), &t).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    let (status, body) = s.get(&format!("{path}/not-an-id"), &t).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(field(&body), "volId");
    let (status, _) = s.get(&format!("{path}/{}", uuid::Uuid::now_v7()), &t).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Deleting frees the budget.
    let (status, _) = s
        .call(Method::DELETE, &format!("{path}/{a_id}"), &t, None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = s
        .call(Method::DELETE, &format!("{path}/{a_id}"), &t, None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = s
        .post(
            path,
            &t,
            json!({"name": "c", "mountPath": "/c", "sizeGb": 1}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
}

/// `kind: volume` through `/resources` is a volume of one environment's
/// service: listed in both places under one id, checked like endpoint 46
/// (errors name the `config` key), gone from both when deleted from
/// either, or with its environment.
async fn volume_resources_are_volumes(backend: Backend) {
    let s = TestServer::start(backend).await;
    let _unmount = Unmount(s.dir.path().to_path_buf());
    let t = s.admin_token.clone();
    let p = s.project(&t, "vault").await;
    let env_id = p["environments"][0]["id"].as_str().unwrap().to_string();
    let (status, _) = s
        .post(
            "/projects/vault/services",
            &t,
            json!({"name": "web", "port": 8080}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let volume = |config: Value| json!({"name": "Uploads", "kind": "volume", "environmentId": env_id, "config": config});
    for (body, named) in [
        (
            json!({"name": "Uploads", "kind": "volume", "config": {"mountPath": "/data"}}),
            "environmentId",
        ),
        (
            json!({"name": "Uploads", "kind": "volume", "environmentId": env_id}),
            "config.mountPath",
        ),
        (volume(json!({"storageGb": 1})), "config.mountPath"),
        (volume(json!({"mountPath": "/etc"})), "config.mountPath"),
        (volume(json!({"mountPath": 7})), "config.mountPath"),
        (
            volume(json!({"mountPath": "/data", "storageGb": 0})),
            "config.storageGb",
        ),
        (
            volume(json!({"mountPath": "/data", "accessMode": "ReadWriteMany"})),
            "config.accessMode",
        ),
        (
            volume(json!({"mountPath": "/data", "service": "Web!"})),
            "config.service",
        ),
        (
            volume(json!({"mountPath": "/data", "colour": "red"})),
            "config.colour",
        ),
        (
            json!({"name": "Uploads", "kind": "volume", "provider": "ceph-fs",
                   "environmentId": env_id, "config": {"mountPath": "/data"}}),
            "provider",
        ),
        (
            json!({"name": "--", "kind": "volume", "environmentId": env_id,
                   "config": {"mountPath": "/data"}}),
            "name",
        ),
    ] {
        let (status, e) = s.post("/resources", &t, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {e}");
        assert_eq!(field(&e), named, "{body} → {e}");
    }
    let (status, e) = s
        .post(
            "/resources",
            &t,
            volume(json!({"mountPath": "/data", "service": "nope"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{e}");
    assert!(
        e["error"].as_str().unwrap().starts_with("config.service"),
        "{e}"
    );
    let other = s.token("other", Role::Write).await;
    let (status, e) = s
        .post("/resources", &other, volume(json!({"mountPath": "/data"})))
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{e}");
    let (_, list) = s.get("/resources?kind=volume", &t).await;
    assert_eq!(list["data"], json!([]), "bad input made nothing");
    let (_, list) = s.get("/projects/vault/volumes", &t).await;
    assert_eq!(list, json!([]));

    let (status, r) = s
        .post(
            "/resources",
            &t,
            volume(json!({"mountPath": "/data", "storageGb": 1})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{r}");
    assert_eq!(r["provider"], "ceph-rbd");
    assert_eq!(r["status"], "ready", "{r}");
    assert_eq!(r["reconcileStatus"], "synced", "{r}");
    let id = r["id"].as_str().unwrap().to_string();
    let (_, vols) = s.get("/projects/vault/volumes", &t).await;
    assert_eq!(vols.as_array().unwrap().len(), 1, "{vols}");
    assert_eq!(vols[0]["id"], id.as_str());
    assert_eq!(vols[0]["name"], "uploads");
    assert_eq!(vols[0]["mountPath"], "/data");
    assert_eq!(vols[0]["sizeGb"], 1);
    assert_eq!(vols[0]["service"], "web");
    let host_dir = s.dir.path().join("volumes").join(&id);
    assert!(host_dir.is_dir());
    let (status, one) = s.get(&format!("/resources/{id}"), &t).await;
    assert_eq!(status, StatusCode::OK, "{one}");
    assert_eq!(one["kind"], "volume");
    assert_eq!(one["config"]["service"], "web", "{one}");
    assert_eq!(one["config"]["mountPath"], "/data", "{one}");
    assert!(
        one["message"].as_str().unwrap().contains("uploads"),
        "{one}"
    );
    let (_, m) = s.get(&format!("/resources/{id}/metrics"), &t).await;
    assert_eq!(m["available"], false, "{m}");
    let (status, e) = s
        .post(
            &format!("/resources/{id}/bindings"),
            &t,
            json!({"projectEnvironmentId": env_id}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    // Its settings are fixed; its name is not.
    let (status, e) = s
        .call(
            Method::PATCH,
            &format!("/resources/{id}"),
            &t,
            Some(json!({"config": {"mountPath": "/elsewhere"}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    assert_eq!(field(&e), "config", "{e}");
    let (status, renamed) = s
        .call(
            Method::PATCH,
            &format!("/resources/{id}"),
            &t,
            Some(json!({"name": "User uploads"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{renamed}");
    assert_eq!(renamed["config"]["mountPath"], "/data");
    // The same checks as endpoint 46: the name is taken in the project.
    let (status, e) = s
        .post("/resources", &t, volume(json!({"mountPath": "/more"})))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{e}");
    // Another organisation cannot delete it.
    let (status, _) = s
        .call(Method::DELETE, &format!("/resources/{id}"), &other, None)
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Deleting the resource removes the volume and its data.
    let (status, _) = s
        .call(Method::DELETE, &format!("/resources/{id}"), &t, None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, vols) = s.get("/projects/vault/volumes", &t).await;
    assert_eq!(vols, json!([]));
    eventually("the volume's data is removed", || {
        let (dir, img) = (host_dir.clone(), host_dir.with_extension("img"));
        async move { !dir.exists() && !img.exists() }
    })
    .await;

    // Deleting the volume removes the resource.
    let (_, r) = s
        .post("/resources", &t, volume(json!({"mountPath": "/data"})))
        .await;
    let id = r["id"].as_str().unwrap().to_string();
    let (status, _) = s
        .call(
            Method::DELETE,
            &format!("/projects/vault/volumes/{id}"),
            &t,
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _) = s.get(&format!("/resources/{id}"), &t).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Deleting an environment removes its volume and storage resources.
    let (status, staging) = s
        .post(
            "/projects/vault/environments",
            &t,
            json!({"name": "staging"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{staging}");
    let staging_id = staging["id"].as_str().unwrap().to_string();
    for body in [
        json!({"name": "cache", "kind": "volume", "environmentId": staging_id,
               "config": {"mountPath": "/cache", "storageGb": 1}}),
        json!({"name": "files", "kind": "blob", "environmentId": staging_id}),
    ] {
        let (status, r) = s.post("/resources", &t, body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{r}");
    }
    let (_, list) = s.get("/resources", &t).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 2, "{list}");
    let gone = s
        .graphql(
            &t,
            "mutation($id: ID!) { deleteEnvironment(projectId: \"vault\", id: $id) { id } }",
            json!({ "id": staging_id }),
        )
        .await;
    assert!(gone["errors"].is_null(), "{gone}");
    let (_, list) = s.get("/resources", &t).await;
    assert_eq!(list["data"], json!([]), "{list}");
}

/// What a deployed app at `host` answers on `path`, through the apps
/// listener `apps`, once it answers 200 (it may still be coming back).
async fn app_text(apps: &str, host: &str, path: &str) -> String {
    let client = reqwest::Client::new();
    let mut last = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while tokio::time::Instant::now() < deadline {
        match client
            .get(format!("http://{apps}{path}"))
            .header("Host", host)
            .send()
            .await
        {
            Ok(r) if r.status() == StatusCode::OK => return r.text().await.unwrap(),
            Ok(r) => last = r.status().to_string(),
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{host}{path} never answered 200: {last}");
}

/// A volume's data is there again after `serve` stops and starts again,
/// and after it is killed (`kill -9`) and started again: the releases
/// that come back mount their volumes.
async fn data_survives_restarts_of_serve(postgres: bool) {
    use common::binary::{ServeProcess, ServeStore, create_token, free_port, post};
    let Some(store) = ServeStore::new(postgres).await else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let _unmount = Unmount(work.path().to_path_buf());
    let data_s = data.to_str().unwrap().to_string();
    let mut envs = vec![("SYLPHX_DATA_DIR", data_s.as_str())];
    envs.extend(store.env());
    let token = create_token("acme", &envs);
    let port = free_port();
    let apps = format!("127.0.0.1:{}", free_port());
    let extra = ["--apps-listen", apps.as_str()];
    let server = ServeProcess::start(port, &extra, &envs, work.path()).await;
    let src = volume_repo();
    let (status, body) = post(
        &server.base,
        "/projects",
        &token,
        json!({"name": "Keep", "slug": "keep", "gitRepository": src.path().to_str().unwrap()}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let deploy = |base: String| {
        let token = token.clone();
        async move {
            let (status, d) = post(&base, "/projects/keep/deploy", &token, json!({})).await;
            assert_eq!(status, StatusCode::ACCEPTED, "{d}");
            let id = d["deploymentId"].as_str().unwrap().to_string();
            let done = common::apps::finished(&base, &token, "keep", &id).await;
            assert_eq!(done["status"], "success", "{done}");
        }
    };
    deploy(server.base.clone()).await;
    let (status, vol) = post(
        &server.base,
        "/projects/keep/volumes",
        &token,
        json!({"name": "uploads", "mountPath": "/data", "sizeGb": 1}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{vol}");
    deploy(server.base.clone()).await;
    assert_eq!(
        app_text(&apps, "keep.localhost", "/write?v=kept").await,
        "written"
    );

    assert!(server.terminate().success());
    let server = ServeProcess::start(port, &extra, &envs, work.path()).await;
    assert_eq!(app_text(&apps, "keep.localhost", "/read").await, "kept");
    let id = vol["id"].as_str().unwrap();
    let (_, got) = common::binary::get(
        &server.base,
        &format!("/projects/keep/volumes/{id}"),
        &token,
    )
    .await;
    assert_eq!(got["status"], "bound", "{got}");

    server.kill9();
    let server = ServeProcess::start(port, &extra, &envs, work.path()).await;
    assert_eq!(app_text(&apps, "keep.localhost", "/read").await, "kept");
    assert!(server.terminate().success());
    store.drop_database().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_restarts_of_serve_on_sqlite() {
    data_survives_restarts_of_serve(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_restarts_of_serve_on_postgres() {
    data_survives_restarts_of_serve(true).await
}

backend_tests!(
    data_survives_redeploys_and_goes_with_the_volume,
    bad_input_other_organisations_and_limits,
    volume_resources_are_volumes,
);
