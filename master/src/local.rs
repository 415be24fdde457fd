//! The master's private Unix socket for the children it starts: a fresh
//! directory only this user can enter (`cohort-PID-ID` in the temp
//! directory, which [`crate::supervisor::stale`] recognises), removed on drop.

use anyhow::Context;

/// The socket and its directory.
pub struct LocalSocket {
    dir: std::path::PathBuf,
    /// The socket's path (children get `unix://PATH`).
    pub path: std::path::PathBuf,
    listener: Option<std::os::unix::net::UnixListener>,
}

impl LocalSocket {
    /// Creates the directory and binds the socket in it.
    pub fn bind() -> anyhow::Result<LocalSocket> {
        use std::os::unix::fs::DirBuilderExt;
        let dir = std::env::temp_dir().join(format!(
            "cohort-{}-{}",
            std::process::id(),
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("master.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path)
            .with_context(|| format!("binding {}", path.display()))?;
        listener.set_nonblocking(true)?;
        Ok(LocalSocket {
            dir,
            path,
            listener: Some(listener),
        })
    }

    /// The listener, once, for serving.
    pub fn listener(&mut self) -> anyhow::Result<tokio::net::UnixListener> {
        let l = self
            .listener
            .take()
            .context("local socket already served")?;
        Ok(tokio::net::UnixListener::from_std(l)?)
    }
}

impl Drop for LocalSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
