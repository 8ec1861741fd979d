//! Runs the migrations against SQLite (always) and PostgreSQL (when
//! `SYLPHX_TEST_DATABASE_URL` is set) and checks FK cascades and unique constraints
//! through the entities.

use chrono::Utc;
use entity::{env_vars, environments, jobs, organizations, projects, services};
use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, Database, DatabaseConnection, EntityTrait, PaginatorTrait,
    Set, SqlErr,
};
use uuid::Uuid;

async fn insert_org(db: &DatabaseConnection, slug: &str) -> organizations::Model {
    let now = Utc::now();
    organizations::ActiveModel {
        id: Set(Uuid::now_v7()),
        slug: Set(slug.to_owned()),
        name: Set(format!("Org {slug}")),
        ai_monthly_budget_cents: Set(Some(10_000)),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(db)
    .await
    .expect("insert organization")
}

fn new_project(org: Uuid, slug: &str) -> projects::ActiveModel {
    let now = Utc::now();
    projects::ActiveModel {
        id: Set(Uuid::now_v7()),
        organization_id: Set(org),
        slug: Set(slug.to_owned()),
        name: Set(format!("Project {slug}")),
        description: Set(Some("a test project".to_owned())),
        is_active: Set(true),
        git_repository: Set(None),
        git_branch: Set(Some("main".to_owned())),
        build_pack: Set(None),
        docker_image: Set(None),
        port: Set(Some(8080)),
        domain: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
}

/// The scenario shared by both backends.
async fn exercise(db: &DatabaseConnection) {
    let now = Utc::now();
    let org = insert_org(db, "acme").await;
    let project = new_project(org.id, "shop")
        .insert(db)
        .await
        .expect("insert project");

    let env = environments::ActiveModel {
        id: Set(Uuid::now_v7()),
        project_id: Set(project.id),
        name: Set("production".to_owned()),
        domain: Set(None),
        replicas: Set(2),
        provisioned_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(db)
    .await
    .expect("insert environment");

    let var = env_vars::ActiveModel {
        id: Set(Uuid::now_v7()),
        environment_id: Set(env.id),
        key: Set("DATABASE_URL".to_owned()),
        value_ciphertext: Set("ciphertext".to_owned()),
        secret: Set(true),
        source: Set("user".to_owned()),
        binding_id: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(db)
    .await
    .expect("insert env var");

    // JSON columns round-trip (nullable and not null).
    let resources = serde_json::json!({"cpu": "500m", "memory": "512Mi"});
    let service = services::ActiveModel {
        id: Set(Uuid::now_v7()),
        project_id: Set(project.id),
        name: Set("web".to_owned()),
        port: Set(Some(3000)),
        dockerfile_path: Set("Dockerfile".to_owned()),
        replicas: Set(1),
        resources: Set(Some(resources.clone())),
        status: Set("idle".to_owned()),
        latest_image: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(db)
    .await
    .expect("insert service");
    let service = services::Entity::find_by_id(service.id)
        .one(db)
        .await
        .unwrap()
        .expect("service exists");
    assert_eq!(service.resources, Some(resources));

    let payload = serde_json::json!({"deploy": [1, 2, 3]});
    let job = jobs::ActiveModel {
        id: Set(Uuid::now_v7()),
        kind: Set("deploy".to_owned()),
        payload: Set(payload.clone()),
        status: Set("queued".to_owned()),
        attempts: Set(0),
        max_attempts: Set(5),
        run_at: Set(now),
        locked_by: Set(None),
        locked_until: Set(None),
        last_error: Set(None),
        organization_id: Set(Some(org.id)),
        deployment_id: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(db)
    .await
    .expect("insert job");
    assert_eq!(job.payload, payload);

    // Relations resolve.
    let envs = environments::Entity::find()
        .find_also_related(projects::Entity)
        .all(db)
        .await
        .unwrap();
    assert_eq!(envs.len(), 1);
    assert_eq!(envs[0].1.as_ref().map(|p| p.id), Some(project.id));

    // Deleting the project cascades to environments, env vars and services.
    let res = projects::Entity::delete_by_id(project.id)
        .exec(db)
        .await
        .expect("delete project");
    assert_eq!(res.rows_affected, 1);
    assert!(
        environments::Entity::find_by_id(env.id)
            .one(db)
            .await
            .unwrap()
            .is_none(),
        "environment should be removed by cascade"
    );
    assert!(
        env_vars::Entity::find_by_id(var.id)
            .one(db)
            .await
            .unwrap()
            .is_none(),
        "env var should be removed by cascade"
    );
    assert_eq!(services::Entity::find().count(db).await.unwrap(), 0);

    // Project slugs are unique across organizations.
    let other_org = insert_org(db, "globex").await;
    new_project(org.id, "unique-slug")
        .insert(db)
        .await
        .expect("first project with slug");
    let dup = new_project(other_org.id, "unique-slug")
        .insert(db)
        .await
        .expect_err("duplicate project slug must be rejected");
    assert!(
        matches!(dup.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))),
        "expected a unique violation, got {dup:?}"
    );
    assert_eq!(projects::Entity::find().count(db).await.unwrap(), 1);

    // A domain serves one environment, whatever its case; environments
    // without a domain do not collide.
    let sites = new_project(org.id, "sites")
        .insert(db)
        .await
        .expect("insert project");
    let environment = |name: &str, domain: Option<&str>| environments::ActiveModel {
        id: Set(Uuid::now_v7()),
        project_id: Set(sites.id),
        name: Set(name.to_owned()),
        domain: Set(domain.map(str::to_owned)),
        replicas: Set(1),
        provisioned_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    };
    for (name, domain) in [
        ("production", Some("sites.example.com")),
        ("staging", None),
        ("preview", None),
    ] {
        environment(name, domain)
            .insert(db)
            .await
            .expect("insert environment");
    }
    let dup = environment("qa", Some("Sites.Example.COM"))
        .insert(db)
        .await
        .expect_err("a domain taken in another case must be rejected");
    assert!(
        matches!(dup.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))),
        "expected a unique violation, got {dup:?}"
    );
}

#[tokio::test]
async fn sqlite_roundtrip() {
    let db = Database::connect("sqlite::memory:").await.expect("connect");
    Migrator::up(&db, None).await.expect("migrate up");
    exercise(&db).await;

    // Down removes everything; up again yields a fresh, usable schema.
    Migrator::down(&db, None).await.expect("migrate down");
    let leftover = db
        .query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT name FROM sqlite_master WHERE type = 'table' \
             AND name NOT LIKE 'sqlite_%' AND name <> 'seaql_migrations'",
        ))
        .await
        .unwrap();
    assert!(
        leftover.is_empty(),
        "tables left after down: {}",
        leftover.len()
    );
    Migrator::up(&db, None).await.expect("migrate up again");
    exercise(&db).await;
}

