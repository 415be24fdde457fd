//! `cohort.v1.Control`: the operator API (grpcurl, scripts). Reads come from
//! the registry; `Send` routes like a member would, as sender `control`.

use crate::feed::{Feed, replay_then_follow};
use crate::flow;
use crate::json;
use crate::model::{MemberSnapshot, MemberState};
use crate::registry::Registry;
use crate::supervisor::SupervisorHandle;
use cohort_proto::pb;
use cohort_proto::time::{duration, span, timestamp, unix_ms};
use cohort_proto::{MemberName, Role};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};

/// How long `Send` with `expect_reply` waits when the caller names no timeout.
pub const DEFAULT_CONTROL_TIMEOUT: Duration = Duration::from_secs(5);

/// The Control service.
pub struct ControlService {
    registry: Arc<Registry>,
    listen_addr: SocketAddr,
    started: Instant,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    expect: (u32, u32),
    supervisor: SupervisorHandle,
    listeners: Vec<pb::ListenerInfo>,
    election: Option<crate::ha::Election>,
    reloader: Option<Arc<crate::reload::Reloader>>,
}

impl ControlService {
    /// A service over `registry`; `shutdown` is what `Control/Shutdown` cancels.
    pub fn new(
        registry: Arc<Registry>,
        listen_addr: SocketAddr,
        expect: (u32, u32),
        supervisor: SupervisorHandle,
        listeners: Vec<pb::ListenerInfo>,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        ControlService {
            registry,
            listen_addr,
            started: Instant::now(),
            tasks,
            shutdown,
            expect,
            supervisor,
            listeners,
            election: None,
            reloader: None,
        }
    }

    /// `Control/Reload` through this.
    pub fn with_reloader(mut self, reloader: Arc<crate::reload::Reloader>) -> Self {
        self.reloader = Some(reloader);
        self
    }

    /// A master of several: `ClusterInfo` tells the election.
    pub fn with_election(mut self, election: Option<crate::ha::Election>) -> Self {
        self.election = election;
        self
    }

    /// The election as `ClusterInfo` tells it (nothing for a single master).
    fn election_info(&self) -> pb::ClusterInfoResponse {
        let Some(election) = &self.election else {
            return pb::ClusterInfoResponse::default();
        };
        let view = election.view();
        let leading = view.leading && election.fence().holds();
        pb::ClusterInfoResponse {
            master_role: if leading { "leader" } else { "standby" }.to_string(),
            leader: view.leader.unwrap_or_default(),
            term: view.term,
            masters: view.masters,
            ..Default::default()
        }
    }

    /// Registered members, with local slots' restart counts, plus local
    /// slots that have no registered instance (starting, BACKOFF, FAILED).
    fn members(&self) -> Vec<MemberSnapshot> {
        let mut members = self.registry.list();
        for view in self.supervisor.views() {
            match members.iter().position(|m| m.name == view.name) {
                Some(i) if members[i].local => {
                    members[i].restarts = view.restarts;
                    members[i].last_exit = view.last_exit.clone();
                }
                Some(_) => {}
                None => members.push(view.snapshot()),
            }
        }
        members.sort_by(|a, b| a.name.cmp(&b.name));
        members
    }
}

/// Most members in one `ListMembers` page (and the default page size).
pub const MAX_PAGE: usize = 1000;

