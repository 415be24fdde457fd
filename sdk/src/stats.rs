//! The member's own CPU % and RSS, sent with each heartbeat.

use sysinfo::{Pid, ProcessRefreshKind, ProcessesToUpdate, System};

/// Samples this process's resource use.
pub struct Sampler {
    // `None` where sysinfo cannot read the process table: stats read as 0.
    system: Option<System>,
    pid: Pid,
}

impl Sampler {
    /// A sampler for the current process.
    pub fn new() -> Self {
        Sampler {
            system: System::new().ok(),
            pid: Pid::from_u32(std::process::id()),
        }
    }

    /// CPU % since the previous sample (100 = one core) and RSS in bytes.
    pub fn sample(&mut self) -> (f32, u64) {
        let Some(system) = self.system.as_mut() else {
            return (0.0, 0);
        };
        system.refresh_processes_specifics(
            ProcessesToUpdate::Some(&[self.pid]),
            true,
            ProcessRefreshKind::nothing().with_cpu().with_memory(),
        );
        system
            .process(self.pid)
            .map(|p| (p.cpu_usage(), p.memory()))
            .unwrap_or_default()
    }
}

impl Default for Sampler {
    fn default() -> Self {
        Sampler::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reports_a_plausible_rss() {
        let mut s = super::Sampler::new();
        let (_, rss) = s.sample();
        assert!(rss > 1024 * 1024, "rss {rss}");
    }
}