#[tokio::test]
async fn postgres_roundtrip() {
    let Ok(url) = std::env::var("SYLPHX_TEST_DATABASE_URL") else {
        eprintln!("SYLPHX_TEST_DATABASE_URL not set; skipping PostgreSQL test");
        return;
    };
    let admin = Database::connect(&url).await.expect("connect admin");
    let name = format!("mig_test_{}", Uuid::new_v4().simple());
    admin
        .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
        .await
        .expect("create test database");

    // Same server and credentials, different database (keep any query string).
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url.as_str(), String::new()),
    };
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    let test_url = format!("{base}/{name}{query}");

    // Run in a task so that a failed assertion still lets us drop the database.
    let result = tokio::spawn(async move {
        let db = Database::connect(&test_url).await.expect("connect test db");
        Migrator::up(&db, None).await.expect("migrate up");
        exercise(&db).await;
        Migrator::down(&db, None).await.expect("migrate down");
        Migrator::up(&db, None).await.expect("migrate up again");
        db.close().await.expect("close test db");
    })
    .await;

    admin
        .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .expect("drop test database");
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

#[tokio::test]
async fn a_domain_held_twice_is_named_before_the_index() {
    let db = Database::connect("sqlite::memory:").await.expect("connect");
    Migrator::up(&db, Some(2))
        .await
        .expect("migrate up to ai_usage");
    let org = insert_org(&db, "acme").await;
    let now = Utc::now();
    let mut envs = Vec::new();
    for (slug, domain) in [("a", "shop.example.com"), ("b", "Shop.Example.com")] {
        let project = new_project(org.id, slug).insert(&db).await.unwrap();
        let env = environments::ActiveModel {
            id: Set(Uuid::now_v7()),
            project_id: Set(project.id),
            name: Set("production".to_owned()),
            domain: Set(Some(domain.to_owned())),
            replicas: Set(1),
            provisioned_at: Set(None),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(&db)
        .await
        .unwrap();
        envs.push(env);
    }
    let err = Migrator::up(&db, None)
        .await
        .expect_err("two environments hold one domain");
    assert!(
        err.to_string()
            .contains("several environments have the domain 'shop.example.com'"),
        "{err}"
    );

    let mut second: environments::ActiveModel = envs.pop().unwrap().into();
    second.domain = Set(None);
    second.update(&db).await.unwrap();
    Migrator::up(&db, None)
        .await
        .expect("migrates once the domain is held once");
}
