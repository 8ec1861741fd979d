//! Input rules shared by every resource group. Each failure names its field.

use crate::error::{Error, Result};

// The same rules as JSON Schema patterns (ECMA-262, anchored), for the
// OpenAPI document. Each accepts a subset of what its function accepts, so
// that a request valid by the document is accepted by the server.

/// [`dns_label`] as a pattern (with `maxLength` 63).
pub const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([a-z0-9-]*[a-z0-9])?$";
/// A UUID in its hyphenated form (the server also reads other forms).
pub const UUID_PATTERN: &str =
    "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$";
/// A project's UUID or slug.
pub const PROJECT_REF_PATTERN: &str = "^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)$";
/// [`domain`] as a pattern (with `maxLength` 253; `.localhost` names are
/// refused separately).
pub const DOMAIN_PATTERN: &str = "^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$";
/// [`env_key`] as a pattern (with `maxLength` 256).
pub const ENV_KEY_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]*$";
/// [`config_key`] as a pattern (with `maxLength` 128).
pub const CONFIG_KEY_PATTERN: &str = "^[A-Za-z0-9_.-]+$";
/// [`cpu_quantity`] as a pattern.
pub const CPU_PATTERN: &str = "^[0-9]+(\\.[0-9]+)?m?$";
/// [`memory_quantity`] as a pattern.
pub const MEMORY_PATTERN: &str = "^[0-9]+(Ki|Mi|Gi|Ti|K|M|G|T)?$";
/// [`text`] as a pattern: something other than white space, and no NUL.
pub const TEXT_PATTERN: &str = "^[^\\u0000]*[^\\s\\u0000][^\\u0000]*$";
/// [`long_text`] as a pattern: no NUL.
pub const LONG_TEXT_PATTERN: &str = "^[^\\u0000]*$";
/// A relative path of plain segments (a subset of what `dockerfilePath`
/// takes: no leading '/', no `..`).
pub const RELATIVE_PATH_PATTERN: &str =
    "^[A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*$";

/// Longest env var or config value, in characters.
pub const MAX_VALUE_CHARS: usize = 64 * 1024;
/// Most env vars or config entries in one request.
pub const MAX_ENTRIES: usize = 500;
/// Most replicas of an environment or service.
pub const MAX_REPLICAS: i32 = 100;

/// A DNS-1123 label: lowercase alphanumerics and '-', starting and ending
/// alphanumeric, at most 63 characters. Slugs become hostnames.
pub fn dns_label(field: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(Error::field(
            field,
            "must be 1-63 lowercase letters, digits or '-', starting and ending with a letter or digit",
        ))
    }
}

/// A custom domain: a hostname of dot-separated DNS labels, at most 253
/// characters, outside `localhost` and `*.localhost`. Returns it lowercased.
pub fn domain(field: &str, value: &str) -> Result<String> {
    let host = value.trim().to_ascii_lowercase();
    let ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|l| dns_label(field, l).is_ok());
    if !ok {
        return Err(Error::field(field, "must be a valid hostname"));
    }
    // The local runtime answers `<slug>.localhost` and `<env>.<slug>.localhost`
    // for every project: a custom domain there could take another's traffic.
    if host == "localhost" || host.ends_with(".localhost") {
        return Err(Error::field(
            field,
            "`.localhost` names are reserved for generated hostnames",
        ));
    }
    Ok(host)
}

/// A TCP port.
pub fn port(field: &str, value: i32) -> Result<()> {
    if (1..=65535).contains(&value) {
        Ok(())
    } else {
        Err(Error::field(field, "must be between 1 and 65535"))
    }
}

/// A replica count.
pub fn replicas(field: &str, value: i32) -> Result<()> {
    if (0..=MAX_REPLICAS).contains(&value) {
        Ok(())
    } else {
        Err(Error::field(
            field,
            format!("must be between 0 and {MAX_REPLICAS}"),
        ))
    }
}