impl ControlService {
    /// One page of `ListMembers`: registered members and the local slots
    /// with no registered instance, filtered, in name order; and the token
    /// of the next page if there is one.
    fn page(
        &self,
        req: &pb::ListMembersRequest,
    ) -> Result<(Vec<MemberSnapshot>, Option<String>), Status> {
        let size = match req.page_size {
            0 => MAX_PAGE,
            n => (n as usize).min(MAX_PAGE),
        };
        let after = match req.page_token.as_str() {
            "" => None,
            t => Some(MemberName::parse(t).map_err(|_| {
                Status::invalid_argument(
                    "page_token is not one ListMembers gave: start again with an empty page_token",
                )
            })?),
        };
        let role = match req.role {
            0 => None,
            r => Some(role_of(r, "role")?),
        };
        let state = match pb::MemberState::try_from(req.state) {
            Ok(s) => MemberState::from_wire(s),
            Err(_) => {
                return Err(Status::invalid_argument(format!(
                    "state: {} is not a MemberState",
                    req.state
                )));
            }
        };
        let keep = |m: &MemberSnapshot| {
            role.is_none_or(|r| m.role == r)
                && state.is_none_or(|s| m.state == s)
                && (req.host.is_empty() || m.host == req.host)
        };
        // One more than a page says whether another page follows.
        let mut page = self.registry.page(after.as_ref(), size + 1, &keep);
        let views = self.supervisor.views();
        for m in page.iter_mut().filter(|m| m.local) {
            if let Some(v) = views.iter().find(|v| v.name == m.name) {
                m.restarts = v.restarts;
                m.last_exit = v.last_exit.clone();
            }
        }
        // Local slots with no registered instance, within this page's range.
        let until = (page.len() > size).then(|| page[size - 1].name.clone());
        let registered = |name: &str| page.iter().any(|m| m.name == name);
        let slots: Vec<MemberSnapshot> = views
            .iter()
            .filter(|v| after.as_ref().is_none_or(|a| v.name.as_str() > a.as_str()))
            .filter(|v| until.as_ref().is_none_or(|u| v.name <= *u))
            .map(|v| v.snapshot())
            .filter(|s| !registered(&s.name) && !self.registry.is_registered(&s.name) && keep(s))
            .collect();
        page.extend(slots);
        page.sort_by(|a, b| a.name.cmp(&b.name));
        let next = (page.len() > size).then(|| page[size - 1].name.clone());
        page.truncate(size);
        Ok((page, next))
    }
}

fn role_of(value: i32, what: &str) -> Result<Role, Status> {
    Role::try_from(value).map_err(|e| Status::invalid_argument(format!("{what}: {e}")))
}

