//! How a setting's value is written, in flags, the environment and the
//! file: listeners (`NAME=ADDR`), expected members of an app (`APP=N`),
//! overflow, worker counts, durations and sizes (through serde for the
//! file).

use super::{AppCount, ListenerConfig, Overflow, WorkerCount};

pub(super) fn parse_listener(v: &str) -> Result<ListenerConfig, String> {
    let (name, addr) = v
        .split_once('=')
        .ok_or_else(|| format!("{v:?}: write NAME=ADDR, like http=127.0.0.1:8080"))?;
    let addr = addr
        .parse()
        .map_err(|_| format!("{addr:?} is not an address like 127.0.0.1:8080"))?;
    Ok(ListenerConfig {
        name: name.to_string(),
        addr,
    })
}

pub(super) fn parse_overflow(v: &str) -> Result<Overflow, String> {
    match v {
        "block" => Ok(Overflow::Block),
        "drop" => Ok(Overflow::Drop),
        other => Err(format!("{other:?}: use \"block\" or \"drop\"")),
    }
}

pub(super) fn parse_worker_count(v: &str) -> Result<WorkerCount, String> {
    match v {
        "auto" => Ok(WorkerCount::Auto),
        n => n
            .parse()
            .map(WorkerCount::Fixed)
            .map_err(|_| format!("{v:?}: use \"auto\" or a number")),
    }
}

/// Durations as config files and flags write them (`500ms`, `1.5s`, `2m`),
/// for serde.
pub(super) mod duration {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) if d.subsec_millis() == 0 => s.serialize_str(&format!("{}s", d.as_secs())),
            Some(d) => s.serialize_str(&format!("{}ms", d.as_millis())),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|v| cohort_process::parse_duration(&v).map_err(serde::de::Error::custom))
            .transpose()
    }
}

pub(super) mod bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(b: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match b {
            Some(b) => s.serialize_u64(*b),
            None => s.serialize_none(),
        }
    }

    /// A size as a string with a unit (`512MiB`) or a number of bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Size {
            Bytes(u64),
            Text(String),
        }
        match Option::<Size>::deserialize(d)? {
            None => Ok(None),
            Some(Size::Bytes(b)) => Ok(Some(b)),
            Some(Size::Text(t)) => cohort_process::parse_bytes(&t)
                .map(Some)
                .map_err(serde::de::Error::custom),
        }
    }
}

pub(super) fn parse_app_count(v: &str) -> Result<AppCount, String> {
    let (app, n) = v
        .split_once('=')
        .ok_or_else(|| format!("{v:?}: write APP=N, like web=2"))?;
    cohort_proto::check_app(app)?;
    let count = n
        .parse()
        .map_err(|_| format!("{n:?} is not a count of members (APP=N, like web=2)"))?;
    Ok(AppCount {
        app: app.to_string(),
        count,
    })
}

/// `[expect] apps = { web = 2 }` in the file, `--expect-app web=2` as flags.
pub(super) mod app_counts {
    use super::AppCount;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(v: &[AppCount], s: S) -> Result<S::Ok, S::Error> {
        let map: BTreeMap<&str, u32> = v.iter().map(|c| (c.app.as_str(), c.count)).collect();
        s.collect_map(map)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<AppCount>, D::Error> {
        let map = BTreeMap::<String, u32>::deserialize(d)?;
        map.into_iter()
            .map(|(app, count)| {
                cohort_proto::check_app(&app).map_err(serde::de::Error::custom)?;
                Ok(AppCount { app, count })
            })
            .collect()
    }
}
