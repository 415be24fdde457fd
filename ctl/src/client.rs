//! The Control API as `cohortctl` uses it: connected like a member (the
//! SDK's address, token and TLS from the environment), the token on every
//! call, and errors turned into exit codes and words.

use cohort::{Code, MemberBuilder, Role, Target, pb};
use cohort_proto::auth::Bearer;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// How long a call waits for the master's answer (beyond a request's own
/// timeout). A stopped or hung master keeps its connections open and
/// never answers; that is unreachable, not a wait.
const ANSWER: Duration = Duration::from_secs(10);

/// A connected Control client.
pub struct Ctl {
    master: String,
    /// Several masters were given: a stream that ends resumes on the leader.
    pub several: bool,
    control: pb::control_client::ControlClient<Authed>,
    health: tonic_health::pb::health_client::HealthClient<Authed>,
}

/// The channel with the bearer token on every call.
type Authed = InterceptedService<Channel, Bearer>;

/// `call`'s answer, or unreachable (exit 69) after `limit`.
async fn answered<T>(
    master: &str,
    limit: Duration,
    call: impl Future<Output = Result<T, tonic::Status>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(limit, call).await {
        Ok(answer) => Ok(answer?),
        Err(_) => Err(cohort::Error::Connect {
            addr: master.to_string(),
            message: format!(
                "no answer within {} s (is the master stopped, hung or overloaded?)",
                limit.as_secs()
            ),
        }
        .into()),
    }
}

impl Ctl {
    /// Connects to `master` (or `COHORT_MASTER`) with the environment's
    /// token and TLS settings. With several masters (a comma-separated
    /// list), to the leader: the first master that answers, or the leader
    /// a standby names; a standby itself when no leader is known (its
    /// `ClusterInfo` says so).
    pub async fn connect(master: Option<&str>) -> anyhow::Result<Ctl> {
        let builder = MemberBuilder::from_lookup(|k| match (k, master) {
            (cohort::env::MASTER, Some(m)) => Some(m.to_string()),
            _ => std::env::var(k).ok(),
        })?;
        let masters = builder.masters().to_vec();
        if masters.len() < 2 {
            return Ctl::at(&builder, builder.master()).await;
        }
        let several = |mut ctl: Ctl| {
            ctl.several = true;
            ctl
        };
        let mut standby = None;
        let mut failure = None;
        for m in &masters {
            let mut ctl = match Ctl::at(&builder, m).await {
                Ok(ctl) => ctl,
                Err(e) => {
                    failure = Some(e);
                    continue;
                }
            };
            match ctl.info().await {
                Ok(info) if info.master_role == "standby" && !info.leader.is_empty() => {
                    match Ctl::at(&builder, &info.leader).await {
                        Ok(leader) => return Ok(several(leader)),
                        Err(e) => failure = Some(e),
                    }
                }
                Ok(info) if info.master_role == "standby" => standby = standby.or(Some(ctl)),
                Ok(_) => return Ok(several(ctl)),
                Err(e) => failure = Some(e),
            }
        }
        match (standby, failure) {
            (Some(ctl), _) => Ok(several(ctl)),
            (None, Some(e)) => Err(e),
            (None, None) => anyhow::bail!("no master to connect to"),
        }
    }

    /// Connects to one master.
    async fn at(builder: &MemberBuilder, master: &str) -> anyhow::Result<Ctl> {
        let (channel, bearer) = builder.control_channel_to(master).await?;
        let max = cohort_proto::MAX_MESSAGE_BYTES;
        Ok(Ctl {
            master: master.to_string(),
            several: false,
            control: pb::control_client::ControlClient::with_interceptor(
                channel.clone(),
                bearer.clone(),
            )
            .max_decoding_message_size(max),
            health: tonic_health::pb::health_client::HealthClient::with_interceptor(
                channel, bearer,
            ),
        })
    }

    /// With several masters: connects again, to the leader, once one
    /// leads (up to a minute), after a stream from the old one ended.
    pub async fn resume(master: Option<&str>, why: &str) -> anyhow::Result<Ctl> {
        eprintln!("cohortctl: the stream ended ({why}); following the leader");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let found = match Ctl::connect(master).await {
                Ok(mut ctl) => match ctl.info().await {
                    Ok(info) if info.master_role != "standby" => Ok(ctl),
                    Ok(_) => Err(anyhow::anyhow!("no master leads")),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            };
            match found {
                Ok(ctl) => return Ok(ctl),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(_) => {}
            }
        }
    }

    /// Every member, page by page.
    pub async fn members(&mut self) -> anyhow::Result<Vec<pb::MemberInfo>> {
        let mut all = Vec::new();
        let mut token = String::new();
        loop {
            let page = pb::ListMembersRequest {
                page_token: token,
                ..Default::default()
            };
            let r = page;
            let page = answered(&self.master, ANSWER, self.control.list_members(r))
                .await?
                .into_inner();
            all.extend(page.members);
            if page.next_page_token.is_empty() {
                return Ok(all);
            }
            token = page.next_page_token;
        }
    }

    pub async fn info(&mut self) -> anyhow::Result<pb::ClusterInfoResponse> {
        let r = pb::ClusterInfoRequest {};
        let info = answered(&self.master, ANSWER, self.control.cluster_info(r)).await?;
        Ok(info.into_inner())
    }

