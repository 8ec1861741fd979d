//! Input rules shared by every resource group. Each failure names its field.

use crate::error::{Error, Result};

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
    if (0..=100).contains(&value) {
        Ok(())
    } else {
        Err(Error::field(field, "must be between 0 and 100"))
    }
}

/// A non-empty display text of bounded length. Returns it trimmed.
pub fn text(field: &str, value: &str, max: usize) -> Result<String> {
    let v = value.trim();
    if v.is_empty() {
        return Err(Error::field(field, "must not be empty"));
    }
    if v.chars().count() > max {
        return Err(Error::field(
            field,
            format!("must be at most {max} characters"),
        ));
    }
    Ok(v.to_string())
}

/// Free text that may be empty, bounded in length.
pub fn long_text(field: &str, value: &str, max: usize) -> Result<()> {
    if value.len() > max {
        return Err(Error::field(field, format!("must be at most {max} bytes")));
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
