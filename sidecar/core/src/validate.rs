//! What a config section says is wrong with it: the key, the offending value, and why. Each
//! component validates its own section; the sidecar's top-level config adds the file's name.

/// One invalid value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// The full key, e.g. `hop.ports` or `exposure.allow[2].port`.
    pub key: String,
    /// The value as written (or a placeholder when it holds a secret).
    pub value: String,
    pub reason: String,
}

impl Invalid {
    pub fn new(
        key: impl Into<String>,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            key: key.into(),
            value: value.into(),
            reason: reason.into(),
        }
    }
}

/// A section's verdict.
pub type Checked = Result<(), Invalid>;

/// A duration as the config file writes it (`1m 30s`).
pub fn duration(d: std::time::Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// `key` must be at least `min`.
pub fn at_least(key: &str, d: std::time::Duration, min: std::time::Duration) -> Checked {
    if d < min {
        return Err(Invalid::new(
            key,
            duration(d),
            format!("must be at least {}", duration(min)),
        ));
    }
    Ok(())
}

/// `key` must lie within `min..=max`.
pub fn between(
    key: &str,
    d: std::time::Duration,
    min: std::time::Duration,
    max: std::time::Duration,
) -> Checked {
    at_least(key, d, min)?;
    if d > max {
        return Err(Invalid::new(
            key,
            duration(d),
            format!("must be at most {}", duration(max)),
        ));
    }
    Ok(())
}

/// `path` (of `key`) must be absolute.
pub fn absolute(key: &str, path: &std::path::Path) -> Checked {
    if !path.is_absolute() {
        return Err(Invalid::new(
            key,
            format!("{:?}", path.display().to_string()),
            "must be an absolute path",
        ));
    }
    Ok(())
}

/// Counts that must be at least 1.
pub fn nonzero(counts: &[(&str, usize)]) -> Checked {
    match counts.iter().find(|(_, v)| *v == 0) {
        Some((key, _)) => Err(Invalid::new(*key, "0", "must be at least 1")),
        None => Ok(()),
    }
}
