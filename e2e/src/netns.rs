//! Hosts on one machine (SPEC §10): network namespaces joined by a bridge
//! that lives in a namespace of its own, addresses `10.77.N.1…`, every
//! process inside a namespace, and an `unreachable` route for the range in
//! the root namespace while the hosts exist, so nothing can leave the
//! machine. Needs root and iproute2.

use crate::Proc;
use std::process::Command;

/// Runs `ip ARGS`; the error carries what ip said.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether this process can build hosts (root and iproute2); under CI it
/// must (a panic), elsewhere the caller skips with the message printed.
pub fn can_build_hosts() -> bool {
    if crate::is_root() && Command::new("ip").arg("-V").output().is_ok() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("CI runs as root with iproute2: this test must run there");
    }
    eprintln!("SKIPPED: needs root and iproute2 (ip netns) to build test hosts");
    false
}

/// The namespaces and the guard route; removed on drop, even on failure.
pub struct Net {
    switch: String,
    /// The hosts' namespace names, in order.
    pub hosts: Vec<String>,
    subnet: String,
    route_added: bool,
}

impl Net {
    /// `letters.len()` hosts (`a` → namespace `c<a>-TAG`, switch port
    /// `p<a>`) on `10.77.SUBNET.0/24`, host `i` at `10.77.SUBNET.(i+1)`.
    pub fn create(tag: &str, subnet: u8, letters: &[&str]) -> Result<Net, String> {
        let mut net = Net {
            switch: format!("cs-{tag}"),
            hosts: Vec::new(),
            subnet: format!("10.77.{subnet}"),
            route_added: false,
        };
        // Nothing addressed to the test range may leave through the root namespace.
        let range = format!("{}.0/24", net.subnet);
        if ip(&["route", "add", "unreachable", &range]).is_ok() {
            net.route_added = true;
        }
        ip(&["netns", "add", &net.switch])?;
        ip(&["-n", &net.switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &net.switch, "link", "set", "br0", "up"])?;
        for (i, h) in letters.iter().enumerate() {
            let host = format!("c{h}-{tag}");
            ip(&["netns", "add", &host])?;
            net.hosts.push(host.clone());
            let port = format!("p{h}");
            ip(&[
                "link",
                "add",
                "eth0",
                "netns",
                &host,
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                &net.switch,
            ])?;
            ip(&[
                "-n",
                &net.switch,
                "link",
                "set",
                &port,
                "master",
                "br0",
                "up",
            ])?;
            let addr = format!("{}/24", net.addr(i));
            ip(&["-n", &host, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &host, "link", "set", "eth0", "up"])?;
            ip(&["-n", &host, "link", "set", "lo", "up"])?;
        }
        Ok(net)
    }

    /// Host `i`'s address.
    pub fn addr(&self, i: usize) -> String {
        format!("{}.{}", self.subnet, i + 1)
    }

    /// Plugs host `letter`'s cable in or out of the switch.
    pub fn port(&self, letter: &str, up: bool) {
        ip(&[
            "-n",
            &self.switch,
            "link",
            "set",
            &format!("p{letter}"),
            if up { "up" } else { "down" },
        ])
        .expect("switch port");
    }

    /// Cuts (or heals) host `from`'s traffic to host `to`, one way: a
    /// blackhole route in `from`.
    pub fn cut(&self, from: usize, to: usize, cut: bool) {
        let dest = format!("{}/32", self.addr(to));
        let verb = if cut { "add" } else { "del" };
        ip(&["-n", &self.hosts[from], "route", verb, "blackhole", &dest]).expect("route");
    }

    /// Runs `argv` inside host `host`.
    pub fn exec(&self, host: usize, name: &str, argv: &[String], env: &[(&str, String)]) -> Proc {
        Proc::spawn(name, self.command(host, argv, env))
    }

    /// `argv` as a command inside host `host`.
    pub fn command(&self, host: usize, argv: &[String], env: &[(&str, String)]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.hosts[host]]).args(argv);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for h in self.hosts.iter().chain(std::iter::once(&self.switch)) {
            let _ = ip(&["netns", "del", h]);
        }
        if self.route_added {
            let _ = ip(&[
                "route",
                "del",
                "unreachable",
                &format!("{}.0/24", self.subnet),
            ]);
        }
    }
}
