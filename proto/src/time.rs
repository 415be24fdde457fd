//! Times and spans on the wire: `google.protobuf.Timestamp` and
//! `google.protobuf.Duration` (grpcurl prints them as RFC 3339 and `"1.5s"`),
//! and the Unix milliseconds and `std::time::Duration` the code keeps.

use prost_types::{Duration as WireDuration, Timestamp};
use std::time::Duration;

/// A Unix time in ms as a timestamp; 0 (not known) as none.
pub fn timestamp(unix_ms: u64) -> Option<Timestamp> {
    (unix_ms > 0).then(|| Timestamp {
        seconds: i64::try_from(unix_ms / 1000).unwrap_or(i64::MAX),
        nanos: (unix_ms % 1000) as i32 * 1_000_000,
    })
}

/// A timestamp as Unix ms; none, or before 1970, as 0.
pub fn unix_ms(t: Option<&Timestamp>) -> u64 {
    t.map_or(0, |t| {
        let ms = i128::from(t.seconds) * 1000 + i128::from(t.nanos) / 1_000_000;
        u64::try_from(ms.max(0)).unwrap_or(u64::MAX)
    })
}

/// A span for the wire.
pub fn duration(d: Duration) -> WireDuration {
    WireDuration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: d.subsec_nanos() as i32,
    }
}

/// A span from the wire; none, or negative, as none.
pub fn span(d: Option<&WireDuration>) -> Option<Duration> {
    d.and_then(|d| Duration::try_from(*d).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_and_spans_survive_the_wire_and_nonsense_does_not() {
        assert_eq!(
            unix_ms(timestamp(1_795_796_201_827).as_ref()),
            1_795_796_201_827
        );
        assert_eq!(timestamp(0), None);
        assert_eq!(unix_ms(None), 0);
        let before_1970 = Timestamp {
            seconds: -5,
            nanos: 0,
        };
        assert_eq!(unix_ms(Some(&before_1970)), 0);
        let d = Duration::from_millis(1_500);
        assert_eq!(span(Some(&duration(d))), Some(d));
        let negative = WireDuration {
            seconds: -1,
            nanos: 0,
        };
        assert_eq!(span(Some(&negative)), None);
    }
}