/// A non-empty display text of bounded length. Returns it trimmed.
pub fn text(field: &str, value: &str, max: usize) -> Result<String> {
    let v = value.trim();
    if v.is_empty() {
        return Err(Error::field(field, "must not be empty"));
    }
    no_nul(field, v)?;
    if v.chars().count() > max {
        return Err(Error::field(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(v.to_string())
}

/// Text is stored as text: PostgreSQL's cannot hold NUL, and neither can an
/// environment variable.
fn no_nul(field: &str, value: &str) -> Result<()> {
    if value.contains('\0') {
        return Err(Error::field(field, "must not contain NUL characters"));
    }
    Ok(())
}

/// Free text that may be empty, of at most `max` characters.
pub fn long_text(field: &str, value: &str, max: usize) -> Result<()> {
    no_nul(field, value)?;
    if value.len() > max && value.chars().count() > max {
        return Err(Error::field(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(())
}

/// An environment variable name as POSIX shells accept it.
pub fn env_key(field: &str, value: &str) -> Result<()> {
    let mut bytes = value.bytes();
    let ok = value.len() <= 256
        && matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::field(
            field,
            "must start with a letter or '_' and contain only letters, digits and '_' (at most 256)",
        ))
    }
}

/// A config key: letters, digits, '_', '-', '.', at most 128 characters.
pub fn config_key(field: &str, value: &str) -> Result<()> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(Error::field(
            field,
            "must be 1-128 letters, digits, '_', '-' or '.'",
        ))
    }
}

/// A Kubernetes CPU quantity such as `250m` or `1.5`.
pub fn cpu_quantity(field: &str, value: &str) -> Result<()> {
    let digits = value.strip_suffix('m').unwrap_or(value);
    let ok = !digits.is_empty()
        && digits.split('.').count() <= 2
        && digits
            .split('.')
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    if ok {
        Ok(())
    } else {
        Err(Error::field(
            field,
            "must be a CPU quantity such as 250m or 1",
        ))
    }
}

/// A Kubernetes memory quantity such as `512Mi` or `1G`.
pub fn memory_quantity(field: &str, value: &str) -> Result<()> {
    let digits = ["Ki", "Mi", "Gi", "Ti", "K", "M", "G", "T"]
        .iter()
        .find_map(|s| value.strip_suffix(s))
        .unwrap_or(value);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        Ok(())
    } else {
        Err(Error::field(
            field,
            "must be a memory quantity such as 512Mi or 1Gi",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert!(dns_label("slug", "my-app").is_ok());
        assert!(dns_label("slug", "a").is_ok());
        assert!(dns_label("slug", &"a".repeat(63)).is_ok());
        for bad in ["", "-a", "a-", "My-App", "a_b", "a.b", &"a".repeat(64)] {
            let err = dns_label("slug", bad).unwrap_err();
            assert!(err.message().starts_with("slug:"), "{bad}");
        }
    }

    #[test]
    fn hosts_ports_and_keys() {
        assert_eq!(
            domain("domain", "MyApp.Sylphx.app").unwrap(),
            "myapp.sylphx.app"
        );
        assert!(domain("domain", "bad..host").is_err());
        assert!(domain("domain", "localhost.example.com").is_ok());
        assert!(domain("domain", "mylocalhost").is_ok());
        for reserved in [
            "localhost",
            "app.localhost",
            "Victim.LOCALHOST",
            "a.b.localhost",
        ] {
            let err = domain("domain", reserved).unwrap_err();
            assert!(err.message().contains("reserved"), "{reserved}");
        }
        assert!(text("name", "a\0b", 10).is_err());
        assert!(long_text("value", "\0", 10).is_err());
        assert!(long_text("value", "é".repeat(10).as_str(), 10).is_ok());
        assert!(long_text("value", "é".repeat(11).as_str(), 10).is_err());
        assert!(port("port", 0).is_err());
        assert!(port("port", 65536).is_err());
        assert!(port("port", 65535).is_ok());
        assert!(env_key("key", "DATABASE_URL").is_ok());
        assert!(env_key("key", "1ABC").is_err());
        assert!(env_key("key", "A-B").is_err());
        assert!(config_key("key", "feature.x-1").is_ok());
        assert!(config_key("key", "a b").is_err());
        assert!(cpu_quantity("cpu", "250m").is_ok());
        assert!(cpu_quantity("cpu", "0.5").is_ok());
        assert!(cpu_quantity("cpu", "lots").is_err());
        assert!(memory_quantity("memory", "512Mi").is_ok());
        assert!(memory_quantity("memory", "Mi").is_err());
    }
}
