//! Log lines for journald: `<PRIORITY>target: message fields`, no
//! timestamp (the journal keeps its own). journald reads the `<N>` prefix as
//! the line's syslog priority (`SyslogLevelPrefix=`, on by default), so
//! `journalctl -p err` and `-p warning` filter as operators expect.

use std::fmt;
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The journald event format.
pub struct Journal;

/// The syslog priority of a tracing level.
pub fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

impl<S, N> FormatEvent<S, N> for Journal
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        write!(writer, "<{}>{}: ", priority(*meta.level()), meta.target())?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_and_warnings_get_their_syslog_priorities() {
        let got: Vec<u8> = [Level::ERROR, Level::WARN, Level::INFO, Level::DEBUG]
            .into_iter()
            .map(priority)
            .collect();
        assert_eq!(got, [3, 4, 6, 7]);
    }
}
