//! The node's Ed25519 identity key: 32 secret bytes in `<data_dir>/identity.key`, mode 0600;
//! and the node key that seals account keys at rest (`node.key`, or a passphrase's).

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use ed25519_dalek::SigningKey;
use ues_repo::seal::{SALT_LEN, SealKey};

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
    write_private(&path, &key.to_bytes())?;
    Ok(key)
}

/// Loads the key, refusing a file others can read.
pub(crate) fn load(data_dir: &Path) -> anyhow::Result<SigningKey> {
    Ok(SigningKey::from_bytes(&read_key_file(&key_path(data_dir))?))
}

/// Reads a 32-byte key file, refusing one others can read.
fn read_key_file(path: &Path) -> anyhow::Result<[u8; 32]> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "{} is readable by others (mode {:o}); run `chmod 600` on it",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
    let bytes = zeroize::Zeroizing::new(std::fs::read(path)?);
    bytes.as_slice().try_into().with_context(|| format!("{} is not a 32-byte key", path.display()))
}

/// The node key file's name inside the data directory (unless `[keys] key_file` moves it).
pub(crate) const NODE_KEY_FILE: &str = "node.key";

/// The salt of a passphrase's node key, inside the data directory (not secret).
const SALT_FILE: &str = "node.salt";

/// The node key that seals account keys at rest, as `[keys]` says: derived from a passphrase
/// (given, or the first line of a file) with the salt in `<data_dir>/node.salt`; or read from
/// the key file (`<data_dir>/node.key` by default), made with 32 random bytes (mode 0600) when
/// it does not exist yet.
pub(crate) fn seal_key(data_dir: &Path, keys: &crate::config::KeysSection) -> anyhow::Result<SealKey> {
    let passphrase = match (keys.passphrase.is_empty(), keys.passphrase_file.as_os_str().is_empty()) {
        (false, false) => bail!("[keys] sets both passphrase and passphrase_file: set one"),
        (false, true) => Some(zeroize::Zeroizing::new(keys.passphrase.clone())),
        (true, false) => {
            let path = &keys.passphrase_file;
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
            );
            Some(zeroize::Zeroizing::new(text.lines().next().unwrap_or("").to_string()))
        }
        (true, true) => None,
    };
    if let Some(passphrase) = passphrase {
        if passphrase.is_empty() {
            bail!("[keys] passphrase_file {} starts with an empty line", keys.passphrase_file.display());
        }
        let salt = secret_file(&data_dir.join(SALT_FILE), |b| b[..SALT_LEN].to_vec())?;
        return SealKey::from_passphrase(passphrase.as_bytes(), &salt).context("deriving the node key");
    }
    let path = if keys.key_file.as_os_str().is_empty() { data_dir.join(NODE_KEY_FILE) } else { keys.key_file.clone() };
    if !path.exists() {
        let key = SealKey::generate();
        write_private(&path, &key.to_bytes()[..])?;
        tracing::info!(path = %path.display(), "node key made: account keys are sealed under it");
        return Ok(key);
    }
    Ok(SealKey::from_bytes(read_key_file(&path)?))
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
        write_private(path, &encode(&secret))?;
    }
    Ok(std::fs::read(path)?)
}

/// Writes a new file only its owner can read (mode 0600), durably; never overwrites one.
pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
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

    #[test]
    fn node_key_is_made_once_and_a_passphrase_gives_the_same_key_each_time() {
        use crate::config::KeysSection;
        let dir = tempfile::tempdir().unwrap();
        let file = KeysSection::default();
        let made = seal_key(dir.path(), &file).unwrap();
        let mode = std::fs::metadata(dir.path().join(NODE_KEY_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let sealed = made.seal(b"t", b"secret");
        assert_eq!(seal_key(dir.path(), &file).unwrap().open(b"t", &sealed).unwrap().as_slice(), b"secret");

        let pass = KeysSection { passphrase: "a passphrase".into(), ..KeysSection::default() };
        let sealed = seal_key(dir.path(), &pass).unwrap().seal(b"t", b"secret");
        let pass_file = dir.path().join("pass");
        std::fs::write(&pass_file, "a passphrase\n").unwrap();
        let from_file = KeysSection { passphrase_file: pass_file, ..KeysSection::default() };
        assert_eq!(seal_key(dir.path(), &from_file).unwrap().open(b"t", &sealed).unwrap().as_slice(), b"secret");
        let wrong = KeysSection { passphrase: "another".into(), ..KeysSection::default() };
        assert!(seal_key(dir.path(), &wrong).unwrap().open(b"t", &sealed).is_err());
        let both = KeysSection { passphrase: "x".into(), ..from_file };
        assert!(seal_key(dir.path(), &both).is_err());
    }
}
