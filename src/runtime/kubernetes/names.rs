//! Deterministic object names and the labels that tie cluster objects to
//! platform ids.
//!
//! Names are derived from slugs so that an operator can read them; the UUID
//! labels are what the driver selects on, because slugs and names change and
//! a Deployment's selector cannot.

use uuid::Uuid;

use crate::runtime::EnvironmentRef;
use crate::secrets::sha256_hex;

/// `app.kubernetes.io/managed-by`; its value is [`MANAGER`].
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// The value of [`MANAGED_BY`] on every object the driver writes.
pub const MANAGER: &str = "sylphx";
/// `app.kubernetes.io/name`: the service name, for people and dashboards.
pub const NAME: &str = "app.kubernetes.io/name";
/// `app.kubernetes.io/component`: `service`, `public` or `build`.
pub const COMPONENT: &str = "app.kubernetes.io/component";
pub const PROJECT_ID: &str = "sylphx.io/project-id";
pub const ENVIRONMENT_ID: &str = "sylphx.io/environment-id";
/// The one selector label of a service's Deployment and Service.
pub const SERVICE_ID: &str = "sylphx.io/service-id";
/// On pod templates and build Jobs only; never part of a selector.
pub const DEPLOYMENT_ID: &str = "sylphx.io/deployment-id";
/// Pod-template annotation: sha256 of the env vars, so that a change rolls.
pub const ENV_CHECKSUM: &str = "sylphx.io/env-checksum";
/// Set by the Job controller on the pods of a Job.
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";
/// The one selector label of a data service instance's objects and pods.
pub const RESOURCE_ID: &str = "sylphx.io/resource-id";
/// Label of a project volume's PersistentVolumeClaim.
pub const VOLUME_ID: &str = "sylphx.io/volume-id";
/// On an organization's data namespace.
pub const ORGANIZATION_ID: &str = "sylphx.io/organization-id";
/// Pod-template annotation of a data service: sha256 of its credentials,
/// so that a changed password restarts it.
pub const CREDENTIALS_CHECKSUM: &str = "sylphx.io/credentials-checksum";
/// Set by CloudNativePG on a cluster's Backups (and by the driver on the
/// ones it creates).
pub const CNPG_CLUSTER: &str = "cnpg.io/cluster";

/// The Secret holding an environment's env vars.
pub const ENV_SECRET: &str = "sylphx-env";
/// The HTTPRoute and the ClusterIP Service in front of the web service. The
/// route always points at this Service, so `provision` (which knows no
/// services) and `deploy` apply the same route.
pub const PUBLIC: &str = "sylphx-web";
/// The port of the [`PUBLIC`] Service.
pub const PUBLIC_PORT: u16 = 80;

/// Longest DNS-1123 label.
pub const MAX_LABEL: usize = 63;

/// Turns `raw` into a DNS-1123 label of at most `max` characters: lowercase
/// letters, digits and single dashes, starting and ending with a letter or
/// digit. When it has to be cut, the end becomes `-<8 hex of sha256(raw)>`
/// so that two long names sharing a prefix stay apart.
pub fn dns_label(raw: &str, max: usize) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars().map(|c| c.to_ascii_lowercase()) {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    if out.is_empty() {
        out.push('x');
    }
    if out.len() <= max {
        return out;
    }
    let hash = &sha256_hex(raw.as_bytes())[..8];
    let head = out[..max - hash.len() - 1].trim_end_matches('-');
    format!("{head}-{hash}")
}

/// The namespace of one project environment: `<prefix>-<project slug>-<env name>`.
pub fn namespace(prefix: &str, env: &EnvironmentRef) -> String {
    dns_label(
        &format!("{prefix}-{}-{}", env.project_slug, env.environment_name),
        MAX_LABEL,
    )
}

/// The Deployment and Service name of a service. Service names must also be
/// DNS-1035 labels (start with a letter), so a leading digit gets `s-`.
pub fn service_object(service: &str) -> String {
    let label = dns_label(service, MAX_LABEL - 2);
    if label.starts_with(|c: char| c.is_ascii_digit()) {
        format!("s-{label}")
    } else {
        label
    }
}

/// A project volume's PersistentVolumeClaim (and its pod volume's name):
/// by id, 40 characters.
pub fn volume_claim(volume_id: Uuid) -> String {
    format!("vol-{volume_id}")
}

/// One build Job per deployment: re-running a build for the same deployment
/// finds the same Job instead of starting a second one. 38 characters, so
/// the Job's pod names (`<job>-xxxxx`) stay within 63.
pub fn build_job(deployment_id: Uuid) -> String {
    format!("build-{}", deployment_id.simple())
}