#[tonic::async_trait]
impl cohort_proto::server::control_server::Control for ControlService {
    async fn list_members(
        &self,
        request: Request<pb::ListMembersRequest>,
    ) -> Result<Response<pb::ListMembersResponse>, Status> {
        let (page, next) = self.page(&request.into_inner())?;
        Ok(Response::new(pb::ListMembersResponse {
            members: page.iter().map(Into::into).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn get_member(
        &self,
        request: Request<pb::GetMemberRequest>,
    ) -> Result<Response<pb::MemberInfo>, Status> {
        let member = request.into_inner().member;
        if member.is_empty() {
            return Err(Status::invalid_argument(
                "member is empty: give a name, an instance id or pid@host",
            ));
        }
        match self.registry.get(&member) {
            Ok(m) => Ok(Response::new(
                (&self
                    .members()
                    .into_iter()
                    .find(|x| x.instance_id == m.instance_id)
                    .unwrap_or(m))
                    .into(),
            )),
            Err(e) => self
                .members()
                .iter()
                .find(|x| x.name == member)
                .map(|m| Response::new(m.into()))
                .ok_or_else(|| e.into()),
        }
    }

    async fn send(
        &self,
        request: Request<pb::SendRequest>,
    ) -> Result<Response<pb::SendResponse>, Status> {
        let req = request.into_inner();
        let data = match &req.json {
            Some(v) => json::to_json(v).to_string().into_bytes().into(),
            None => req.data,
        };
        let timeout = span(req.timeout.as_ref())
            .filter(|t| !t.is_zero())
            .unwrap_or(DEFAULT_CONTROL_TIMEOUT);
        let env = pb::Envelope {
            id: uuid::Uuid::new_v4().to_string(),
            action: req.action,
            data,
            target: req.target,
            timeout: Some(duration(timeout)),
            ..Default::default()
        };
        let sent = self
            .registry
            .control_send(env, req.expect_reply, Instant::now().into_std())?;
        let mut delivered = sent.routed.reached;
        if !sent.routed.waits.is_empty() {
            // Receivers with full queues: wait for room like a member's
            // sender would, within the call's timeout.
            let waits = sent.routed.waits;
            let closed = self.registry.closed();
            // Nobody to vouch for: the caller is no member.
            let waited = flow::wait_for_room(waits, || {}, timeout, &closed);
            let outcome = match tokio::time::timeout(timeout, waited).await {
                Ok(Some(outcome)) => outcome,
                Ok(None) => return Err(Status::unavailable("the master is shutting down")),
                Err(_) => {
                    return Err(Status::deadline_exceeded(format!(
                        "the receivers' queues stayed full for {} ms; raise timeout or retry",
                        timeout.as_millis()
                    )));
                }
            };
            if let Some(cut) = outcome.cut_off.first()
                && sent.routed.targeted
            {
                return Err(crate::registry::RouteError::CutOff(cut.clone()).into());
            }
            delivered += outcome.reached;
        }
        let Some(rx) = sent.reply else {
            return Ok(Response::new(pb::SendResponse {
                delivered,
                ..Default::default()
            }));
        };
        let reply = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(env)) => env,
            Ok(Err(_)) | Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "no reply within {} ms; raise timeout or check the receiver handles this action",
                    timeout.as_millis()
                )));
            }
        };
        Ok(Response::new(pb::SendResponse {
            delivered,
            reply_json: json::from_json_bytes(&reply.data),
            reply: Some(reply),
        }))
    }

    async fn scale(
        &self,
        request: Request<pb::ScaleRequest>,
    ) -> Result<Response<pb::ScaleResponse>, Status> {
        let req = request.into_inner();
        let app = match (req.app.as_str(), req.role) {
            ("", r) => match role_of(r, "role")? {
                Role::Agent => "agent".to_string(),
                Role::Worker => cohort_proto::DEFAULT_APP.to_string(),
            },
            (app, 0) => {
                cohort_proto::check_app(app).map_err(Status::invalid_argument)?;
                app.to_string()
            }
            _ => {
                return Err(Status::invalid_argument(
                    "name a role or an app to scale, not both",
                ));
            }
        };
        self.supervisor.scale(&app, req.count).await?;
        Ok(Response::new(pb::ScaleResponse {}))
    }

    async fn reload(
        &self,
        _: Request<pb::ReloadRequest>,
    ) -> Result<Response<pb::ReloadResponse>, Status> {
        let Some(reloader) = &self.reloader else {
            return Err(Status::unimplemented("this master cannot reload"));
        };
        let apps = reloader
            .reload()
            .await?
            .into_iter()
            .map(|c| pb::AppChange {
                app: c.app,
                action: c.action,
                detail: c.detail,
            })
            .collect();
        Ok(Response::new(pb::ReloadResponse { apps }))
    }

    async fn restart(
        &self,
        request: Request<pb::RestartRequest>,
    ) -> Result<Response<pb::RestartResponse>, Status> {
        use pb::restart_request::Which;
        let req = request.into_inner();
        let (member, role) = match req.which {
            Some(Which::Member(m)) if !m.is_empty() => (Some(m), None),
            Some(Which::Role(r)) => (None, Some(role_of(r, "role")?)),
            Some(Which::App(app)) => {
                crate::roll::restart_app(&self.registry, &self.supervisor, &app, req.rolling)
                    .await?;
                return Ok(Response::new(pb::RestartResponse {}));
            }
            _ => {
                return Err(Status::invalid_argument(
                    "name a member (\"member\": \"worker-1\"), a role (\"role\": \"ROLE_WORKER\") or an app (\"app\": \"web\")",
                ));
            }
        };
        self.supervisor.restart(member, role, req.rolling).await?;
        Ok(Response::new(pb::RestartResponse {}))
    }

    async fn drain(
        &self,
        request: Request<pb::DrainRequest>,
    ) -> Result<Response<pb::DrainResponse>, Status> {
        let req = request.into_inner();
        match (req.member.is_empty(), req.app.is_empty()) {
            (false, true) => self.registry.drain(&req.member)?,
            (true, false) => {
                cohort_proto::check_app(&req.app).map_err(Status::invalid_argument)?;
                let of_app: Vec<String> = self
                    .registry
                    .list()
                    .into_iter()
                    .filter(|m| m.app == req.app)
                    .map(|m| m.name)
                    .collect();
                if of_app.is_empty() {
                    return Err(Status::not_found(format!("no member in app {}", req.app)));
                }
                for name in of_app {
                    self.registry.drain(&name)?;
                }
            }
            _ => {
                return Err(Status::invalid_argument(
                    "name a member (\"member\": \"worker-1\") or an app (\"app\": \"web\"), one of the two",
                ));
            }
        }
        Ok(Response::new(pb::DrainResponse {}))
    }

    async fn shutdown(
        &self,
        _: Request<pb::ShutdownRequest>,
    ) -> Result<Response<pb::ShutdownResponse>, Status> {
        tracing::info!("shutdown requested through Control/Shutdown");
        self.shutdown.cancel();
        Ok(Response::new(pb::ShutdownResponse {}))
    }

    type LogsStream = Feed<pb::LogEntry>;

    async fn logs(
        &self,
        request: Request<pb::LogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let req = request.into_inner();
        let filter = crate::logs::Filter {
            member: (!req.member.is_empty()).then_some(req.member),
            role: match req.role {
                0 => None,
                r => Some(role_of(r, "role")?),
            },
            app: (!req.app.is_empty()).then_some(req.app),
            since_ms: unix_ms(req.since.as_ref()),
            tail: req.tail as usize,
        };
        let (kept, live) = self.registry.logs.read(&filter);
        if let Some(name) = &filter.member
            && kept.is_empty()
            && !self.members().iter().any(|m| m.name == *name)
        {
            return Err(Status::not_found(format!(
                "no member named {name}, and no lines of one kept: cohortctl ls lists the members"
            )));
        }
        // The live feed starts after the kept lines and carries everyone's.
        let convert = move |l: &Arc<crate::logs::Line>| {
            filter.keeps(l).then(|| pb::LogEntry {
                member: l.member.clone(),
                role: l.role.into(),
                at: timestamp(l.at_ms),
                level: l.level.into(),
                text: l.text.clone(),
                source: l.source.into(),
            })
        };
        let feed = replay_then_follow(
            &self.tasks,
            self.registry.closed(),
            kept,
            live,
            req.follow,
            convert,
            "lines",
        );
        Ok(Response::new(feed))
    }

    type WatchEventsStream = Feed<pb::ClusterEvent>;

    async fn watch_events(
        &self,
        _: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        let (current, events) = self.registry.subscribe();
        let feed = replay_then_follow(
            &self.tasks,
            self.registry.closed(),
            current,
            events,
            true,
            |ev| Some(ev.into()),
            "events",
        );
        Ok(Response::new(feed))
    }

    async fn cluster_info(
        &self,
        _: Request<pb::ClusterInfoRequest>,
    ) -> Result<Response<pb::ClusterInfoResponse>, Status> {
        let summary = self.registry.summary();
        let ha = self.election_info();
        Ok(Response::new(pb::ClusterInfoResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime: Some(duration(self.started.elapsed())),
            listen_addr: self.listen_addr.to_string(),
            counts: summary
                .counts
                .into_iter()
                .map(|(role, state, count)| pb::StateCount {
                    role: role.into(),
                    state: pb::MemberState::from(state) as i32,
                    count,
                })
                .collect(),
            // A standby's registry is empty: the cluster is the leader's.
            cluster_ready: summary.cluster_ready && ha.master_role != "standby",
            listeners: self.listeners.clone(),
            expected_agents: self.expect.0,
            expected_workers: self.expect.1,
            settings: Some(self.registry.settings()),
            ..ha
        }))
    }
}