    /// Whether the master serves members, and whether the cluster is ready.
    pub async fn health(&mut self) -> anyhow::Result<(bool, bool)> {
        use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus};
        let mut check = async |service: &str| -> anyhow::Result<bool> {
            let r = HealthCheckRequest {
                service: service.into(),
            };
            let status = answered(&self.master, ANSWER, self.health.check(r))
                .await?
                .into_inner()
                .status;
            Ok(status == ServingStatus::Serving as i32)
        };
        let serving = check("cohort.v1.Membership").await?;
        let ready = check("").await?;
        Ok((serving, ready))
    }

    /// The cluster's events: the current state, then what follows.
    pub async fn watch(&mut self) -> anyhow::Result<tonic::Streaming<pb::ClusterEvent>> {
        let r = pb::WatchEventsRequest {};
        // Bounded until the stream starts; then HTTP/2 keepalive watches it.
        let events = answered(&self.master, ANSWER, self.control.watch_events(r)).await?;
        Ok(events.into_inner())
    }

    /// Prints the cluster's events; without `follow`, only the current
    /// state (after a failover, the new leader's current state comes
    /// first, as `kubectl get -w` lists again when it reconnects).
    pub async fn events(&mut self, follow: bool, json: bool) -> anyhow::Result<()> {
        let mut events = self.watch().await?;
        loop {
            // The current state comes at once; a pause means it is over.
            let next = match follow {
                true => events.message().await?,
                false => {
                    match tokio::time::timeout(Duration::from_millis(300), events.message()).await {
                        Ok(m) => m?,
                        Err(_) => return Ok(()),
                    }
                }
            };
            let Some(ev) = next else { return Ok(()) };
            if !follow && ev.kind != pb::EventKind::Current as i32 {
                return Ok(());
            }
            println!("{}", crate::show::event(&ev, json));
        }
    }

    /// Log lines as `req` asks.
    pub async fn logs(
        &mut self,
        req: pb::LogsRequest,
    ) -> anyhow::Result<tonic::Streaming<pb::LogEntry>> {
        let r = req;
        let lines = answered(&self.master, ANSWER, self.control.logs(r)).await?;
        Ok(lines.into_inner())
    }

    /// Sends (with `timeout`, as a request) and returns the master's answer.
    pub async fn send(
        &mut self,
        target: Target,
        action: String,
        data: Option<String>,
        timeout: Option<Duration>,
    ) -> anyhow::Result<pb::SendResponse> {
        let msg = pb::SendRequest {
            action,
            data: data.unwrap_or_default().into_bytes().into(),
            target: Some(target.into()),
            timeout: timeout.map(cohort_proto::time::duration),
            expect_reply: timeout.is_some(),
            ..Default::default()
        };
        let r = msg;
        let limit = timeout.unwrap_or_default() + ANSWER;
        Ok(answered(&self.master, limit, self.control.send(r))
            .await?
            .into_inner())
    }

    /// Scales an app, or a role's app when `which` names a role.
    pub async fn scale(&mut self, which: &str, count: u32) -> anyhow::Result<()> {
        let r = match Role::from_word(which) {
            Ok(role) => pb::ScaleRequest {
                role: role.into(),
                count,
                ..Default::default()
            },
            Err(_) => pb::ScaleRequest {
                app: which.to_string(),
                count,
                ..Default::default()
            },
        };
        answered(&self.master, ANSWER, self.control.scale(r)).await?;
        Ok(())
    }

    /// Reloads the master's configuration; what it did per app.
    pub async fn reload(&mut self) -> anyhow::Result<Vec<pb::AppChange>> {
        // The answer comes once changed apps have rolled, which may take
        // long; HTTP/2 keepalive tells a master that went silent.
        Ok(self
            .control
            .reload(pb::ReloadRequest {})
            .await?
            .into_inner()
            .apps)
    }

    /// Restarts a member, a role when `which` names one, or an app
    /// (`app:APP`).
    pub async fn restart(&mut self, which: &str, rolling: bool) -> anyhow::Result<()> {
        use pb::restart_request::Which;
        let which = match (which.strip_prefix("app:"), Role::from_word(which)) {
            (Some(app), _) => Which::App(app.to_string()),
            (None, Ok(role)) => Which::Role(role.into()),
            (None, Err(_)) => Which::Member(which.to_string()),
        };
        let r = pb::RestartRequest {
            which: Some(which),
            rolling,
        };
        // The answer comes once the new instances are ready, which may take
        // long; HTTP/2 keepalive (30 s) tells a master that went silent.
        self.control.restart(r).await?;
        Ok(())
    }

    /// Drains a member, or every member of an app (`app:APP`).
    pub async fn drain(&mut self, which: String) -> anyhow::Result<()> {
        let r = match which.strip_prefix("app:") {
            Some(app) => pb::DrainRequest {
                app: app.to_string(),
                ..Default::default()
            },
            None => pb::DrainRequest {
                member: which,
                ..Default::default()
            },
        };
        answered(&self.master, ANSWER, self.control.drain(r)).await?;
        Ok(())
    }

    pub async fn shutdown(&mut self) -> anyhow::Result<()> {
        let r = pb::ShutdownRequest {};
        answered(&self.master, ANSWER, self.control.shutdown(r)).await?;
        Ok(())
    }
}

/// The exit code and the words for an error.
pub fn explain(e: &anyhow::Error) -> (u8, String) {
    let (code, text) = if let Some(s) = e.downcast_ref::<tonic::Status>() {
        (s.code(), format!("{:?}: {}", s.code(), s.message()))
    } else if let Some(c) = e.downcast_ref::<cohort::Error>() {
        (c.code(), format!("{e:#}"))
    } else {
        // Our own words (a bad target, a bad role).
        return (2, format!("{e:#}"));
    };
    match code {
        Code::Unauthenticated | Code::PermissionDenied => (
            77,
            format!(
                "not allowed: {text} (set COHORT_TOKEN, or COHORT_TOKEN_FILE, to the master's token)"
            ),
        ),
        Code::Unavailable => (69, format!("the master cannot be reached: {text}")),
        Code::InvalidArgument if e.downcast_ref::<cohort::Error>().is_some() => (2, text),
        _ => (1, text),
    }
}