/// The namespace of an organization's data services:
/// `<prefix>-data-<the organization id's 32 hex>` (the whole id: the
/// first digits of a time-ordered id are a timestamp that two
/// organizations may share).
pub fn data_namespace(prefix: &str, organization_id: Uuid) -> String {
    let id = organization_id.simple().to_string();
    dns_label(&format!("{prefix}-data-{id}"), MAX_LABEL)
}

/// The basic-auth Secret of a PostgreSQL instance's superuser.
pub fn superuser_secret(instance: &str) -> String {
    format!("{instance}-superuser-credentials")
}

/// The basic-auth Secret of a PostgreSQL instance's application user.
pub fn app_secret(instance: &str) -> String {
    format!("{instance}-app-credentials")
}

/// The Secret with the passwords of a MySQL or Redis instance.
pub fn credentials_secret(instance: &str) -> String {
    format!("{instance}-credentials")
}

/// A PostgreSQL instance's own barman-cloud `ObjectStore`.
pub fn object_store(instance: &str) -> String {
    format!("{instance}-store")
}

/// The VolumeSnapshot a branch starts from.
pub fn origin_snapshot(instance: &str) -> String {
    format!("{instance}-origin")
}

/// The base backup `ensure` waits for.
pub fn initial_backup(instance: &str) -> String {
    format!("{instance}-initial")
}

/// The volume claim template of a data service's StatefulSet; its one
/// PVC is `<template>-<instance>-0`.
pub const DATA_VOLUME: &str = "data";

/// A label selector `key=value` string.
pub fn selector(key: &str, value: impl std::fmt::Display) -> String {
    format!("{key}={value}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_dns_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= MAX_LABEL
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    fn env(slug: &str, name: &str) -> EnvironmentRef {
        EnvironmentRef {
            project_id: Uuid::nil(),
            project_slug: slug.into(),
            environment_id: Uuid::nil(),
            environment_name: name.into(),
            domain: None,
        }
    }

    #[test]
    fn short_namespaces_read_as_written() {
        assert_eq!(
            namespace("sylphx", &env("shop", "production")),
            "sylphx-shop-production"
        );
    }

    #[test]
    fn long_namespaces_are_cut_with_a_stable_hash() {
        let long = "a".repeat(60);
        let a = namespace("sylphx", &env(&long, "production"));
        let b = namespace("sylphx", &env(&long, "preview-1"));
        assert!(is_dns_label(&a) && is_dns_label(&b), "{a} {b}");
        assert_eq!(a.len(), 63);
        assert_ne!(
            a, b,
            "the hash keeps environments with one long prefix apart"
        );
        assert_eq!(a, namespace("sylphx", &env(&long, "production")));
        assert!(a.starts_with("sylphx-aaaa"));
    }

    #[test]
    fn any_input_becomes_a_label() {
        for raw in ["", "---", "Web_App", "a.b.c", "ÄÖÜ", "x-", &"-z".repeat(80)] {
            let got = dns_label(raw, MAX_LABEL);
            assert!(is_dns_label(&got), "{raw:?} -> {got:?}");
        }
        assert_eq!(dns_label("Web_App", 63), "web-app");
    }

    #[test]
    fn service_names_start_with_a_letter() {
        assert_eq!(service_object("web"), "web");
        assert_eq!(service_object("2fa"), "s-2fa");
        assert!(is_dns_label(&service_object(&"9".repeat(70))));
    }

    #[test]
    fn data_namespaces_take_the_organization_id() {
        let org = Uuid::from_u128(0x0190_abcd_ef01_7000_8000_0000_0000_0001);
        let ns = data_namespace("sylphx", org);
        assert_eq!(ns, "sylphx-data-0190abcdef0170008000000000000001");
        assert!(is_dns_label(&ns));
        // The longest instance name (40) keeps every derived name a label.
        let longest = "p".repeat(40);
        for name in [
            superuser_secret(&longest),
            app_secret(&longest),
            credentials_secret(&longest),
            object_store(&longest),
            origin_snapshot(&longest),
            initial_backup(&longest),
        ] {
            assert!(is_dns_label(&name), "{name}");
        }
    }

    #[test]
    fn build_job_pods_fit_in_a_label() {
        let job = build_job(Uuid::max());
        assert!(is_dns_label(&job));
        assert!(job.len() + 6 <= MAX_LABEL);
    }
}
