//! The node's Ed25519 identity key: 32 secret bytes in `<data_dir>/identity.key`, mode 0600.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ed25519_dalek::SigningKey;

/// The key file's name inside the data directory.
pub(crate) const KEY_FILE: &str = "identity.key";

/// Where the key lives in `data_dir`.
pub(crate) fn key_path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILE)
}

/// Generates a key and writes it with mode 0600. Refuses to overwrite an existing key: losing it
/// would change the node's identity.
pub(crate) fn generate(data_dir: &Path) -> anyhow::Result<SigningKey> {
    let path = key_path(data_dir);
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(&key.to_bytes())?;
    file.sync_all()?;
    Ok(key)
}

/// Loads the key, refusing a file others can read.
pub(crate) fn load(data_dir: &Path) -> anyhow::Result<SigningKey> {
    let path = key_path(data_dir);
    let meta = std::fs::metadata(&path).with_context(|| format!("reading {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "{} is readable by others (mode {:o}); run `chmod 600` on it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    let bytes = std::fs::read(&path)?;
    let secret: [u8; 32] =
        bytes.as_slice().try_into().with_context(|| format!("{} is not a 32-byte key", path.display()))?;
    Ok(SigningKey::from_bytes(&secret))
}

/// The session-token secret: 32 random bytes in `<data_dir>/jwt.secret` (mode 0600), created on
/// first use so that sessions survive restarts.
pub(crate) fn jwt_secret(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    secret_file(&data_dir.join("jwt.secret"), |b| b.to_vec())
}

/// The password of the `admin` user (`com.atproto.admin.*`, HTTP Basic), generated on first
/// use into `admin.password` (mode 0600), unless `[xrpc] admin_password` sets one.
pub(crate) fn admin_password(data_dir: &Path) -> anyhow::Result<String> {
    let bytes = secret_file(&data_dir.join("admin.password"), |b| {
        data_encoding::BASE32_NOPAD.encode(&b[..20]).to_ascii_lowercase().into_bytes()
    })?;
    Ok(String::from_utf8(bytes)?.trim().to_string())
}

/// Reads a secret file, first creating it (mode 0600, never overwritten) from 32 random bytes
/// passed through `encode`.
fn secret_file(path: &Path, encode: impl FnOnce(&[u8]) -> Vec<u8>) -> anyhow::Result<Vec<u8>> {
    if !path.exists() {
        use rand::RngCore;
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
        file.write_all(&encode(&secret))?;
        file.sync_all()?;
    }
    Ok(std::fs::read(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_then_load_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let key = generate(dir.path()).unwrap();
        let mode = std::fs::metadata(key_path(dir.path())).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load(dir.path()).unwrap().to_bytes(), key.to_bytes());
        assert!(generate(dir.path()).is_err(), "never overwrites a key");
        std::fs::set_permissions(key_path(dir.path()), std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load(dir.path()).is_err());
    }
}
