//! Where upstream keys come from: an environment variable or a key file.
//! The YAML only names the source, so the file can be shared and checked in.

/// Where an upstream key is to be read from.
#[derive(Debug, Clone, Copy)]
pub enum SecretRef<'a> {
    /// `api_key_env`: an environment variable.
    Env(&'a str),
    /// `api_key_file`: a file.
    File(&'a str),
}

/// Reads upstream keys: the process environment, or a file that only its
/// owner may read (mode 0600 or stricter).
pub fn read_secret(source: SecretRef<'_>) -> Result<String, String> {
    let value = match source {
        SecretRef::Env(name) => std::env::var(name)
            .map_err(|_| format!("environment variable {name} is not set or empty"))?,
        SecretRef::File(path) => {
            let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {path}: {e}"))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    return Err(format!(
                        "{path} is readable by others (mode {mode:04o}); a key file must be 0600 or stricter"
                    ));
                }
            }
            let _ = meta;
            std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?
        }
    };
    let value = value.trim();
    if value.is_empty() {
        return Err(match source {
            SecretRef::Env(name) => format!("environment variable {name} is not set or empty"),
            SecretRef::File(path) => format!("{path} is empty"),
        });
    }
    Ok(value.to_string())
}
