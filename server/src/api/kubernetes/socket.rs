//! The plugin's Unix socket: bound inside a fresh 0700 directory, given its mode (0600,
//! or 0660 with its owner group) and only then renamed to the configured path, so nobody
//! ever connects to it with looser permissions, whatever the umask. A stale socket a crashed hsmd left
//! behind is replaced; a live one (another hsmd serving it) or a file that is no socket
//! stops start-up instead.

use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, bail};
use tokio::net::UnixListener;

use super::KubernetesConfig;

/// Binds the plugin's socket as described above.
pub(crate) fn bind(cfg: &KubernetesConfig) -> anyhow::Result<UnixListener> {
    let path = &cfg.socket;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)
        .with_context(|| format!("kubernetes.socket: create {}", dir.display()))?;
    remove_stale(path)?;
    let name = path
        .file_name()
        .with_context(|| format!("kubernetes.socket {} has no file name", path.display()))?;
    // A fresh directory only this process may enter: nobody can connect to the socket
    // inside it before it has its mode and group, and the chmod cannot follow a path
    // someone else swapped.
    let mut private_name = std::ffi::OsString::from(".");
    private_name.push(name);
    private_name.push(format!(".{}.d", std::process::id()));
    let private = dir.join(private_name);
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .with_context(|| format!("kubernetes.socket: create {}", private.display()))?;
    let tmp = private.join("s");
    let bound = (|| -> anyhow::Result<UnixListener> {
        let listener = UnixListener::bind(&tmp)
            .with_context(|| format!("kubernetes.socket: bind {}", tmp.display()))?;
        let mode = match &cfg.group {
            Some(group) => {
                let gid = gid_of(group)?;
                std::os::unix::fs::chown(&tmp, None, Some(gid))
                    .with_context(|| format!("kubernetes.group: chown to group {group}"))?;
                0o660
            }
            None => 0o600,
        };
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        std::fs::rename(&tmp, path)
            .with_context(|| format!("kubernetes.socket: rename to {}", path.display()))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// Removes `path` if it is a socket nobody listens on; refuses anything else.
fn remove_stale(path: &Path) -> anyhow::Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("kubernetes.socket {}", path.display())),
    };
    if !meta.file_type().is_socket() {
        bail!(
            "kubernetes.socket {} exists and is not a socket; refusing to replace it",
            path.display()
        );
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => bail!(
            "kubernetes.socket {} is in use by another process (another hsmd?)",
            path.display()
        ),
        Err(_) => {
            tracing::info!(socket = %path.display(), "replacing a stale KMS plugin socket");
            std::fs::remove_file(path)
                .with_context(|| format!("kubernetes.socket: remove stale {}", path.display()))
        }
    }
}

/// A group name (from the system's group database) or a numeric gid.
fn gid_of(group: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => bail!("kubernetes.group: no group named '{group}'"),
        Err(e) => bail!("kubernetes.group: looking up '{group}': {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path, group: Option<&str>) -> KubernetesConfig {
        KubernetesConfig {
            socket: dir.join("sub/kms.sock"),
            key: "alias/k8s".into(),
            group: group.map(str::to_string),
            create_key: false,
        }
    }

    #[tokio::test]
    async fn binds_0600_replaces_stale_and_refuses_live_or_foreign_files() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), None);
        let live = bind(&c).unwrap();
        let mode = std::fs::metadata(&c.socket).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Another hsmd listening: refused, its socket untouched.
        let err = bind(&c).unwrap_err().to_string();
        assert!(err.contains("in use"), "{err}");
        assert!(c.socket.exists());
        // The listener gone (a crash leaves the file): replaced.
        drop(live);
        assert!(c.socket.exists(), "a dropped listener leaves its file");
        let _again = bind(&c).unwrap();
        // A regular file is never removed.
        let other = cfg(dir.path(), None);
        let plain = other.socket.with_file_name("plain");
        std::fs::write(&plain, b"data").unwrap();
        let c2 = KubernetesConfig {
            socket: plain.clone(),
            ..other
        };
        let err = bind(&c2).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&plain).unwrap(), b"data");
    }

    #[tokio::test]
    async fn a_group_makes_it_0660_with_that_group() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let gid = nix::unistd::getegid().as_raw();
        let c = cfg(dir.path(), Some(&gid.to_string()));
        let _l = bind(&c).unwrap();
        let meta = std::fs::metadata(&c.socket).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o660);
        assert_eq!(meta.gid(), gid);
        let err = gid_of("no-such-group-hsmd").unwrap_err().to_string();
        assert!(err.contains("no group named"), "{err}");
    }
}
