//! Listeners inherited the systemd way: `LISTEN_FDS=N` sockets at fds 3..,
//! named by `LISTEN_FDNAMES=a:b`.

// Taking ownership of an inherited fd needs `unsafe` (`FromRawFd`).
#![allow(unsafe_code)]

use std::os::fd::{FromRawFd, RawFd};

/// First inherited fd (systemd's `SD_LISTEN_FDS_START`).
pub const FIRST_FD: RawFd = 3;

/// What the environment says was inherited.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inherited {
    /// Names in fd order; unnamed fds are `unknown` (as systemd does).
    pub names: Vec<String>,
}

impl Inherited {
    /// Reads `LISTEN_FDS` and `LISTEN_FDNAMES` values.
    pub fn parse(fds: Option<&str>, names: Option<&str>) -> Inherited {
        let count: usize = fds.and_then(|n| n.trim().parse().ok()).unwrap_or(0);
        let mut given: Vec<String> = names
            .map(|n| n.split(':').map(str::to_string).collect())
            .unwrap_or_default();
        given.resize(count, "unknown".to_string());
        given.truncate(count);
        Inherited { names: given }
    }

    /// Takes the listener named `name` (or the first one when none has that
    /// name). Call once per process for a given fd.
    pub fn take(&self, name: &str) -> Option<std::net::TcpListener> {
        let index = self
            .names
            .iter()
            .position(|n| n == name)
            .or(if self.names.is_empty() { None } else { Some(0) })?;
        let fd = FIRST_FD + RawFd::try_from(index).ok()?;
        // SAFETY: fd FIRST_FD + index was handed to this process as an open
        // listening socket (LISTEN_FDS); nothing else in the process owns it.
        let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        listener.set_nonblocking(true).ok()?;
        Some(listener)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counts_and_names() {
        assert_eq!(Inherited::parse(None, None).names.len(), 0);
        assert_eq!(
            Inherited::parse(Some("2"), Some("http:admin")).names,
            ["http", "admin"]
        );
        assert_eq!(
            Inherited::parse(Some("2"), None).names,
            ["unknown", "unknown"]
        );
        assert_eq!(Inherited::parse(Some("1"), Some("a:b")).names, ["a"]);
    }
}
